//! Crash safety: a child process writes continuously through a persisted
//! client; this test kills it with SIGKILL at pseudo-random moments, 100
//! times, reopening the store after each kill. Every time the store must
//! open, hold only whole entries, and hold every write that the child had
//! acknowledged as flushed (nothing older than an acknowledged version):
//! only the last flush window may be lost.
//!
//! The child is this same test binary running the ignored test
//! `crash_child`, which refuses to run unless the parent set its store path.

#![cfg(all(unix, feature = "redb"))]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use revalidate::store::Store;
use revalidate::{FetchError, Persistence, QueryClient, QueryKey, RedbStore, fetcher_fn};
use serde_json::{Value, json};

const KEYS: u64 = 16;
const KILLS: u64 = 100;
const STORE_ENV: &str = "REVALIDATE_CRASH_STORE";

fn key(i: u64) -> QueryKey {
    QueryKey::new("process.list", json!({ "slot": i }))
}

/// Reads the store as a restarted process would: every record must decode
/// whole. Returns the highest counter stored per slot.
fn stored_counters(path: &std::path::Path, rt: &tokio::runtime::Runtime) -> Vec<Option<u64>> {
    let store =
        RedbStore::open(path).unwrap_or_else(|e| panic!("the store must open after a kill: {e}"));
    let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
        Err::<Value, _>(FetchError::rejected("offline"))
    }))
    .build();
    let store = Arc::new(store);
    let report = rt
        .block_on(Persistence::new(store.clone()).hydrate(&client))
        .expect("hydrate");
    assert_eq!(report.undecodable, 0, "only whole entries");
    let rows = rt.block_on(store.scan()).unwrap();
    assert_eq!(rows.len(), report.restored);
    (0..KEYS)
        .map(|i| {
            client.get_cached(&key(i)).map(|v| {
                assert_eq!(v["slot"], i, "a whole entry under its own key");
                v["c"].as_u64().expect("a counter")
            })
        })
        .collect()
}

#[test]
fn the_store_survives_sigkill_at_any_moment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut acked_total = 0;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORE_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Every "ACK n" line means: every write with counter ≤ n is flushed.
        let acked = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(0));
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn({
            let (acked, ready) = (acked.clone(), ready.clone());
            move || {
                // libtest prints "test crash_child ... " before the child's
                // first line, so markers are looked for anywhere in a line.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some((_, n)) = line.split_once("ACK ") {
                        acked.fetch_max(n.trim().parse().unwrap(), Ordering::SeqCst);
                    } else if line.contains("READY") {
                        ready.store(1, Ordering::SeqCst);
                    }
                }
            }
        });
        // Wait until it writes, then kill it somewhere in the next 5-80 ms.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(5 + x % 75));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();

        let acked = acked.load(Ordering::SeqCst);
        let stored = stored_counters(&path, &rt);
        // Counter c was written to slot c % KEYS: the last acknowledged write
        // of each slot must be there (or a newer one).
        for slot in 0..KEYS {
            let last_acked = (0..=acked).rev().find(|c| c % KEYS == slot && *c > 0);
            if let Some(want) = last_acked {
                let have = stored[slot as usize];
                assert!(
                    have.is_some_and(|h| h >= want),
                    "round {round}: slot {slot} holds {have:?}, but {want} was acknowledged as flushed"
                );
            }
        }
        acked_total = acked_total.max(acked);
    }
    assert!(acked_total > 1000, "the child made progress: {acked_total}");
    eprintln!(
        "{KILLS} kills in {:?}; {acked_total} writes acknowledged",
        started.elapsed()
    );
}

/// The child: hydrates, then writes forever, flushing and acknowledging.
#[test]
#[ignore = "run by the_store_survives_sigkill_at_any_moment, never alone"]
fn crash_child() {
    let path = std::env::var(STORE_ENV)
        .expect("crash_child is started by the_store_survives_sigkill_at_any_moment");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = RedbStore::open(&path).expect("open");
        let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|_k: QueryKey| async {
            Err::<Value, _>(FetchError::rejected("offline"))
        }))
        .build();
        let (persist, _) = Persistence::new(store)
            .flush_every(Duration::from_millis(20))
            .start(&client)
            .await
            .expect("hydrate");
        // Continue counting from what survived, so counters only grow.
        let mut c = (0..KEYS)
            .filter_map(|i| client.get_cached(&key(i)))
            .filter_map(|v| v["c"].as_u64())
            .max()
            .unwrap_or(0);
        println!("READY");
        loop {
            for _ in 0..50 {
                c += 1;
                client.set_data(&key(c % KEYS), json!({ "slot": c % KEYS, "c": c }));
            }
            persist.flush().await.expect("flush");
            println!("ACK {c}");
        }
    });
}
