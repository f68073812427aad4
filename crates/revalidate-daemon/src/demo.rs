//! `revalidate demo`: the whole system with one command.
//!
//! The simulated business API and the simulated traffic live in the
//! `revalidate-demo` crate; this is the wiring: start the API, configure the
//! daemon for it (a store in a temporary directory), serve, print where the
//! dashboard is, and say when the API goes down and comes back.

use std::net::SocketAddr;
use std::time::Duration;

use revalidate_demo::{DemoConfig, DemoUpstream, config_toml, demo_token, upstream_addr};

use crate::config::DaemonConfig;
use crate::daemon::{self, DaemonError};

/// Runs the demo until Ctrl-C (or SIGTERM).
pub(crate) async fn run(listen: SocketAddr, traffic: bool) -> Result<(), DaemonError> {
    let api = DemoUpstream::start(upstream_addr().await, DemoConfig::default())
        .await
        .map_err(|source| DaemonError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let dir = tempfile::tempdir().map_err(DaemonError::Serve)?;
    let config = config(&api.base_url(), &dir.path().join("demo.redb"), listen);
    let token = std::env::var("REVALIDATE_ADMIN_TOKEN").unwrap_or_else(|_| demo_token());

    let (tx, rx) = tokio::sync::oneshot::channel();
    let on_listen = Box::new(move |addr: SocketAddr| {
        let _ = tx.send(addr);
    });
    let mut daemon = tokio::spawn(daemon::serve(
        config,
        Some(token.clone()),
        daemon::signals(),
        Some(on_listen),
    ));
    let Ok(addr) = rx.await else {
        // The daemon stopped before listening: report why.
        return daemon.await.unwrap_or(Ok(()));
    };
    banner(addr, &token, &api.base_url());
    if traffic {
        tokio::spawn(revalidate_demo::simulate_traffic(addr));
    }
    // Say when the simulated API goes down and comes back, so the dashboard's
    // offline period has a visible cause.
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

/// The daemon's configuration for the simulated API at `base_url`.
fn config(base_url: &str, store: &std::path::Path, listen: SocketAddr) -> DaemonConfig {
    DaemonConfig::parse("demo.toml", &config_toml(base_url, store, listen))
        .expect("the demo configuration is valid")
}

/// Where everything is.
fn banner(addr: SocketAddr, token: &str, upstream: &str) {
    println!();
    println!("  revalidate demo");
    println!("  ───────────────");
    println!("  dashboard     http://{addr}/");
    println!("  read a query  curl -i 'http://{addr}/v1/resources/process.list?status=active'");
    println!("  change feed   curl -N http://{addr}/v1/events");
    println!("  metrics       http://{addr}/metrics");
    println!("  admin token   {token}   (for the dashboard's invalidate button)");
    println!(
        "  upstream      {upstream} (simulated: changing data, failures, an outage every few minutes)"
    );
    println!();
    println!("  Press Ctrl-C to stop.");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_declares_every_action() {
        let listen: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        let config = config(
            "http://127.0.0.1:9000",
            std::path::Path::new("/tmp/demo.redb"),
            listen,
        );
        assert_eq!(config.server.listen, listen);
        assert_eq!(config.upstream.base_url.as_str(), "http://127.0.0.1:9000/");
        let store = config.store.expect("a store");
        assert_eq!(store.path, std::path::Path::new("/tmp/demo.redb"));
        let actions: Vec<&str> = config.actions.keys().map(String::as_str).collect();
        let mut expected = revalidate_demo::DEMO_ACTIONS.to_vec();
        expected.sort_unstable();
        assert_eq!(actions, expected);
        assert_eq!(
            config.server.admin_token_env.as_deref(),
            Some("REVALIDATE_ADMIN_TOKEN")
        );
    }
}
