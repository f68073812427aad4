//! `QueryClient`: the query cache with cache-first reads.
//!
//! Reads return the cached value at once, fresh or stale. A read of a key
//! with nothing cached starts one fetch, which every concurrent reader of
//! that key shares (single-flight); its failure is shared too, and not cached.
//!
//! Writes to an entry (a fetch result, `set_data`, an invalidation) are
//! serialised by the entry's writer lock. A fetch remembers the entry's
//! data version when it starts and does not store its result if a newer
//! write arrived meanwhile.

mod cell;
mod entry;
mod limiter;
mod state;
mod subscription;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use futures::channel::oneshot;
use parking_lot::Mutex;

pub(crate) use entry::{ActionInfo, Entry, ErrorRecord, Flight, FlightResult};
pub use state::{FetchStatus, Freshness, Hit, QueryState};
pub use subscription::Subscription;

use crate::fetch::{DynFetcher, FetchError, FetchRequest, Fetched, Fetcher};
use crate::key::{KeyHasher, QueryKey};
use crate::network::NetworkMonitor;
use crate::policy::Policy;
use crate::refresh::plan;
use crate::rt::{self, Clock, ClockSource, Stamp};
use crate::schedule::{Deadlines, RefreshSchedule};
use crate::settings::RefreshSettings;
use crate::stats::{CacheStats, Outcome, Read, ResourceCounters, Stats};
use limiter::Limiter;

/// Changes a [`QueryClient::changes`] listener may fall behind by before it
/// is told it lagged.
const CHANGES_CAPACITY: usize = 4096;

/// The default time an unused query stays cached: five minutes, as
/// TanStack Query's `gcTime`.
pub const DEFAULT_GC_TIME: Duration = Duration::from_secs(300);

/// The query cache. Cheap to clone: clones share one cache.
///
/// `V` is the type of cached values: one type per client. Use an enum or
/// `serde_json::Value` for resources of different shapes, or raw bytes (as
/// the daemon does). Values are stored once per change as `Arc<V>` and handed
/// out shared; `V: PartialEq` lets the cache tell whether a refresh changed
/// anything (subscribers hear only of real changes).
///
/// ```
/// use revalidate::{fetcher_fn, FetchError, QueryClient, QueryKey};
/// use serde_json::{json, Value};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let client: QueryClient<Value> = QueryClient::builder(fetcher_fn(|key: QueryKey| async move {
///     Ok::<_, FetchError>(json!({ "action": key.action(), "rows": [] }))
/// }))
/// .build();
///
/// let key = QueryKey::new("process.list", json!({ "status": "active" }));
/// let first = client.get(&key).await.unwrap();      // a miss: one fetch
/// let again = client.get_cached(&key).unwrap();     // a hit: no fetch, no copy
/// assert!(std::sync::Arc::ptr_eq(&first, &again));
/// assert_eq!(client.cache_stats().misses, 1);
/// # });
/// ```
pub struct QueryClient<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for QueryClient<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for QueryClient<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClient")
            .field("queries", &self.inner.map.len())
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<V> {
    pub(crate) map: papaya::HashMap<QueryKey, Entry<V>, KeyHasher>,
    pub(crate) fetcher: Box<dyn DynFetcher<V>>,
    pub(crate) policy: Policy,
    actions: papaya::HashMap<Box<str>, Arc<ActionInfo>>,
    resources: Mutex<BTreeMap<String, Arc<ResourceCounters>>>,
    pub(crate) clock: Clock,
    pub(crate) network: NetworkMonitor,
    pub(crate) limiter: Limiter,
    fetch_timeout: AtomicU64,
    inactive_after: AtomicI64,
    gc: Deadlines,
    gc_time: Duration,
    pub(crate) schedule: RefreshSchedule,
    /// The attached refresh service's settings; `None` when none is attached.
    pub(crate) refresh: ArcSwapOption<RefreshSettings>,
    pub(crate) hooks: std::sync::OnceLock<Arc<dyn ChangeHook<V>>>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// A change of one query's data, as seen by [`QueryClient::changes`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The query.
    pub key: QueryKey,
    /// Its new data version.
    pub version: u64,
    /// When the new data was stored.
    pub updated_at: SystemTime,
}

/// Told about every change of a cached entry (the store's write-behind).
pub(crate) trait ChangeHook<V>: Send + Sync {
    fn changed(&self, key: &QueryKey);
    fn removed(&self, key: &QueryKey);
}

/// Builds a [`QueryClient`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueryClientBuilder<V> {
    fetcher: Box<dyn DynFetcher<V>>,
    policy: Policy,
    network: Option<NetworkMonitor>,
    gc_time: Duration,
    max_concurrent_fetches: usize,
    fetch_timeout: Duration,
    capacity: usize,
    clock: ClockSource,
}

impl<V> std::fmt::Debug for QueryClientBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClientBuilder")
            .field("policy", &self.policy)
            .field("gc_time", &self.gc_time)
            .field("max_concurrent_fetches", &self.max_concurrent_fetches)
            .field("fetch_timeout", &self.fetch_timeout)
            .finish_non_exhaustive()
    }
}

