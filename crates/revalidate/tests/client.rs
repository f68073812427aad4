//! The query cache: cache-first reads, single-flight, writes and their
//! ordering, subscriptions, invalidation, garbage collection. All on a
//! paused clock with a scripted source.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use revalidate::{
    FetchError, FetchStatus, Freshness, Policy, QueryClient, QueryFilter, QueryKey,
    RefreshSettings, Remote, Staleness,
};
use serde_json::{Value, json};
use support::{Fake, Step, key, settle};
use tokio::time::advance;

fn client(fake: &Fake) -> QueryClient<Value> {
    let policy = Policy::builder()
        .resource("process", Staleness::mins(5))
        .resource("node", Staleness::Never)
        .resource("system_health", Staleness::Always)
        .build()
        .unwrap();
    let mut settings = RefreshSettings::default();
    settings.max_concurrent_refreshes = 100;
    QueryClient::builder(fake.clone())
        .policy(policy)
        .settings(settings)
        .unwrap()
        .build()
}

#[tokio::test(start_paused = true)]
async fn hundred_concurrent_readers_of_a_missing_key_share_one_fetch() {
    let fake = Fake::new().latency(Duration::from_millis(300));
    let c = client(&fake);
    let k = key("process.list", json!({"status": "active"}));
    let readers = (0..100).map(|_| {
        let c = c.clone();
        let k = k.clone();
        tokio::spawn(async move { c.get(&k).await })
    });
    let results = futures::future::join_all(readers).await;
    assert_eq!(fake.calls(), 1);
    let first = results[0].as_ref().unwrap().as_ref().unwrap().clone();
    for r in &results {
        assert!(
            Arc::ptr_eq(r.as_ref().unwrap().as_ref().unwrap(), &first),
            "every reader gets the same Arc"
        );
    }
    let stats = c.cache_stats();
    assert_eq!(stats.misses, 100);
    assert_eq!(stats.fresh_hits, 0);
}

#[tokio::test(start_paused = true)]
async fn a_shared_failure_is_not_cached() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    fake.script(&k, [Step::Err(FetchError::failed("boom"))]);
    let (a, b) = tokio::join!(c.get(&k), c.get(&k));
    assert_eq!(a.unwrap_err(), FetchError::failed("boom"));
    assert_eq!(b.unwrap_err(), FetchError::failed("boom"));
    assert_eq!(fake.calls(), 1);
    let state = c.state(&k).unwrap();
    assert_eq!(state.error_count, 1);
    assert!(state.data.is_none());
    // The next read fetches again: the failure was not cached.
    let v = c.get(&k).await.unwrap();
    assert_eq!(v["n"], 2);
    assert_eq!(c.state(&k).unwrap().error_count, 0);
}

#[tokio::test(start_paused = true)]
async fn cached_reads_never_fetch_and_count_fresh_and_stale_hits() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    let v1 = c.get(&k).await.unwrap();
    assert_eq!(c.get_cached(&k).unwrap(), v1);
    advance(Duration::from_secs(299)).await;
    let hit = c.get_with_meta(&k).await.unwrap();
    assert_eq!(hit.freshness, Freshness::Fresh);
    assert_eq!(hit.age, Duration::from_secs(299));
    advance(Duration::from_secs(1)).await;
    let hit = c.get_with_meta(&k).await.unwrap();
    assert_eq!(
        hit.freshness,
        Freshness::Stale,
        "stale at exactly the limit"
    );
    assert!(
        Arc::ptr_eq(&hit.value, &v1),
        "a stale read serves the cached value"
    );
    assert_eq!(fake.calls(), 1, "no service runs: nothing refetches");
    assert!(c.get_cached(&key("process.other", Value::Null)).is_none());
    let s = c.cache_stats();
    assert_eq!((s.fresh_hits, s.stale_hits, s.misses), (2, 1, 2));
    assert_eq!(c.stats().resources["process"].cache, s);
}

