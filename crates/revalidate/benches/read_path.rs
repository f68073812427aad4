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
//! - `revalidate_persisted`: `revalidate` with persistence attached (a redb
//!   store and its write-behind task): the read path should not notice.
//!
//! Each (contender, size, threads) runs in a process of its own, built
//! fresh (no contender inherits memory another freed), `RUNS` times, the
//! contenders taking turns; each run reports the median of `ROUNDS` timed
//! walks. The table gives the median over runs, in nanoseconds per hit per
//! thread (two threads each do the full walk: ideal scaling shows the same
//! time as one thread).
//!
//! Run: `cargo bench -p revalidate --bench read_path`

use std::collections::HashMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use revalidate::{
    ClockSource, FetchError, KeyHasher, QueryClient, QueryKey, Staleness, fetcher_fn,
};
use serde_json::json;

const CONTENDERS: [&str; 6] = [
    "std_hashmap",
    "papaya",
    "moka",
    "revalidate",
    "revalidate_tokio_clock",
    "revalidate_persisted",
];
const RUNS: usize = 5;
const ROUNDS: usize = 5;
const HITS_PER_ROUND: usize = 1_000_000;

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
        "revalidate" | "revalidate_tokio_clock" | "revalidate_persisted" => {
            let source = if name == "revalidate_tokio_clock" {
                ClockSource::Tokio
            } else {
                ClockSource::Coarse
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
            if name == "revalidate_persisted" {
                // The write-behind task runs on a runtime of its own for the
                // life of the process.
                let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()
                        .unwrap(),
                ));
                let dir: &'static tempfile::TempDir =
                    Box::leak(Box::new(tempfile::tempdir().unwrap()));
                let store = revalidate::RedbStore::open(dir.path().join("bench.redb")).unwrap();
                rt.block_on(revalidate::Persistence::new(store).start(&c))
                    .unwrap();
            }
            for (i, k) in keys.iter().enumerate() {
                c.set_data(k, i as u64);
            }
            Box::new(Revalidate(c))
        }
        other => panic!("unknown contender {other}"),
    }
}

/// Nanoseconds per hit per thread for one walk of `hits` lookups on each thread.
fn walk(
    c: &dyn Contender,
    lookups: &[QueryKey],
    order: &[usize],
    threads: usize,
    hits: usize,
) -> f64 {
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
                    for _ in 0..hits {
                        let hit = c.get(&lookups[order[i]]);
                        black_box(hit.expect("every lookup is a hit"));
                        i += 1;
                        if i == order.len() {
                            i = 0;
                        }
                    }
                    start.elapsed().as_nanos() as f64 / hits as f64
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold(0.0, f64::max)
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Measures one configuration in this process; prints ns per hit.
fn one(name: &str, n: usize, threads: usize) {
    let keys: Vec<QueryKey> = (0..n).map(make_key).collect();
    let lookups: Vec<QueryKey> = (0..n).map(make_key).collect();
    let order = shuffled(n);
    let contender = build(name, &keys);
    walk(
        contender.as_ref(),
        &lookups,
        &order,
        threads,
        HITS_PER_ROUND / 4,
    );
    let rounds = (0..ROUNDS)
        .map(|_| {
            walk(
                contender.as_ref(),
                &lookups,
                &order,
                threads,
                HITS_PER_ROUND,
            )
        })
        .collect();
    println!("{:.1}", median(rounds));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        one(
            &args[i + 1],
            args[i + 2].parse().unwrap(),
            args[i + 3].parse().unwrap(),
        );
        return;
    }
    // `cargo bench` passes `--bench`; a further argument filters contenders.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
    let exe = std::env::current_exe().expect("the bench binary");
    let contenders: Vec<&str> = CONTENDERS
        .iter()
        .copied()
        .filter(|c| filter.as_deref().is_none_or(|f| c.contains(f)))
        .collect();
    println!(
        "cached read, ns per hit per thread, median of {RUNS} processes × median of {ROUNDS} walks of {HITS_PER_ROUND} hits"
    );
    print!("| keys | threads |");
    for c in &contenders {
        print!(" {c} |");
    }
    println!(" revalidate / std_hashmap | revalidate / moka | persisted / revalidate |");
    println!("|---|---|{}---|---|---|", "---|".repeat(contenders.len()));
    for n in [1_000usize, 100_000] {
        for threads in [1usize, 2] {
            // Contenders take turns, run after run, so that the machine's
            // changing load falls on all of them alike.
            let mut runs: HashMap<&str, Vec<f64>> = HashMap::new();
            for _ in 0..RUNS {
                for c in &contenders {
                    let out = Command::new(&exe)
                        .args(["--one", c, &n.to_string(), &threads.to_string()])
                        .output()
                        .expect("run one configuration");
                    let ns = String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse()
                        .unwrap_or(f64::NAN);
                    runs.entry(*c).or_default().push(ns);
                }
            }
            let results: HashMap<&str, f64> =
                runs.into_iter().map(|(c, r)| (c, median(r))).collect();
            print!("| {n} | {threads} |");
            for c in &contenders {
                print!(" {:.1} |", results[c]);
            }
            let ratio = |a: &str, b: &str| match (results.get(a), results.get(b)) {
                (Some(a), Some(b)) => format!("{:.2}×", a / b),
                _ => "–".to_owned(),
            };
            println!(
                " {} | {} | {} |",
                ratio("revalidate", "std_hashmap"),
                ratio("revalidate", "moka"),
                ratio("revalidate_persisted", "revalidate")
            );
        }
    }
}
