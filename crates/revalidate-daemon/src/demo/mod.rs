//! `revalidate demo`: the whole system with one command.
//!
//! It starts a simulated business API on loopback (resources changing at
//! different rates, occasional failures, a short outage every few minutes),
//! the daemon in front of it with a configuration of short durations and a
//! store in a temporary directory, and a little simulated traffic (screens
//! reading resources, one watching change events), then prints where the
//! dashboard is.

mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use upstream::{DEMO_ACTIONS, DemoConfig, DemoUpstream};

use crate::config::DaemonConfig;
use crate::daemon::{self, DaemonError};

/// The demo's configuration: the seed's resources with durations short
/// enough to watch. `{base_url}`, `{store}` and `{listen}` are filled in.
const DEMO_CONFIG: &str = r#"
[server]
listen = "{listen}"
admin_token_env = "REVALIDATE_ADMIN_TOKEN"

[store]
path = "{store}"
flush_every = "1s"

[upstream]
base_url = "{base_url}"
timeout = "3s"
health_path = "/health"
probe_interval = "2s"

[refresh]
check_interval = "2s"
max_concurrent_refreshes = 4
batch_size = 5
retry_interval = "3s"
max_retries = 3
inactive_after = "45s"
fetch_timeout = "3s"
jitter = 0.1

[staleness]
node = "never"
process = "30s"
rule = "45s"
office = "2m"
workflow = "20s"
notification = "5s"
settings = "10s"
system_health = "always"
workflow_status = "always"

[overrides]
"process.list" = "15s"
"rule.search" = "10s"
"#;

/// The pages of the pretend application, as (action, query string).
const SCREENS: &[(&str, &str)] = &[
    ("node.tree", ""),
    ("process.list", "status=active"),
    ("process.list", "status=active&page=2"),
    ("process.get", "id=PRC-1001"),
    ("rule.search", "q=invoice"),
    ("rule.list", ""),
    ("office.list", ""),
    ("workflow.list", "state=running"),
    ("notification.list", "unread=true"),
    ("settings.get", ""),
    ("system_health", ""),
    ("workflow_status", ""),
];

/// A free loopback port outside the ephemeral range: during an outage the
/// simulated API gives its port back, and an ephemeral one could be taken.
async fn upstream_addr() -> SocketAddr {
    for port in 9000..9100 {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if tokio::net::TcpListener::bind(addr).await.is_ok() {
            return addr;
        }
    }
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A token for the dashboard's invalidate button, different every run.
fn demo_token() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("demo-{:016x}", z ^ (z >> 31))
}

/// Runs the demo until Ctrl-C.
pub(crate) async fn run(listen: SocketAddr, traffic: bool) -> Result<(), DaemonError> {
    let api = DemoUpstream::start(upstream_addr().await, DemoConfig::default())
        .await
        .map_err(|source| DaemonError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let dir = tempfile::tempdir().map_err(DaemonError::Serve)?;
    let store = dir.path().join("demo.redb");
    let mut text = DEMO_CONFIG
        .replace("{base_url}", &api.base_url())
        .replace("{store}", &store.display().to_string())
        .replace("{listen}", &listen.to_string());
    for action in DEMO_ACTIONS {
        text.push_str(&format!("\n[actions.\"{action}\"]\n"));
    }
    let config = DaemonConfig::parse("demo.toml", &text).expect("the demo configuration is valid");
    let token = std::env::var("REVALIDATE_ADMIN_TOKEN").unwrap_or_else(|_| demo_token());

    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_listen = Box::new(move |addr: SocketAddr| {
        let _ = tx.send(addr);
    });
    let daemon = tokio::spawn(daemon::serve(
        config,
        Some(token.clone()),
        daemon::signals(),
        Some(on_listen),
    ));
    let Ok(addr) = rx.await else {
        // The daemon stopped before listening: report why.
        return daemon.await.unwrap_or(Ok(()));
    };
    println!();
    println!("  revalidate demo");
    println!("  ───────────────");
    println!("  dashboard     http://{addr}/");
    println!("  read a query  curl -i 'http://{addr}/v1/resources/process.list?status=active'");
    println!("  change feed   curl -N http://{addr}/v1/events");
    println!("  metrics       http://{addr}/metrics");
    println!("  admin token   {token}   (for the dashboard's invalidate button)");
    println!(
        "  upstream      {} (simulated: changing data, failures, an outage every few minutes)",
        api.base_url()
    );
    println!();
    println!("  Press Ctrl-C to stop.");
    println!();
    if traffic {
        tokio::spawn(simulate_traffic(addr));
    }
    // Say when the simulated API goes down and comes back, so the dashboard's
    // offline period has a visible cause.
    let mut daemon = daemon;
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let mut down = false;
    let result = loop {
        tokio::select! {
            done = &mut daemon => break done.unwrap_or(Ok(())),
            _ = watch.tick() => {
                if api.is_in_outage() != down {
                    down = !down;
                    if down {
                        println!("  ⚡ the simulated API at {} is down (an outage); reads are served from the cache", api.addr());
                    } else {
                        println!("  ⚡ the simulated API is back; stale queries catch up");
                    }
                }
            }
        }
    };
    println!("  the simulated API served {} requests", api.calls());
    api.shutdown().await;
    drop(dir);
    result
}

/// A pretend application: screens read resources every few seconds, so that
/// queries are active and the dashboard has something to show.
async fn simulate_traffic(addr: SocketAddr) {
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    let mut n: usize = 0;
    loop {
        tick.tick().await;
        // Walk the screens at different speeds: some are read on every
        // tick, others now and then, one (rule.search) only at the start.
        for (i, (action, query)) in SCREENS.iter().enumerate() {
            let every = 1 + i % 4;
            if *action == "rule.search" && n > 40 {
                continue;
            }
            if n.is_multiple_of(every) {
                let url = format!("http://{addr}/v1/resources/{action}?{query}");
                let _ = http.get(url).send().await;
            }
        }
        n += 1;
    }
}