impl<V: PartialEq + Send + Sync + 'static> QueryClientBuilder<V> {
    /// The staleness rules (default: [`Policy::default`], five minutes for everything).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Shares a network monitor with the application (default: a new one, online).
    pub fn network(mut self, network: NetworkMonitor) -> Self {
        self.network = Some(network);
        self
    }

    /// How long a query stays cached once it is inactive: no subscriber,
    /// and (with a refresh service attached) no read for `inactive_after`.
    /// TanStack's `gcTime`; default five minutes.
    pub fn gc_time(mut self, gc_time: Duration) -> Self {
        self.gc_time = gc_time;
        self
    }

    /// Requests to the source in flight at once, at most, for reads and
    /// refreshes together (default 3). A refresh service sets it from its
    /// `max_concurrent_refreshes`.
    pub fn max_concurrent_fetches(mut self, limit: usize) -> Self {
        self.max_concurrent_fetches = limit.max(1);
        self
    }

    /// How long a fetch may take before it fails as a timeout (default 30 s).
    /// A refresh service sets it from its `fetch_timeout`.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Where the client reads the time (default: tokio's clock, which
    /// follows a paused test clock). [`ClockSource::Coarse`] makes cached
    /// reads cheaper in production; see its documentation.
    pub fn clock(mut self, source: ClockSource) -> Self {
        self.clock = source;
        self
    }

    /// Room for this many queries before the map grows.
    pub fn initial_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Builds the client.
    pub fn build(self) -> QueryClient<V> {
        let map = papaya::HashMap::builder()
            .capacity(self.capacity)
            .hasher(KeyHasher)
            .build();
        QueryClient {
            inner: Arc::new(Inner {
                map,
                fetcher: self.fetcher,
                policy: self.policy,
                actions: papaya::HashMap::new(),
                resources: Mutex::default(),
                clock: Clock::new(self.clock),
                network: self.network.unwrap_or_default(),
                limiter: Limiter::new(self.max_concurrent_fetches),
                fetch_timeout: AtomicU64::new(nanos_u64(self.fetch_timeout)),
                // Without a refresh service a read keeps nothing active.
                inactive_after: AtomicI64::new(0),
                gc: Deadlines::new(),
                gc_time: self.gc_time,
                schedule: RefreshSchedule::new(),
                refresh: ArcSwapOption::empty(),
                hooks: std::sync::OnceLock::new(),
                changes: tokio::sync::broadcast::Sender::new(CHANGES_CAPACITY),
            }),
        }
    }
}

fn nanos_u64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Which queries an invalidation applies to.
#[derive(Clone)]
#[non_exhaustive]
pub enum QueryFilter {
    /// Every query.
    All,
    /// One exact key.
    Key(QueryKey),
    /// Every key of one action (`"process.list"`).
    Action(String),
    /// Every key of one resource type (`"process"`).
    Resource(String),
    /// Every key the predicate accepts.
    Predicate(Arc<dyn Fn(&QueryKey) -> bool + Send + Sync>),
}

impl QueryFilter {
    /// Keys the predicate accepts.
    pub fn predicate(f: impl Fn(&QueryKey) -> bool + Send + Sync + 'static) -> Self {
        QueryFilter::Predicate(Arc::new(f))
    }
}

impl std::fmt::Debug for QueryFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryFilter::All => f.write_str("All"),
            QueryFilter::Key(k) => f.debug_tuple("Key").field(k).finish(),
            QueryFilter::Action(a) => f.debug_tuple("Action").field(a).finish(),
            QueryFilter::Resource(r) => f.debug_tuple("Resource").field(r).finish(),
            QueryFilter::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

impl From<QueryKey> for QueryFilter {
    fn from(key: QueryKey) -> Self {
        QueryFilter::Key(key)
    }
}

impl From<&QueryKey> for QueryFilter {
    fn from(key: &QueryKey) -> Self {
        QueryFilter::Key(key.clone())
    }
}

/// What a reader does about a key without data.
enum Role<V> {
    Wait(Flight<V>),
    Lead(Lease<V>),
    Offline,
}

/// The right, and the duty, to run the one fetch of a key. Dropping it
/// without completing (the reader was cancelled) clears the flight so that a
/// waiting reader takes over.
pub(crate) struct Lease<V> {
    inner: Arc<Inner<V>>,
    pub(crate) key: QueryKey,
    generation: u32,
    tx: Option<oneshot::Sender<FlightResult<V>>>,
    flight: Flight<V>,
    version: u64,
    invalidations: u32,
    pub(crate) previous: Option<Arc<V>>,
    /// A retry of a failed refresh (for the statistics).
    pub(crate) retry: bool,
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
    pub(crate) fn request(&self) -> FetchRequest<'_, V> {
        FetchRequest {
            key: &self.key,
            previous: self.previous.as_ref(),
        }
    }
}