#[tokio::test(start_paused = true)]
async fn never_and_always_classify_reads() {
    let fake = Fake::new();
    let c = client(&fake);
    let node = key("node.tree", Value::Null);
    let health = key("system_health", Value::Null);
    c.get(&node).await.unwrap();
    c.get(&health).await.unwrap();
    advance(Duration::from_secs(86_400 * 365)).await;
    assert_eq!(
        c.get_with_meta(&node).await.unwrap().freshness,
        Freshness::Fresh
    );
    assert_eq!(
        c.get_with_meta(&health).await.unwrap().freshness,
        Freshness::Stale
    );
    // `never` is never stale by time, but an invalidation makes it stale.
    assert_eq!(c.invalidate(&node), 1);
    assert_eq!(
        c.get_with_meta(&node).await.unwrap().freshness,
        Freshness::Stale
    );
}

#[tokio::test(start_paused = true)]
async fn parameters_in_another_order_share_one_query() {
    let fake = Fake::new();
    let c = client(&fake);
    let a = QueryKey::new(
        "process.list",
        json!({"status": "active", "page": 1, "sort": {"by": "name", "dir": "asc"}}),
    );
    let b = QueryKey::new(
        "process.list",
        json!({"sort": {"dir": "asc", "by": "name"}, "page": 1.0, "status": "active"}),
    );
    c.get(&a).await.unwrap();
    c.get(&b).await.unwrap();
    assert_eq!(fake.calls(), 1);
    assert_eq!(c.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_overtaken_by_set_data_does_not_clobber_it() {
    let fake = Fake::new().latency(Duration::from_secs(1));
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let refetch = tokio::spawn({
        let c = c.clone();
        let k = k.clone();
        async move { c.refetch(&k).await }
    });
    settle().await;
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Fetching);
    let optimistic = c.set_data(&k, json!({"optimistic": true}));
    advance(Duration::from_secs(2)).await;
    let fetched = refetch.await.unwrap().unwrap();
    assert_eq!(fake.calls(), 2);
    assert_eq!(
        *fetched,
        json!({"optimistic": true}),
        "the reader of the overtaken fetch gets the newer value"
    );
    let cached = c.get_cached(&k).unwrap();
    assert!(Arc::ptr_eq(&cached, &optimistic));
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Idle);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_overtaken_by_an_invalidation_stores_but_stays_stale() {
    let fake = Fake::new().latency(Duration::from_secs(1));
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let refetch = tokio::spawn({
        let c = c.clone();
        let k = k.clone();
        async move { c.refetch(&k).await }
    });
    settle().await;
    c.invalidate(&k);
    advance(Duration::from_secs(2)).await;
    assert_eq!(refetch.await.unwrap().unwrap()["n"], 2);
    let state = c.state(&k).unwrap();
    assert_eq!(state.data.unwrap()["n"], 2);
    assert!(
        state.is_stale && state.is_invalidated,
        "its data may predate the change behind the invalidation"
    );
    // A fetch that starts after the invalidation validates it.
    c.refetch(&k).await.unwrap();
    assert!(!c.state(&k).unwrap().is_stale);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refetch_keeps_serving_the_cached_value() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    let v1 = c.get(&k).await.unwrap();
    fake.script(
        &k,
        [Step::Err(FetchError::failed("503 Service Unavailable"))],
    );
    advance(Duration::from_secs(600)).await;
    let err = c.refetch(&k).await.unwrap_err();
    assert!(err.is_failed());
    let served = c.get(&k).await.unwrap();
    assert!(Arc::ptr_eq(&served, &v1));
    let state = c.state(&k).unwrap();
    assert_eq!(state.error_count, 1);
    assert_eq!(
        state.last_error.unwrap().message(),
        "503 Service Unavailable"
    );
    assert!(state.is_stale);
    // 600 s plus the 10 ms the failed fetch took: the failure did not refresh the age.
    assert_eq!(state.age, Some(Duration::from_millis(600_010)));
    assert_eq!(c.stats().failed_refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn subscribers_hear_only_real_changes() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    fake.constant(json!({"rows": [1, 2]}));
    let mut sub = c.subscribe(&k);
    assert!(sub.current().is_none());
    assert_eq!(c.state(&k).unwrap().observers, 1);
    c.refetch(&k).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*first, json!({"rows": [1, 2]}));
    let version = c.state(&k).unwrap().version;
    // The same data again: no notification, no new version, but fresher.
    advance(Duration::from_secs(60)).await;
    c.refetch(&k).await.unwrap();
    assert_eq!(c.state(&k).unwrap().version, version);
    assert_eq!(c.state(&k).unwrap().age, Some(Duration::ZERO));
    c.set_data(&k, json!({"rows": [1, 2]}));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), sub.next())
            .await
            .is_err(),
        "equal data must not notify"
    );
    // Different data notifies.
    c.set_data(&k, json!({"rows": [3]}));
    let next = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*next, json!({"rows": [3]}));
    assert_eq!(c.state(&k).unwrap().version, version + 1);
    drop(sub);
    assert_eq!(c.state(&k).unwrap().observers, 0);
}

