//! The background refresh service, rule by rule, on a paused clock with a
//! scripted source.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use revalidate::{
    BackgroundRefresh, FetchError, FetchStatus, Policy, QueryClient, QueryFilter, RefreshHandle,
    RefreshSettings, Staleness,
};
use serde_json::{Value, json};
use support::{Fake, Step, key, settle};
use tokio::time::{Instant, sleep};

fn policy() -> Policy {
    Policy::builder()
        .resource("node", Staleness::Never)
        .resource("process", Staleness::mins(5))
        .resource("notification", Staleness::secs(30))
        .resource("system_health", Staleness::Always)
        .build()
        .unwrap()
}

fn settings() -> RefreshSettings {
    let mut s = RefreshSettings::default();
    s.jitter = 0.0;
    s
}

fn client(fake: &Fake) -> QueryClient<Value> {
    client_with(fake, settings())
}

fn client_with(fake: &Fake, s: RefreshSettings) -> QueryClient<Value> {
    QueryClient::builder(fake.clone())
        .policy(policy())
        .settings(s)
        .unwrap()
        .build()
}

fn start(c: &QueryClient<Value>) -> RefreshHandle {
    BackgroundRefresh::new(c).unwrap().start()
}

/// Fills `n` keys of `action` through reads (so they count as active).
async fn fill(c: &QueryClient<Value>, action: &str, n: usize) -> Vec<revalidate::QueryKey> {
    let keys: Vec<_> = (0..n).map(|i| key(action, json!({ "i": i }))).collect();
    futures::future::join_all(keys.iter().map(|k| c.get(k))).await;
    keys
}