impl<V: PartialEq + Send + Sync + 'static> QueryClient<V> {
    /// Starts building a client around `fetcher`.
    pub fn builder(fetcher: impl Fetcher<V>) -> QueryClientBuilder<V> {
        QueryClientBuilder {
            fetcher: Box::new(fetcher),
            policy: Policy::default(),
            network: None,
            gc_time: DEFAULT_GC_TIME,
            max_concurrent_fetches: 3,
            fetch_timeout: Duration::from_secs(30),
            capacity: 0,
            clock: ClockSource::Tokio,
        }
    }

    /// The value of `key`: the cached one at once if there is one, fresh or
    /// stale; otherwise the result of one fetch shared by every concurrent
    /// reader of the key.
    ///
    /// # Errors
    ///
    /// Only when nothing is cached: the fetch failed (shared by the readers
    /// that waited for it, not cached), or the network is offline.
    pub async fn get(&self, key: &QueryKey) -> Result<Arc<V>, FetchError> {
        if let Some(v) = self.inner.read(key, |_, v, _, _| v) {
            return Ok(v);
        }
        self.inner.load(key, true, false).await.map(|h| h.value)
    }

    /// Like [`get`](Self::get), with how the value was served, its age and version.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_with_meta(&self, key: &QueryKey) -> Result<Hit<V>, FetchError> {
        if let Some(hit) = self.inner.read(key, Inner::hit) {
            return Ok(hit);
        }
        self.inner.load(key, true, false).await
    }

    /// The cached value of `key`, if any, without fetching. Counts as a read.
    ///
    /// This is the cached read path: a hash lookup, a reference-count
    /// increment and a clock read. It never waits, never decodes, never copies.
    #[inline]
    pub fn get_cached(&self, key: &QueryKey) -> Option<Arc<V>> {
        match self.inner.read(key, |_, v, _, _| v) {
            Some(v) => Some(v),
            None => {
                self.inner.count_miss(key);
                None
            }
        }
    }

    /// The cached value with its metadata, if any, without fetching. Counts as a read.
    pub fn get_cached_with_meta(&self, key: &QueryKey) -> Option<Hit<V>> {
        let hit = self.inner.read(key, Inner::hit);
        if hit.is_none() {
            self.inner.count_miss(key);
        }
        hit
    }

    /// Fetches `key` now, whatever is cached (joining a fetch already in flight).
    ///
    /// # Errors
    ///
    /// The fetch failed, or the network is offline. The cached value, if
    /// any, stays as it was.
    pub async fn refetch(&self, key: &QueryKey) -> Result<Arc<V>, FetchError> {
        self.inner.load(key, false, true).await.map(|h| h.value)
    }

    /// Sets the value of `key` (an optimistic update). The value counts as
    /// fresh from now. A fetch that started earlier does not overwrite it.
    /// Subscribers are notified if the value changed.
    pub fn set_data(&self, key: &QueryKey, value: V) -> Arc<V> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let guard = inner.map.guard();
        let entry = inner.entry_or_create(key, now, &guard);
        let mut w = entry.lock();
        let (cached, changed) = entry.store(&mut w, Some(value), now, true, &guard);
        entry.record_success(&mut w);
        w.tidy();
        drop(w);
        inner.reschedule_after_update(key, entry, now);
        if changed {
            inner.changed(key);
            inner.announce(key, entry);
        }
        cached.expect("a value was stored")
    }

    /// Watches `key`: a stream of its new values, one per real change. A
    /// live subscription marks the query active, so the refresh service keeps
    /// it fresh; a query without data is fetched by the service.
    pub fn subscribe(&self, key: &QueryKey) -> Subscription<V> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let guard = inner.map.guard();
        let entry = inner.entry_or_create(key, now, &guard);
        let rx = {
            let mut w = entry.lock();
            let version = entry.version();
            w.get_mut()
                .changes
                .get_or_insert_with(|| tokio::sync::watch::Sender::new(version))
                .subscribe()
        };
        entry.touch(now);
        if !entry.has_data() || entry.is_stale(now) {
            inner
                .schedule
                .schedule(&entry.queued_due, entry.generation, key, now);
        }
        Subscription::new(
            self.inner.clone(),
            key.clone(),
            entry.generation,
            entry.data(&guard),
            rx,
        )
    }

    /// Every change of any query's data, as it happens: one [`Change`] per
    /// new value (a refresh that returns equal data announces nothing). A
    /// listener that falls more than 4096 changes behind receives
    /// `RecvError::Lagged` and should resynchronise from [`queries`](Self::queries).
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// Marks the matching queries stale. The refresh service refreshes the
    /// active ones in its next check; inactive ones are refreshed when next
    /// read. Returns how many queries were marked.
    pub fn invalidate(&self, filter: impl Into<QueryFilter>) -> usize {
        let inner = &self.inner;
        let now = inner.clock.now();
        let filter = filter.into();
        let guard = inner.map.guard();
        let mut n = 0;
        let mut mark = |key: &QueryKey, entry: &Entry<V>| {
            let w = entry.lock();
            entry.invalidate(&w);
            drop(w);
            inner
                .schedule
                .schedule(&entry.queued_due, entry.generation, key, now);
            inner.changed(key);
            n += 1;
        };
        match &filter {
            QueryFilter::Key(key) => {
                if let Some(entry) = inner.map.get(key, &guard) {
                    mark(key, entry);
                }
            }
            _ => {
                for (key, entry) in inner.map.iter(&guard) {
                    let hit = match &filter {
                        QueryFilter::All => true,
                        QueryFilter::Action(a) => key.action() == a,
                        QueryFilter::Resource(r) => inner.policy.resource(key.action()) == r,
                        QueryFilter::Predicate(p) => p(key),
                        QueryFilter::Key(_) => unreachable!("handled above"),
                    };
                    if hit {
                        mark(key, entry);
                    }
                }
            }
        }
        if n > 0 {
            crate::log::decision!("🗑️ invalidated {n} queries ({filter:?})");
        }
        n
    }

    /// Removes `key` from the cache (and from the store, if one is attached).
    /// Its subscriptions end. Returns whether it was cached.
    pub fn remove(&self, key: &QueryKey) -> bool {
        let removed = self.inner.remove_entry(key);
        if removed {
            self.inner.removed(key);
        }
        removed
    }

    /// The state of one query, for callers and dashboards.
    pub fn state(&self, key: &QueryKey) -> Option<QueryState<V>> {
        let guard = self.inner.map.guard();
        let entry = self.inner.map.get(key, &guard)?;
        Some(self.inner.state_of(key, entry, self.inner.clock.now()))
    }

    /// The state of every query, in key order.
    pub fn queries(&self) -> Vec<QueryState<V>> {
        let guard = self.inner.map.guard();
        let now = self.inner.clock.now();
        let mut all: Vec<QueryState<V>> = self
            .inner
            .map
            .iter(&guard)
            .map(|(k, e)| self.inner.state_of(k, e, now))
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The number of cached queries.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// Removes queries with no subscriber, no fetch in flight and no read for
    /// the gc time. Runs by itself, a little at a time, as new queries are
    /// created; call it to collect everything that is due now. Returns how
    /// many queries were removed.
    pub fn collect_garbage(&self) -> usize {
        self.inner
            .collect_garbage(self.inner.clock.now(), usize::MAX)
    }

    /// Hits and misses, over all resources.
    pub fn cache_stats(&self) -> CacheStats {
        self.stats().total.cache
    }

    /// Everything counted so far: reads, fetches, per resource.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let resources = inner
            .resources
            .lock()
            .iter()
            .map(|(name, c)| (name.clone(), c.snapshot()))
            .collect();
        let mut stats = Stats::from_resources(resources);
        let now = inner.clock.now();
        let guard = inner.map.guard();
        stats.cached_queries = inner.map.len();
        stats.active_queries = inner
            .map
            .iter(&guard)
            .filter(|(_, e)| inner.is_active(e, now))
            .count();
        stats
    }

    /// Publishes the statistics through the [`metrics`] facade, so that any
    /// installed exporter (Prometheus, StatsD, …) can serve them. A running
    /// refresh service does this at every check; call it before a scrape
    /// for figures to the moment.
    ///
    /// Counters: `revalidate_refreshes_total{resource,outcome}`,
    /// `revalidate_retries_total{resource}`,
    /// `revalidate_skipped_offline_total{resource}`,
    /// `revalidate_cache_reads_total{resource,result}`,
    /// `revalidate_bytes_fetched_total{resource}`. Gauges:
    /// `revalidate_queries`, `revalidate_online`,
    /// `revalidate_fetches_in_flight`, `revalidate_fetch_limit`. The
    /// histogram `revalidate_refresh_duration_seconds{resource}` is recorded
    /// as fetches complete.
    pub fn publish_metrics(&self) {
        let inner = &self.inner;
        for (name, c) in inner.resources.lock().iter() {
            let s = c.snapshot();
            let r = name.clone();
            let outcome = |o: &'static str| metrics::counter!("revalidate_refreshes_total", "resource" => r.clone(), "outcome" => o);
            outcome("success").absolute(s.successful_refreshes - s.not_modified);
            outcome("not_modified").absolute(s.not_modified);
            outcome("failure").absolute(s.failed_refreshes);
            metrics::counter!("revalidate_retries_total", "resource" => r.clone())
                .absolute(s.retries);
            metrics::counter!("revalidate_skipped_offline_total", "resource" => r.clone())
                .absolute(s.skipped_offline);
            metrics::counter!("revalidate_bytes_fetched_total", "resource" => r.clone())
                .absolute(s.bytes_fetched);
            let read = |o: &'static str| metrics::counter!("revalidate_cache_reads_total", "resource" => r.clone(), "result" => o);
            read("fresh").absolute(s.cache.fresh_hits);
            read("stale").absolute(s.cache.stale_hits);
            read("miss").absolute(s.cache.misses);
        }
        metrics::gauge!("revalidate_queries").set(inner.map.len() as f64);
        metrics::gauge!("revalidate_online").set(if inner.network.is_online() { 1.0 } else { 0.0 });
        metrics::gauge!("revalidate_fetches_in_flight").set(inner.limiter.in_flight() as f64);
        metrics::gauge!("revalidate_fetch_limit").set(inner.limiter.limit() as f64);
    }

    /// The staleness rules in use.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The network monitor the client consults before fetching.
    pub fn network(&self) -> &NetworkMonitor {
        &self.inner.network
    }

    /// Requests to the source in flight right now.
    pub fn fetches_in_flight(&self) -> usize {
        self.inner.limiter.in_flight()
    }

    /// The limit on requests to the source in flight at once.
    pub fn max_concurrent_fetches(&self) -> usize {
        self.inner.limiter.limit()
    }
}

