//! Property test: random sequences of reads, writes, invalidations, clock
//! advances, online/offline flips and fetch outcomes (30 % failures, random
//! latency) against a running refresh service, checked after every step
//! against a simple model:
//!
//! - no cached value is ever lost, and none ever regresses: every value
//!   carries the sequence number of the moment it was produced (a fetch's
//!   start, a write's call), and the cached one only moves forward;
//! - the source never sees more than `max_concurrent_refreshes` requests;
//! - no key is fetched again in the background before its retry delay has
//!   passed, unless something asked for it (an invalidation);
//! - nothing stays fetching: after shutdown every query is idle and no
//!   request is in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use proptest::prelude::*;
use revalidate::{
    BackgroundRefresh, FetchError, FetchRequest, FetchStatus, Fetched, Fetcher, Policy,
    QueryClient, QueryKey, RefreshSettings, Staleness,
};
use tokio::time::{Instant, sleep};

/// Values are (sequence number at production, origin).
type Val = (u64, &'static str);

const LIMIT: usize = 2;
const RETRY: Duration = Duration::from_secs(4);
const FETCH_TIMEOUT: Duration = Duration::from_millis(1_500);

#[derive(Clone, Copy, Debug)]
enum Op {
    Read(usize),
    Write(usize),
    Invalidate(usize),
    Advance(u64),
    Online(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Read),
        1 => (0..KEYS).prop_map(Op::Write),
        1 => (0..KEYS).prop_map(Op::Invalidate),
        5 => (1u64..20_000).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(Op::Online),
    ]
}

const KEYS: usize = 6;

fn keys() -> Vec<QueryKey> {
    let actions = [
        "process.list",
        "process.list",
        "notification.list",
        "notification.list",
        "system_health",
        "node.tree",
    ];
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| QueryKey::new(a, serde_json::json!({ "i": i })))
        .collect()
}

/// One call to the source: when, whether the engine saw it fail, whether
/// anything was cached when it was asked for, and its sequence number.
type Call = (Instant, bool, bool, u64);

/// A source whose outcome and latency for the n-th call of a key come from
/// (seed, key, n): the same in every run and process, whatever the order in
/// which keys are fetched.
#[derive(Clone)]
struct Source {
    seq: Arc<AtomicU64>,
    seed: u64,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    calls: Arc<Mutex<HashMap<QueryKey, Vec<Call>>>>,
}

impl Source {
    fn roll(&self, key: &QueryKey, n: usize) -> u64 {
        let text = key.to_string();
        let mut z = text.bytes().fold(
            self.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3),
        );
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Fetcher<Val> for Source {
    async fn fetch(&self, req: FetchRequest<'_, Val>) -> Result<Fetched<Val>, FetchError> {
        let seq = self.seq.fetch_add(1, SeqCst);
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        // Counted out even when the engine drops the fetch (its timeout).
        struct Out<'a>(&'a AtomicUsize);
        impl Drop for Out<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let _out = Out(&self.in_flight);
        let n = self.calls.lock().get(req.key).map_or(0, Vec::len);
        let roll = self.roll(req.key, n);
        let latency = Duration::from_millis(roll % 2_000);
        let fails = (roll >> 32) % 10 < 3;
        let cached = req.previous.is_some();
        // What the engine sees as a failure: an error, or no answer in time.
        let failed = fails || latency > FETCH_TIMEOUT;
        self.calls.lock().entry(req.key.clone()).or_default().push((
            Instant::now(),
            failed,
            cached,
            seq,
        ));
        sleep(latency).await;
        if fails {
            Err(FetchError::failed("scripted failure"))
        } else {
            Ok(Fetched::new((seq, "fetch")))
        }
    }
}

fn run(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(scenario(ops, seed))
}

