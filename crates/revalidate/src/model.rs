//! Model checking the engine's own synchronisation with shuttle.
//!
//! `cargo test -p revalidate --features shuttle --lib model` runs one key
//! through every kind of concurrent step the engine has — readers that miss
//! and share one flight, a reader cancelled mid-fetch (as a job is at
//! shutdown), `set_data`, an invalidation, a background refresh's lease and
//! fetch, garbage collection — under shuttle's randomised and PCT schedulers,
//! which switch tasks at every lock and atomic the engine uses (see
//! `sync.rs`). After every schedule it checks the invariants of
//! `ARCHITECTURE.md`:
//!
//! - nothing stays fetching and no permit is left out;
//! - every reader got a value somebody produced;
//! - a fetch that started before a `set_data` never overwrites it;
//! - a fetch that started before an invalidation leaves the entry stale;
//! - the versions one reader sees never go down;
//! - a cached hit's value and version belong together: no version is hit
//!   with two values (the lock-free hit path pairs them with a seqlock
//!   read, `Entry::data_and_version`).
//!
//! `MODEL_ITERATIONS` (default 2000 per scheduler) and `MODEL_SEED` (the
//! random scheduler's seed; a failure prints the schedule shuttle needs to
//! replay it, and `MODEL_REPLAY=<schedule>` replays exactly that one).

use std::sync::Arc;
use std::time::Duration;

use shuttle::future::{block_on, spawn, yield_now};
use shuttle::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::client::{Purpose, Ran};
use crate::fetch::{FetchError, FetchRequest, Fetched, Fetcher};
use crate::key::QueryKey;
use crate::{QueryClient, RefreshSettings};

/// Values tell where they came from: odd `2s+1` is the fetch that started
/// at step `s`, even `2s` the `set_data` at step `s`.
struct Source {
    steps: Arc<AtomicU64>,
}

impl Fetcher<u64> for Source {
    async fn fetch(&self, _req: FetchRequest<'_, u64>) -> Result<Fetched<u64>, FetchError> {
        let step = self.steps.fetch_add(1, SeqCst) + 1;
        // The source takes a while: everything else may happen meanwhile.
        yield_now().await;
        yield_now().await;
        Ok(Fetched::new(2 * step + 1))
    }
}

fn fetched_at(v: u64) -> Option<u64> {
    (v % 2 == 1).then_some(v / 2)
}

fn scenario() {
    block_on(async {
        let steps = Arc::new(AtomicU64::new(0));
        let settings = RefreshSettings {
            max_concurrent_refreshes: 2,
            ..RefreshSettings::default()
        };
        let client: QueryClient<u64> = QueryClient::builder(Source {
            steps: steps.clone(),
        })
        .settings(settings)
        .unwrap()
        .gc_time(Duration::ZERO)
        .build();
        let key = QueryKey::bare("model.key");

        let reader = |c: QueryClient<u64>, k: QueryKey| {
            spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..2 {
                    let hit = c.get_with_meta(&k).await.expect("the source never fails");
                    seen.push((hit.version, *hit.value));
                }
                seen
            })
        };
        let r1 = reader(client.clone(), key.clone());
        let r2 = reader(client.clone(), key.clone());
        // Cached hits only, without the lock, while the value changes.
        let peeker = spawn({
            let (c, k) = (client.clone(), key.clone());
            async move {
                let mut seen = Vec::new();
                for _ in 0..4 {
                    if let Some(hit) = c.get_cached_hit(&k) {
                        seen.push((hit.version, *hit.value));
                    }
                    yield_now().await;
                }
                seen
            }
        });
        let cancelled = spawn({
            let (c, k) = (client.clone(), key.clone());
            async move {
                // Polled until it is fetching (or done), then dropped: a
                // job cancelled at shutdown, a reader that gave up.
                let mut read = Box::pin(c.get(&k));
                if futures::poll!(read.as_mut()).is_pending() {
                    yield_now().await;
                    let _ = futures::poll!(read.as_mut());
                }
                drop(read);
            }
        });
        let setter = spawn({
            let (c, k, steps) = (client.clone(), key.clone(), steps.clone());
            async move {
                let step = steps.fetch_add(1, SeqCst) + 1;
                c.set_data(&k, 2 * step);
                step
            }
        });
        let invalidator = spawn({
            let (c, k, steps) = (client.clone(), key.clone(), steps.clone());
            async move {
                yield_now().await;
                let step = steps.fetch_add(1, SeqCst) + 1;
                (step, c.invalidate(&k))
            }
        });
        let refresher = spawn({
            let (c, k) = (client.clone(), key.clone());
            async move {
                yield_now().await;
                let Some(generation) = c.inner.generation_of(&k) else {
                    return;
                };
                if let Ok(lease) = c.inner.lease(&k, generation, Purpose::Refresh) {
                    match c.inner.fetch(lease).await {
                        Ran::Done { result, .. } => {
                            result.expect("the source never fails");
                        }
                        Ran::Deferred | Ran::Skipped => unreachable!("always online, alone"),
                    }
                }
            }
        });
        let collector = spawn({
            let c = client.clone();
            async move {
                yield_now().await;
                c.collect_garbage()
            }
        });

        let seen1 = r1.await.unwrap();
        let seen2 = r2.await.unwrap();
        let peeked = peeker.await.unwrap();
        cancelled.await.unwrap();
        let set_step = setter.await.unwrap();
        let (inv_step, invalidated) = invalidator.await.unwrap();
        refresher.await.unwrap();
        collector.await.unwrap();

        assert_eq!(client.fetches_in_flight(), 0, "a permit was left out");
        let produced = steps.load(SeqCst);
        for seen in [&seen1, &seen2] {
            for (_, v) in seen.iter() {
                assert!(*v >= 2 && v / 2 <= produced, "a value nobody produced: {v}");
            }
            assert!(
                seen.windows(2).all(|w| w[0].0 <= w[1].0),
                "versions went down for one reader: {seen:?}"
            );
        }
        // (Only the cached hits: a flight's result for an incarnation that
        // garbage collection removed mid-fetch carries that incarnation's
        // version, which the next incarnation may reuse.)
        let mut value_of = std::collections::BTreeMap::new();
        for &(version, value) in &peeked {
            let first = *value_of.entry(version).or_insert(value);
            assert_eq!(
                first, value,
                "version {version} was read with two values: {peeked:?}"
            );
        }
        if let Some(state) = client.state(&key) {
            assert_eq!(state.status, crate::FetchStatus::Idle, "stuck fetching");
            // An entry may be empty (the cancelled reader created it last).
            if let Some(started) = state.data.map(|v| *v).and_then(fetched_at) {
                assert!(
                    started > set_step,
                    "a fetch started at {started} overwrote set_data at {set_step}"
                );
                if invalidated == 1 && started < inv_step {
                    assert!(
                        state.is_invalidated,
                        "a fetch started at {started}, before the invalidation at {inv_step}, left the entry fresh"
                    );
                }
            }
        }
    });
}

fn iterations() -> usize {
    std::env::var("MODEL_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn model_random_schedules() {
    if let Ok(schedule) = std::env::var("MODEL_REPLAY") {
        shuttle::replay(scenario, &schedule);
        return;
    }
    match std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => shuttle::check_random_with_seed(scenario, seed, iterations()),
        None => shuttle::check_random(scenario, iterations()),
    }
}

#[test]
fn model_pct_schedules() {
    shuttle::check_pct(scenario, iterations(), 3);
}
