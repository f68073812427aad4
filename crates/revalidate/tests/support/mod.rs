//! A scripted fake source for tests: counts calls, measures concurrency,
//! scripts latency and outcomes per key. Runs on tokio's (paused) clock.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use revalidate::{Batching, FetchError, FetchRequest, Fetched, Fetcher, QueryKey};
use serde_json::{Value, json};

/// What the fake does for one call.
#[derive(Clone, Debug)]
pub enum Step {
    Ok(Value),
    Err(FetchError),
    NotModified,
    /// Never answers (until the engine's timeout cuts it off).
    Hang,
    /// Answers after this extra delay.
    After(Duration, Box<Step>),
}

type Default = dyn Fn(&QueryKey, usize) -> Step + Send + Sync;

#[derive(Clone)]
pub struct Fake {
    inner: Arc<FakeInner>,
}

struct FakeInner {
    calls: Mutex<Vec<(QueryKey, tokio::time::Instant)>>,
    batch_calls: Mutex<Vec<Vec<QueryKey>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    latency: Mutex<Duration>,
    script: Mutex<HashMap<QueryKey, VecDeque<Step>>>,
    default: Mutex<Arc<Default>>,
    batching: Mutex<Batching>,
}

impl Fake {
    /// Answers `{"key": "<key>", "n": <call number for that key>}` after `latency`.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(FakeInner {
                calls: Mutex::default(),
                batch_calls: Mutex::default(),
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
                latency: Mutex::new(Duration::from_millis(10)),
                script: Mutex::default(),
                default: Mutex::new(Arc::new(|k: &QueryKey, n| {
                    Step::Ok(json!({"key": k.to_string(), "n": n}))
                })),
                batching: Mutex::new(Batching::Split),
            }),
        }
    }

    pub fn latency(self, d: Duration) -> Self {
        *self.inner.latency.lock() = d;
        self
    }

    pub fn set_latency(&self, d: Duration) {
        *self.inner.latency.lock() = d;
    }

    /// Answers every unscripted call with `f(key, n)`, `n` counting that key's calls from 1.
    pub fn respond(&self, f: impl Fn(&QueryKey, usize) -> Step + Send + Sync + 'static) {
        *self.inner.default.lock() = Arc::new(f);
    }

    /// Answers the same constant value for every call.
    pub fn constant(&self, v: Value) {
        self.respond(move |_, _| Step::Ok(v.clone()));
    }

    /// Queues steps for one key, used before the default.
    pub fn script(&self, key: &QueryKey, steps: impl IntoIterator<Item = Step>) {
        self.inner
            .script
            .lock()
            .entry(key.clone())
            .or_default()
            .extend(steps);
    }

    pub fn combined_batches(self) -> Self {
        *self.inner.batching.lock() = Batching::Combined;
        self
    }

    pub fn calls(&self) -> usize {
        self.inner.calls.lock().len()
    }

    pub fn calls_for(&self, key: &QueryKey) -> usize {
        self.inner
            .calls
            .lock()
            .iter()
            .filter(|(k, _)| k == key)
            .count()
    }

    pub fn call_times(&self, key: &QueryKey) -> Vec<tokio::time::Instant> {
        self.inner
            .calls
            .lock()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }

    pub fn call_keys(&self) -> Vec<QueryKey> {
        self.inner
            .calls
            .lock()
            .iter()
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn batch_calls(&self) -> Vec<Vec<QueryKey>> {
        self.inner.batch_calls.lock().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(SeqCst)
    }

    pub fn reset_counts(&self) {
        self.inner.calls.lock().clear();
        self.inner.batch_calls.lock().clear();
        self.inner
            .max_in_flight
            .store(self.inner.in_flight.load(SeqCst), SeqCst);
    }

    fn next_step(&self, key: &QueryKey) -> Step {
        let n = {
            let mut calls = self.inner.calls.lock();
            calls.push((key.clone(), tokio::time::Instant::now()));
            calls.iter().filter(|(k, _)| k == key).count()
        };
        if let Some(step) = self
            .inner
            .script
            .lock()
            .get_mut(key)
            .and_then(VecDeque::pop_front)
        {
            return step;
        }
        let f = self.inner.default.lock().clone();
        f(key, n)
    }

    async fn play(&self, step: Step) -> Result<Fetched<Value>, FetchError> {
        let latency = *self.inner.latency.lock();
        tokio::time::sleep(latency).await;
        let mut step = step;
        loop {
            match step {
                Step::Ok(v) => return Ok(Fetched::new(v).with_bytes(100)),
                Step::Err(e) => return Err(e),
                Step::NotModified => return Ok(Fetched::not_modified()),
                Step::Hang => std::future::pending::<()>().await,
                Step::After(d, next) => {
                    tokio::time::sleep(d).await;
                    step = *next;
                }
            }
        }
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.inner.in_flight.fetch_add(1, SeqCst) + 1;
        self.inner.max_in_flight.fetch_max(now, SeqCst);
        InFlight(self)
    }
}

struct InFlight<'a>(&'a Fake);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, SeqCst);
    }
}

impl Fetcher<Value> for Fake {
    async fn fetch(&self, req: FetchRequest<'_, Value>) -> Result<Fetched<Value>, FetchError> {
        let _guard = self.enter();
        let step = self.next_step(req.key);
        self.play(step).await
    }

    async fn fetch_batch(
        &self,
        requests: &[FetchRequest<'_, Value>],
    ) -> Vec<Result<Fetched<Value>, FetchError>> {
        let _guard = self.enter();
        self.inner
            .batch_calls
            .lock()
            .push(requests.iter().map(|r| r.key.clone()).collect());
        let steps: Vec<Step> = requests.iter().map(|r| self.next_step(r.key)).collect();
        futures::future::join_all(steps.into_iter().map(|s| self.play(s))).await
    }

    fn batching(&self) -> Batching {
        *self.inner.batching.lock()
    }
}

pub fn key(action: &str, params: Value) -> QueryKey {
    QueryKey::new(action, params)
}

/// Lets spawned tasks and timers run until nothing more can happen without
/// time passing.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
