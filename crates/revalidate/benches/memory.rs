//! Memory per cached entry beyond the payload, at 1M entries.
//!
//! A counting global allocator records the bytes requested from the system
//! allocator while 1M entries are inserted. The keys are built before
//! counting starts and the map stores clones of them (a reference-count
//! increment), so their text (the canonical parameters, which the
//! application chose) is not counted; the key's inline part is. The payload
//! is a 64-byte value per entry; everything else counted is overhead: map
//! slots and nodes, the shared pointer's header, entry state, deadline
//! queues. The resident set growth (`/proc/self/statm`) is reported too: it
//! also holds the allocator's own per-allocation overhead.
//!
//! Run: `cargo bench -p revalidate --bench memory`

#![allow(unsafe_code)] // A GlobalAlloc implementation is unsafe by definition.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use revalidate::refresh_bench::Checker;
use revalidate::{FetchError, KeyHasher, Policy, QueryClient, QueryKey, Staleness, fetcher_fn};
use serde_json::json;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const N: usize = 1_000_000;

/// The payload: 64 bytes, distinct per entry.
type Payload = [u64; 8];

fn payload(i: usize) -> Payload {
    [i as u64; 8]
}

fn rss_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct Measure {
    name: &'static str,
    bytes: isize,
    rss: isize,
}

fn measure<T>(name: &'static str, build: impl FnOnce() -> T) -> (Measure, T) {
    let (before, rss_before) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let built = build();
    let (after, rss_after) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let m = Measure {
        name,
        bytes: after - before,
        rss: rss_after - rss_before,
    };
    (m, built)
}

const STRUCTURES: [&str; 4] = ["std", "moka", "revalidate", "revalidate+service"];

/// Builds one structure in this process and prints its table row. Each runs
/// in a process of its own so that the resident set is not reused memory.
fn one(name: &str) {
    let keys: Vec<QueryKey> = (0..N)
        .map(|i| {
            QueryKey::new(
                "process.list",
                json!({ "office": format!("hq-{}", i % 50), "page": i, "status": "active" }),
            )
        })
        .collect();
    let policy = Policy::builder()
        .default_staleness(Staleness::mins(5))
        .build()
        .unwrap();
    let fetcher = || {
        fetcher_fn(|_k: QueryKey| async {
            Err::<Payload, _>(FetchError::rejected("not in this bench"))
        })
    };
    let (m, keep): (Measure, Box<dyn std::any::Any>) = match name {
        "std" => {
            let (m, map) = measure("std HashMap<QueryKey, Arc<V>> (floor)", || {
                let mut m = HashMap::with_hasher(KeyHasher);
                for (i, k) in keys.iter().enumerate() {
                    m.insert(k.clone(), Arc::new(payload(i)));
                }
                m
            });
            (m, Box::new(map))
        }
        "moka" => {
            let (m, cache) = measure("moka::sync::Cache", || {
                let c = moka::sync::Cache::builder()
                    .max_capacity(N as u64 * 2)
                    .build_with_hasher(KeyHasher);
                for (i, k) in keys.iter().enumerate() {
                    c.insert(k.clone(), Arc::new(payload(i)));
                }
                c.run_pending_tasks();
                c
            });
            (m, Box::new(cache))
        }
        "revalidate" | "revalidate+service" => {
            let service = name.ends_with("service");
            let label = if service {
                "revalidate QueryClient with a refresh service attached"
            } else {
                "revalidate QueryClient"
            };
            let (m, kept) = measure(label, || {
                let c = QueryClient::builder(fetcher())
                    .policy(policy.clone())
                    .build();
                for (i, k) in keys.iter().enumerate() {
                    c.set_data(k, payload(i));
                }
                let checker = service.then(|| Checker::new(&c).unwrap());
                (c, checker)
            });
            (m, Box::new(kept))
        }
        other => panic!("unknown structure {other}"),
    };
    let per = m.bytes as f64 / N as f64;
    let overhead = per - std::mem::size_of::<Payload>() as f64;
    println!(
        "| {} | {per:.0} | {overhead:.0} | {:.0} |",
        m.name,
        m.rss as f64 / N as f64
    );
    drop(keep);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        one(&args[i + 1]);
        return;
    }
    // `cargo bench` passes `--bench`; every other flag is ignored: this is a
    // one-shot measurement.
    let key = QueryKey::new(
        "process.list",
        json!({ "office": "hq-7", "page": 123456, "status": "active" }),
    );
    println!(
        "memory per entry at {N} entries; payload {} bytes; key text like {key} ({} bytes, shared with the application, not counted)",
        std::mem::size_of::<Payload>(),
        key.to_string().len()
    );
    println!(
        "| structure | bytes requested per entry | overhead beyond payload | resident set growth per entry |"
    );
    println!("|---|---|---|---|");
    let exe = std::env::current_exe().expect("the bench binary");
    for name in STRUCTURES {
        let out = std::process::Command::new(&exe)
            .args(["--one", name])
            .output()
            .expect("run one structure");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
