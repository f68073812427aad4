//! `Retry-After` from the upstream, against the real daemon: an absurd
//! delay on a `429` is cut to `[refresh] max_retry_after`, so the query is
//! refreshed again once the upstream recovers; and the HTTP-date form is
//! read as the date it is.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant, SystemTime};

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use support::Daemon;
use support::faults::{Scripted, json};

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

fn config(base: &str, refresh_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
base_url = "{base}"
timeout = "2s"
probe_interval = "1h"

[refresh]
check_interval = "50ms"
retry_interval = "200ms"
max_retries = 3
inactive_after = "1h"
jitter = 0.0
{refresh_extra}

[staleness]
item = "300ms"

[actions."item.get"]
"#
    )
}

/// What the upstream answers: `{"v": n}` while `failing` is 0; else
/// `failing` as a status with `retry_after` as its `Retry-After`.
struct Behaviour {
    version: AtomicU64,
    failing: AtomicU64,
    retry_after: parking_lot::Mutex<String>,
}

fn upstream(b: Arc<Behaviour>) -> impl Fn(&support::faults::Received) -> Response {
    move |_| match b.failing.load(SeqCst) {
        0 => json(format!(r#"{{"v":{}}}"#, b.version.load(SeqCst))),
        code => (
            axum::http::StatusCode::from_u16(code as u16).unwrap(),
            [("retry-after", b.retry_after.lock().clone())],
            "slow down",
        )
            .into_response(),
    }
}

async fn queries(d: &Daemon) -> Value {
    let mut page: Value = get(&d.url("/v1/queries")).await.json().await.unwrap();
    page["queries"].take()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Fails the upstream with `status` + `Retry-After: retry_after` until the
/// daemon records it, then recovers it; returns how long after the failure
/// the daemon served the new value, and the delay the failure scheduled.
async fn fail_then_recover(
    d: &Daemon,
    b: &Behaviour,
    status: u64,
    retry_after: &str,
) -> (Duration, u64) {
    let url = d.url("/v1/resources/item.get");
    assert_eq!(get(&url).await.json::<Value>().await.unwrap()["v"], 0);
    *b.retry_after.lock() = retry_after.to_owned();
    b.failing.store(status, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    let scheduled_in = loop {
        let q = &queries(d).await[0];
        if q["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&status.to_string()))
        {
            let next = q["next_check"].as_u64().expect("a next check is scheduled");
            break next.saturating_sub(now_ms());
        }
        assert!(Instant::now() < deadline, "no failure recorded: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failed_at = Instant::now();
    b.version.store(1, SeqCst);
    b.failing.store(0, SeqCst);
    let deadline = failed_at + Duration::from_secs(8);
    loop {
        let body: Value = get(&url).await.json().await.unwrap();
        if body["v"] == 1 {
            return (failed_at.elapsed(), scheduled_in);
        }
        assert!(
            Instant::now() < deadline,
            "not refreshed within 8 s of the {status}: {}",
            queries(d).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn behaviour() -> Arc<Behaviour> {
    Arc::new(Behaviour {
        version: AtomicU64::new(0),
        failing: AtomicU64::new(0),
        retry_after: parking_lot::Mutex::new(String::new()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_cut_to_max_retry_after() {
    let b = behaviour();
    let up = Scripted::start(upstream(b.clone())).await;
    let d = Daemon::start(&config(&up.base_url(), "max_retry_after = \"2s\""));
    let (recovered, scheduled_in) = fail_then_recover(&d, &b, 429, "9999999999").await;
    assert!(
        scheduled_in <= 2_500,
        "the next check is {scheduled_in} ms away, over max_retry_after"
    );
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
    // And not before the 2 s it was allowed to ask for.
    assert!(
        recovered >= Duration::from_millis(1500),
        "the upstream's wait was honoured up to the limit: {recovered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_date_is_read_as_a_date() {
    let b = behaviour();
    let up = Scripted::start(upstream(b.clone())).await;
    let d = Daemon::start(&config(&up.base_url(), ""));
    // Two seconds from now (HTTP dates have whole seconds): not "60 s".
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    let (recovered, scheduled_in) = fail_then_recover(&d, &b, 503, &date).await;
    assert!(
        scheduled_in <= 3_000,
        "the next check is {scheduled_in} ms away for a date 2 s ahead"
    );
    assert!(recovered < Duration::from_secs(5), "{recovered:?}");
}
