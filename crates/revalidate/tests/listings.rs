//! What `/v1/stats`, `/v1/queries` and `/v1/live` read of the cache without
//! a pass over it: the active count (kept as reads and subscriptions change
//! it), pages of keys (an ordered index) and the latest updates (a bounded
//! index). Each is checked against the brute-force answer computed from
//! `queries()`, on a paused clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use revalidate::{
    BackgroundRefresh, MemoryStore, Persistence, QueryClient, QueryKey, QueryState, RefreshSettings,
};
use serde_json::{Value, json};
use support::{Fake, key};
use tokio::time::advance;

const WINDOW: Duration = Duration::from_secs(10);

fn client_with(fake: &Fake, max_queries: usize) -> QueryClient<Value> {
    let mut s = RefreshSettings::default();
    s.inactive_after = WINDOW;
    s.jitter = 0.0;
    QueryClient::builder(fake.clone())
        .settings(s)
        .unwrap()
        .max_queries(max_queries)
        .gc_time(Duration::from_secs(60))
        .build()
}

fn k(i: usize) -> QueryKey {
    key("process.get", json!({ "id": i }))
}

/// The active count by the definition: every query's own `is_active`.
fn brute_active(c: &QueryClient<Value>) -> usize {
    c.queries().iter().filter(|q| q.is_active).count()
}

#[track_caller]
fn same_count(c: &QueryClient<Value>, expected: usize) {
    assert_eq!(brute_active(c), expected, "brute force");
    assert_eq!(c.stats().active_queries, expected, "counted");
}

