//! A simulated app with the seed's resources, run for one minute of
//! simulated time with the decision log on: components subscribe and read,
//! the source is slow and sometimes fails, the network drops for ten
//! seconds, and a user's write invalidates what it touched.
//!
//! Run: `cargo run -p revalidate --example refresh_demo`
//!
//! Time is tokio's paused clock, so the minute passes in a moment and every
//! run prints the same log; the timestamps are simulated seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use revalidate::{
    BackgroundRefresh, FetchError, FetchRequest, Fetched, Fetcher, Policy, QueryClient,
    QueryFilter, QueryKey, RefreshSettings, Staleness,
};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The seed's resources with durations short enough to watch in a minute.
fn policy() -> Policy {
    Policy::builder()
        .resource("node", Staleness::Never)
        .resource("process", Staleness::secs(20))
        .resource("rule", Staleness::secs(30))
        .resource("office", Staleness::secs(45))
        .resource("notification", Staleness::secs(5))
        .resource("settings", Staleness::secs(10))
        .resource("system_health", Staleness::Always)
        .action("process.list", Staleness::secs(10))
        .build()
        .expect("a valid policy")
}

/// The app's ActionClient: 50–300 ms per call, one call in eight fails,
/// and the data changes as time passes.
struct SimulatedApi {
    calls: AtomicU64,
    started: Instant,
}

impl Fetcher<Value> for SimulatedApi {
    async fn fetch(&self, req: FetchRequest<'_, Value>) -> Result<Fetched<Value>, FetchError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // A cheap deterministic "random" per call.
        let roll = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        sleep(Duration::from_millis(50 + roll % 250)).await;
        if roll.is_multiple_of(8) {
            return Err(FetchError::failed("503 Service Unavailable"));
        }
        let t = self.started.elapsed().as_secs();
        let body = match req.key.action() {
            "node.tree" => json!({ "root": "company", "children": ["sales", "ops"] }),
            "system_health" => json!({ "cpu": 20 + t % 7, "queue": t % 3 }),
            "notification.list" => json!({ "unread": t / 7 }),
            _ => json!({ "rows": t / 15, "params": req.key.params() }),
        };
        Ok(Fetched::new(body).with_bytes(512))
    }
}

/// Prints simulated seconds since start instead of the wall clock.
struct Simulated(Instant);

impl FormatTime for Simulated {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "[{:>5.1}s]", self.0.elapsed().as_secs_f64())
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter("revalidate=debug")
        .with_timer(Simulated(Instant::now()))
        .with_target(false)
        .with_level(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let api = SimulatedApi {
        calls: AtomicU64::new(0),
        started: Instant::now(),
    };
    let mut settings = RefreshSettings::default();
    settings.check_interval = Duration::from_secs(2);
    settings.retry_interval = Duration::from_secs(3);
    settings.inactive_after = Duration::from_secs(20);
    settings.fetch_timeout = Duration::from_secs(2);
    let client: QueryClient<Value> = QueryClient::builder(api)
        .policy(policy())
        .settings(settings)
        .expect("valid settings")
        .build();
    let refresh = BackgroundRefresh::new(&client)
        .expect("the only service of this client")
        .start();

    // The app loads its first screen: every read is a miss, fetched once.
    let screen = [
        QueryKey::bare("node.tree"),
        QueryKey::new("process.list", json!({ "status": "active" })),
        QueryKey::new("rule.search", json!({ "q": "invoice" })),
        QueryKey::bare("system_health"),
    ];
    for key in &screen {
        let _ = client.get(key).await;
    }
    // A header component watches notifications for the whole minute.
    let notifications = QueryKey::bare("notification.list");
    let mut badge = client.subscribe(&notifications);
    let watcher = tokio::spawn(async move {
        while let Some(v) = badge.next().await {
            tracing::info!(target: "revalidate", "🔔 badge shows {} unread", v["unread"]);
        }
    });

    for second in 1..=60u64 {
        sleep(Duration::from_secs(1)).await;
        // The user keeps looking at the process list and the health panel;
        // the rule search is read once and then left alone.
        client.get_cached(&screen[1]);
        client.get_cached(&screen[3]);
        match second {
            20 => client.network().set_online(false),
            30 => client.network().set_online(true),
            45 => {
                // The user saves settings: an optimistic write, then the
                // lists it affects go stale.
                let settings_key = QueryKey::bare("settings.get");
                client.set_data(&settings_key, json!({ "theme": "dark" }));
                client.invalidate(QueryFilter::Resource("process".into()));
            }
            _ => {}
        }
    }

    let stats = refresh.stats();
    refresh.shutdown().await;
    watcher.abort();
    println!();
    println!("after one simulated minute:");
    println!(
        "  refreshes: {} total, {} successful, {} failed, {} retries, {} skipped while offline",
        stats.total_refreshes,
        stats.successful_refreshes,
        stats.failed_refreshes,
        stats.retries,
        stats.skipped_offline
    );
    println!(
        "  average refresh time: {:.0?}; cache: {} fresh hits, {} stale hits, {} misses; {} queries ({} active)",
        stats.average_refresh_time,
        stats.cache.fresh_hits,
        stats.cache.stale_hits,
        stats.cache.misses,
        stats.cached_queries,
        stats.active_queries
    );
    for (resource, r) in &stats.resources {
        println!(
            "  {resource:>15}: {} refreshes, {} failed",
            r.total_refreshes, r.failed_refreshes
        );
    }
}
