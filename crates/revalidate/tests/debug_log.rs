//! The decision log, in the seed's style. In its own test binary: `tracing`
//! caches callsite interest process-wide, so tests running in parallel without
//! a subscriber would hide events from this one's thread-local subscriber.

mod support;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use revalidate::{BackgroundRefresh, FetchError, Policy, QueryClient, RefreshSettings, Staleness};
use serde_json::Value;
use support::{Fake, Step, key};
use tokio::time::sleep;

/// Collects formatted `tracing` output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_debug_log_shows_each_decision_in_the_seeds_style() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("revalidate=debug")
        .with_writer(move || writer.clone())
        .without_time()
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = Fake::new().latency(Duration::from_millis(234));
    let policy = Policy::builder()
        .resource("process", Staleness::mins(5))
        .build()
        .unwrap();
    let mut s = RefreshSettings::default();
    s.jitter = 0.0;
    s.inactive_after = Duration::from_secs(86_400);
    let c: QueryClient<Value> = QueryClient::builder(fake.clone())
        .policy(policy)
        .settings(s)
        .unwrap()
        .build();
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    sleep(Duration::from_secs(361)).await;
    fake.script(&k, [Step::Err(FetchError::failed("502 Bad Gateway"))]);
    c.invalidate(&k);
    sleep(Duration::from_secs(31)).await;
    c.network().set_online(false);
    sleep(Duration::from_secs(400)).await;
    c.network().set_online(true);
    sleep(Duration::from_secs(31)).await;
    refresh.shutdown().await;

    let log = String::from_utf8(out.0.lock().clone()).unwrap();
    for line in [
        "🔍 checking staleness for 1 queries (1 cached)",
        "⏰ process.list is stale (age: 5m, limit: 5m)",
        "⏰ process.list is invalidated (age: 1m, limit: 5m)",
        "🔄 refreshing process.list",
        "✅ refreshed process.list in 234ms",
        "❌ process.list failed: failed: 502 Bad Gateway; retry 1/3 in 1m",
        "📴 offline: pausing refreshes",
        "📴 offline: 1 due queries wait for the network",
        "📶 online: 1 stale queries to refresh",
        "🛑 background refresh stopped",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert_eq!(
        log.matches("wait for the network").count(),
        1,
        "counted once:\n{log}"
    );
}
