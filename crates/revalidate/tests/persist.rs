//! Persistence: restarts restore values, ages, errors and versions; the
//! write-behind batches; max_age, buster and undecodable entries; removal.

mod support;

use std::sync::Arc;
use std::time::Duration;

use revalidate::store::{Batch, Codec, CodecError, Store, StoreError, StoreErrorKind};
use revalidate::{
    BackgroundRefresh, FetchError, MemoryStore, Persistence, Policy, QueryClient, QueryKey,
    RedbStore, RefreshSettings, Staleness,
};
use serde_json::{Value, json};
use support::{Fake, Step, key};
use tokio::time::{advance, sleep};

fn policy() -> Policy {
    Policy::builder()
        .resource("process", Staleness::mins(5))
        .resource("notification", Staleness::secs(30))
        .build()
        .unwrap()
}

fn client(fake: &Fake) -> QueryClient<Value> {
    QueryClient::builder(fake.clone()).policy(policy()).build()
}

#[tokio::test(start_paused = true)]
async fn a_restart_restores_values_ages_errors_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let fake = Fake::new();
    let a = key("process.list", json!({ "status": "active" }));
    let b = key("notification.list", Value::Null);
    {
        let c = client(&fake);
        let (persist, report) = Persistence::new(RedbStore::open(&path).unwrap())
            .start(&c)
            .await
            .unwrap();
        assert_eq!(report.restored, 0);
        c.get(&a).await.unwrap();
        c.set_data(&a, json!({ "rows": ["v2"] }));
        c.get(&b).await.unwrap();
        advance(Duration::from_secs(40)).await;
        fake.script(&b, [Step::Err(FetchError::failed("502 Bad Gateway"))]);
        assert!(c.refetch(&b).await.is_err());
        persist.shutdown().await.unwrap();
    }
    advance(Duration::from_secs(60)).await;

    let fake2 = Fake::new();
    let c = client(&fake2);
    let (_persist, report) = Persistence::new(RedbStore::open(&path).unwrap())
        .start(&c)
        .await
        .unwrap();
    assert_eq!(report.restored, 2);
    let sa = c.state(&a).unwrap();
    assert_eq!(*sa.data.unwrap(), json!({ "rows": ["v2"] }));
    assert_eq!(sa.version, 2);
    // Ages come from the stored wall-clock time: 40 s + 10 ms of the failed fetch + 60 s.
    let age = sa.age.unwrap();
    assert!(
        (Duration::from_secs(100)..Duration::from_millis(100_100)).contains(&age),
        "{age:?}"
    );
    let sb = c.state(&b).unwrap();
    assert_eq!(sb.error_count, 1);
    assert_eq!(sb.last_error.unwrap().message(), "502 Bad Gateway");
    assert!(sb.is_stale, "30 s limit, 110 s old");
    // A read after the restart is served from the store, not the fetcher.
    c.get(&a).await.unwrap();
    c.get(&b).await.unwrap();
    assert_eq!(fake2.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn reads_after_a_restart_work_offline() {
    let store = Arc::new(MemoryStore::new());
    let k = key("process.list", Value::Null);
    {
        let fake = Fake::new();
        let c = client(&fake);
        let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
        c.get(&k).await.unwrap();
        persist.shutdown().await.unwrap();
    }
    let fake = Fake::new();
    let c = client(&fake);
    c.network().set_online(false);
    Persistence::new(store.clone()).hydrate(&c).await.unwrap();
    assert_eq!(c.get(&k).await.unwrap()["n"], 1);
    assert!(
        c.get(&key("process.other", Value::Null))
            .await
            .unwrap_err()
            .is_offline()
    );
    assert_eq!(fake.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_stale_queries_refresh_oldest_first_and_fresh_ones_do_not() {
    let store = Arc::new(MemoryStore::new());
    let old = key("notification.list", json!({ "p": "old" }));
    let older = key("notification.list", json!({ "p": "older" }));
    let fresh = key("process.list", Value::Null);
    {
        let fake = Fake::new();
        let c = client(&fake);
        let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
        c.get(&older).await.unwrap();
        advance(Duration::from_secs(20)).await;
        c.get(&old).await.unwrap();
        c.get(&fresh).await.unwrap();
        persist.shutdown().await.unwrap();
    }
    advance(Duration::from_secs(60)).await;
    let fake = Fake::new();
    let mut settings = RefreshSettings::default();
    settings.jitter = 0.0;
    let c = QueryClient::builder(fake.clone())
        .policy(policy())
        .settings(settings)
        .unwrap()
        .build();
    Persistence::new(store.clone()).hydrate(&c).await.unwrap();
    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fake.call_keys(),
        vec![older.clone(), old.clone()],
        "stale ones first, the oldest first"
    );
    assert_eq!(
        fake.calls_for(&fresh),
        0,
        "fresh (5 min limit, 60 s old): not refetched"
    );
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn many_updates_in_one_flush_window_are_one_transaction() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone())
        .flush_every(Duration::from_secs(1))
        .start(&c)
        .await
        .unwrap();
    sleep(Duration::from_millis(1500)).await;
    let before = store.batches();
    for i in 0..500 {
        c.set_data(
            &key("process.list", json!({ "i": i % 50 })),
            json!({ "v": i }),
        );
    }
    assert_eq!(store.batches(), before, "nothing written on the write path");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.batches(),
        before + 1,
        "one transaction for the window"
    );
    assert_eq!(store.len(), 50);
    let stats = persist.stats();
    assert_eq!((stats.written, stats.pending), (50, 0));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        store.batches(),
        before + 1,
        "nothing dirty: nothing written"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_what_is_pending() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone())
        .flush_every(Duration::from_secs(3600))
        .start(&c)
        .await
        .unwrap();
    c.set_data(&key("process.list", Value::Null), json!(1));
    c.set_data(&key("process.get", Value::Null), json!(2));
    assert!(store.is_empty());
    assert_eq!(persist.stats().pending, 2);
    persist.shutdown().await.unwrap();
    assert_eq!(store.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_age_drops_old_entries_and_a_new_buster_drops_everything() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    {
        let c = client(&fake);
        let (persist, _) = Persistence::new(store.clone())
            .buster("v1")
            .start(&c)
            .await
            .unwrap();
        c.set_data(&key("process.list", json!({ "age": "old" })), json!(1));
        persist.flush().await.unwrap();
        advance(Duration::from_secs(23 * 3600)).await;
        c.set_data(&key("process.list", json!({ "age": "recent" })), json!(2));
        persist.shutdown().await.unwrap();
    }
    advance(Duration::from_secs(2 * 3600)).await;
    let c = client(&fake);
    let report = Persistence::new(store.clone())
        .buster("v1")
        .hydrate(&c)
        .await
        .unwrap();
    assert_eq!(
        (report.restored, report.expired),
        (1, 1),
        "older than 24 h: dropped"
    );
    assert!(
        c.state(&key("process.list", json!({ "age": "recent" })))
            .is_some()
    );
    assert_eq!(store.len(), 1, "expired entries are pruned from the store");

    let c = client(&fake);
    let report = Persistence::new(store.clone())
        .buster("v2")
        .hydrate(&c)
        .await
        .unwrap();
    assert!(report.busted);
    assert_eq!(report.restored, 0);
    assert!(store.is_empty());
    let report = Persistence::new(store.clone())
        .buster("v2")
        .hydrate(&c)
        .await
        .unwrap();
    assert!(!report.busted, "the new buster is remembered");
}

