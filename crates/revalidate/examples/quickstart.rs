//! The quick start: a cache-first client with a background refresh service,
//! against a pretend API, in real time (about three seconds).
//!
//! Run: `cargo run -p revalidate --example quickstart`

use std::time::Duration;

use revalidate::{
    BackgroundRefresh, FetchError, Policy, QueryClient, QueryKey, RefreshSettings, Staleness,
    fetcher_fn,
};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Staleness rules per resource, overrides per action.
    let policy = Policy::builder()
        .resource("node", Staleness::Never)
        .resource("process", Staleness::secs(1))
        .action("process.list", Staleness::millis(500))
        .build()?;

    // 2. The fetcher: your API client (the seed's ActionClient).
    let started = std::time::Instant::now();
    let api = fetcher_fn(move |key: QueryKey| async move {
        tokio::time::sleep(Duration::from_millis(50)).await; // the network
        Ok::<_, FetchError>(
            json!({ "action": key.action(), "at_ms": started.elapsed().as_millis() }),
        )
    });
    // 3. The settings (the seed's REFRESH_SETTINGS), and the client.
    let mut settings = RefreshSettings::default();
    settings.check_interval = Duration::from_millis(250);
    let client: QueryClient<Value> = QueryClient::builder(api)
        .policy(policy)
        .settings(settings)?
        .build();

    // 4. The background refresh service keeps what is read fresh.
    let refresh = BackgroundRefresh::new(&client)?.start();

    // 5. Reads: the first is a miss (one fetch); then the cache answers at once.
    let key = QueryKey::new("process.list", json!({ "status": "active" }));
    for _ in 0..6 {
        let hit = client.get_with_meta(&key).await?;
        println!(
            "{key} -> {} ({:?}, age {:.0?})",
            hit.value, hit.freshness, hit.age
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let stats = refresh.stats();
    println!(
        "{} refreshes ({} ok), {} reads from cache, {} miss",
        stats.total_refreshes,
        stats.successful_refreshes,
        stats.cache.fresh_hits + stats.cache.stale_hits,
        stats.cache.misses
    );
    refresh.shutdown().await;
    Ok(())
}
