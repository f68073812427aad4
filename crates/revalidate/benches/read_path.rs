//! The cached read path, side by side with the maps it competes with.
//!
//! Every contender maps the same query-shaped keys (an action plus canonical
//! params) to one distinct `Arc<u64>` per key, hashes with the same
//! pass-through hasher (the key's precomputed hash), and returns an owned
//! `Arc` per hit. Lookups use separately built but equal keys, as a server
//! does when it builds a key from each request, and walk the keys in a
//! shuffled order so that the 100k case pays for memory like real traffic.
//!
//! - `std_hashmap`: a bare `std::collections::HashMap`, read-only — the floor.
//! - `papaya`: the concurrent map revalidate is built on, used raw.
//! - `moka`: `moka::sync::Cache::get`.
//! - `revalidate`: `QueryClient::get_cached` — the full read path: lookup,
//!   reference-count increment, clock read, staleness check, hit counter —
//!   with the coarse clock (`ClockSource::Coarse`, what the daemon uses).
//! - `revalidate_tokio_clock`: the same with the default clock, tokio's
//!   (exact; follows paused test clocks; its read is a serialising
//!   `lfence; rdtsc`).
//!
//! Reported time is per hit, per thread: with two threads each does `iters`
//! hits, and ideal scaling shows the same time as one thread.
//!
//! Run: `cargo bench -p revalidate --bench read_path`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use revalidate::{
    ClockSource, FetchError, KeyHasher, QueryClient, QueryKey, Staleness, fetcher_fn,
};
use serde_json::json;

fn make_key(i: usize) -> QueryKey {
    QueryKey::new(
        "process.list",
        json!({ "office": format!("hq-{}", i % 50), "page": i, "status": "active" }),
    )
}

/// A deterministic shuffle (xorshift), so every contender walks the same order.
fn shuffled(n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

trait Contender: Sync {
    fn get(&self, key: &QueryKey) -> Option<Arc<u64>>;
}

struct StdMap(HashMap<QueryKey, Arc<u64>, KeyHasher>);
impl Contender for StdMap {
    #[inline]
    fn get(&self, key: &QueryKey) -> Option<Arc<u64>> {
        self.0.get(key).cloned()
    }
}

struct Papaya(papaya::HashMap<QueryKey, Arc<u64>, KeyHasher>);
impl Contender for Papaya {
    #[inline]
    fn get(&self, key: &QueryKey) -> Option<Arc<u64>> {
        self.0.pin().get(key).cloned()
    }
}

struct Moka(moka::sync::Cache<QueryKey, Arc<u64>, KeyHasher>);
impl Contender for Moka {
    #[inline]
    fn get(&self, key: &QueryKey) -> Option<Arc<u64>> {
        self.0.get(key)
    }
}

struct Revalidate(QueryClient<u64>);
impl Contender for Revalidate {
    #[inline]
    fn get(&self, key: &QueryKey) -> Option<Arc<u64>> {
        self.0.get_cached(key)
    }
}

fn build(name: &str, keys: &[QueryKey]) -> Box<dyn Contender> {
    let n = keys.len();
    match name {
        "std_hashmap" => {
            let mut m = HashMap::with_capacity_and_hasher(n, KeyHasher);
            for (i, k) in keys.iter().enumerate() {
                m.insert(k.clone(), Arc::new(i as u64));
            }
            Box::new(StdMap(m))
        }
        "papaya" => {
            let m = papaya::HashMap::builder()
                .capacity(n)
                .hasher(KeyHasher)
                .build();
            for (i, k) in keys.iter().enumerate() {
                m.pin().insert(k.clone(), Arc::new(i as u64));
            }
            Box::new(Papaya(m))
        }
        "moka" => {
            let m = moka::sync::Cache::builder()
                .max_capacity(n as u64 * 2)
                .build_with_hasher(KeyHasher);
            for (i, k) in keys.iter().enumerate() {
                m.insert(k.clone(), Arc::new(i as u64));
            }
            m.run_pending_tasks();
            Box::new(Moka(m))
        }
        "revalidate" | "revalidate_tokio_clock" => {
            let source = if name == "revalidate" {
                ClockSource::Coarse
            } else {
                ClockSource::Tokio
            };
            let policy = revalidate::Policy::builder()
                .default_staleness(Staleness::Never)
                .build()
                .unwrap();
            let c = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
                Err::<u64, _>(FetchError::rejected("the bench never fetches"))
            }))
            .policy(policy)
            .clock(source)
            .initial_capacity(n)
            .build();
            for (i, k) in keys.iter().enumerate() {
                c.set_data(k, i as u64);
            }
            Box::new(Revalidate(c))
        }
        _ => unreachable!(),
    }
}

/// Time for `iters` hits on each of `threads` threads, walking `order`.
fn run(
    c: &dyn Contender,
    lookups: &[QueryKey],
    order: &[usize],
    threads: usize,
    iters: u64,
) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Each thread starts at another point of the walk.
                    let mut i = t * order.len() / threads;
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let hit = c.get(&lookups[order[i]]);
                        black_box(hit.expect("every lookup is a hit"));
                        i += 1;
                        if i == order.len() {
                            i = 0;
                        }
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn read_path(crit: &mut Criterion) {
    for n in [1_000usize, 100_000] {
        let keys: Vec<QueryKey> = (0..n).map(make_key).collect();
        let lookups: Vec<QueryKey> = (0..n).map(make_key).collect();
        let order = shuffled(n);
        // Build every contender before measuring any: none then gets memory
        // another one freed, which would scatter its nodes.
        let names = [
            "std_hashmap",
            "papaya",
            "moka",
            "revalidate",
            "revalidate_tokio_clock",
        ];
        let contenders: Vec<(&str, Box<dyn Contender>)> =
            names.iter().map(|n| (*n, build(n, &keys))).collect();
        for threads in [1usize, 2] {
            let mut group = crit.benchmark_group(format!("read_hit/{}keys/{threads}thread", n));
            group.measurement_time(Duration::from_secs(3));
            group.warm_up_time(Duration::from_secs(1));
            for (name, contender) in &contenders {
                group.bench_function(*name, |b| {
                    b.iter_custom(|iters| run(contender.as_ref(), &lookups, &order, threads, iters))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, read_path);
criterion_main!(benches);