/// Decodes only objects: anything else "was written by an older version".
struct ObjectsOnly;

impl Codec<Value> for ObjectsOnly {
    fn encode(&self, _key: &QueryKey, value: &Value) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::from_source)
    }
    fn decode(&self, _key: &QueryKey, bytes: &[u8]) -> Result<Value, CodecError> {
        let v: Value = serde_json::from_slice(bytes).map_err(CodecError::from_source)?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(CodecError::new("not an object"))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn undecodable_entries_are_dropped_counted_and_never_crash() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    {
        let c = client(&fake);
        let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
        c.set_data(
            &key("process.list", json!({ "ok": 1 })),
            json!({ "rows": [] }),
        );
        c.set_data(&key("process.list", json!({ "ok": 2 })), json!([1, 2, 3]));
        persist.shutdown().await.unwrap();
    }
    // Garbage from elsewhere: a record that is not one, a key that is not one.
    let mut garbage = Batch::default();
    garbage
        .puts
        .push((b"process.list\0{\"x\":1}".to_vec(), b"\x07garbage".to_vec()));
    garbage.puts.push((vec![0xff, 0xfe], b"\x01".to_vec()));
    store.apply(garbage).await.unwrap();

    let c = client(&fake);
    let report = Persistence::new(store.clone())
        .codec(ObjectsOnly)
        .hydrate(&c)
        .await
        .unwrap();
    assert_eq!(report.restored, 1);
    assert_eq!(report.undecodable, 3);
    assert_eq!(store.len(), 1, "undecodable entries are pruned");
    assert_eq!(c.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn remove_deletes_the_persisted_entry_and_gc_keeps_it() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    let c = QueryClient::builder(fake.clone())
        .policy(policy())
        .gc_time(Duration::from_secs(60))
        .build();
    let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
    let removed = key("process.list", json!({ "k": "removed" }));
    let collected = key("process.list", json!({ "k": "collected" }));
    c.get(&removed).await.unwrap();
    c.get(&collected).await.unwrap();
    persist.flush().await.unwrap();
    assert_eq!(store.len(), 2);
    c.remove(&removed);
    advance(Duration::from_secs(61)).await;
    assert_eq!(c.collect_garbage(), 1);
    persist.flush().await.unwrap();
    assert_eq!(
        store.len(),
        1,
        "gone from memory, kept in the store until max_age"
    );
    let c2 = client(&fake);
    Persistence::new(store.clone()).hydrate(&c2).await.unwrap();
    assert!(c2.state(&collected).is_some());
    assert!(c2.state(&removed).is_none());
}

/// A store that fails while `down` is set.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

impl Store for Flaky {
    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::new(StoreErrorKind::Io, None, "disk full"));
        }
        self.inner.apply(batch).await
    }
    async fn scan(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan().await
    }
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(name).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_keeps_the_changes_for_the_next_one() {
    let store = Arc::new(Flaky::default());
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    c.set_data(&key("process.list", Value::Null), json!(1));
    assert!(persist.flush().await.is_err());
    assert_eq!(persist.stats().pending, 1);
    assert!(persist.stats().failed_flushes >= 1);
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(persist.flush().await.unwrap(), 1);
    assert_eq!(store.inner.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_is_persisted_once() {
    let fake = Fake::new();
    let c = client(&fake);
    let (_persist, _) = Persistence::new(MemoryStore::new())
        .start(&c)
        .await
        .unwrap();
    let again = Persistence::new(MemoryStore::new()).start(&c).await;
    assert!(again.unwrap_err().to_string().contains("already persisted"));
}

/// A store whose transactions, once `gated`, wait for a permit: a flush can
/// be held in progress while the test makes changes.
struct Gated {
    inner: MemoryStore,
    gated: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Semaphore,
}

impl Store for Gated {
    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if self.gated.load(std::sync::atomic::Ordering::SeqCst) {
            self.gate.acquire().await.unwrap().forget();
        }
        self.inner.apply(batch).await
    }
    async fn scan(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan().await
    }
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.meta(name).await
    }
}

