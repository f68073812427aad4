//! Flights: one fetch per key at a time, and what becomes of its result.
//!
//! Every fetch, a reader's miss or a background refresh, walks the same path:
//!
//! 1. **Lease** ([`Inner::lease`], or a reader's `join_or_lead`): may this
//!    key be fetched now? The one place that decides: the entry still
//!    exists, no fetch of it is in flight (a reader joins that one instead),
//!    and the source is online (a trial, which probes an offline source,
//!    excepted). The lease holds the key's flight: other readers of the key
//!    wait on it.
//! 2. **Fetch** ([`Inner::fetch`], [`Inner::fetch_batch`]): the coordinator
//!    grants the fetch (or hands over a value to adopt), a permit of the
//!    concurrency limit is taken, the source is asked within the timeout,
//!    and the coordinator versions the answer.
//! 3. **Apply**: the answer meets the entry in one synchronous step under
//!    its lock, and the flight is released. A fetch cancelled before this
//!    step (shutdown, a reader that gave up) leaves the entry as it was.
//! 4. **Finish**: the outcome goes to the schedule (the next due time), the
//!    statistics, the network monitor, the store hook, the change feed and
//!    the readers waiting on the flight.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;

use super::entry::{ActionInfo, Entry, Flight, FlightResult, Locked, Versioning};
use super::{Hit, Inner};
use crate::coord::{Grant, Holding, Publish, Remote, Ticket};
use crate::fetch::{FetchError, FetchRequest, Fetched};
use crate::key::QueryKey;
use crate::rt::{Stamp, compact_duration};
use crate::schedule::due::{Due, GiveUp, Retry, retry};
use crate::stats::FetchEnd;

/// Why a lease is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A reader found nothing cached (or asked for a refetch).
    Read,
    /// The refresh service found the key due.
    Refresh,
    /// The refresh service probes a source that errors took offline: the
    /// one fetch allowed while offline.
    Trial,
}

/// Why no lease was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoLease {
    /// The query was removed (or removed and created again).
    Gone,
    /// A fetch of it is in flight already; its outcome reschedules it.
    InFlight,
    /// The source is offline.
    Offline,
}

/// How a leased fetch ended.
#[derive(Debug)]
pub(crate) enum Ran<V> {
    /// It ran: what its readers got, and how long it took.
    Done {
        result: FlightResult<V>,
        took: Duration,
    },
    /// The source went offline while it waited for its turn: not fetched,
    /// the entry untouched.
    Deferred,
    /// The coordinator said another node is fetching it: not fetched here,
    /// the entry untouched and looked at again after the given time.
    Skipped,
}

/// What a reader does about a key without data.
pub(super) enum Role<V> {
    Wait(Flight<V>),
    Lead(Lease<V>),
    Offline,
}

/// The right, and the duty, to run the one fetch of a key. Dropping it
/// without completing (a cancelled reader or job) clears the flight so that
/// a waiting reader takes over.
pub(crate) struct Lease<V> {
    inner: Arc<Inner<V>>,
    key: QueryKey,
    generation: u32,
    tx: Option<oneshot::Sender<FlightResult<V>>>,
    flight: Flight<V>,
    /// The entry's data version and invalidation count when the lease was
    /// taken: a newer write wins over this fetch, and an invalidation since
    /// keeps its result stale.
    version: u64,
    invalidations: u32,
    previous: Option<Arc<V>>,
    holding: Holding,
    purpose: Purpose,
    /// A retry of a failing query (for the statistics).
    retry: bool,
}

impl<V> std::fmt::Debug for Lease<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("purpose", &self.purpose)
            .finish_non_exhaustive()
    }
}

impl<V> Drop for Lease<V> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.inner
                .end_flight(&self.key, self.generation, &self.flight);
        }
    }
}

impl<V> Lease<V> {
    /// The key it fetches.
    pub(crate) fn key(&self) -> &QueryKey {
        &self.key
    }