#[tokio::test(start_paused = true)]
async fn on_change_listeners_hear_each_real_change_before_the_readers_are_answered() {
    let fake = Fake::new().latency(Duration::from_millis(50));
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    fake.constant(json!({"rows": [1]}));
    let heard = Arc::new(std::sync::Mutex::new(Vec::<(QueryKey, u64)>::new()));
    c.on_change({
        let heard = heard.clone();
        move |change| {
            heard
                .lock()
                .unwrap()
                .push((change.key.clone(), change.version))
        }
    });
    let mut changes = c.changes();
    // Ten readers share one fetch; each, as it is answered, finds the
    // change already heard: nothing runs between the store and the call.
    let readers = (0..10).map(|_| {
        let (c, k, heard) = (c.clone(), k.clone(), heard.clone());
        tokio::spawn(async move {
            c.get(&k).await.unwrap();
            heard.lock().unwrap().clone()
        })
    });
    let version = |c: &QueryClient<Value>| c.state(&k).unwrap().version;
    for seen in futures::future::join_all(readers).await {
        assert_eq!(seen.unwrap(), vec![(k.clone(), version(&c))]);
    }
    assert_eq!(fake.calls(), 1);
    // Equal data is not a change; different data is, for both listeners.
    advance(Duration::from_secs(600)).await;
    c.refetch(&k).await.unwrap();
    c.set_data(&k, json!({"rows": [2]}));
    let last = version(&c);
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard, vec![(k.clone(), last - 1), (k.clone(), last)]);
    assert_eq!(changes.recv().await.unwrap().version, last - 1);
    assert_eq!(changes.recv().await.unwrap().version, last);
    assert!(
        changes.try_recv().is_err(),
        "the equal refetch announced nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn a_remote_value_under_the_version_held_moves_past_it_and_equal_data_only_confirms() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    fake.constant(json!({"rows": [1]}));
    c.get(&k).await.unwrap();
    let held = c.state(&k).unwrap().version;
    let mut sub = c.subscribe(&k);
    // Times after the fetch and before the engine's now (later ones are
    // taken as now).
    let fetched = c.state(&k).unwrap().updated_at.unwrap();
    advance(Duration::from_secs(10)).await;
    let later = |secs| fetched + Duration::from_secs(secs);
    // The same version and the same data, confirmed later: fresher, no change.
    assert!(c.apply_remote(&k, Remote::new(json!({"rows": [1]}), held, later(1))));
    assert_eq!(c.state(&k).unwrap().version, held);
    // The same version with other data (numbered apart): stored under the next.
    assert!(c.apply_remote(&k, Remote::new(json!({"rows": [2]}), held, later(2))));
    assert_eq!(*c.get_cached(&k).unwrap(), json!({"rows": [2]}));
    assert_eq!(c.state(&k).unwrap().version, held + 1);
    let next = tokio::time::timeout(Duration::from_secs(1), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*next, json!({"rows": [2]}));
    // A newer version is taken as given; an older one is refused.
    assert!(c.apply_remote(&k, Remote::new(json!({"rows": [3]}), held + 5, later(3))));
    assert_eq!(c.state(&k).unwrap().version, held + 5);
    assert!(!c.apply_remote(&k, Remote::new(json!({"rows": [4]}), held + 4, later(4))));
    assert_eq!(*c.get_cached(&k).unwrap(), json!({"rows": [3]}));
}

