//! The engine on the browser's clock, timers and event loop.
#![cfg(all(target_arch = "wasm32", target_os = "unknown"))]

mod support;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::join_all;
use revalidate::web::{local_fetcher, pause_clock, resume_clock};
use revalidate::{
    BackgroundRefresh, FetchError, FetchErrorKind, OfflineReason, QueryClient, QueryKey,
};
use support::{advance, counting_client, policy, secs, settings, settle};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// Readers of a key with nothing cached share one fetch (a real browser
/// timer inside a fetcher that is not `Send`), then read from the cache.
#[wasm_bindgen_test]
async fn readers_share_one_fetch_then_read_the_cache() {
    resume_clock();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let client: QueryClient<String> = QueryClient::builder(local_fetcher(move |key: QueryKey| {
        c.set(c.get() + 1);
        async move {
            // A browser timer: not Send, and it takes real time.
            gloo_timers::future::TimeoutFuture::new(30).await;
            Ok::<_, FetchError>(format!("value of {key}"))
        }
    }))
    .build();
    let key = QueryKey::bare("r.list");
    let reads = join_all((0..5).map(|_| client.get(&key))).await;
    assert_eq!(calls.get(), 1, "five readers, one fetch");
    let first = reads[0].as_ref().expect("read").clone();
    assert_eq!(*first, "value of r.list");
    for r in &reads {
        assert!(
            Arc::ptr_eq(r.as_ref().expect("read"), &first),
            "the same value"
        );
    }
    assert!(Arc::ptr_eq(
        &client.get_cached(&key).expect("cached"),
        &first
    ));
    let again = client.get(&key).await.expect("read");
    assert!(Arc::ptr_eq(&again, &first));
    assert_eq!(calls.get(), 1, "a cached read does not fetch");
}

/// A failure is shared by the readers of one flight and is not cached.
#[wasm_bindgen_test]
async fn a_failed_flight_is_shared_and_not_cached() {
    resume_clock();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let client: QueryClient<String> = QueryClient::builder(local_fetcher(move |key: QueryKey| {
        let n = c.get() + 1;
        c.set(n);
        async move {
            gloo_timers::future::TimeoutFuture::new(20).await;
            if n == 1 {
                Err(FetchError::failed("boom"))
            } else {
                Ok(format!("{key} #{n}"))
            }
        }
    }))
    .build();
    let key = QueryKey::bare("r.flaky");
    let reads = join_all((0..3).map(|_| client.get(&key))).await;
    assert_eq!(calls.get(), 1, "three readers, one fetch");
    assert!(
        reads
            .iter()
            .all(|r| r.as_ref().is_err_and(FetchError::is_failed))
    );
    assert!(client.get_cached(&key).is_none(), "a failure is not cached");
    assert_eq!(*client.get(&key).await.expect("second read"), "r.flaky #2");
}

/// A stale query is refreshed by the service at its due time, on the
/// manual clock: not before, and once.
#[wasm_bindgen_test]
async fn the_service_refreshes_at_the_due_time() {
    pause_clock();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let key = QueryKey::bare("r.cycle");
    assert_eq!(*client.get(&key).await.unwrap(), "r.cycle #1");
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    let mut sub = client.subscribe(&key);
    advance(secs(9.0)).await;
    assert_eq!(calls.get(), 1, "fresh for 10 s");
    assert!(!client.state(&key).unwrap().is_stale);
    advance(secs(1.5)).await;
    assert_eq!(calls.get(), 2, "refreshed once it went stale");
    assert_eq!(*client.get_cached(&key).unwrap(), "r.cycle #2");
    let heard = futures::StreamExt::next(&mut sub).await.expect("a change");
    assert_eq!(*heard, "r.cycle #2", "the subscriber heard of it");
    advance(secs(9.0)).await;
    assert_eq!(calls.get(), 2);
    advance(secs(1.5)).await;
    assert_eq!(calls.get(), 3, "and again one limit later");
    refresh.shutdown().await;
    resume_clock();
}

