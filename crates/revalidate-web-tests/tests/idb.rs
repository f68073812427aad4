//! The IndexedDB store: the same contract as the redb store.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use revalidate::store::{Batch, StoreErrorKind};
use revalidate::web::{pause_clock, resume_clock};
use revalidate::{IdbStore, Persistence, QueryKey, Store};
use support::{advance, counting_client, db_name, settings, settle};
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn batch(puts: &[(&str, &str)], deletes: &[&str]) -> Batch {
    let mut b = Batch::default();
    b.puts = puts
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    b.deletes = deletes.iter().map(|k| k.as_bytes().to_vec()).collect();
    b
}

async fn fresh(test: &str) -> IdbStore {
    let name = db_name(test);
    IdbStore::delete(&name).await.expect("delete");
    IdbStore::open(&name).await.expect("open")
}

/// Batches, deletes, metadata and clear, read back through a second
/// connection.
#[wasm_bindgen_test]
async fn batches_round_trip_through_a_new_connection() {
    let store = fresh("round-trip").await;
    store
        .apply(batch(&[("a", "1"), ("b", "2")], &[]))
        .await
        .unwrap();
    store.apply(batch(&[("c", "3")], &["a"])).await.unwrap();
    let mut meta = Batch::default();
    meta.meta.push(("buster".into(), b"v1".to_vec()));
    store.apply(meta).await.unwrap();
    // Binary (non-text) keys and values of any bytes survive too.
    let mut binary = Batch::default();
    binary
        .puts
        .push((vec![0xff, 0x00, 0x01], vec![0, 1, 2, 255]));
    store.apply(binary).await.unwrap();

    let again = IdbStore::open(store.name()).await.unwrap();
    let rows = again.scan().await.unwrap();
    assert_eq!(
        rows,
        vec![
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec()),
            (vec![0xff, 0x00, 0x01], vec![0, 1, 2, 255]),
        ]
    );
    assert_eq!(again.meta("buster").await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(again.meta("other").await.unwrap(), None);
    let mut clear = Batch::default();
    clear.clear = true;
    again.apply(clear).await.unwrap();
    assert!(store.scan().await.unwrap().is_empty());
    assert_eq!(
        store.meta("buster").await.unwrap(),
        Some(b"v1".to_vec()),
        "clear keeps metadata"
    );
}

/// Write-behind into IndexedDB, then a second client hydrates: values,
/// versions and ages, without fetching.
#[wasm_bindgen_test]
async fn persistence_writes_behind_and_a_new_client_hydrates() {
    resume_clock();
    let store = fresh("persist").await;
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let (persist, report) = Persistence::new(store.clone())
        .flush_every(Duration::from_millis(50))
        .start(&client)
        .await
        .unwrap();
    assert_eq!(report.restored, 0);
    let keys: Vec<QueryKey> = (0..4).map(|i| QueryKey::bare(format!("r.p{i}"))).collect();
    for k in &keys {
        client.get(k).await.unwrap();
    }
    // The next window writes them, in one transaction (the first tick of
    // the writer comes at once; a loaded machine may take its time).
    for _ in 0..100 {
        if persist.stats().written >= 4 {
            break;
        }
        gloo_timers::future::TimeoutFuture::new(50).await;
    }
    let stats = persist.stats();
    assert_eq!(stats.written, 4, "{stats:?}");
    assert_eq!(stats.flushes, 1, "{stats:?}");
    assert_eq!(store.scan().await.unwrap().len(), 4);
    persist.shutdown().await.unwrap();

    let calls2 = Rc::new(Cell::new(0));
    let restored = counting_client(calls2.clone(), |_| None, settings());
    let store2 = IdbStore::open(store.name()).await.unwrap();
    let (_persist2, report) = Persistence::new(store2).start(&restored).await.unwrap();
    assert_eq!(report.restored, 4, "{report:?}");
    for k in &keys {
        let before = client.state(k).unwrap();
        let after = restored.state(k).unwrap();
        assert_eq!(after.data, before.data);
        assert_eq!(after.version, before.version);
        assert_eq!(after.updated_at, before.updated_at);
    }
    assert_eq!(*restored.get(&keys[0]).await.unwrap(), "r.p0 #1");
    assert_eq!(calls2.get(), 0, "served from IndexedDB, no fetch");
}

/// Hydrate drops entries older than `max_age`, and everything when the
/// buster changes.
#[wasm_bindgen_test]
async fn hydrate_applies_max_age_and_the_buster() {
    pause_clock();
    let store = fresh("max-age").await;
    let client = counting_client(Rc::default(), |_| None, settings());
    let persist = Persistence::new(store.clone()).buster("v1");
    persist.hydrate(&client).await.unwrap();
    let (task, handle) = persist.attach(&client).unwrap();
    wasm_bindgen_futures::spawn_local(task);
    client.get(&QueryKey::bare("r.old")).await.unwrap();
    advance(Duration::from_secs(3600)).await;
    client.get(&QueryKey::bare("r.new")).await.unwrap();
    handle.flush().await.unwrap();
    advance(Duration::from_secs(1800)).await;

    // 90 and 30 minutes old; max_age one hour keeps the newer one.
    let fresh_client = counting_client(Rc::default(), |_| None, settings());
    let report = Persistence::new(store.clone())
        .buster("v1")
        .max_age(Duration::from_secs(3600))
        .hydrate(&fresh_client)
        .await
        .unwrap();
    assert_eq!((report.restored, report.expired), (1, 1), "{report:?}");
    assert!(fresh_client.get_cached(&QueryKey::bare("r.new")).is_some());
    assert!(fresh_client.get_cached(&QueryKey::bare("r.old")).is_none());
    assert_eq!(
        store.scan().await.unwrap().len(),
        1,
        "the expired entry is deleted"
    );

    let busted = counting_client(Rc::default(), |_| None, settings());
    let report = Persistence::new(store.clone())
        .buster("v2")
        .hydrate(&busted)
        .await
        .unwrap();
    assert!(report.busted && report.restored == 0, "{report:?}");
    assert!(store.scan().await.unwrap().is_empty());
    resume_clock();
}