/// Polls `f` every millisecond (of paused time) until it holds; panics
/// after a minute.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..60_000 {
        if f() {
            return;
        }
        sleep(Duration::from_millis(1)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_change_is_stored_once_flushes_went_up_by_two_since_it_was_seen() {
    let store = Arc::new(Gated {
        inner: MemoryStore::new(),
        gated: std::sync::atomic::AtomicBool::new(false),
        gate: tokio::sync::Semaphore::new(0),
    });
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone())
        .flush_every(Duration::from_secs(3600))
        .start(&c)
        .await
        .unwrap();
    let persist = Arc::new(persist);
    store.gated.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = store.inner.len();
    let view = persist.stats_view();
    assert_eq!(view.stats(), persist.stats());

    // A flush takes `a` and is held in its transaction (whether the command
    // below or the window's first tick runs it).
    c.set_data(&key("process.list", json!({ "n": "a" })), json!(1));
    let asked = tokio::spawn({
        let p = persist.clone();
        async move { p.flush().await }
    });
    until("a flush takes `a`", || view.stats().pending == 0).await;

    // `b` changes after that flush took its keys; the figures read now say
    // `flushes` = 0.
    c.set_data(&key("process.list", json!({ "n": "b" })), json!(2));
    let seen = view.stats();
    assert_eq!((seen.flushes, seen.pending), (0, 1));

    // One flush later `b` is not stored yet: one is not enough.
    store.gate.add_permits(1);
    until("the held flush commits", || view.stats().flushes == 1).await;
    assert_eq!(store.inner.len(), before + 1, "only `a` is stored");

    // Two flushes later it is.
    store.gate.add_permits(1);
    until("a second flush", || view.stats().flushes == 2).await;
    assert_eq!(store.inner.len(), before + 2, "`b` is stored");
    asked.await.unwrap().unwrap();
    let after = view.stats();
    assert_eq!((after.flushes, after.written, after.pending), (2, 2, 0));
    assert_eq!(
        after,
        persist.stats(),
        "the view reads the handle's figures"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stats_view_does_not_keep_the_write_behind_running() {
    let store = Arc::new(MemoryStore::new());
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone())
        .flush_every(Duration::from_secs(3600))
        .start(&c)
        .await
        .unwrap();
    let view = persist.stats_view();
    c.set_data(&key("process.list", Value::Null), json!(1));
    assert_eq!(view.stats().pending, 1);
    // Dropping the handle stops the task after a last flush, the view
    // alive or not; the view then reads the final figures.
    drop(persist);
    for _ in 0..100 {
        if store.len() == 1 {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.len(), 1, "the last flush ran");
    let s = view.stats();
    assert_eq!((s.flushes, s.written, s.pending), (1, 1, 0));
    assert!(format!("{view:?}").contains("flushes: 1"), "{view:?}");
}

/// A store that can only list everything at once: it gets the provided
/// `scan_page` and `count_hint`.
#[derive(Default)]
struct ScanOnly(MemoryStore);

impl Store for ScanOnly {
    async fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.0.apply(batch).await
    }
    async fn scan(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        // In an order of its own, which the provided `scan_page` must not
        // depend on.
        let mut all = self.0.scan().await?;
        all.reverse();
        Ok(all)
    }
    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.meta(name).await
    }
}