/// A failed refresh keeps the last good value and is retried after
/// `retry_interval`, doubling, never early.
#[wasm_bindgen_test]
async fn failed_refreshes_are_retried_with_backoff() {
    pause_clock();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(
        calls.clone(),
        |n| (n == 2 || n == 3).then(|| FetchError::failed("upstream 500")),
        settings(),
    );
    let key = QueryKey::bare("r.retry");
    client.get(&key).await.unwrap();
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    advance(secs(10.5)).await;
    assert_eq!(calls.get(), 2, "the refresh ran and failed");
    let state = client.state(&key).unwrap();
    assert_eq!(state.error_count, 1);
    assert_eq!(state.last_error.unwrap().kind(), FetchErrorKind::Failed);
    assert_eq!(
        *client.get_cached(&key).unwrap(),
        "r.retry #1",
        "the last good value stays"
    );
    advance(secs(1.5)).await;
    assert_eq!(calls.get(), 2, "no retry before retry_interval (2 s)");
    advance(secs(1.0)).await;
    assert_eq!(calls.get(), 3, "first retry after 2 s; it fails too");
    advance(secs(3.0)).await;
    assert_eq!(calls.get(), 3, "the second retry waits twice as long (4 s)");
    advance(secs(1.5)).await;
    assert_eq!(calls.get(), 4, "second retry, which succeeds");
    assert_eq!(*client.get_cached(&key).unwrap(), "r.retry #4");
    assert_eq!(client.state(&key).unwrap().error_count, 0);
    refresh.shutdown().await;
    resume_clock();
}

/// Offline, nothing is fetched; back online, what fell due is refreshed at
/// once, without waiting for a window.
#[wasm_bindgen_test]
async fn offline_pauses_refreshes_and_online_catches_up() {
    pause_clock();
    let calls = Rc::new(Cell::new(0));
    let client = counting_client(calls.clone(), |_| None, settings());
    let keys: Vec<QueryKey> = (0..3)
        .map(|i| QueryKey::bare(format!("r.off{i}")))
        .collect();
    for k in &keys {
        client.get(k).await.unwrap();
    }
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    client.network().set_online(false);
    advance(secs(30.0)).await;
    advance(secs(30.0)).await;
    assert_eq!(calls.get(), 3, "offline: nothing fetched");
    assert!(client.state(&keys[0]).unwrap().is_stale);
    client.network().set_online(true);
    settle().await;
    settle().await;
    assert_eq!(calls.get(), 6, "online: the three stale queries, at once");
    assert!(keys.iter().all(|k| !client.state(k).unwrap().is_stale));
    refresh.shutdown().await;
    resume_clock();
}

/// Network errors in a row take the engine offline by themselves.
#[wasm_bindgen_test]
async fn network_errors_infer_offline() {
    pause_clock();
    let calls = Rc::new(Cell::new(0));
    let mut s = settings();
    s.offline_after_errors = 2;
    let client = counting_client(
        calls.clone(),
        |n| (n > 2).then(|| FetchError::network("connection refused")),
        s,
    );
    client.get(&QueryKey::bare("r.a")).await.unwrap();
    client.get(&QueryKey::bare("r.b")).await.unwrap();
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    assert!(client.network().is_online());
    advance(secs(10.5)).await;
    assert_eq!(calls.get(), 4);
    let status = client.network().status();
    assert!(!status.online, "two network errors in a row: offline");
    assert_eq!(status.reason, Some(OfflineReason::Errors));
    refresh.shutdown().await;
    resume_clock();
}

/// A fetch that does not answer within `fetch_timeout` is cut off, on the
/// manual clock.
#[wasm_bindgen_test]
async fn a_slow_fetch_times_out() {
    pause_clock();
    let client: QueryClient<String> = QueryClient::builder(local_fetcher(|_key: QueryKey| {
        std::future::pending::<Result<String, FetchError>>()
    }))
    .policy(policy())
    .settings(settings())
    .unwrap()
    .build();
    let key = QueryKey::bare("r.slow");
    let read = client.get(&key);
    let clock = async {
        advance(secs(4.0)).await;
        advance(secs(1.5)).await;
    };
    let (read, ()) = futures::join!(read, clock);
    let err = read.expect_err("timed out");
    assert!(err.is_timeout(), "{err}");
    resume_clock();
}
