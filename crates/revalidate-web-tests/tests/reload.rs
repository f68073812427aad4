//! Survival across a reload: `scripts/test wasm` runs this binary twice,
//! with one browser profile and one origin (a fixed `--user-data-dir` and
//! `WASM_BINDGEN_TEST_ADDRESS`): the first page writes through the engine,
//! the second page (a new browser, a new page) hydrates what the first
//! wrote. Both tests are `#[ignore]`d so that a plain run, which has no
//! first page behind it, skips them:
//!
//! ```text
//! cargo test --test reload -- --include-ignored first_page_writes
//! cargo test --test reload -- --include-ignored second_page_hydrates
//! ```
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

mod support;

use std::cell::Cell;
use std::rc::Rc;

use revalidate::web::resume_clock;
use revalidate::{IdbStore, Persistence, QueryKey, Store};
use support::{counting_client, settings};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const DB: &str = "revalidate-reload";

fn keys() -> Vec<QueryKey> {
    (0..3)
        .map(|i| QueryKey::bare(format!("r.reload{i}")))
        .collect()
}

#[wasm_bindgen_test]
#[ignore = "the first of two runs with one profile (scripts/test wasm)"]
async fn first_page_writes() {
    resume_clock();
    IdbStore::delete(DB).await.unwrap();
    let store = IdbStore::open(DB).await.unwrap();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let (persist, report) = Persistence::new(store.clone())
        .buster("reload-v1")
        .start(&client)
        .await
        .unwrap();
    assert_eq!(report.restored, 0, "a fresh database");
    for k in keys() {
        client.get(&k).await.unwrap();
    }
    persist.shutdown().await.unwrap();
    assert_eq!(store.scan().await.unwrap().len(), 3);
    assert_eq!(calls.get(), 3);
}

#[wasm_bindgen_test]
#[ignore = "the second of two runs with one profile (scripts/test wasm)"]
async fn second_page_hydrates() {
    resume_clock();
    let store = IdbStore::open(DB).await.unwrap();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let (_persist, report) = Persistence::new(store)
        .buster("reload-v1")
        .start(&client)
        .await
        .unwrap();
    assert_eq!(report.restored, 3, "what the first page wrote: {report:?}");
    for k in keys() {
        let state = client.state(&k).unwrap();
        assert_eq!(
            *state.data.unwrap(),
            format!("{k} #{}", k.action().as_bytes()[8] - b'0' + 1)
        );
        assert!(
            state.updated_at.unwrap() <= revalidate_now(),
            "written before this page"
        );
        assert_eq!(
            *client.get(&k).await.unwrap(),
            *client.get_cached(&k).unwrap()
        );
    }
    assert_eq!(calls.get(), 0, "every read served from IndexedDB");
}

fn revalidate_now() -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs_f64(js_sys::Date::now() / 1000.0)
}
