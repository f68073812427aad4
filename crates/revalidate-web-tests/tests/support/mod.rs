//! Shared by the browser suites.
#![allow(dead_code, unreachable_pub)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use revalidate::web::local_fetcher;
use revalidate::{FetchError, Policy, QueryClient, QueryKey, RefreshSettings, Staleness};

/// Yields to the event loop once: every ready task runs first.
pub async fn settle() {
    gloo_timers::future::TimeoutFuture::new(0).await;
}

/// Moves the manual clock (paused by the test) and lets what woke run.
pub async fn advance(d: Duration) {
    revalidate::web::advance_clock(d).await;
    settle().await;
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Deterministic refresh settings: a 1 s window, no jitter.
pub fn settings() -> RefreshSettings {
    let mut s = RefreshSettings::default();
    s.check_interval = secs(1.0);
    s.jitter = 0.0;
    s.retry_interval = secs(2.0);
    s.max_retries = 3;
    s.fetch_timeout = secs(5.0);
    s
}

/// `r.*` goes stale after 10 s.
pub fn policy() -> Policy {
    Policy::builder()
        .resource("r", Staleness::secs(10))
        .build()
        .expect("policy")
}

/// A fetcher that counts its calls and answers `"<key> #<n>"`, or what
/// `fail` says for call `n`.
pub fn counting_client(
    calls: Rc<Cell<u32>>,
    fail: impl Fn(u32) -> Option<FetchError> + 'static,
    settings: RefreshSettings,
) -> QueryClient<String> {
    QueryClient::builder(local_fetcher(move |key: QueryKey| {
        let n = calls.get() + 1;
        calls.set(n);
        let outcome = match fail(n) {
            Some(e) => Err(e),
            None => Ok(format!("{key} #{n}")),
        };
        async move { outcome }
    }))
    .policy(policy())
    .settings(settings)
    .expect("settings")
    .build()
}

/// A database name no other test uses.
pub fn db_name(test: &str) -> String {
    format!("revalidate-test-{test}")
}