    fn request(&self) -> FetchRequest<'_, V> {
        FetchRequest {
            key: &self.key,
            previous: self.previous.as_ref(),
        }
    }
}

/// What a lease brought back.
enum Answer<V> {
    /// The source's answer, and the version the coordinator gave it.
    Fetched(Result<Fetched<V>, FetchError>, Publish),
    /// A value to adopt instead of fetching.
    Adopted(Remote<V>),
}

/// What applying an answer did, for the fan-out.
struct Outcome<'g, V> {
    key: QueryKey,
    /// The entry, unless it was removed while fetching.
    entry: Option<&'g Entry<V>>,
    info: Arc<ActionInfo>,
    result: FlightResult<V>,
    end: FetchEnd,
    took: Duration,
    bytes: u64,
    at: Stamp,
    retry: bool,
    /// The source's own answer, for the network monitor (`None`: adopted).
    reach: Option<Result<(), FetchError>>,
    changed: bool,
    next: Option<Due>,
    /// The failure streak after this fetch, if it failed.
    attempt: u32,
    tx: Option<oneshot::Sender<FlightResult<V>>>,
}

impl<V> Inner<V> {
    /// Clears an abandoned flight so that a waiting reader takes over.
    fn end_flight(&self, key: &QueryKey, generation: u32, flight: &Flight<V>) {
        let guard = self.map.guard();
        if let Some(entry) = self.entry_of(key, generation, &guard) {
            let mut w = entry.lock();
            release(entry, &mut w, flight);
        }
    }

    /// Whether a fetch for `purpose` may go to the source now.
    fn may_fetch(&self, purpose: Purpose) -> bool {
        purpose == Purpose::Trial || self.network.is_online()
    }
}

/// Clears the entry's flight if it is still `flight`.
fn release<V>(entry: &Entry<V>, w: &mut Locked<'_, V>, flight: &Flight<V>) {
    if w.get()
        .and_then(|c| c.flight.as_ref())
        .is_some_and(|f| f.ptr_eq(flight))
    {
        w.get_mut().flight = None;
        entry.set_fetching(w, false);
        w.tidy();
    }
}

