//! Persistence costs, on disk (redb, in a temporary directory).
//!
//! - hydrate: restoring 100k entries of about 1 KB each (JSON values)
//!   into a new client.
//! - write-behind: entries persisted per second while an application
//!   writes 100k distinct 1 KB values as fast as it can, with the default
//!   flush window of 1 s (each window is one transaction).
//!
//! Figures are medians of `RUNS` runs. The read path with a store attached
//! is measured by the `read_path` bench (`revalidate_persisted`).
//!
//! Run: `cargo bench -p revalidate --bench persist`

use std::sync::Arc;
use std::time::Instant;

use revalidate::{FetchError, Persistence, QueryClient, QueryKey, RedbStore, fetcher_fn};
use serde_json::{Value, json};

const N: usize = 100_000;
const RUNS: usize = 5;

fn key(i: usize) -> QueryKey {
    QueryKey::new("process.list", json!({ "page": i }))
}

/// About 1 KB of JSON, distinct per entry.
fn value(i: usize, round: usize) -> Value {
    json!({
        "id": i,
        "round": round,
        "rows": (0..14).map(|r| json!({ "name": format!("process {i}-{r}"), "status": "active", "owner": "ops@example.com" })).collect::<Vec<_>>(),
    })
}

fn client() -> QueryClient<Value> {
    QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
        Err::<Value, _>(FetchError::rejected("not in this bench"))
    }))
    .initial_capacity(N)
    .build()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = serde_json::to_vec(&value(12_345, 0)).unwrap().len();
    println!("persistence on redb, {N} entries of {size} bytes, median of {RUNS} runs");
    println!("| measure | result | target |");
    println!("|---|---|---|");

    // Write-behind: persisted entries per second while writing flat out.
    let mut rates = Vec::new();
    for run in 0..RUNS {
        let path = dir.path().join(format!("write-{run}.redb"));
        let rate = rt.block_on(async {
            let c = client();
            let (persist, _) = Persistence::new(RedbStore::open(&path).unwrap())
                .start(&c)
                .await
                .unwrap();
            let start = Instant::now();
            for i in 0..N {
                c.set_data(&key(i), value(i, run));
                if i % 1024 == 0 {
                    // Let the flusher run, as an application's other work would.
                    tokio::task::yield_now().await;
                }
            }
            persist.shutdown().await.unwrap();
            N as f64 / start.elapsed().as_secs_f64()
        });
        rates.push(rate);
    }
    println!(
        "| write-behind throughput | {:.0} entries/s | ≥ 20000 |",
        median(rates)
    );

    // Hydrate: restore everything into a fresh client.
    let path = dir.path().join("write-0.redb");
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let secs = rt.block_on(async {
            let c = client();
            let store = Arc::new(RedbStore::open(&path).unwrap());
            let start = Instant::now();
            let report = Persistence::new(store).hydrate(&c).await.unwrap();
            let took = start.elapsed();
            assert_eq!(report.restored, N);
            took.as_secs_f64()
        });
        times.push(secs);
    }
    println!(
        "| hydrate {N} entries | {:.0} ms | ≤ 1000 ms |",
        median(times) * 1000.0
    );
}