/// Entries that do not decode are dropped, counted and deleted; the rest
/// is restored.
#[wasm_bindgen_test]
async fn undecodable_entries_are_pruned() {
    resume_clock();
    let store = fresh("undecodable").await;
    let client = counting_client(Rc::default(), |_| None, settings());
    let (persist, _) = Persistence::new(store.clone())
        .start(&client)
        .await
        .unwrap();
    client.get(&QueryKey::bare("r.good")).await.unwrap();
    persist.shutdown().await.unwrap();
    let good = store.scan().await.unwrap();
    assert_eq!(good.len(), 1);
    let mut bad = Batch::default();
    // A record that does not parse, and a good record with a payload that
    // is not JSON. (Made a format 1 record, which has no checksum, by
    // dropping the format 2 checksum: under another key and with another
    // payload, a format 2 record would fail it, and that is corruption,
    // not an undecodable entry.)
    bad.puts.push((b"r.junk\0{}".to_vec(), b"garbage".to_vec()));
    let mut not_json = good[0].1.clone();
    assert_eq!(not_json[0], 2, "records are written in format 2");
    not_json.truncate(not_json.len() - 8);
    not_json[0] = 1;
    let n = not_json.len();
    not_json[n - 1] = b'}';
    not_json.push(b'{');
    bad.puts.push((b"r.bad\0{}".to_vec(), not_json));
    store.apply(bad).await.unwrap();

    let restored = counting_client(Rc::default(), |_| None, settings());
    let report = Persistence::new(store.clone())
        .hydrate(&restored)
        .await
        .unwrap();
    assert_eq!((report.restored, report.undecodable), (1, 2), "{report:?}");
    let keys: Vec<Vec<u8>> = store
        .scan()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![good[0].0.clone()],
        "the undecodable entries are deleted"
    );
}

/// An upgrade that another connection blocks is a Locked error, at once,
/// not a hang; once that connection closes, the store opens.
#[wasm_bindgen_test]
async fn a_blocked_upgrade_is_reported_as_locked() {
    let name = db_name("blocked");
    IdbStore::delete(&name).await.unwrap();
    // Another "tab": a connection to a database of that name without this
    // store's object stores, which ignores versionchange.
    let factory = web_sys::window().unwrap().indexed_db().unwrap().unwrap();
    let request = factory.open_with_u32(&name, 1).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Cell::new(Some(tx));
    let on_success = Closure::<dyn FnMut()>::new(move || {
        if let Some(tx) = tx.take() {
            let _ = tx.send(());
        }
    });
    request.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
    rx.await.unwrap();
    let other: web_sys::IdbDatabase = request.result().unwrap().dyn_into().unwrap();

    let err = IdbStore::open(&name).await.expect_err("blocked");
    assert_eq!(err.kind(), StoreErrorKind::Locked, "{err}");
    assert!(err.is_locked());
    assert!(err.to_string().contains("another tab"), "{err}");
    assert!(err.to_string().contains(&name), "{err}");

    other.close();
    settle().await;
    let store = IdbStore::open(&name)
        .await
        .expect("opens once the other closed");
    store.apply(batch(&[("k", "v")], &[])).await.unwrap();
    assert_eq!(store.scan().await.unwrap().len(), 1);
}

/// When another tab deletes the database, the store lets it (closes its
/// connection) and writes again afterwards, into a new database.
#[wasm_bindgen_test]
async fn the_store_yields_to_a_deletion_and_reopens() {
    let store = fresh("reopen").await;
    store.apply(batch(&[("a", "1")], &[])).await.unwrap();
    IdbStore::delete(store.name())
        .await
        .expect("not blocked by the open store");
    assert!(
        store.scan().await.unwrap().is_empty(),
        "reopened: a new, empty database"
    );
    store.apply(batch(&[("b", "2")], &[])).await.unwrap();
    assert_eq!(
        store.scan().await.unwrap(),
        vec![(b"b".to_vec(), b"2".to_vec())]
    );
}

/// The quota error, as IndexedDB reports it, says what happened and what
/// happens next.
#[wasm_bindgen_test]
fn a_quota_error_is_reported_with_its_cause() {
    let quota = web_sys::DomException::new_with_message_and_name(
        "The quota has been exceeded.",
        "QuotaExceededError",
    )
    .unwrap();
    let err = revalidate::store::idb_error("cache", "committing a batch", &quota.into());
    assert_eq!(err.kind(), StoreErrorKind::Io);
    let text = err.to_string();
    assert!(
        text.contains("QuotaExceededError") && text.contains("quota"),
        "{text}"
    );
    assert!(text.contains("retried"), "{text}");
    let denied = web_sys::DomException::new_with_message_and_name("no", "SecurityError").unwrap();
    let err = revalidate::store::idb_error("cache", "opening", &denied.into());
    assert!(err.is_permission_denied(), "{err}");
}