impl<V: PartialEq + Send + Sync + 'static> Inner<V> {
    /// A reader without data: wait on the key's flight, or lead one.
    pub(super) fn join_or_lead(
        self: &Arc<Self>,
        key: &QueryKey,
        entry: &Entry<V>,
        guard: &papaya::LocalGuard<'_>,
    ) -> Role<V> {
        let mut w = entry.lock();
        if let Some(flight) = w.get().and_then(|c| c.flight.clone()) {
            return Role::Wait(flight);
        }
        if !self.may_fetch(Purpose::Read) {
            return Role::Offline;
        }
        Role::Lead(self.begin_flight(key, entry, &mut w, guard, Purpose::Read))
    }

    /// A lease for the refresh service to fetch `key` (the incarnation
    /// `generation`) now; see the module documentation.
    pub(crate) fn lease(
        self: &Arc<Self>,
        key: &QueryKey,
        generation: u32,
        purpose: Purpose,
    ) -> Result<Lease<V>, NoLease> {
        let guard = self.map.guard();
        let entry = self
            .entry_of(key, generation, &guard)
            .ok_or(NoLease::Gone)?;
        // Out of the executor's queue: from here the fetch's outcome (or
        // that of the flight already in the air) reschedules it.
        entry.slot.leave_executor();
        let mut w = entry.lock();
        if w.get().is_some_and(|c| c.flight.is_some()) {
            return Err(NoLease::InFlight);
        }
        if !self.may_fetch(purpose) {
            return Err(NoLease::Offline);
        }
        Ok(self.begin_flight(key, entry, &mut w, &guard, purpose))
    }

    /// Starts the flight of `key` (the caller checked there is none).
    fn begin_flight(
        self: &Arc<Self>,
        key: &QueryKey,
        entry: &Entry<V>,
        w: &mut Locked<'_, V>,
        guard: &papaya::LocalGuard<'_>,
        purpose: Purpose,
    ) -> Lease<V> {
        let (tx, rx) = oneshot::channel();
        let flight = rx.shared();
        w.get_mut().flight = Some(flight.clone());
        entry.set_fetching(w, true);
        Lease {
            inner: self.clone(),
            key: key.clone(),
            generation: entry.generation,
            tx: Some(tx),
            flight,
            version: entry.version(),
            invalidations: entry.invalidations(),
            previous: entry.data(guard),
            holding: Holding {
                version: entry.version(),
                updated_at: entry.updated_at().map(|t| self.clock.wall_of(t)),
                staleness: entry.action.staleness,
                invalidated: entry.is_invalidated(),
                // A reader leads a fetch of cached data only for a refetch.
                forced: purpose == Purpose::Read && entry.has_data(),
                reader: purpose == Purpose::Read,
            },
            purpose,
            retry: purpose != Purpose::Read && entry.errors() > 0,
        }
    }

    /// Runs one lease: coordinator, permit, source, apply, fan-out.
    pub(crate) async fn fetch(self: &Arc<Self>, lease: Lease<V>) -> Ran<V> {
        let ticket = match self.acquire(&lease).await {
            Grant::Fetch(ticket) => ticket,
            Grant::Adopt(remote) => {
                let started = self.clock.now();
                return self.settle(lease, Answer::Adopted(remote), started);
            }
            // A reader is never left without a value: it fetches itself.
            Grant::Skip(_) if lease.purpose == Purpose::Read => Ticket(0),
            Grant::Skip(wait) => return self.skip(lease, wait),
        };
        let permit = self.limiter.acquire().await;
        if !self.may_fetch(lease.purpose) {
            self.release_ticket(&lease, ticket).await;
            return Ran::Deferred;
        }
        let started = self.clock.now();
        let limit = self.settings.fetch_timeout;
        let result = crate::rt::timeout(limit, self.fetcher.fetch(lease.request()))
            .await
            .unwrap_or_else(|| Err(FetchError::timed_out(limit)));
        drop(permit);
        let publish = self.publish(&lease, ticket, &result).await;
        self.settle(lease, Answer::Fetched(result, publish), started)
    }

    /// The coordinator's grant for `lease` (the client alone: always fetch).
    async fn acquire(&self, lease: &Lease<V>) -> Grant<V> {
        match &self.coordinator {
            Some(c) => c.acquire(&lease.key, &lease.holding).await,
            None => Grant::Fetch(Ticket(0)),
        }
    }

    /// The coordinator's version for a fetch's result (the client alone:
    /// numbered here).
    async fn publish(
        &self,
        lease: &Lease<V>,
        ticket: Ticket,
        result: &Result<Fetched<V>, FetchError>,
    ) -> Publish {
        match &self.coordinator {
            Some(c) => {
                c.publish(&lease.key, ticket, result, lease.previous.as_ref())
                    .await
            }
            None => Publish::Local,
        }
    }

    /// Runs leases of one action as one batch request: one permit for all.
    /// Returns one `Ran` per lease, in order.
    pub(crate) async fn fetch_batch(self: &Arc<Self>, leases: Vec<Lease<V>>) -> Vec<Ran<V>> {
        let mut ran: Vec<Option<Ran<V>>> = (0..leases.len()).map(|_| None).collect();
        let mut granted: Vec<(usize, Lease<V>, Ticket)> = Vec::with_capacity(leases.len());
        for (i, lease) in leases.into_iter().enumerate() {
            match self.acquire(&lease).await {
                Grant::Fetch(ticket) => granted.push((i, lease, ticket)),
                Grant::Adopt(remote) => {
                    let started = self.clock.now();
                    ran[i] = Some(self.settle(lease, Answer::Adopted(remote), started));
                }
                Grant::Skip(wait) => ran[i] = Some(self.skip(lease, wait)),
            }
        }
        if !granted.is_empty() {
            let permit = self.limiter.acquire().await;
            if !self.may_fetch(Purpose::Refresh) {
                for (i, lease, ticket) in granted {
                    self.release_ticket(&lease, ticket).await;
                    ran[i] = Some(Ran::Deferred);
                }
            } else {
                let started = self.clock.now();
                let limit = self.settings.fetch_timeout;
                let results = {
                    let requests: Vec<FetchRequest<'_, V>> =
                        granted.iter().map(|(_, l, _)| l.request()).collect();
                    crate::rt::timeout(limit, self.fetcher.fetch_batch(&requests)).await
                };
                drop(permit);
                let n = granted.len();
                let results: Vec<Result<Fetched<V>, FetchError>> = match results {
                    Some(rs) if rs.len() == n => rs,
                    Some(rs) => {
                        let e = FetchError::bad_data(format!(
                            "the batch answered {} results for {n} keys",
                            rs.len()
                        ));
                        (0..n).map(|_| Err(e.clone())).collect()
                    }
                    None => {
                        let e = FetchError::timed_out(limit);
                        (0..n).map(|_| Err(e.clone())).collect()
                    }
                };
                for ((i, lease, ticket), result) in granted.into_iter().zip(results) {
                    let publish = self.publish(&lease, ticket, &result).await;
                    ran[i] = Some(self.settle(lease, Answer::Fetched(result, publish), started));
                }
            }
        }
        ran.into_iter()
            .map(|r| r.expect("every lease ran or was deferred"))
            .collect()
    }

    /// Another node fetches the key: release the flight and look at the key
    /// again after `wait`, unless that node's result arrives first.
    fn skip(&self, lease: Lease<V>, wait: Duration) -> Ran<V> {
        let (key, generation) = (lease.key.clone(), lease.generation);
        drop(lease);
        let guard = self.map.guard();
        if let Some(entry) = self.entry_of(&key, generation, &guard) {
            let at = self.clock.now().add(wait);
            self.schedule
                .schedule(&entry.slot, entry.generation, &key, at);
        }
        Ran::Skipped
    }

    /// A granted fetch that will not run: the coordinator hears that it
    /// was not attempted, so it can release what it holds for the ticket.
    async fn release_ticket(&self, lease: &Lease<V>, ticket: Ticket) {
        let not_attempted = Err(FetchError::offline());
        let _ = self.publish(lease, ticket, &not_attempted).await;
    }

    fn settle(&self, lease: Lease<V>, answer: Answer<V>, started: Stamp) -> Ran<V> {
        let guard = self.map.guard();
        let outcome = self.apply(lease, answer, started, &guard);
        let took = outcome.took;
        Ran::Done {
            result: self.finish(outcome),
            took,
        }
    }

    /// Applies an answer to its entry: one synchronous step under the
    /// entry's lock, which releases the flight.
    fn apply<'g>(
        &self,
        mut lease: Lease<V>,
        answer: Answer<V>,
        started: Stamp,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Outcome<'g, V> {
        let now = self.clock.now();
        let entry = self.entry_of(&lease.key, lease.generation, guard);
        let info = entry.map_or_else(
            || self.action_info(lease.key.action()),
            |e| e.action.clone(),
        );
        let (bytes, reach) = match &answer {
            Answer::Fetched(r, _) => (
                r.as_ref().map_or(0, Fetched::bytes),
                Some(r.as_ref().map(|_| ()).map_err(Clone::clone)),
            ),
            Answer::Adopted(_) => (0, None),
        };
        let not_modified = matches!(&answer, Answer::Fetched(Ok(f), _) if f.value.is_none());
        let adopted = matches!(&answer, Answer::Adopted(_));
        let mut changed = false;
        let mut attempt = 0;
        let mut next = None;
        let result: FlightResult<V> = match entry {
            Some(entry) => {
                let mut w = entry.lock();
                let current = |entry: &Entry<V>| {
                    entry
                        .data(guard)
                        .map(|v| Stored {
                            hit: Hit::fetched(v, entry.version()),
                            changed: false,
                        })
                        .ok_or_else(uncached_answer_lost)
                };
                let validated = entry.invalidations() == lease.invalidations;
                // A newer write (set_data, a value from another node) arrived
                // while this fetch was in flight: it wins, and the fetch's
                // outcome, success or failure, is moot. Its readers get the
                // newer value.
                let overtaken = entry.version() != lease.version;
                let stored = match answer {
                    _ if overtaken => current(entry),
                    Answer::Fetched(_, Publish::Refused) => current(entry),
                    Answer::Fetched(Ok(fetched), _)
                        if fetched.value.is_none() && !entry.has_data() =>
                    {
                        Err(FetchError::bad_data(
                            "the source answered \"not modified\" but nothing is cached",
                        ))
                    }
                    Answer::Fetched(Ok(fetched), publish) => {
                        let versioning = match publish {
                            Publish::Version(v) => Versioning::Given(v),
                            _ => Versioning::Local,
                        };
                        // If an invalidation arrived meanwhile, the result may
                        // predate the change behind it: store it, but keep
                        // the entry stale so that it is fetched again.
                        store_answer(
                            self,
                            &lease.key,
                            entry,
                            &mut w,
                            fetched.value,
                            now,
                            validated,
                            versioning,
                            guard,
                        )
                    }
                    Answer::Fetched(Err(e), _) => Err(e),
                    Answer::Adopted(remote) => {
                        let at = self.clock.stamp_of(remote.updated_at).min(now);
                        store_answer(
                            self,
                            &lease.key,
                            entry,
                            &mut w,
                            Some(remote.value),
                            at,
                            validated,
                            Versioning::Given(remote.version),
                            guard,
                        )
                    }
                };
                let result = match stored {
                    Ok(Stored { hit, changed: c }) => {
                        changed = c;
                        Ok(hit)
                    }
                    Err(e) => {
                        attempt = entry.record_error(&mut w, e.clone(), now);
                        Err(e)
                    }
                };
                release(entry, &mut w, &lease.flight);
                next = self.next_due_of(&lease.key, entry, &w, now);
                w.tidy();
                result
            }
            // The query was removed while fetching, and may have been
            // cached again since. A newer incarnation's data is newer than
            // this fetch: its readers get that. Otherwise they get the value
            // without caching it, with the key's last version (so that no
            // reader sees its versions go down).
            None => {
                let newer = self
                    .map
                    .get(&lease.key, guard)
                    .and_then(|e| e.data(guard).map(|v| Hit::fetched(v, e.version())));
                match (newer, answer) {
                    (Some(hit), _) => Ok(hit),
                    (None, Answer::Fetched(r, _)) => r.and_then(|f| {
                        let version = self.version_floor.load(Relaxed).max(lease.version);
                        f.value
                            .map(|v| Hit::fetched(Arc::new(v), version))
                            .ok_or_else(|| {
                                FetchError::bad_data(
                                    "\"not modified\" for a query that is no longer cached",
                                )
                            })
                    }),
                    (None, Answer::Adopted(remote)) => {
                        Ok(Hit::fetched(Arc::new(remote.value), remote.version))
                    }
                }
            }
        };
        let end = match &result {
            _ if adopted => FetchEnd::Adopted,
            Ok(_) if not_modified => FetchEnd::NotModified,
            Ok(_) => FetchEnd::Success,
            Err(e) => FetchEnd::Failure {
                bad_data: e.is_bad_data(),
            },
        };
        Outcome {
            key: lease.key.clone(),
            entry,
            info,
            result,
            end,
            took: now.since(started),
            bytes,
            at: now,
            retry: lease.retry,
            reach,
            changed,
            next,
            attempt,
            tx: lease.tx.take(),
        }
    }

    /// Hands an applied outcome to everything that follows a fetch, and
    /// returns what its readers get.
    fn finish(&self, mut outcome: Outcome<'_, V>) -> FlightResult<V> {
        let key = &outcome.key;
        outcome.info.counters.refreshed(
            outcome.end,
            outcome.took,
            outcome.bytes,
            self.clock.wall_of(outcome.at),
        );
        if outcome.retry {
            outcome.info.counters.retries.fetch_add(1, Relaxed);
        }
        match &outcome.reach {
            Some(Err(e)) if e.is_network() => {
                self.network
                    .record_network_error(self.settings.offline_after_errors);
            }
            // Any answer, even an error status, shows the source is reachable.
            Some(Err(e)) if !e.is_offline() && !e.is_timeout() => self.network.record_reachable(),
            Some(Ok(())) => self.network.record_reachable(),
            _ => {}
        }
        if let Some(entry) = outcome.entry {
            let guard = self.map.guard();
            self.keep_versions_rising(key, entry, &guard);
            if let Err(e) = &outcome.result {
                self.log_failure(key, e, outcome.attempt, outcome.next, outcome.at);
            }
            self.reschedule(key, entry, outcome.next);
            self.changed(key);
            if outcome.changed {
                self.announce(key, entry);
            }
        }
        if let Some(tx) = outcome.tx.take() {
            let _ = tx.send(outcome.result.clone());
        }
        outcome.result
    }

    /// The seed's "❌" decision line, while a refresh service is attached.
    fn log_failure(
        &self,
        key: &QueryKey,
        error: &FetchError,
        attempt: u32,
        next: Option<Due>,
        now: Stamp,
    ) {
        if !self.schedule.is_enabled() || error.is_offline() {
            return;
        }
        let settings = &self.settings;
        let name = key.action();
        match retry(settings, attempt, error, key) {
            Retry::After(delay) => crate::log::decision!(
                "❌ {key} failed: {error}; retry {attempt}/{} in {}",
                settings.max_retries,
                compact_duration(delay)
            ),
            Retry::GiveUp(why) => {
                let why = match why {
                    GiveUp::NotRetryable => "not retryable".to_owned(),
                    GiveUp::RetriesOff => "retries are off".to_owned(),
                    GiveUp::RetriesUsed => format!("{} retries used", settings.max_retries),
                };
                match next {
                    Some(d) => crate::log::decision!(
                        "❌ {name} failed: {error}; {why}, next try in {}",
                        compact_duration(d.at.since(now))
                    ),
                    None => crate::log::decision!("❌ {name} failed: {error}; {why}"),
                }
            }
        }
    }
}

