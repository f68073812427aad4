//! The refresh service's costs, side by side with baselines.
//!
//! - `check_tick/{n}`: one staleness check with nothing due, with `n`
//!   queries registered, against `seed_scan/{n}`: the seed's design, which
//!   looks at every query's age at every check (here as a tight scan over a
//!   concurrent map of `(updated_at, limit)` pairs, its best case).
//! - pipeline, no-op: refreshes per second through the whole pipeline
//!   (check, lease, permit, fetch, store, reschedule) with a fetcher that
//!   answers at once, for 100k due queries.
//! - pipeline, latency: achieved refreshes per second with a fetcher that
//!   sleeps L and a limit C, against the ideal C / L. tokio's timer has a
//!   1 ms granularity, so a sleep of L lasts a little longer; the ideal is
//!   also given for the latency the fetcher actually observed.
//!
//! The pipeline figures are medians of `PIPELINE_RUNS` runs.
//!
//! Run: `cargo bench -p revalidate --bench refresh`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use revalidate::refresh_bench::Checker;
use revalidate::{
    BackgroundRefresh, ClockSource, FetchError, FetchRequest, Fetched, Fetcher, KeyHasher, Policy,
    QueryClient, QueryFilter, QueryKey, RefreshSettings, Staleness,
};
use serde_json::json;

fn key(i: usize) -> QueryKey {
    QueryKey::new("process.list", json!({ "page": i }))
}

fn no_fetch() -> impl Fetcher<u64> {
    revalidate::fetcher_fn(|_k: QueryKey| async {
        Err::<u64, _>(FetchError::rejected("not in this bench"))
    })
}

fn check_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_tick");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for n in [10_000usize, 100_000, 1_000_000] {
        let policy = Policy::builder()
            .default_staleness(Staleness::mins(5))
            .build()
            .unwrap();
        let client = QueryClient::builder(no_fetch())
            .policy(policy)
            .clock(ClockSource::Coarse)
            .initial_capacity(n)
            .build();
        for i in 0..n {
            client.set_data(&key(i), i as u64);
        }
        let mut checker = Checker::new(&client).unwrap();
        assert_eq!(checker.check(), 0, "nothing is due");
        assert_eq!(checker.scheduled(), n, "every query has its deadline");
        group.bench_with_input(BenchmarkId::new("revalidate", n), &n, |b, _| {
            b.iter(|| black_box(checker.check()))
        });

        // The seed's design: look at every query's age at every check.
        let ages: papaya::HashMap<QueryKey, (i64, i64), KeyHasher> = papaya::HashMap::builder()
            .capacity(n)
            .hasher(KeyHasher)
            .build();
        let origin = Instant::now();
        for i in 0..n {
            ages.pin().insert(key(i), (0, 300_000_000_000));
        }
        group.bench_with_input(BenchmarkId::new("seed_scan", n), &n, |b, _| {
            b.iter(|| {
                let now = origin.elapsed().as_nanos() as i64;
                let stale = ages
                    .pin()
                    .iter()
                    .filter(|(_, (updated, limit))| now - updated >= *limit)
                    .count();
                black_box(stale)
            })
        });
        drop(checker);
    }
    group.finish();
}

/// A fetcher that counts completed calls and their time, and answers a new
/// value after `latency`.
#[derive(Clone)]
struct Counting {
    done: Arc<AtomicUsize>,
    nanos: Arc<AtomicUsize>,
    latency: Duration,
}

impl Fetcher<u64> for Counting {
    async fn fetch(&self, _req: FetchRequest<'_, u64>) -> Result<Fetched<u64>, FetchError> {
        let start = Instant::now();
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as usize, Ordering::Relaxed);
        let n = self.done.fetch_add(1, Ordering::Relaxed);
        Ok(Fetched::new(n as u64))
    }
}

/// The service refreshing `n` due queries with the given fetcher latency and
/// limit: the time until the last fetch completed, and the mean time a fetch
/// took.
fn refresh_all(
    rt: &tokio::runtime::Runtime,
    n: usize,
    latency: Duration,
    limit: usize,
) -> (Duration, Duration) {
    rt.block_on(async {
        let done = Arc::new(AtomicUsize::new(0));
        let nanos = Arc::new(AtomicUsize::new(0));
        let fetcher = Counting {
            done: done.clone(),
            nanos: nanos.clone(),
            latency,
        };
        let policy = Policy::builder()
            .default_staleness(Staleness::mins(60))
            .build()
            .unwrap();
        let mut settings = RefreshSettings::default();
        settings.max_concurrent_refreshes = limit;
        settings.check_interval = Duration::from_millis(100);
        let client = QueryClient::builder(fetcher)
            .policy(policy)
            .settings(settings)
            .unwrap()
            .clock(ClockSource::Coarse)
            .initial_capacity(n)
            .build();
        for i in 0..n {
            client.set_data(&key(i), 0);
        }
        client.invalidate(QueryFilter::All);
        // Everything set just now is active (read within inactive_after).
        let refresh = BackgroundRefresh::new(&client).unwrap();
        let start = Instant::now();
        let handle = refresh.start();
        while done.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let took = start.elapsed();
        handle.shutdown().await;
        (
            took,
            Duration::from_nanos((nanos.load(Ordering::Relaxed) / n) as u64),
        )
    })
}

const PIPELINE_RUNS: usize = 5;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn pipeline() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("\npipeline, median of {PIPELINE_RUNS} runs");
    println!(
        "| case | refreshes | time | refreshes/s | ideal C/L (nominal L) | ideal C/L (observed L) | achieved / ideal (observed) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let cases: [(&str, usize, Duration, usize); 3] = [
        ("no-op fetcher, limit 3", 100_000, Duration::ZERO, 3),
        ("L = 10 ms, C = 16", 1_600, Duration::from_millis(10), 16),
        ("L = 50 ms, C = 8", 400, Duration::from_millis(50), 8),
    ];
    for (name, n, latency, limit) in cases {
        let runs: Vec<(Duration, Duration)> = (0..PIPELINE_RUNS)
            .map(|_| refresh_all(&rt, n, latency, limit))
            .collect();
        let secs = median(runs.iter().map(|r| r.0.as_secs_f64()).collect());
        let observed = median(runs.iter().map(|r| r.1.as_secs_f64()).collect());
        let rate = n as f64 / secs;
        if latency.is_zero() {
            println!(
                "| {name} | {n} | {:.0} ms | {rate:.0} | – | – | – |",
                secs * 1000.0
            );
        } else {
            let nominal = limit as f64 / latency.as_secs_f64();
            let ideal = limit as f64 / observed;
            println!(
                "| {name} | {n} | {:.0} ms | {rate:.0} | {nominal:.0} ({:.1} %) | {ideal:.0} (L = {:.2} ms) | {:.1} % |",
                secs * 1000.0,
                100.0 * rate / nominal,
                observed * 1000.0,
                100.0 * rate / ideal
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    check_tick(&mut c);
    c.final_summary();
    pipeline();
}