#[tokio::test(start_paused = true)]
async fn remove_ends_subscriptions_and_forgets_the_query() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let mut sub = c.subscribe(&k);
    assert!(sub.current().is_some());
    assert!(c.remove(&k));
    assert!(!c.remove(&k));
    assert_eq!(sub.next().await, None);
    assert!(c.get_cached(&k).is_none());
    c.get(&k).await.unwrap();
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalidate_by_key_action_resource_and_predicate() {
    let fake = Fake::new();
    let c = client(&fake);
    let keys = [
        key("process.list", json!({"p": 1})),
        key("process.list", json!({"p": 2})),
        key("process.get", json!({"id": 7})),
        key("node.tree", Value::Null),
    ];
    for k in &keys {
        c.get(k).await.unwrap();
    }
    let stale = |c: &QueryClient<Value>| {
        keys.iter()
            .filter(|k| c.state(k).unwrap().is_invalidated)
            .count()
    };
    assert_eq!(c.invalidate(&keys[0]), 1);
    assert_eq!(stale(&c), 1);
    assert_eq!(c.invalidate(QueryFilter::Action("process.list".into())), 2);
    assert_eq!(stale(&c), 2);
    assert_eq!(c.invalidate(QueryFilter::Resource("process".into())), 3);
    assert_eq!(stale(&c), 3);
    assert_eq!(
        c.invalidate(QueryFilter::predicate(|k| k.action() == "node.tree")),
        1
    );
    assert_eq!(stale(&c), 4);
    assert_eq!(c.invalidate(QueryFilter::Action("nothing".into())), 0);
    assert_eq!(c.invalidate(QueryFilter::All), 4);
}

#[tokio::test(start_paused = true)]
async fn remove_where_drops_the_matching_queries_and_ends_their_subscriptions() {
    let fake = Fake::new();
    let c = client(&fake);
    let keys = [
        key("settings.get", json!({"u": "a"})),
        key("settings.get", json!({"u": "b"})),
        key("process.list", Value::Null),
    ];
    for k in &keys {
        c.get(k).await.unwrap();
    }
    let mut sub = c.subscribe(&keys[0]);
    assert!(sub.current().is_some());
    let n = c.remove_where(QueryFilter::predicate(|k| {
        k.action() == "settings.get" && k.params()["u"] == "a"
    }));
    assert_eq!(n, 1);
    assert_eq!(sub.next().await, None, "its subscription ended");
    assert!(c.get_cached(&keys[0]).is_none());
    assert!(c.get_cached(&keys[1]).is_some(), "the other user's stays");
    assert_eq!(
        c.remove_where(QueryFilter::Action("settings.get".into())),
        1
    );
    assert_eq!(
        c.remove_where(QueryFilter::Action("settings.get".into())),
        0
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c.remove_where(&keys[2]), 1);
    assert!(c.is_empty());
}

#[tokio::test(start_paused = true)]
async fn unused_queries_are_collected_after_gc_time() {
    let fake = Fake::new();
    let c = QueryClient::builder(fake.clone())
        .gc_time(Duration::from_secs(300))
        .build();
    let idle = key("a", json!(1));
    let read = key("a", json!(2));
    let watched = key("a", json!(3));
    for k in [&idle, &read, &watched] {
        c.get(k).await.unwrap();
    }
    let sub = c.subscribe(&watched);
    advance(Duration::from_secs(200)).await;
    c.get_cached(&read).unwrap();
    advance(Duration::from_secs(101)).await;
    assert_eq!(c.collect_garbage(), 1);
    assert!(c.state(&idle).is_none());
    assert!(c.state(&read).is_some(), "read 101 s ago");
    assert!(c.state(&watched).is_some(), "has a subscriber");
    advance(Duration::from_secs(300)).await;
    assert_eq!(c.collect_garbage(), 1);
    assert!(c.state(&watched).is_some());
    drop(sub);
    advance(Duration::from_secs(301)).await;
    assert_eq!(c.collect_garbage(), 1);
    assert!(c.is_empty());
}