/// Stores a value in `entry` (under its lock).
#[allow(clippy::too_many_arguments)]
fn store_answer<V: PartialEq>(
    inner: &Inner<V>,
    key: &QueryKey,
    entry: &Entry<V>,
    w: &mut Locked<'_, V>,
    value: Option<V>,
    at: Stamp,
    validated: bool,
    versioning: Versioning,
    guard: &papaya::LocalGuard<'_>,
) -> Result<Stored<V>, FetchError> {
    match inner.store(key, entry, w, value, at, validated, versioning, guard) {
        Some((cached, changed)) => {
            entry.record_success(w);
            Ok(Stored {
                hit: Hit::fetched(cached.expect("checked by the caller"), entry.version()),
                changed,
            })
        }
        // Older than what the entry holds: keep that.
        None => entry
            .data(guard)
            .map(|v| Stored {
                hit: Hit::fetched(v, entry.version()),
                changed: false,
            })
            .ok_or_else(uncached_answer_lost),
    }
}

/// A value stored, and whether it changed the entry.
struct Stored<V> {
    hit: Hit<V>,
    changed: bool,
}

/// A fetch whose answer lost to a newer write, for a query that holds no
/// data (its newer value is elsewhere, or was removed).
fn uncached_answer_lost() -> FetchError {
    FetchError::failed("a newer write won over this fetch, and nothing is cached here")
}