/// Reads `store` a page of `limit` at a time, as hydrate does; the pages'
/// lengths.
async fn pages(store: &impl Store, limit: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
    let (mut keys, mut lengths, mut after) = (Vec::new(), Vec::new(), None);
    loop {
        let page = store.scan_page(after.take(), limit).await.unwrap();
        lengths.push(page.len());
        after = page.last().map(|(k, _)| k.clone());
        let last = page.len() != limit;
        keys.extend(page.into_iter().map(|(k, _)| k));
        if last || after.is_none() {
            return (keys, lengths);
        }
    }
}

#[tokio::test]
async fn a_paged_scan_visits_every_record_once_across_page_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(dir.path().join("cache.redb")).unwrap();
    let memory = MemoryStore::new();
    let scan_only = ScanOnly::default();
    for n in [0usize, 1, 9, 10, 11] {
        let mut put = Batch::default();
        put.clear = true;
        put.puts = (0..n)
            .map(|i| {
                (
                    format!("k{i:03}").into_bytes(),
                    vec![u8::try_from(i).unwrap()],
                )
            })
            .collect();
        redb.apply(put.clone()).await.unwrap();
        memory.apply(put.clone()).await.unwrap();
        scan_only.apply(put).await.unwrap();
        let expected: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:03}").into_bytes()).collect();
        // Pages of 5: 9 records are 5 + 4, 10 are 5 + 5 + an empty last page.
        for (what, (keys, lengths)) in [
            ("redb", pages(&redb, 5).await),
            ("memory", pages(&memory, 5).await),
        ] {
            assert_eq!(keys, expected, "{what}, {n} records");
            let mut want = vec![5; n / 5];
            want.push(n % 5);
            assert_eq!(lengths, want, "{what}, {n} records");
        }
        // The provided implementation: everything in key order, at once
        // (and an empty page after a full one of exactly `limit`).
        let (keys, _) = pages(&scan_only, 5).await;
        assert_eq!(keys, expected, "provided, {n} records");
        assert_eq!(redb.count_hint().await.unwrap(), Some(n));
        assert_eq!(memory.count_hint().await.unwrap(), Some(n));
        assert_eq!(scan_only.count_hint().await.unwrap(), None);
    }
}

/// Writes `n` entries into `store`, then checks that a new client hydrates
/// all of them, including those around hydrate's page boundaries.
async fn write_then_hydrate<S: Store + 'static>(store: Arc<S>, n: usize) {
    let fake = Fake::new();
    let c = client(&fake);
    let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
    for i in 0..n {
        c.set_data(&key("process.get", json!({ "id": i })), json!(i));
    }
    persist.shutdown().await.unwrap();
    let c2 = client(&fake);
    let (_p, report) = Persistence::new(store).start(&c2).await.unwrap();
    assert_eq!((report.restored, report.skipped), (n, 0));
    for i in [0, 4095, 4096, 8191, 8192, n - 1] {
        let k = key("process.get", json!({ "id": i }));
        assert_eq!(*c2.state(&k).unwrap().data.unwrap(), json!(i), "{i}");
    }
}