async fn scenario(ops: Vec<Op>, seed: u64) -> Result<(), TestCaseError> {
    let source = Source {
        seq: Arc::new(AtomicU64::new(1)),
        seed,
        in_flight: Arc::default(),
        max_in_flight: Arc::default(),
        calls: Arc::default(),
    };
    let policy = Policy::builder()
        .resource("process", Staleness::secs(10))
        .resource("notification", Staleness::secs(3))
        .resource("system_health", Staleness::Always)
        .resource("node", Staleness::Never)
        .build()
        .unwrap();
    let mut settings = RefreshSettings::default();
    settings.check_interval = Duration::from_secs(1);
    settings.max_concurrent_refreshes = LIMIT;
    settings.retry_interval = RETRY;
    settings.max_retries = 2;
    settings.fetch_timeout = FETCH_TIMEOUT;
    settings.inactive_after = Duration::from_secs(30);
    settings.jitter = 0.1;
    let client: QueryClient<Val> = QueryClient::builder(source.clone())
        .policy(policy)
        .settings(settings.clone())
        .unwrap()
        .gc_time(Duration::from_secs(86_400 * 365))
        .build();
    let refresh = BackgroundRefresh::new(&client).unwrap().start();
    let keys = keys();

    // The model: the highest sequence number seen cached per key, and the
    // sequence numbers (one order for every event, even at the same instant
    // of the paused clock) of each key's writes (a write resets its error
    // count and moots the fetch it overtakes) and invalidations (which ask
    // for a refresh at once).
    let mut seen: Vec<Option<u64>> = vec![None; KEYS];
    let mut writes: Vec<Vec<u64>> = vec![Vec::new(); KEYS];
    let mut invalidations: Vec<Vec<u64>> = vec![Vec::new(); KEYS];
    let mut readers = Vec::new();

    for op in ops {
        match op {
            Op::Read(i) => {
                let c = client.clone();
                let k = keys[i].clone();
                readers.push(tokio::spawn(async move {
                    let _ = c.get(&k).await;
                }));
            }
            Op::Write(i) => {
                let seq = source.seq.fetch_add(1, SeqCst);
                client.set_data(&keys[i], (seq, "write"));
                writes[i].push(seq);
            }
            Op::Invalidate(i) => {
                invalidations[i].push(source.seq.fetch_add(1, SeqCst));
                client.invalidate(&keys[i]);
            }
            Op::Advance(ms) => sleep(Duration::from_millis(ms)).await,
            Op::Online(on) => client.network().set_online(on),
        }
        tokio::task::yield_now().await;
        for (i, k) in keys.iter().enumerate() {
            let cached = client.state(k).and_then(|s| s.data).map(|v| v.0);
            match (seen[i], cached) {
                (Some(before), None) => {
                    return Err(TestCaseError::fail(format!("{k}: value {before} lost")));
                }
                (Some(before), Some(now)) => {
                    prop_assert!(now >= before, "{k}: regressed from {before} to {now}");
                }
                _ => {}
            }
            if cached.is_some() {
                seen[i] = cached;
            }
        }
        prop_assert!(
            source.max_in_flight.load(SeqCst) <= LIMIT,
            "more than {LIMIT} requests in flight"
        );
    }

    // Background retries respect their delay: after the n-th consecutive
    // failure (n ≤ max_retries) a key with data is not fetched again before
    // retry_interval × 2^(n-1) × (1 - jitter), unless it was invalidated
    // meanwhile. (A key without data is fetched by any read: a miss, not a
    // retry.) A write resets the count and moots a fetch whose version it
    // overtakes; a write between two calls may have come before or after the
    // second call was asked for, so the model tracks every streak the engine
    // could be in, and accepts a gap that fits any of them.
    for (i, k) in keys.iter().enumerate() {
        let calls = source.calls.lock().get(k).cloned().unwrap_or_default();
        let between = |events: &[u64], a: u64, b: u64| events.iter().any(|s| (a..b).contains(s));
        let mut streaks: Vec<u32> = vec![0];
        let mut before = 0;
        for w in calls.windows(2) {
            let ((t0, failed, _, s0), (t1, _, cached, s1)) = (w[0], w[1]);
            let since = std::mem::replace(&mut before, s0);
            if between(&writes[i], s0, s1) {
                // Written after this call was asked for: its outcome is moot.
                streaks = vec![0];
                continue;
            }
            streaks = if between(&writes[i], since, s0) {
                if failed { vec![0, 1] } else { vec![0] }
            } else if failed {
                streaks.iter().map(|s| s + 1).collect()
            } else {
                vec![0]
            };
            if failed && cached && !between(&invalidations[i], s0, s1) {
                let gap = t1 - t0;
                let fits = streaks.iter().any(|&n| {
                    n == 0
                        || n > settings.max_retries
                        || gap >= RETRY.mul_f64(f64::from(1u32 << (n - 1)) * 0.9)
                });
                prop_assert!(
                    fits,
                    "{k}: fetched again {gap:?} after a failure, with streaks {streaks:?}"
                );
            }
        }
    }

    for r in readers {
        r.abort();
    }
    refresh.shutdown().await;
    for k in &keys {
        if let Some(s) = client.state(k) {
            prop_assert_ne!(s.status, FetchStatus::Fetching, "{} stayed fetching", k);
        }
    }
    prop_assert_eq!(client.fetches_in_flight(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_never_loses_or_regresses_a_value_and_the_bounds_hold(
        ops in prop::collection::vec(op(), 1..150),
        seed in any::<u64>(),
    ) {
        run(ops, seed)?;
    }
}