#[tokio::test(start_paused = true)]
async fn twenty_stale_queries_refresh_with_never_more_than_three_in_flight() {
    let fake = Fake::new().latency(Duration::from_millis(300));
    let c = client(&fake);
    let keys = fill(&c, "process.list", 20).await;
    assert_eq!(fake.calls(), 20);
    assert_eq!(fake.max_in_flight(), 3, "the client's limit bounds reads");
    fake.reset_counts();
    fake.constant(json!({ "refreshed": true }));
    let refresh = start(&c);
    assert_eq!(
        c.settings().max_concurrent_refreshes,
        3,
        "starting a service changes none of the client's settings"
    );
    // Stale after 5 minutes, checked every 30 s: keep reading so they stay active.
    for _ in 0..11 {
        sleep(Duration::from_secs(30)).await;
        for k in &keys {
            c.get_cached(k).unwrap();
        }
    }
    sleep(Duration::from_secs(5)).await;
    assert_eq!(fake.calls(), 20, "every stale query refreshed once");
    assert_eq!(fake.max_in_flight(), 3);
    for k in &keys {
        assert_eq!(c.state(k).unwrap().version, 2, "{k}");
    }
    let stats = refresh.stats();
    assert_eq!(stats.total_refreshes, 40);
    assert_eq!(stats.successful_refreshes, 40);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn twelve_due_keys_of_one_action_go_out_in_three_batches() {
    let fake = Fake::new().combined_batches();
    let c = client(&fake);
    let keys = fill(&c, "process.list", 12).await;
    let refresh = start(&c);
    sleep(Duration::from_secs(301)).await;
    for k in &keys {
        c.get_cached(k).unwrap();
    }
    sleep(Duration::from_secs(30)).await;
    let batches = fake.batch_calls();
    assert_eq!(
        batches.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 5, 2]
    );
    assert_eq!(
        fake.max_in_flight(),
        3,
        "a batch sent as one request counts once"
    );
    for k in &keys {
        assert_eq!(c.state(k).unwrap().data.unwrap()["n"], 2);
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batches_count_once_against_the_limit_and_mix_no_actions() {
    let fake = Fake::new()
        .combined_batches()
        .latency(Duration::from_secs(1));
    let c = client(&fake);
    let mut keys = fill(&c, "process.list", 7).await;
    keys.extend(fill(&c, "process.get", 3).await);
    c.invalidate(QueryFilter::All);
    let refresh = start(&c);
    sleep(Duration::from_secs(3)).await;
    let batches = fake.batch_calls();
    assert_eq!(batches.len(), 3);
    for b in &batches {
        assert!(
            b.iter().all(|k| k.action() == b[0].action()),
            "one action per batch"
        );
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_hour_offline_makes_no_fetches_then_everything_catches_up_oldest_first() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let mut keys = fill(&c, "notification.list", 3).await;
    sleep(Duration::from_secs(10)).await;
    keys.extend(fill(&c, "process.list", 3).await);
    let refresh = start(&c);
    fake.reset_counts();
    c.network().set_online(false);
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(fake.calls(), 0, "no fetch at all while offline");
    for k in &keys {
        let state = c.state(k).unwrap();
        assert!(state.is_stale);
        assert_eq!(state.status, FetchStatus::Paused, "{k}");
    }
    assert_eq!(
        refresh.stats().skipped_offline,
        6,
        "each due query counted once"
    );
    let back = Instant::now();
    c.network().set_online(true);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.calls(), 6);
    // Refreshed within one check interval, the longest overdue first.
    let order = fake.call_keys();
    assert!(
        order[..3].iter().all(|k| k.action() == "notification.list"),
        "{order:?}"
    );
    for k in &keys {
        let t = fake.call_times(k)[0];
        assert!(t - back <= Duration::from_secs(30));
        assert!(!c.state(k).unwrap().is_stale);
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_query_unread_for_inactive_after_is_not_refreshed() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(120);
    let c = client_with(&fake, s);
    let read = key("notification.list", json!({"read": true}));
    let unread = key("notification.list", json!({"read": false}));
    c.get(&read).await.unwrap();
    c.get(&unread).await.unwrap();
    let refresh = start(&c);
    for _ in 0..10 {
        sleep(Duration::from_secs(30)).await;
        c.get_cached(&read).unwrap();
    }
    assert!(
        fake.calls_for(&read) >= 10,
        "the read query keeps refreshing"
    );
    let unread_calls = fake.calls_for(&unread);
    assert!(
        unread_calls <= 5,
        "refreshed only while recently read: {unread_calls}"
    );
    // Still cached (gc_time counts from when it went inactive), not refreshed.
    sleep(Duration::from_secs(100)).await;
    assert_eq!(
        fake.calls_for(&unread),
        unread_calls,
        "not refreshed once inactive"
    );
    assert!(!c.state(&unread).unwrap().is_active);
    // Reading it again makes it active: the stale read schedules a refresh.
    c.get_cached(&unread).unwrap();
    sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.calls_for(&unread), unread_calls + 1);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_subscription_keeps_a_query_active_and_hears_only_changes() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(60);
    let c = client_with(&fake, s);
    let k = key("notification.list", Value::Null);
    // Data changes on every other fetch.
    fake.respond(|_, n| Step::Ok(json!({ "v": n / 2 })));
    let refresh = start(&c);
    let mut sub = c.subscribe(&k);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while let Ok(Some(v)) = tokio::time::timeout_at(deadline, sub.next()).await {
        seen.push(v["v"].as_u64().unwrap());
    }
    // ~20 refreshes in 10 minutes, ~10 distinct values: one event per change.
    let fetched = fake.calls_for(&k);
    assert!(fetched >= 18, "the subscription kept it active: {fetched}");
    let distinct = seen.len();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "no repeated value: {seen:?}"
    );
    assert!(
        (fetched / 2..=fetched / 2 + 1).contains(&distinct),
        "{distinct} events for {fetched} fetches"
    );
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn never_refreshes_only_on_invalidation_and_always_at_every_check() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let node = key("node.tree", Value::Null);
    let health = key("system_health", Value::Null);
    c.get(&node).await.unwrap();
    c.get(&health).await.unwrap();
    let refresh = start(&c);
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(fake.calls_for(&node), 1, "never stale by time");
    let checks = fake.calls_for(&health) - 1;
    assert!(
        (119..=121).contains(&checks),
        "always: once per 30 s check, got {checks}"
    );
    c.invalidate(&node);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(fake.calls_for(&node), 2, "an invalidation refreshes it");
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(fake.calls_for(&node), 2);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn invalidations_within_one_window_coalesce_into_one_refresh() {
    let fake = Fake::new();
    let c = client(&fake);
    let keys = fill(&c, "process.list", 3).await;
    let refresh = start(&c);
    sleep(Duration::from_secs(1)).await;
    fake.reset_counts();
    // With no check in the last window, the first invalidation is served at once…
    let t0 = Instant::now();
    c.invalidate(QueryFilter::Action("process.list".into()));
    sleep(Duration::from_secs(1)).await;
    for k in &keys {
        assert_eq!(fake.calls_for(k), 1, "{k}");
        assert!(fake.call_times(k)[0] - t0 < Duration::from_millis(100));
    }
    // …and the ten that follow within the window become one refresh per key
    // at the next check, one window after the last.
    for _ in 0..5 {
        c.invalidate(QueryFilter::Action("process.list".into()));
        c.invalidate(&keys[0]);
        sleep(Duration::from_secs(2)).await;
    }
    sleep(Duration::from_secs(30)).await;
    for k in &keys {
        let times = fake.call_times(k);
        assert_eq!(times.len(), 2, "{k}");
        assert_eq!((times[1] - t0).as_secs(), 30);
        assert!(!c.state(k).unwrap().is_stale);
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_retried_with_exact_doubling_delays_then_waits_for_the_next_due_time() {
    let fake = Fake::new();
    let mut s = settings();
    s.check_interval = Duration::from_secs(1);
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let k = key("process.list", Value::Null);
    let first = c.get(&k).await.unwrap();
    let refresh = start(&c);
    fake.respond(|_, _| Step::Err(FetchError::failed("500 Internal Server Error")));
    let t0 = Instant::now();
    sleep(Duration::from_secs(300 + 60 + 120 + 240 + 10)).await;
    let times: Vec<u64> = fake.call_times(&k)[1..]
        .iter()
        .map(|t| (*t - t0).as_secs())
        .collect();
    // Due at 300 s; retries 60 s, 120 s and 240 s after each failure (each
    // seen at the next 1 s check); then nothing until the next natural due time.
    assert_eq!(times.len(), 4, "{times:?}");
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(times[0], 300, "{times:?}");
    assert_eq!(
        gaps,
        vec![60, 120, 240],
        "retry_interval × 2^(n-1), exactly"
    );
    // The last good value is still served, stale, with the error recorded.
    assert!(Arc::ptr_eq(&c.get_cached(&k).unwrap(), &first));
    let state = c.state(&k).unwrap();
    assert!(state.is_stale);
    assert_eq!(state.error_count, 4);
    assert_eq!(
        state.last_error.unwrap().message(),
        "500 Internal Server Error"
    );
    assert_eq!(refresh.stats().retries, 3);
    // The next natural due time: five minutes after the last failure.
    fake.respond(|_, n| Step::Ok(json!({ "n": n })));
    sleep(Duration::from_secs(300)).await;
    assert_eq!(fake.calls_for(&k), 6);
    assert_eq!(c.state(&k).unwrap().error_count, 0);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rejected_refresh_is_not_retried() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = start(&c);
    fake.respond(|_, _| Step::Err(FetchError::rejected("403 Forbidden")));
    sleep(Duration::from_secs(300 + 290)).await;
    assert_eq!(fake.calls_for(&k), 2, "no retry for a permanent error");
    sleep(Duration::from_secs(40)).await;
    assert_eq!(
        fake.calls_for(&k),
        3,
        "tried again at the next natural due time"
    );
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_never_returns_is_cut_off_and_nothing_stays_fetching() {
    let fake = Fake::new();
    let mut s = settings();
    s.fetch_timeout = Duration::from_secs(10);
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let k = key("process.list", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = start(&c);
    fake.script(&k, [Step::Hang]);
    sleep(Duration::from_secs(301)).await;
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Fetching);
    sleep(Duration::from_secs(30)).await;
    let state = c.state(&k).unwrap();
    assert_eq!(state.status, FetchStatus::Idle);
    assert!(state.last_error.unwrap().is_timeout());
    assert_eq!(c.fetches_in_flight(), 0);
    // Retried after retry_interval; this time it answers.
    sleep(Duration::from_secs(90)).await;
    assert_eq!(c.state(&k).unwrap().error_count, 0);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn network_errors_trip_offline_and_the_probe_brings_it_back() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let keys = fill(&c, "notification.list", 5).await;
    let reachable = Arc::new(Mutex::new(true));
    let probes = Arc::new(Mutex::new(0u32));
    let refresh = BackgroundRefresh::new(&c)
        .unwrap()
        .with_probe(Duration::from_secs(5), {
            let reachable = reachable.clone();
            let probes = probes.clone();
            move || {
                let up = *reachable.lock();
                *probes.lock() += 1;
                async move { up }
            }
        })
        .start();
    fake.respond(|_, _| Step::Err(FetchError::network("connection refused")));
    *reachable.lock() = false;
    sleep(Duration::from_secs(31)).await;
    assert!(
        !c.network().is_online(),
        "three network errors in a row, or the probe, took it offline"
    );
    let calls_when_down = fake.calls();
    sleep(Duration::from_secs(600)).await;
    assert_eq!(
        fake.calls(),
        calls_when_down,
        "offline: only the probe talks to the source"
    );
    assert!(*probes.lock() >= 100);
    fake.respond(|_, n| Step::Ok(json!({ "n": n })));
    *reachable.lock() = true;
    sleep(Duration::from_secs(6)).await;
    assert!(c.network().is_online());
    sleep(Duration::from_secs(30)).await;
    for k in &keys {
        assert_eq!(c.state(k).unwrap().error_count, 0, "{k} caught up");
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_probe_one_due_query_per_check_is_tried_while_offline_by_errors() {
    let fake = Fake::new();
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    s.retry_failed_refresh = false;
    let c = client_with(&fake, s);
    let keys = fill(&c, "notification.list", 4).await;
    let refresh = start(&c);
    fake.respond(|_, _| Step::Err(FetchError::network("connection refused")));
    sleep(Duration::from_secs(31)).await;
    assert!(!c.network().is_online());
    let down = fake.calls();
    sleep(Duration::from_secs(300)).await;
    let trials = fake.calls() - down;
    assert!(
        (1..=10).contains(&trials),
        "one trial per check at most: {trials}"
    );
    fake.respond(|_, n| Step::Ok(json!({ "n": n })));
    sleep(Duration::from_secs(60)).await;
    assert!(
        c.network().is_online(),
        "a successful trial brings the network back"
    );
    sleep(Duration::from_secs(60)).await;
    for k in &keys {
        assert!(!c.state(k).unwrap().is_stale, "{k}");
    }
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_in_flight_fetches_finish_within_the_grace_period() {
    let fake = Fake::new().latency(Duration::from_secs(2));
    let mut s = settings();
    s.shutdown_grace = Duration::from_secs(5);
    let c = client_with(&fake, s);
    let k = key("system_health", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = start(&c);
    sleep(Duration::from_secs(31)).await;
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Fetching);
    let version = c.state(&k).unwrap().version;
    refresh.shutdown().await;
    let state = c.state(&k).unwrap();
    assert_eq!(state.status, FetchStatus::Idle);
    assert_eq!(
        state.version,
        version + 1,
        "the in-flight refresh finished and was stored"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_what_does_not_finish_and_leaves_the_cache_as_it_was() {
    let fake = Fake::new();
    let mut s = settings();
    s.shutdown_grace = Duration::from_secs(1);
    let c = client_with(&fake, s);
    let k = key("system_health", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = start(&c);
    sleep(Duration::from_secs(1)).await;
    let before = c.get_cached(&k).unwrap();
    fake.script(&k, [Step::Hang]);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(c.state(&k).unwrap().status, FetchStatus::Fetching);
    let t = Instant::now();
    refresh.shutdown().await;
    assert_eq!(Instant::now() - t, Duration::from_secs(1));
    let state = c.state(&k).unwrap();
    assert_eq!(state.status, FetchStatus::Idle, "nothing stays fetching");
    assert!(Arc::ptr_eq(state.data.as_ref().unwrap(), &before));
    assert_eq!(state.error_count, 0, "a cancelled fetch is not a failure");
    // The client goes on working, and a new service can attach.
    assert!(c.refetch(&k).await.is_ok());
    let again = start(&c);
    again.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn one_service_per_client_and_dropping_the_handle_stops_it() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("system_health", Value::Null);
    c.get(&k).await.unwrap();
    let refresh = start(&c);
    let err = BackgroundRefresh::new(&c).unwrap_err();
    assert!(err.is_already_running());
    sleep(Duration::from_secs(61)).await;
    let calls = fake.calls();
    assert!(calls >= 3);
    drop(refresh);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(fake.calls(), calls, "stopped");
    assert!(
        BackgroundRefresh::new(&c).is_ok(),
        "detached: another may attach"
    );
}

#[tokio::test(start_paused = true)]
async fn the_service_runs_as_a_plain_future_too() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("system_health", Value::Null);
    c.get(&k).await.unwrap();
    let service = BackgroundRefresh::new(&c).unwrap();
    let controller = service.controller();
    let task = tokio::spawn(service.run());
    sleep(Duration::from_secs(61)).await;
    assert!(fake.calls_for(&k) >= 3);
    controller.check_now();
    settle().await;
    controller.stop();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_queries_loaded_together() {
    let fake = Fake::new();
    let mut s = settings();
    s.jitter = 0.2;
    s.check_interval = Duration::from_secs(1);
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let keys = fill(&c, "process.list", 40).await;
    let t0 = Instant::now();
    let refresh = start(&c);
    sleep(Duration::from_secs(400)).await;
    let mut firsts: Vec<u64> = keys
        .iter()
        .map(|k| (fake.call_times(k)[1] - t0).as_secs())
        .collect();
    firsts.sort_unstable();
    assert!(
        firsts[0] >= 240 && *firsts.last().unwrap() <= 361,
        "{firsts:?}"
    );
    let spread = firsts.last().unwrap() - firsts[0];
    assert!(
        spread >= 60,
        "due times spread over ±20 % of 5 min: {spread}s"
    );
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn queries_without_data_that_are_subscribed_get_fetched() {
    let fake = Fake::new();
    let c = client(&fake);
    let k = key("process.list", Value::Null);
    let refresh = start(&c);
    let mut sub = c.subscribe(&k);
    let first = tokio::time::timeout(Duration::from_secs(31), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first["n"], 1);
    refresh.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stats_have_the_seeds_fields_and_a_per_resource_breakdown() {
    let fake = Fake::new().latency(Duration::from_millis(200));
    let mut s = settings();
    s.inactive_after = Duration::from_secs(86_400);
    let c = client_with(&fake, s);
    let p = fill(&c, "process.list", 2).await;
    let n = fill(&c, "notification.list", 3).await;
    let refresh = start(&c);
    fake.script(&n[0], [Step::Err(FetchError::failed("boom"))]);
    sleep(Duration::from_secs(31)).await;
    for k in p.iter().chain(&n) {
        c.get_cached(k);
    }
    let stats = refresh.stats();
    assert_eq!(stats.total_refreshes, 5 + 3);
    assert_eq!(stats.successful_refreshes, 7);
    assert_eq!(stats.failed_refreshes, 1);
    assert_eq!(stats.average_refresh_time, Duration::from_millis(200));
    assert!(stats.last_refresh_time.is_some());
    assert_eq!(stats.active_queries, 5);
    assert_eq!(stats.cached_queries, 5);
    assert_eq!(stats.bytes_fetched, 700);
    assert_eq!(stats.cache.misses, 5);
    assert_eq!(stats.cache.fresh_hits + stats.cache.stale_hits, 5);
    let notif = &stats.resources["notification"];
    assert_eq!((notif.total_refreshes, notif.failed_refreshes), (6, 1));
    assert_eq!(stats.resources["process"].total_refreshes, 2);
    refresh.shutdown().await;
}