#[tokio::test(start_paused = true)]
async fn hydrate_restores_every_entry_of_a_store_larger_than_a_page() {
    // 10 000 entries: more than two of hydrate's pages (4096 records each).
    const N: usize = 10_000;
    let store = Arc::new(MemoryStore::new());
    write_then_hydrate(store.clone(), N).await;
    assert_eq!(store.len(), N);
    // The same through a store without paging of its own.
    write_then_hydrate(Arc::new(ScanOnly::default()), N).await;
}

/// Every record's value, read back through a fresh client from a store
/// file holding `bytes`, opened with `open`: the hydrate error, or what was
/// restored. (A new file each time: a store found damaged is quarantined,
/// its file kept locked by this process, as the error says to move it.)
async fn restored_from(
    bytes: &[u8],
    open: impl Fn(&std::path::Path) -> Result<RedbStore, StoreError>,
    keys: &[QueryKey],
) -> Result<Vec<Option<Value>>, StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.redb");
    std::fs::write(&path, bytes).unwrap();
    let c = client(&Fake::new());
    Persistence::new(open(&path)?).hydrate(&c).await?;
    Ok(keys
        .iter()
        .map(|k| c.state(k).and_then(|s| s.data).map(|v| (*v).clone()))
        .collect())
}

/// The bytes of a store file that a persisted client wrote and closed,
/// holding `value(i)` for each of `n` keys (returned too).
async fn persisted_file(n: usize, value: impl Fn(usize) -> Value) -> (Vec<QueryKey>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let keys: Vec<QueryKey> = (0..n)
        .map(|i| key("process.list", json!({ "page": i })))
        .collect();
    let c = client(&Fake::new());
    let (persist, _) = Persistence::new(RedbStore::open(&path).unwrap())
        .start(&c)
        .await
        .unwrap();
    for (i, k) in keys.iter().enumerate() {
        c.set_data(k, value(i));
    }
    persist.shutdown().await.unwrap();
    (keys, std::fs::read(&path).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_record_changed_on_disk_is_caught_by_its_checksum() {
    let value = |i: usize| json!({ "marker": format!("MARKER-{i:05}"), "rows": [i] });
    let (keys, clean) = persisted_file(200, value).await;
    let at = clean
        .windows(12)
        .position(|w| w == b"MARKER-00042")
        .expect("the value is in the file");

    // One bit of one value's body, flipped to another valid JSON digit: no
    // parser would notice, the checksum does, and nothing is trusted.
    let mut bytes = clean.clone();
    bytes[at + 11] ^= 0x01; // "2" -> "3"
    for verified in [false, true] {
        // (open_verified: redb's page checksums catch it at open instead.)
        let open = |p: &std::path::Path| match verified {
            false => RedbStore::open(p),
            true => RedbStore::open_verified(p),
        };
        let e = restored_from(&bytes, open, &keys).await.unwrap_err();
        assert!(e.is_corrupt(), "verified: {verified}: {e}");
    }
    let e = restored_from(&bytes, |p| RedbStore::open(p), &keys)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("fails its checksum"), "{e}");

    // Undamaged, the same file restores every value.
    let back = restored_from(&clean, |p| RedbStore::open(p), &keys)
        .await
        .unwrap();
    let want: Vec<Option<Value>> = (0..keys.len()).map(|i| Some(value(i))).collect();
    assert_eq!(back, want);
}

#[tokio::test(start_paused = true)]
async fn a_store_damaged_page_by_page_restores_nothing_damaged() {
    let value = |i: usize| json!({ "rows": [i, i * 7, "x".repeat(i % 97)] });
    let (keys, clean) = persisted_file(300, value).await;
    for offset in [0usize, 17, 512, 1000, 2049, 4095] {
        let mut bytes = clean.clone();
        for at in (offset..bytes.len()).step_by(4096) {
            bytes[at] ^= 0x5a;
        }
        // Never a panic; either the damage is found (a corrupt error), or
        // every value that comes back is the one written.
        match restored_from(&bytes, |p| RedbStore::open(p), &keys).await {
            Err(e) => assert!(e.is_corrupt(), "offset {offset}: {e}"),
            Ok(back) => {
                for (i, v) in back.iter().enumerate() {
                    if let Some(v) = v {
                        assert_eq!(v, &value(i), "offset {offset}: key {i} came back damaged");
                    }
                }
            }
        }
    }
}