#[tokio::test(start_paused = true)]
async fn the_active_count_follows_reads_the_window_subscriptions_and_removals() {
    let c = client_with(&Fake::new(), usize::MAX);
    // Without a refresh service a read keeps nothing active.
    for i in 0..20 {
        c.set_data(&k(i), json!(i));
    }
    same_count(&c, 0);
    let sub = c.subscribe(&k(0));
    same_count(&c, 1);
    drop(sub);
    same_count(&c, 0);

    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    // Created at 0 (creation counts as a read): all active.
    same_count(&c, 20);
    advance(Duration::from_millis(4_100)).await;
    for i in 0..5 {
        c.get_cached(&k(i));
    }
    same_count(&c, 20);
    advance(Duration::from_secs(4)).await;
    c.get_cached(&k(5));
    // 11.1 s: the reads at 0 are out of the window; 4.1 and 8.1 are in.
    advance(Duration::from_secs(3)).await;
    same_count(&c, 6);
    // Reads of the same keys again do not count twice.
    for _ in 0..3 {
        for i in 0..6 {
            c.get_cached(&k(i));
        }
        advance(Duration::from_millis(300)).await;
    }
    same_count(&c, 6);

    // A subscriber keeps a query active past the window, once however
    // many subscribers it has, and whether or not it is also read.
    let a = c.subscribe(&k(10));
    let b = c.subscribe(&k(10));
    c.get_cached(&k(10));
    same_count(&c, 7);
    advance(Duration::from_secs(30)).await;
    same_count(&c, 1);
    drop(a);
    same_count(&c, 1);
    drop(b);
    same_count(&c, 0);
    // Subscribed and read, then unsubscribed: active by the read.
    let s = c.subscribe(&k(11));
    c.get_cached(&k(11));
    same_count(&c, 1);
    drop(s);
    same_count(&c, 1);
    advance(WINDOW + Duration::from_secs(1)).await;
    same_count(&c, 0);

    // Removals take a query out of the count, subscribed or not.
    let s = c.subscribe(&k(12));
    c.get_cached(&k(13));
    c.get_cached(&k(14));
    same_count(&c, 3);
    assert!(c.remove(&k(12)));
    assert!(c.remove(&k(13)));
    same_count(&c, 1);
    drop(s);
    same_count(&c, 1);
    // Collected after the gc time: nothing left to count, nothing counted.
    advance(Duration::from_secs(120)).await;
    c.collect_garbage();
    assert_eq!(c.len(), 0);
    same_count(&c, 0);
    // Cached anew: counted anew.
    c.set_data(&k(13), json!("again"));
    same_count(&c, 1);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn evicted_queries_leave_the_active_count() {
    let c = client_with(&Fake::new(), 8);
    let refresh = BackgroundRefresh::new(&c).unwrap().start();
    let subs: Vec<_> = (0..3).map(|i| c.subscribe(&k(i))).collect();
    for i in 3..40 {
        c.set_data(&k(i), json!(i));
        advance(Duration::from_millis(700)).await;
        let active = brute_active(&c);
        assert_eq!(c.stats().active_queries, active, "after {i}");
    }
    assert!(c.stats().evicted > 0, "queries were evicted");
    drop(subs);
    advance(WINDOW * 2).await;
    same_count(&c, 0);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pages_visit_every_key_once_in_order_while_keys_come_and_go() {
    let c = client_with(&Fake::new(), usize::MAX);
    for i in (0..300).step_by(2) {
        c.set_data(&k(i), json!(i));
    }
    let mut seen: Vec<QueryKey> = Vec::new();
    let mut removed: Vec<QueryKey> = Vec::new();
    let mut after: Option<QueryKey> = None;
    let mut round = 0;
    loop {
        let page = c.queries_page(after.as_ref(), 7);
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|q| q.key.clone());
        seen.extend(page.into_iter().map(|q| q.key));
        // Between pages: new keys (odd ids) and removals of keys on both
        // sides of the cursor.
        round += 1;
        c.set_data(&k(round * 2 + 1), json!("new"));
        let gone = k((round * 37) % 300 / 2 * 2);
        if c.remove(&gone) {
            removed.push(gone);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "strictly in key order, so each key at most once"
    );
    let now: Vec<QueryKey> = c.queries().into_iter().map(|q| q.key).collect();
    let cursor_passed = |key: &QueryKey, seen: &[QueryKey]| seen.binary_search(key).is_ok();
    // Every key cached from the start to the end was visited.
    for i in (0..300).step_by(2) {
        let key = k(i);
        if now.contains(&key) {
            assert!(cursor_passed(&key, &seen), "{key:?} never listed");
        }
    }
    // A key listed is one cached when its page was read: removed ones only
    // before their removal, new ones only after their insertion.
    for key in &seen {
        assert!(
            now.contains(key) || removed.contains(key),
            "{key:?} was never cached"
        );
    }
    // A static cache pages exactly into `queries()`.
    let mut joined = Vec::new();
    let mut after: Option<QueryKey> = None;
    while let Some(last) = {
        let page = c.queries_page(after.as_ref(), 13);
        let last = page.last().map(|q| q.key.clone());
        joined.extend(page.into_iter().map(|q| q.key));
        last
    } {
        after = Some(last);
    }
    assert_eq!(joined, now);
}

/// `recently_updated` by its definition: newest first, equal times in key
/// order, never updated last (in key order).
fn brute_recent(c: &QueryClient<Value>, limit: usize) -> Vec<QueryKey> {
    let mut all: Vec<QueryState<Value>> = c.queries();
    all.sort_by(|a, b| {
        b.updated_at
            .cmp(&a.updated_at)
            .then_with(|| a.key.cmp(&b.key))
    });
    all.into_iter().take(limit).map(|q| q.key).collect()
}

fn recent(c: &QueryClient<Value>, limit: usize) -> Vec<QueryKey> {
    c.recently_updated(limit)
        .into_iter()
        .map(|q| q.key)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn recently_updated_is_the_newest_first_deduplicated_and_exact_at_scale() {
    let c = client_with(&Fake::new(), usize::MAX);
    // More keys than the index keeps (1024), updated in a scrambled order,
    // several at each time (ties go by key), some many times over.
    let n = 3000;
    for step in 0..6000 {
        let i = (step * 7919) % n;
        c.set_data(&k(i), json!(step));
        if step % 3 == 0 {
            advance(Duration::from_millis(10)).await;
        }
    }
    // Queries that never got data: last.
    let _never = c.subscribe(&k(n + 1));
    for limit in [0, 1, 10, 500, 512] {
        assert_eq!(recent(&c, limit), brute_recent(&c, limit), "limit {limit}");
    }
    // One hot key written again and again shows once.
    for step in 0..2000 {
        c.set_data(&k(5), json!(["hot", step]));
        advance(Duration::from_millis(1)).await;
    }
    let top = recent(&c, 500);
    assert_eq!(top[0], k(5));
    assert_eq!(top.iter().filter(|key| **key == k(5)).count(), 1);
    assert_eq!(top, brute_recent(&c, 500));
    // Removing the newest ones drains the index: it still answers exactly.
    for key in recent(&c, 800) {
        c.remove(&key);
    }
    assert_eq!(recent(&c, 300), brute_recent(&c, 300));
    // A limit above what the index keeps: exact too (and the index grows).
    assert_eq!(recent(&c, 2000), brute_recent(&c, 2000));
    assert_eq!(recent(&c, 2000), brute_recent(&c, 2000));
    // A small cache, all of it.
    let small = client_with(&Fake::new(), usize::MAX);
    for i in [3, 1, 2] {
        small.set_data(&k(i), json!(i));
    }
    let _never = small.subscribe(&k(0));
    assert_eq!(recent(&small, 10), vec![k(1), k(2), k(3), k(0)]);
}

#[tokio::test(start_paused = true)]
async fn recently_updated_after_a_hydrate_lists_the_newest_restored_first() {
    let store = Arc::new(MemoryStore::new());
    let n = 2500;
    {
        let c = client_with(&Fake::new(), usize::MAX);
        let (persist, _) = Persistence::new(store.clone()).start(&c).await.unwrap();
        for step in 0..n {
            c.set_data(&k((step * 7919) % n), json!(step));
            advance(Duration::from_millis(5)).await;
        }
        persist.shutdown().await.unwrap();
    }
    advance(Duration::from_secs(5)).await;
    let c = client_with(&Fake::new(), usize::MAX);
    let (_persist, report) = Persistence::new(store.clone()).start(&c).await.unwrap();
    assert_eq!(report.restored, n);
    let expected = brute_recent(&c, 100);
    assert_eq!(expected[0], k(((n - 1) * 7919) % n), "the last one written");
    assert_eq!(recent(&c, 100), expected);
    // Written in this process after the hydrate: first.
    c.set_data(&k(42), json!("after"));
    let top = recent(&c, 100);
    assert_eq!(top[0], k(42));
    assert_eq!(top, brute_recent(&c, 100));
}

#[test]
fn keys_of_any_shape_page_in_key_order() {
    // Actions that are prefixes of each other, with and without params.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client_with(&Fake::new(), usize::MAX);
        let keys = [
            QueryKey::bare("a"),
            QueryKey::bare("ab"),
            QueryKey::bare("a.b"),
            key("a", json!(1)),
            key("a", json!({"x": "y"})),
            key("ab", json!([0])),
            QueryKey::bare("b"),
        ];
        for key in &keys {
            c.set_data(key, Value::Null);
        }
        let mut sorted = keys.to_vec();
        sorted.sort();
        let page: Vec<QueryKey> = c
            .queries_page(None, 100)
            .into_iter()
            .map(|q| q.key)
            .collect();
        assert_eq!(page, sorted);
        let rest: Vec<QueryKey> = c
            .queries_page(Some(&sorted[2]), 100)
            .into_iter()
            .map(|q| q.key)
            .collect();
        assert_eq!(rest, sorted[3..]);
    });
}