#[tokio::test(start_paused = true)]
async fn offline_misses_fail_at_once_and_cached_reads_go_on() {
    let fake = Fake::new();
    let c = client(&fake);
    let cached = key("process.list", Value::Null);
    let missing = key("process.get", Value::Null);
    c.get(&cached).await.unwrap();
    c.network().set_online(false);
    let err = c.get(&missing).await.unwrap_err();
    assert!(err.is_offline());
    assert!(c.get(&cached).await.is_ok());
    assert_eq!(fake.calls(), 1);
    assert_eq!(c.state(&missing).unwrap().status, FetchStatus::Paused);
    assert_eq!(c.stats().skipped_offline, 1);
    c.network().set_online(true);
    assert!(c.get(&missing).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_never_answers_times_out() {
    let fake = Fake::new();
    let mut settings = RefreshSettings::default();
    settings.fetch_timeout = Duration::from_secs(5);
    let c = QueryClient::builder(fake.clone())
        .settings(settings)
        .unwrap()
        .build();
    let k = key("a", Value::Null);
    fake.script(&k, [Step::Hang]);
    let err = c.get(&k).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let state = c.state(&k).unwrap();
    assert_eq!(state.status, FetchStatus::Idle, "nothing stays fetching");
    assert_eq!(c.fetches_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_reader_hands_the_fetch_to_a_waiting_one() {
    let fake = Fake::new().latency(Duration::from_secs(1));
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    let leader = tokio::spawn({
        let c = c.clone();
        let k = k.clone();
        async move { c.get(&k).await }
    });
    settle().await;
    let waiter = tokio::spawn({
        let c = c.clone();
        let k = k.clone();
        async move { c.get(&k).await }
    });
    settle().await;
    leader.abort();
    let _ = leader.await;
    let v = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(v["n"], 2, "the waiter ran a fetch of its own");
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Idle);
}

#[tokio::test(start_paused = true)]
async fn not_modified_keeps_the_value_and_counts_as_success() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    let v1 = c.get(&k).await.unwrap();
    advance(Duration::from_secs(400)).await;
    fake.script(&k, [Step::NotModified]);
    let v2 = c.refetch(&k).await.unwrap();
    assert!(Arc::ptr_eq(&v1, &v2));
    let state = c.state(&k).unwrap();
    assert!(!state.is_stale);
    let stats = c.stats();
    assert_eq!(stats.not_modified, 1);
    assert_eq!(stats.successful_refreshes, 2);
    // "Not modified" with nothing cached is bad data, never a silent empty.
    let fresh = key("process.get", Value::Null);
    fake.script(&fresh, [Step::NotModified]);
    assert!(c.get(&fresh).await.unwrap_err().is_bad_data());
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_limit_applies_to_reads() {
    let fake = Fake::new().latency(Duration::from_millis(300));
    let mut settings = RefreshSettings::default();
    settings.max_concurrent_refreshes = 3;
    let c = QueryClient::builder(fake.clone())
        .settings(settings)
        .unwrap()
        .build();
    let reads = (0..20).map(|i| {
        let c = c.clone();
        async move { c.get(&key("a", json!(i))).await }
    });
    let results = futures::future::join_all(reads).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(fake.calls(), 20);
    assert_eq!(fake.max_in_flight(), 3);
}

#[tokio::test(start_paused = true)]
async fn query_state_reports_what_a_dashboard_needs() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", json!({"s": 1}));
    c.get(&k).await.unwrap();
    advance(Duration::from_secs(10)).await;
    let s = c.state(&k).unwrap();
    assert_eq!(s.key, k);
    assert_eq!(s.resource, "process");
    assert_eq!(s.staleness, Staleness::mins(5));
    assert_eq!(s.age, Some(Duration::from_secs(10)));
    assert!(!s.is_stale);
    assert_eq!(s.status, FetchStatus::Idle);
    assert_eq!(s.version, 1);
    assert_eq!(s.observers, 0);
    assert!(
        !s.is_active,
        "without a refresh service, only a subscription makes a query active"
    );
    // Read when the miss began; updated when its 10 ms fetch completed.
    let updated = s.updated_at.unwrap();
    assert_eq!(
        updated.duration_since(s.last_read).unwrap(),
        Duration::from_millis(10)
    );
    assert_eq!(c.queries().len(), 1);
    let stats = c.stats();
    assert_eq!(stats.cached_queries, 1);
    assert_eq!(stats.active_queries, 0);
    assert_eq!(stats.bytes_fetched, 100);
}

#[tokio::test(start_paused = true)]
async fn the_change_feed_announces_every_real_change_of_any_query() {
    let fake = Fake::new();
    let c = client(&fake);
    let mut changes = c.changes();
    let a = key("process.list", json!({"a": 1}));
    let b = key("node.tree", Value::Null);
    c.get(&a).await.unwrap();
    c.set_data(&b, json!(1));
    c.set_data(&b, json!(1)); // equal: nothing
    fake.script(&a, [Step::Ok(json!({"key": a.to_string(), "n": 1}))]);
    c.refetch(&a).await.unwrap(); // equal data again: nothing
    c.set_data(&a, json!("changed"));
    let got: Vec<(String, u64)> = (0..3)
        .map(|_| {
            let ch = changes.try_recv().unwrap();
            (ch.key.to_string(), ch.version)
        })
        .collect();
    assert_eq!(
        got,
        vec![(a.to_string(), 1), (b.to_string(), 1), (a.to_string(), 2)]
    );
    assert!(changes.try_recv().is_err(), "nothing more");
}

#[tokio::test(start_paused = true)]
async fn the_clients_settings_are_its_own_and_a_service_changes_none_of_them() {
    let fake = Fake::new();
    let net = revalidate::NetworkMonitor::new();
    let mut settings = RefreshSettings::default();
    settings.offline_after_errors = 1;
    settings.max_concurrent_refreshes = 7;
    let c = QueryClient::builder(fake.clone())
        .settings(settings.clone())
        .unwrap()
        .network(net.clone())
        .build();
    // One network error is this client's threshold, with no service running.
    let k = key("a", Value::Null);
    fake.script(&k, [Step::Err(FetchError::network("refused"))]);
    assert!(c.get(&k).await.unwrap_err().is_network());
    assert!(!net.is_online(), "offline after one error");
    net.set_online(true);
    let refresh = revalidate::BackgroundRefresh::new(&c).unwrap().start();
    assert_eq!(
        c.settings(),
        &settings,
        "attaching a service changes nothing"
    );
    refresh.shutdown().await;
    assert_eq!(c.settings(), &settings);
    let mut bad = RefreshSettings::default();
    bad.max_concurrent_refreshes = 0;
    let err = QueryClient::builder(fake.clone())
        .settings(bad)
        .unwrap_err();
    assert_eq!(err.field, "max_concurrent_refreshes");
}

#[tokio::test(start_paused = true)]
async fn max_queries_evicts_the_query_idle_longest_and_never_a_subscribed_one() {
    let fake = Fake::new();
    let c = QueryClient::builder(fake.clone()).max_queries(3).build();
    let watched = key("a", json!("watched"));
    let _sub = c.subscribe(&watched);
    c.get(&watched).await.unwrap();
    for i in 0..2 {
        c.get(&key("a", json!(i))).await.unwrap();
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(c.len(), 3);
    // A flood of new keys: each one evicts the oldest idle query.
    for i in 2..50 {
        c.get(&key("a", json!(i))).await.unwrap();
        assert!(c.len() <= 3, "{} queries cached", c.len());
        advance(Duration::from_millis(300)).await;
    }
    assert!(
        c.get_cached(&watched).is_some(),
        "a subscribed query is never evicted"
    );
    assert!(
        c.state(&key("a", json!(0))).is_none(),
        "the oldest went first"
    );
    assert!(c.state(&key("a", json!(49))).is_some(), "the newest stays");
    assert_eq!(c.stats().evicted, 48);
}

#[tokio::test(start_paused = true)]
async fn a_key_collected_and_cached_again_never_shows_a_lower_version() {
    // Found by the model checker: a re-created entry restarted at version 0.
    let fake = Fake::new();
    let c = QueryClient::builder(fake.clone())
        .gc_time(Duration::from_secs(1))
        .build();
    let k = key("a", Value::Null);
    c.get(&k).await.unwrap();
    c.refetch(&k).await.unwrap();
    c.refetch(&k).await.unwrap();
    let before = c.state(&k).unwrap().version;
    assert_eq!(before, 3);
    advance(Duration::from_secs(2)).await;
    assert_eq!(c.collect_garbage(), 1);
    assert!(c.state(&k).is_none());
    let again = c.get_with_meta(&k).await.unwrap();
    assert!(again.version > before, "{} after {before}", again.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queries_holds_under_concurrent_misses_on_real_threads() {
    // Found at the daemon: with reads in flight and a service attached, one
    // eviction met the same kept entries again and again, and nothing was
    // evicted (395 queries cached with a cap of 50 before the fix).
    let fake = Fake::new().latency(Duration::from_millis(5));
    let mut settings = RefreshSettings::default();
    settings.max_concurrent_refreshes = 8;
    let c = QueryClient::builder(fake.clone())
        .settings(settings)
        .unwrap()
        .clock(revalidate::ClockSource::Coarse)
        .max_queries(50)
        .build();
    let refresh = revalidate::BackgroundRefresh::new(&c).unwrap().start();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers = (0..8).map(|_| {
        let (c, next, peak) = (c.clone(), next.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 400 {
                    return;
                }
                c.get(&key("a", json!(i))).await.unwrap();
                peak.fetch_max(c.len(), std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    futures::future::join_all(readers).await;
    refresh.shutdown().await;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak <= 50 + 8,
        "{peak} queries cached with a cap of 50 and 8 in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn pages_of_queries_follow_key_order_and_join_up_to_the_whole_list() {
    let c = client(&Fake::new());
    for i in [7, 3, 11, 0, 5, 9, 1] {
        c.set_data(&key("process.get", json!({ "id": i })), json!(i));
    }
    let whole: Vec<QueryKey> = c.queries().into_iter().map(|q| q.key).collect();
    for limit in 1..=8 {
        let mut joined = Vec::new();
        let mut after: Option<QueryKey> = None;
        loop {
            let page = c.queries_page(after.as_ref(), limit);
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|q| q.key.clone());
            joined.extend(page.into_iter().map(|q| q.key));
        }
        assert_eq!(joined, whole, "pages of {limit}");
    }
    assert!(c.queries_page(None, 0).is_empty());
    assert!(c.queries_page(whole.last(), 10).is_empty());
}

#[tokio::test(start_paused = true)]
async fn recently_updated_lists_the_newest_first_and_no_more_than_asked() {
    let c = client(&Fake::new());
    for i in 0..6 {
        c.set_data(&key("process.get", json!({ "id": i })), json!(i));
        advance(Duration::from_secs(1)).await;
    }
    // Written last: the newest again.
    c.set_data(&key("process.get", json!({ "id": 2 })), json!("again"));
    let ids = |qs: Vec<revalidate::QueryState<Value>>| -> Vec<i64> {
        qs.iter()
            .map(|q| q.key.params()["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(c.recently_updated(3)), vec![2, 5, 4]);
    assert_eq!(ids(c.recently_updated(100)), vec![2, 5, 4, 3, 1, 0]);
    assert!(c.recently_updated(0).is_empty());
}