impl<V> Inner<V> {
    /// The entry of `key`, if it is still the incarnation `generation` (not
    /// removed and recreated since).
    pub(crate) fn entry_of<'g>(
        &self,
        key: &QueryKey,
        generation: u32,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Option<&'g Entry<V>> {
        self.map
            .get(key, guard)
            .filter(|e| e.generation == generation)
    }

    /// Clears an abandoned flight so that a waiting reader takes over.
    fn end_flight(&self, key: &QueryKey, generation: u32, flight: &Flight<V>) {
        let guard = self.map.guard();
        if let Some(entry) = self.entry_of(key, generation, &guard) {
            let mut w = entry.lock();
            if w.get()
                .and_then(|c| c.flight.as_ref())
                .is_some_and(|f| f.ptr_eq(flight))
            {
                w.get_mut().flight = None;
                entry.set_fetching(&w, false);
                w.tidy();
            }
        }
    }
}

impl<V: PartialEq + Send + Sync + 'static> Inner<V> {
    /// The cached read path. Calls `f` with the entry, its value, the time
    /// and whether the value is stale; `None` when nothing is cached.
    #[inline]
    pub(crate) fn read<R>(
        &self,
        key: &QueryKey,
        f: impl FnOnce(&Entry<V>, Arc<V>, Stamp, bool) -> R,
    ) -> Option<R> {
        let guard = self.map.guard();
        let entry = self.map.get(key, &guard)?;
        let value = entry.data(&guard)?;
        let now = self.clock.now();
        entry.touch(now);
        let stale = entry.is_stale(now);
        entry
            .action
            .counters
            .read(if stale { Read::Stale } else { Read::Fresh });
        if stale {
            self.stale_read(key, entry, now);
        }
        Some(f(entry, value, now, stale))
    }

    fn hit(entry: &Entry<V>, value: Arc<V>, now: Stamp, stale: bool) -> Hit<V> {
        let updated = entry.updated_at().unwrap_or(now);
        Hit {
            value,
            freshness: if stale {
                Freshness::Stale
            } else {
                Freshness::Fresh
            },
            age: now.since(updated),
            version: entry.version(),
        }
    }

    /// A stale value was served: make sure a refresh is on its way. Cheap
    /// after the first time: the entry then shows a queued deadline.
    #[cold]
    fn stale_read(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) {
        if self.schedule.is_enabled()
            && entry.queued_due.load(Relaxed) == i64::MAX
            && !entry.is_fetching()
        {
            self.schedule
                .schedule(&entry.queued_due, entry.generation, key, now);
        }
    }

    fn count_miss(&self, key: &QueryKey) {
        self.action_info(key.action()).counters.read(Read::Miss);
    }

    /// What the client knows about `action`, created on first use.
    pub(crate) fn action_info(&self, action: &str) -> Arc<ActionInfo> {
        let actions = self.actions.pin();
        if let Some(info) = actions.get(action) {
            return info.clone();
        }
        let resource = self.policy.resource(action);
        let counters = self
            .resources
            .lock()
            .entry(resource.to_owned())
            .or_insert_with(|| Arc::new(ResourceCounters::new(resource)))
            .clone();
        let info = Arc::new(ActionInfo::new(
            action,
            self.policy.staleness(action),
            counters,
        ));
        actions.get_or_insert(action.into(), info).clone()
    }

    /// The entry of `key`, created (empty) if there is none.
    pub(crate) fn entry_or_create<'g>(
        &self,
        key: &QueryKey,
        now: Stamp,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g Entry<V> {
        if let Some(entry) = self.map.get(key, guard) {
            return entry;
        }
        let entry = Entry::new(self.action_info(key.action()), now);
        match self.map.try_insert(key.clone(), entry, guard) {
            Ok(entry) => {
                self.gc
                    .push(now.add(self.gc_time), key.clone(), entry.generation);
                self.collect_garbage(now, 16);
                entry
            }
            Err(occupied) => occupied.current,
        }
    }

    /// Loads `key` through its single flight. `count_miss`: this is a read
    /// that found nothing. `force`: fetch even if data is cached.
    async fn load(
        self: &Arc<Self>,
        key: &QueryKey,
        count_miss: bool,
        force: bool,
    ) -> Result<Hit<V>, FetchError> {
        let mut counted = !count_miss;
        loop {
            let role = {
                let guard = self.map.guard();
                let now = self.clock.now();
                let entry = self.entry_or_create(key, now, &guard);
                if !force && let Some(value) = entry.data(&guard) {
                    // Filled by another reader since we looked.
                    let stale = entry.is_stale(now);
                    return Ok(Self::hit(entry, value, now, stale));
                }
                if !counted {
                    entry.action.counters.read(Read::Miss);
                    counted = true;
                }
                entry.touch(now);
                self.join_or_lead(key, entry, &guard)
            };
            match role {
                Role::Wait(flight) => match flight.await {
                    Ok(result) => return result,
                    // The reader running the fetch was cancelled: take over.
                    Err(oneshot::Canceled) => continue,
                },
                Role::Lead(lease) => return self.run(lease).await,
                Role::Offline => {
                    let info = self.action_info(key.action());
                    info.counters.skipped_offline.fetch_add(1, Relaxed);
                    return Err(FetchError::offline());
                }
            }
        }
    }

    fn join_or_lead(
        self: &Arc<Self>,
        key: &QueryKey,
        entry: &Entry<V>,
        guard: &impl papaya::Guard,
    ) -> Role<V> {
        let mut w = entry.lock();
        if let Some(flight) = w.get().and_then(|c| c.flight.clone()) {
            return Role::Wait(flight);
        }
        if !self.network.is_online() {
            return Role::Offline;
        }
        Role::Lead(self.lead(key, entry, &mut w, guard))
    }

    /// Starts the flight of `key` (the caller checked there is none).
    fn lead(
        self: &Arc<Self>,
        key: &QueryKey,
        entry: &Entry<V>,
        w: &mut entry::Locked<'_, V>,
        guard: &impl papaya::Guard,
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
            retry: false,
        }
    }

    /// Starts the flight of `key` for a background refresh, unless one is in
    /// flight already (one fetch per key) or the key is gone.
    pub(crate) fn try_lead(self: &Arc<Self>, key: &QueryKey, generation: u32) -> Option<Lease<V>> {
        let guard = self.map.guard();
        let entry = self.entry_of(key, generation, &guard)?;
        // Out of the executor's queue: from here its flight (or the one
        // already in the air) reschedules it when done.
        let _ = entry.queued_due.compare_exchange(
            crate::schedule::IN_EXECUTOR,
            i64::MAX,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
        let mut w = entry.lock();
        if w.get().is_some_and(|c| c.flight.is_some()) {
            return None;
        }
        let mut lease = self.lead(key, entry, &mut w, &guard);
        lease.retry = entry.errors() > 0;
        Some(lease)
    }

    /// Runs one leased fetch under the concurrency limit and the timeout.
    async fn run(self: &Arc<Self>, lease: Lease<V>) -> FlightResult<V> {
        let permit = self.limiter.acquire().await;
        let started = self.clock.now();
        let result = self.fetch_one(lease.request()).await;
        drop(permit);
        self.complete(lease, result, started)
    }

    /// One fetch with the client's timeout.
    pub(crate) async fn fetch_one(
        &self,
        request: FetchRequest<'_, V>,
    ) -> Result<Fetched<V>, FetchError> {
        let limit = self.fetch_timeout();
        match rt::timeout(limit, self.fetcher.fetch(request)).await {
            Some(result) => result,
            None => Err(FetchError::timeout(format!(
                "no answer within {}",
                rt::compact_duration(limit)
            ))),
        }
    }

    pub(crate) fn fetch_timeout(&self) -> Duration {
        Duration::from_nanos(self.fetch_timeout.load(Relaxed))
    }

    pub(crate) fn set_fetch_timeout(&self, d: Duration) {
        self.fetch_timeout.store(nanos_u64(d), Relaxed);
    }

    pub(crate) fn set_inactive_after(&self, d: Duration) {
        self.inactive_after.store(rt::duration_nanos(d), Relaxed);
    }

    /// Applies a fetch result to the entry and hands it to the waiting readers.
    pub(crate) fn complete(
        &self,
        mut lease: Lease<V>,
        result: Result<Fetched<V>, FetchError>,
        started: Stamp,
    ) -> FlightResult<V> {
        let now = self.clock.now();
        let took = now.since(started);
        let guard = self.map.guard();
        let entry = self.entry_of(&lease.key, lease.generation, &guard);
        let info = entry.map_or_else(
            || self.action_info(lease.key.action()),
            |e| e.action.clone(),
        );
        let bytes = result.as_ref().map_or(0, Fetched::bytes);
        let not_modified = matches!(&result, Ok(f) if f.value.is_none());
        let mut changed = false;
        let result: FlightResult<V> = match entry {
            Some(entry) => {
                let mut w = entry.lock();
                let result = match result {
                    // A newer write (set_data) arrived while this fetch was
                    // in flight: it wins, and the fetch's outcome, success
                    // or failure, is moot. Its readers get the newer value.
                    _ if entry.version() != lease.version => Ok(Hit::fetched(
                        entry.data(&guard).expect("a write stored data"),
                        entry.version(),
                    )),
                    Ok(fetched) if fetched.value.is_none() && !entry.has_data() => {
                        Err(FetchError::bad_data(
                            "the source answered \"not modified\" but nothing is cached",
                        ))
                    }
                    Ok(fetched) => {
                        // If an invalidation arrived meanwhile, the result may
                        // predate the change behind it: store it, but keep
                        // the entry stale so that it is fetched again.
                        let validated = entry.invalidations() == lease.invalidations;
                        let (cached, did_change) =
                            entry.store(&mut w, fetched.value, now, validated, &guard);
                        changed = did_change;
                        entry.record_success(&mut w);
                        Ok(Hit::fetched(
                            cached.expect("checked above"),
                            entry.version(),
                        ))
                    }
                    Err(e) => Err(e),
                };
                let attempt = match &result {
                    Err(e) => entry.record_error(&mut w, e.clone(), now),
                    Ok(_) => 0,
                };
                if w.get()
                    .and_then(|c| c.flight.as_ref())
                    .is_some_and(|f| f.ptr_eq(&lease.flight))
                {
                    w.get_mut().flight = None;
                }
                entry.set_fetching(&w, false);
                w.tidy();
                drop(w);
                match &result {
                    Ok(_) => self.reschedule_after_update(&lease.key, entry, now),
                    Err(e) => self.reschedule_after_failure(&lease.key, entry, e, attempt, now),
                }
                result
            }
            // The query was removed while fetching: hand the value to the
            // readers who asked, without caching it.
            None => result.and_then(|f| {
                f.value
                    .map(|v| Hit::fetched(Arc::new(v), 0))
                    .ok_or_else(|| {
                        FetchError::bad_data(
                            "\"not modified\" for a query that is no longer cached",
                        )
                    })
            }),
        };
        let outcome = match &result {
            Ok(_) if not_modified => Outcome::NotModified,
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Failure {
                bad_data: e.is_bad_data(),
            },
        };
        info.counters
            .refreshed(outcome, took, bytes, self.clock.wall_of(now));
        if lease.retry {
            info.counters.retries.fetch_add(1, Relaxed);
        }
        match &result {
            Err(e) if e.is_network() => {
                self.network.record_network_error();
            }
            // Any answer, even an error status, shows the source is reachable.
            Err(e) if !e.is_offline() && !e.is_timeout() => self.network.record_reachable(),
            Ok(_) => self.network.record_reachable(),
            Err(_) => {}
        }
        if let Some(entry) = entry {
            self.changed(&lease.key);
            if changed {
                self.announce(&lease.key, entry);
            }
        }
        if let Some(tx) = lease.tx.take() {
            let _ = tx.send(result.clone());
        }
        result
    }

    /// After a successful write: queue the entry for when it next falls due.
    pub(crate) fn reschedule_after_update(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) {
        let Some(settings) = self.refresh.load_full() else {
            return;
        };
        let due = if entry.is_invalidated() {
            Some(now)
        } else {
            let updated = entry.updated_at().unwrap_or(now);
            plan::due_after_update(
                entry.action.staleness,
                updated,
                key,
                entry.version(),
                settings.jitter,
            )
        };
        if let Some(due) = due {
            self.schedule
                .schedule(&entry.queued_due, entry.generation, key, due);
        }
    }

    /// After a failed fetch: queue a retry with backoff, or the next natural due time.
    fn reschedule_after_failure(
        &self,
        key: &QueryKey,
        entry: &Entry<V>,
        error: &FetchError,
        attempt: u32,
        now: Stamp,
    ) {
        let Some(settings) = self.refresh.load_full() else {
            return;
        };
        if error.is_offline() {
            return;
        }
        let name = &entry.action.name;
        match plan::retry_delay(&settings, attempt, error, key) {
            Some(delay) => {
                crate::log::decision!(
                    "❌ {key} failed: {error}; retry {attempt}/{} in {}",
                    settings.max_retries,
                    rt::compact_duration(delay)
                );
                self.schedule
                    .schedule(&entry.queued_due, entry.generation, key, now.add(delay));
            }
            None => {
                let next =
                    plan::due_after_giving_up(entry.action.staleness, now, key, settings.jitter);
                let why = if !error.is_retryable() {
                    "not retryable".to_owned()
                } else if !settings.retry_failed_refresh {
                    "retries are off".to_owned()
                } else {
                    format!("{} retries used", settings.max_retries)
                };
                match next {
                    Some(at) => crate::log::decision!(
                        "❌ {name} failed: {error}; {why}, next try in {}",
                        rt::compact_duration(at.since(now))
                    ),
                    None => {
                        crate::log::decision!("❌ {name} failed: {error}; {why}")
                    }
                }
                if let Some(at) = next {
                    self.schedule
                        .schedule(&entry.queued_due, entry.generation, key, at);
                }
            }
        }
    }

    /// Whether a query counts as active: a subscriber, or a read within `inactive_after`.
    pub(crate) fn is_active(&self, entry: &Entry<V>, now: Stamp) -> bool {
        self.read_recently(entry, now) || entry.lock().get().is_some_and(|c| c.observers() > 0)
    }

    /// Whether `entry` was read within `inactive_after` (the half of
    /// "active" that needs no lock).
    fn read_recently(&self, entry: &Entry<V>, now: Stamp) -> bool {
        now.0.saturating_sub(entry.last_read().0) < self.inactive_after.load(Relaxed)
    }

    fn remove_entry(&self, key: &QueryKey) -> bool {
        let guard = self.map.guard();
        match self.map.remove(key, &guard) {
            Some(entry) => {
                // End subscriptions now rather than when the map reclaims the node.
                let cold = entry.lock().take();
                drop(cold);
                true
            }
            None => false,
        }
    }

    /// Removes up to `budget` queries whose gc time has passed.
    pub(crate) fn collect_garbage(&self, now: Stamp, budget: usize) -> usize {
        let mut due = Vec::new();
        self.gc.pop_due(now, budget, &mut due);
        let mut removed = 0;
        let guard = self.map.guard();
        for d in due {
            let Some(entry) = self.entry_of(&d.key, d.generation, &guard) else {
                continue;
            };
            let idle_since = entry.last_read();
            // Garbage time counts from when the query stops being active.
            let expires = Stamp(
                idle_since
                    .0
                    .saturating_add(self.inactive_after.load(Relaxed)),
            )
            .add(self.gc_time);
            let busy = entry.is_fetching() || entry.lock().get().is_some_and(|c| c.observers() > 0);
            if busy {
                self.gc.push(now.add(self.gc_time), d.key, d.generation);
            } else if expires > now {
                self.gc.push(expires, d.key, d.generation);
            } else {
                let gone = self.map.remove_if(
                    &d.key,
                    |_, e| {
                        e.generation == d.generation
                            && e.last_read() == idle_since
                            && !e.is_fetching()
                            && e.lock().get().is_none_or(|c| c.observers() == 0)
                    },
                    &guard,
                );
                match gone {
                    Ok(Some((_, entry))) => {
                        drop(entry.lock().take());
                        removed += 1;
                    }
                    // Read or subscribed just now: look again later.
                    _ => {
                        self.gc.push(now.add(self.gc_time), d.key, d.generation);
                    }
                }
            }
        }
        if removed > 0 {
            crate::log::decision!("🧹 collected {removed} unused queries");
        }
        removed
    }

    pub(crate) fn state_of(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) -> QueryState<V> {
        let (last_error, observers) = {
            let w = entry.lock();
            let c = w.get();
            (
                c.and_then(|c| c.last_error.clone()),
                c.map_or(0, |c| c.observers()),
            )
        };
        let updated = entry.updated_at();
        let data = entry.data(&self.map.guard());
        let stale = data.is_some() && entry.is_stale(now);
        let status = if entry.is_fetching() {
            FetchStatus::Fetching
        } else if !self.network.is_online() && (stale || data.is_none()) {
            FetchStatus::Paused
        } else {
            FetchStatus::Idle
        };
        let queued = entry.queued_due.load(Relaxed);
        QueryState {
            key: key.clone(),
            resource: self.policy.resource(key.action()).to_owned(),
            data,
            updated_at: updated.map(|t| self.clock.wall_of(t)),
            age: updated.map(|t| now.since(t)),
            staleness: entry.action.staleness,
            is_stale: stale,
            is_invalidated: entry.is_invalidated(),
            status,
            error_count: entry.errors(),
            last_error: last_error.as_ref().map(|e| e.error.clone()),
            last_error_at: last_error.map(|e| self.clock.wall_of(e.at)),
            observers,
            last_read: self.clock.wall_of(entry.last_read()),
            is_active: observers > 0 || self.read_recently(entry, now),
            version: entry.version(),
            next_check: (queued != i64::MAX).then(|| self.clock.wall_of(Stamp(queued))),
        }
    }

    /// Restores a persisted entry (hydrate). Returns false, changing
    /// nothing, when the key already has data in memory.
    pub(crate) fn restore(
        &self,
        key: &QueryKey,
        value: V,
        updated: SystemTime,
        rec: &crate::store::record::Record,
    ) -> bool {
        let now = self.clock.now();
        let guard = self.map.guard();
        let entry = self.entry_or_create(key, now, &guard);
        let mut w = entry.lock();
        if entry.has_data() {
            return false;
        }
        entry.restore(
            &w,
            Arc::new(value),
            self.clock.stamp_of(updated),
            rec.version,
            &guard,
        );
        let error = rec.last_error.as_ref().map(|e| ErrorRecord {
            error: FetchError::new(e.kind, e.message.clone()),
            at: self
                .clock
                .stamp_of(crate::store::record::unix(e.at_unix_nanos)),
            invalidations: entry.invalidations(),
        });
        entry.restore_error(&mut w, rec.errors, error);
        if rec.invalidated {
            entry.invalidate(&w);
        }
        drop(w);
        self.reschedule_after_update(key, entry, now);
        true
    }

    /// What the store should hold for `key`: its value, and its record
    /// without the payload (the codec adds that). `None` without data.
    pub(crate) fn record_of(
        &self,
        key: &QueryKey,
    ) -> Option<(Arc<V>, crate::store::record::Record)> {
        let guard = self.map.guard();
        let entry = self.map.get(key, &guard)?;
        let w = entry.lock();
        let value = entry.data(&guard)?;
        let last_error = w.get().and_then(|c| c.last_error.as_ref()).map(|e| {
            crate::store::record::StoredError {
                kind: e.error.kind(),
                at_unix_nanos: crate::persist::unix_nanos(self.wall(e.at)),
                message: e.error.message().to_owned(),
            }
        });
        let rec = crate::store::record::Record {
            version: entry.version(),
            updated_at_unix_nanos: crate::persist::unix_nanos(self.wall(entry.updated_at()?)),
            invalidated: entry.is_invalidated(),
            errors: entry.errors(),
            last_error,
            payload: Vec::new(),
        };
        Some((value, rec))
    }

    /// Tells [`QueryClient::changes`] listeners that `key`'s data changed.
    fn announce(&self, key: &QueryKey, entry: &Entry<V>) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Change {
                key: key.clone(),
                version: entry.version(),
                updated_at: entry
                    .updated_at()
                    .map_or_else(crate::rt::wall_now, |t| self.wall(t)),
            });
        }
    }

    fn changed(&self, key: &QueryKey) {
        if let Some(h) = self.hooks.get() {
            h.changed(key);
        }
    }

    fn removed(&self, key: &QueryKey) {
        if let Some(h) = self.hooks.get() {
            h.removed(key);
        }
    }

    /// The wall-clock time of `t`.
    pub(crate) fn wall(&self, t: Stamp) -> SystemTime {
        self.clock.wall_of(t)
    }
}
