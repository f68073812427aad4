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
//!
//! The refresh service and persistence use a narrow internal interface,
//! and nothing else of the client:
//!
//! - [`flight`]: [`Inner::lease`] (may this key be fetched now: the one
//!   place that decides), [`Inner::fetch`] and [`Inner::fetch_batch`] (run
//!   leases through the coordinator, the concurrency limit and the timeout),
//!   which apply each result in one synchronous step and then hand its
//!   outcome to the schedule, the statistics, the network monitor, the
//!   store hook, the change feed and the waiting readers;
//! - [`EntryRef`]: what a staleness check needs to see of one entry;
//! - [`snapshot`]: what persistence stores of an entry, and restores.

mod activity;
mod cell;
mod entry;
mod entry_ref;
mod flight;
mod gc;
mod index;
mod limiter;
mod snapshot;
mod state;
mod subscription;

use crate::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::channel::oneshot;
use parking_lot::Mutex;

use activity::Activity;
use entry::{ActionInfo, Entry};
pub(crate) use entry_ref::EntryRef;
pub(crate) use flight::{Lease, NoLease, Purpose, Ran};
use index::{KeyIndex, RecentIndex};
pub(crate) use snapshot::Snapshot;
pub use state::{FetchStatus, Freshness, Hit, QueryState};
pub use subscription::Subscription;

use crate::coord::{Coordinator, DynCoordinator};
use crate::fetch::{Batching, DynFetcher, FetchError, Fetcher};
use crate::key::{KeyHasher, QueryKey};
use crate::network::NetworkMonitor;
use crate::policy::Policy;
use crate::rt::{Clock, ClockSource, Stamp};
use crate::schedule::RefreshSchedule;
use crate::schedule::due::{Due, Facts, next_due};
use crate::settings::{RefreshSettings, SettingsError};
use crate::stats::{CacheStats, Read, ResourceCounters, Stats};
use gc::GarbageQueue;
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

/// The cache's state. Its fields are private to `client`: the refresh
/// service and persistence go through the methods marked `pub(crate)`.
pub(crate) struct Inner<V> {
    map: papaya::HashMap<QueryKey, Entry<V>, KeyHasher>,
    fetcher: Box<dyn DynFetcher<V>>,
    /// `None`: the client alone ([`LocalCoordinator`]), which the fetch path
    /// short-cuts: granting every fetch and numbering versions here needs
    /// no call.
    coordinator: Option<Box<dyn DynCoordinator<V>>>,
    policy: Policy,
    settings: RefreshSettings,
    actions: papaya::HashMap<Box<str>, Arc<ActionInfo>>,
    resources: Mutex<BTreeMap<String, Arc<ResourceCounters>>>,
    clock: Clock,
    network: NetworkMonitor,
    limiter: Limiter,
    gc: GarbageQueue,
    /// The active queries, counted as they change (see `activity`).
    activity: Activity,
    /// Every cached key in key order, for pages of `queries_page`.
    keys: crate::sync::Mutex<KeyIndex>,
    /// The entries updated most recently, for `recently_updated`.
    recent: crate::sync::Mutex<RecentIndex>,
    /// The highest version of any entry removed so far. A new entry's
    /// versions continue from it, so that a key removed (collected,
    /// evicted) and cached again never shows a lower version than before.
    version_floor: AtomicU64,
    /// Salts the due-time jitter: the coordinator's (0 alone).
    jitter_salt: u64,
    schedule: RefreshSchedule,
    hooks: std::sync::OnceLock<Arc<dyn ChangeHook<V>>>,
    changes: tokio::sync::broadcast::Sender<Change>,
    /// [`QueryClient::on_change`]'s listeners, called in `announce`.
    listeners: parking_lot::RwLock<Vec<ChangeListener>>,
}

/// A listener of [`QueryClient::on_change`].
type ChangeListener = Box<dyn Fn(&Change) + Send + Sync>;

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
///
/// The client owns every setting that shapes how it reaches the source and
/// what it keeps: its [`RefreshSettings`] (the concurrency limit, the fetch
/// timeout, the activity window, when errors mean offline, and the pacing a
/// [`BackgroundRefresh`](crate::BackgroundRefresh) attached to it follows).
/// Nothing changes them after `build`.
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueryClientBuilder<V> {
    fetcher: Box<dyn DynFetcher<V>>,
    coordinator: Option<Box<dyn DynCoordinator<V>>>,
    policy: Policy,
    settings: RefreshSettings,
    network: Option<NetworkMonitor>,
    gc_time: Duration,
    capacity: usize,
    max_queries: usize,
    clock: ClockSource,
}

impl<V> std::fmt::Debug for QueryClientBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClientBuilder")
            .field("policy", &self.policy)
            .field("settings", &self.settings)
            .field("gc_time", &self.gc_time)
            .finish_non_exhaustive()
    }
}

impl<V: PartialEq + Send + Sync + 'static> QueryClientBuilder<V> {
    /// The staleness rules (default: [`Policy::default`], five minutes for everything).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The settings (default: [`RefreshSettings::default`], the seed's).
    ///
    /// They apply to the client as a whole: `max_concurrent_refreshes`
    /// bounds every request to the source, reads that miss included;
    /// `fetch_timeout` cuts off every fetch; after `offline_after_errors`
    /// network errors in a row the client counts the source as offline;
    /// `inactive_after` says which queries a refresh service keeps fresh. The
    /// rest paces a refresh service attached to the client.
    ///
    /// # Errors
    ///
    /// A setting that cannot work ([`RefreshSettings::validate`]).
    pub fn settings(mut self, settings: RefreshSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        self.settings = settings;
        Ok(self)
    }

    /// Shares a network monitor with the application (default: a new one, online).
    pub fn network(mut self, network: NetworkMonitor) -> Self {
        self.network = Some(network);
        self
    }

    /// Who decides whether this client fetches a key, and numbers data
    /// versions (default: [`LocalCoordinator`](crate::LocalCoordinator),
    /// the client alone). See
    /// [`Coordinator`].
    pub fn coordinator(mut self, coordinator: impl Coordinator<V>) -> Self {
        self.coordinator = Some(Box::new(coordinator));
        self
    }

    /// How long a query stays cached once it is inactive: no subscriber,
    /// and (with a refresh service attached) no read for `inactive_after`.
    /// TanStack's `gcTime`; default five minutes.
    pub fn gc_time(mut self, gc_time: Duration) -> Self {
        self.gc_time = gc_time;
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

    /// The most queries the cache holds (default: no limit). Creating a
    /// query beyond it first evicts one: the query idle the longest, in the
    /// order of the garbage-collection queue, with a second chance for one
    /// read within the activity window. Queries with a subscriber or a fetch
    /// in flight are never evicted; when only such queries are left, the
    /// cache grows past the limit rather than fail a read. Evicted queries
    /// stay in an attached store, as collected ones do. Set it whenever keys
    /// come from untrusted input (the daemon does): each distinct key costs
    /// memory.
    pub fn max_queries(mut self, max: usize) -> Self {
        self.max_queries = max.max(1);
        self
    }

    /// Builds the client.
    pub fn build(self) -> QueryClient<V> {
        let jitter_salt = self.coordinator.as_ref().map_or(0, |c| c.jitter_salt());
        let clock = Clock::new(self.clock);
        let activity = Activity::new(self.settings.inactive_after, clock.now());
        let map = papaya::HashMap::builder()
            .capacity(self.capacity)
            .hasher(KeyHasher)
            .build();
        QueryClient {
            inner: Arc::new(Inner {
                map,
                fetcher: self.fetcher,
                coordinator: self.coordinator,
                policy: self.policy,
                limiter: Limiter::new(self.settings.max_concurrent_refreshes),
                settings: self.settings,
                actions: papaya::HashMap::new(),
                resources: Mutex::default(),
                activity,
                keys: crate::sync::Mutex::default(),
                recent: crate::sync::Mutex::default(),
                clock,
                network: self.network.unwrap_or_default(),
                gc: GarbageQueue::new(self.gc_time, self.max_queries),
                version_floor: AtomicU64::new(0),
                jitter_salt,
                schedule: RefreshSchedule::new(),
                hooks: std::sync::OnceLock::new(),
                changes: tokio::sync::broadcast::Sender::new(CHANGES_CAPACITY),
                listeners: parking_lot::RwLock::default(),
            }),
        }
    }
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

    /// Whether `key` is one of the queries this filter names (`policy`
    /// knows each action's resource).
    pub(crate) fn matches(&self, key: &QueryKey, policy: &Policy) -> bool {
        match self {
            QueryFilter::All => true,
            QueryFilter::Key(k) => k == key,
            QueryFilter::Action(a) => key.action() == a,
            QueryFilter::Resource(r) => policy.resource(key.action()) == r,
            QueryFilter::Predicate(p) => p(key),
        }
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

impl<V: PartialEq + Send + Sync + 'static> QueryClient<V> {
    /// Starts building a client around `fetcher`.
    pub fn builder(fetcher: impl Fetcher<V>) -> QueryClientBuilder<V> {
        QueryClientBuilder {
            fetcher: Box::new(fetcher),
            coordinator: None,
            policy: Policy::default(),
            settings: RefreshSettings::default(),
            network: None,
            gc_time: DEFAULT_GC_TIME,
            capacity: 0,
            max_queries: usize::MAX,
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
        if let Some(v) = self.inner.read(key, |_, (v, _), _, _| v) {
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
        match self.inner.read(key, |_, (v, _), _, _| v) {
            Some(v) => Some(v),
            None => {
                self.inner.count_miss(key);
                None
            }
        }
    }

    /// The cached value of `key` and its version, if any, without counting
    /// a read or marking the query active: for a change feed that carries
    /// values to its listeners, which are not readers of the cache.
    pub fn peek(&self, key: &QueryKey) -> Option<(Arc<V>, u64)> {
        let guard = self.inner.map.guard();
        let entry = self.inner.map.get(key, &guard)?;
        entry.data_and_version(&guard)
    }

    /// The cached value with its metadata, if any, without fetching. Counts as a read.
    pub fn get_cached_with_meta(&self, key: &QueryKey) -> Option<Hit<V>> {
        let hit = self.inner.read(key, Inner::hit);
        if hit.is_none() {
            self.inner.count_miss(key);
        }
        hit
    }

    /// The cached value with its metadata, if any, without fetching, counted
    /// as a read only when there is one: for a caller that serves hits on a
    /// path of its own and hands a miss to [`get_with_meta`](Self::get_with_meta),
    /// which counts it (so a miss is counted once). A hit is exactly the one
    /// `get_with_meta` would serve.
    pub fn get_cached_hit(&self, key: &QueryKey) -> Option<Hit<V>> {
        self.inner.read(key, Inner::hit)
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
        let (cached, changed) = inner
            .store(
                key,
                entry,
                &mut w,
                Some(value),
                now,
                true,
                entry::Versioning::Local,
                &guard,
            )
            .expect("local versions are never refused");
        entry.record_success(&mut w);
        let due = inner.next_due_of(key, entry, &w, now);
        w.tidy();
        drop(w);
        inner.keep_versions_rising(key, entry, &guard);
        inner.reschedule(key, entry, due);
        let cached = cached.expect("a value was stored");
        if changed {
            inner.changed(key);
            inner.announce(key, entry);
            if let Some(c) = &inner.coordinator {
                c.wrote(key, &cached, entry.version());
            }
        }
        cached
    }

    /// Stores a value another node produced (a cluster's change feed), if
    /// its version is newer than the one cached here, or the same version
    /// confirmed at a later time. Only a cached query is updated: a node
    /// keeps what its own readers asked for. Returns whether anything was
    /// stored. Subscribers and [`changes`](Self::changes) hear of a real
    /// change as of any other.
    pub fn apply_remote(&self, key: &QueryKey, remote: crate::Remote<V>) -> bool {
        let inner = &self.inner;
        let now = inner.clock.now();
        let guard = inner.map.guard();
        let Some(entry) = inner.map.get(key, &guard) else {
            return false;
        };
        let at = inner.clock.stamp_of(remote.updated_at).min(now);
        let mut w = entry.lock();
        let newer = remote.version > entry.version()
            || (remote.version == entry.version() && entry.updated_at().is_none_or(|u| at > u));
        if !newer {
            return false;
        }
        let Some((_, changed)) = inner.store(
            key,
            entry,
            &mut w,
            Some(remote.value),
            at,
            true,
            entry::Versioning::Given(remote.version),
            &guard,
        ) else {
            return false;
        };
        entry.record_success(&mut w);
        let due = inner.next_due_of(key, entry, &w, now);
        w.tidy();
        drop(w);
        inner.keep_versions_rising(key, entry, &guard);
        inner.reschedule(key, entry, due);
        inner.changed(key);
        if changed {
            inner.announce(key, entry);
        }
        true
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
            let rx = w
                .get_mut()
                .changes
                .get_or_insert_with(|| tokio::sync::watch::Sender::new(version))
                .subscribe();
            if let Some(read) = entry.mark_subscribed(&w, true) {
                inner.activity.subscribed(entry, read);
            }
            rx
        };
        inner.touch(entry, now);
        if !entry.has_data() || entry.is_stale(now) {
            inner
                .schedule
                .schedule(&entry.slot, entry.generation, key, now);
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

    /// Calls `listener` with every change of any query's data, the same
    /// ones [`changes`](Self::changes) carries, but synchronously: before
    /// the refresh or [`set_data`](Self::set_data) that made the change
    /// returns, and before the readers waiting on that fetch are answered.
    /// So a change log fed by a listener already holds the change a reader
    /// was answered with when that reader next looks at the log, and it
    /// never loses a change to lag.
    ///
    /// The listener runs on the task that stored the value: it must be
    /// quick, must not block, and must not call `on_change` itself. It is
    /// kept for as long as the client lives.
    pub fn on_change(&self, listener: impl Fn(&Change) + Send + Sync + 'static) {
        self.inner.listeners.write().push(Box::new(listener));
    }

    /// Marks the matching queries stale. The refresh service refreshes the
    /// active ones in its next check; inactive ones are refreshed when next
    /// read. Returns how many queries were marked.
    pub fn invalidate(&self, filter: impl Into<QueryFilter>) -> usize {
        let filter = filter.into();
        let n = self.invalidate_here(&filter);
        if let Some(c) = &self.inner.coordinator {
            c.invalidated(&filter);
        }
        n
    }

    /// Marks the matching queries stale on this node only (an invalidation
    /// another node made, heard through a cluster's change feed).
    pub(crate) fn invalidate_here(&self, filter: &QueryFilter) -> usize {
        let inner = &self.inner;
        let now = inner.clock.now();
        let guard = inner.map.guard();
        let mut n = 0;
        let mut mark = |key: &QueryKey, entry: &Entry<V>| {
            let w = entry.lock();
            entry.invalidate(&w);
            drop(w);
            inner
                .schedule
                .schedule(&entry.slot, entry.generation, key, now);
            inner.changed(key);
            n += 1;
        };
        match filter {
            QueryFilter::Key(key) => {
                if let Some(entry) = inner.map.get(key, &guard) {
                    mark(key, entry);
                }
            }
            _ => {
                for (key, entry) in inner.map.iter(&guard) {
                    if filter.matches(key, &inner.policy) {
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

    /// Removes every query `filter` matches (as [`remove`](Self::remove)
    /// does one), like TanStack Query's `removeQueries`: for data that must
    /// not be served again, where [`invalidate`](Self::invalidate) would
    /// keep it until refreshed. Returns how many were removed.
    pub fn remove_where(&self, filter: impl Into<QueryFilter>) -> usize {
        let filter = filter.into();
        let keys: Vec<QueryKey> = match &filter {
            QueryFilter::Key(key) => vec![key.clone()],
            _ => {
                let guard = self.inner.map.guard();
                self.inner
                    .map
                    .iter(&guard)
                    .map(|(key, _)| key)
                    .filter(|key| filter.matches(key, &self.inner.policy))
                    .cloned()
                    .collect()
            }
        };
        keys.iter().filter(|key| self.remove(key)).count()
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

    /// One page of [`queries`](Self::queries): at most `limit` queries whose
    /// keys sort after `after` (from the first key when `None`), in key
    /// order.
    ///
    /// A range of the ordered index of keys the client keeps beside its
    /// map: a page costs a few tree steps and a state per query listed,
    /// whatever the size of the cache. Keys removed or added while pages
    /// are read are skipped or seen, as their place in key order says.
    pub fn queries_page(&self, after: Option<&QueryKey>, limit: usize) -> Vec<QueryState<V>> {
        let inner = &self.inner;
        let guard = inner.map.guard();
        let now = inner.clock.now();
        let mut page = Vec::with_capacity(limit.min(4096));
        let mut from = after.cloned();
        while page.len() < limit {
            let want = limit - page.len();
            // Copies of the keys (reference counts), taken under the lock;
            // the states are built after it.
            let keys = inner.keys.lock().after(from.as_ref(), want);
            let last = keys.len() < want;
            for text in &keys {
                let key = text.to_key();
                // Removed since the index was read: skipped.
                if let Some(entry) = inner.map.get(&key, &guard) {
                    page.push(inner.state_of(&key, entry, now));
                }
            }
            if last {
                break;
            }
            from = keys.last().map(crate::key::KeyText::to_key);
        }
        page
    }

    /// At most `limit` queries, the most recently updated first (never
    /// updated last; equal times in key order): for a dashboard that shows
    /// what changes, not the whole cache.
    ///
    /// Read from the small index of the latest updates the client keeps
    /// (the best few thousand ranks, kept in step by every write): a call
    /// costs a state per query listed, whatever the size of the cache.
    /// When the index cannot answer (the first call with a `limit` above
    /// half of what it keeps, or fewer than `limit` queries left in it
    /// after removals, or fewer than `limit` queries with data), one pass
    /// over the cache answers and refills it; writes wait for that pass.
    pub fn recently_updated(&self, limit: usize) -> Vec<QueryState<V>> {
        if limit == 0 {
            return Vec::new();
        }
        let inner = &self.inner;
        let guard = inner.map.guard();
        let now = inner.clock.now();
        let mut recent = inner.recent.lock();
        let keys = loop {
            let Some(best) = recent.best(limit, |n| inner.map.len() <= n) else {
                break inner.refill_recent(&mut recent, limit, &guard);
            };
            // A rank whose key is no longer cached is stale (a removal
            // raced with a write): forget it and ask again.
            let stale: Vec<_> = best
                .iter()
                .filter(|(_, key)| !inner.map.contains_key(&key.0, &guard))
                .cloned()
                .collect();
            if stale.is_empty() {
                break best.into_iter().map(|(_, key)| key.0).collect::<Vec<_>>();
            }
            for rank in &stale {
                recent.forget(rank);
            }
        };
        drop(recent);
        keys.iter()
            .filter_map(|key| {
                let entry = inner.map.get(key, &guard)?;
                Some(inner.state_of(key, entry, now))
            })
            .collect()
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
        let mut stats = Stats::from_resources(inner.resource_stats());
        let now = inner.clock.now();
        stats.cached_queries = inner.map.len();
        // Counted as reads and subscriptions change it: no pass over the
        // cache (see `activity` for its precision at the window's edge).
        stats.active_queries = inner
            .activity
            .count(now, inner.inactive_after_nanos())
            .min(stats.cached_queries);
        stats
    }

    /// Publishes the statistics through the [`metrics`] facade, so that any
    /// installed exporter (Prometheus, StatsD, …) can serve them. A running
    /// refresh service does this at every check; call it before a scrape
    /// for figures to the moment. The metrics are listed in
    /// [`Stats`]' documentation.
    pub fn publish_metrics(&self) {
        let inner = &self.inner;
        crate::stats::publish(
            &inner.resource_stats(),
            &crate::stats::Gauges {
                queries: inner.map.len(),
                online: inner.network.is_online(),
                in_flight: inner.limiter.in_flight(),
                limit: inner.limiter.limit(),
            },
        );
    }

    /// The staleness rules in use.
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// The settings the client was built with.
    pub fn settings(&self) -> &RefreshSettings {
        &self.inner.settings
    }

    /// The network monitor the client consults before fetching.
    pub fn network(&self) -> &NetworkMonitor {
        &self.inner.network
    }

    /// Requests to the source in flight right now.
    pub fn fetches_in_flight(&self) -> usize {
        self.inner.limiter.in_flight()
    }
}

impl<V> Inner<V> {
    /// The entry of `key`, if it is still the incarnation `generation` (not
    /// removed and recreated since).
    fn entry_of<'g>(
        &self,
        key: &QueryKey,
        generation: u32,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Option<&'g Entry<V>> {
        self.map
            .get(key, guard)
            .filter(|e| e.generation == generation)
    }

    /// The generation of `key`'s entry, if it is cached (for the model checker).
    #[cfg(all(test, feature = "shuttle"))]
    pub(crate) fn generation_of(&self, key: &QueryKey) -> Option<u32> {
        self.map.get(key, &self.map.guard()).map(|e| e.generation)
    }

    /// Every cached key (a cluster's reconciliation walks them).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn keys(&self) -> Vec<QueryKey> {
        let guard = self.map.guard();
        self.map.iter(&guard).map(|(k, _)| k.clone()).collect()
    }

    /// Whether `key` is cached.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn contains(&self, key: &QueryKey) -> bool {
        self.map.contains_key(key, &self.map.guard())
    }

    /// A guard of the cache's map, under which entries can be looked at.
    pub(crate) fn guard(&self) -> papaya::LocalGuard<'_> {
        self.map.guard()
    }

    /// The number of cached queries.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    pub(crate) fn settings(&self) -> &RefreshSettings {
        &self.settings
    }

    pub(crate) fn network(&self) -> &NetworkMonitor {
        &self.network
    }

    pub(crate) fn schedule(&self) -> &RefreshSchedule {
        &self.schedule
    }

    /// How the fetcher sends a batch.
    pub(crate) fn batching(&self) -> Batching {
        self.fetcher.batching()
    }

    fn resource_stats(&self) -> BTreeMap<String, crate::stats::ResourceStats> {
        self.resources
            .lock()
            .iter()
            .map(|(name, c)| (name.clone(), c.snapshot()))
            .collect()
    }

    /// The activity window: `inactive_after` while a refresh service is
    /// attached; without one, a read keeps nothing active.
    fn inactive_after_nanos(&self) -> i64 {
        if self.schedule.is_enabled() {
            crate::rt::duration_nanos(self.settings.inactive_after)
        } else {
            0
        }
    }

    /// Whether `entry` was read within the activity window (the half of
    /// "active" that needs no lock).
    fn read_recently(&self, entry: &Entry<V>, now: Stamp) -> bool {
        now.0.saturating_sub(entry.last_read().0) < self.inactive_after_nanos()
    }

    /// Whether a query counts as active: a subscriber, or a read within the
    /// activity window.
    fn is_active(&self, entry: &Entry<V>, now: Stamp) -> bool {
        self.read_recently(entry, now) || entry.lock().get().is_some_and(|c| c.observers() > 0)
    }

    /// When `entry` is next due, by the one rule (see `schedule::due`).
    fn next_due_of(
        &self,
        key: &QueryKey,
        entry: &Entry<V>,
        w: &entry::Locked<'_, V>,
        now: Stamp,
    ) -> Option<Due> {
        let facts = Facts {
            salt: self.jitter_salt,
            ..entry.facts(w)
        };
        next_due(&self.settings, key, &facts, now)
    }

    /// When `entry` is next due, taking its lock only if it is failing.
    fn next_due_unlocked(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) -> Option<Due> {
        match entry.facts_if_healthy() {
            Some(facts) => next_due(
                &self.settings,
                key,
                &Facts {
                    salt: self.jitter_salt,
                    ..facts
                },
                now,
            ),
            None => self.next_due_of(key, entry, &entry.lock(), now),
        }
    }

    /// A write may land on an entry removed meanwhile (its writer held it
    /// before the removal): raise the version floor past it, so that the
    /// key's next entry never shows a lower version than a reader saw.
    fn keep_versions_rising(
        &self,
        key: &QueryKey,
        entry: &Entry<V>,
        guard: &papaya::LocalGuard<'_>,
    ) {
        if self.entry_of(key, entry.generation, guard).is_none() {
            self.version_floor.fetch_max(entry.version(), Relaxed);
        }
    }

    /// Queues `entry` for `due`, if it has one (and a service is attached).
    fn reschedule(&self, key: &QueryKey, entry: &Entry<V>, due: Option<Due>) {
        if let Some(due) = due {
            self.schedule
                .schedule(&entry.slot, entry.generation, key, due.at);
        }
    }

    fn remove_entry(&self, key: &QueryKey) -> bool {
        let guard = self.map.guard();
        let removed = self.map.remove_if(
            key,
            |_, e| {
                // Before the entry leaves the map (see `version_floor`).
                self.version_floor.fetch_max(e.version(), Relaxed);
                true
            },
            &guard,
        );
        match removed.ok().flatten().map(|(_, e)| e) {
            Some(entry) => {
                // End subscriptions now rather than when the map reclaims the node.
                let cold = self.left_map(key, entry);
                drop(cold);
                true
            }
            None => false,
        }
    }

    /// Records a read of `entry` at `now` (see `Entry::touch`), and moves
    /// it in the active count if its read time moved.
    #[inline]
    fn touch(&self, entry: &Entry<V>, now: Stamp) {
        if let Some(from) = entry.touch(now, self.activity.slot_nanos()) {
            self.activity.moved(entry, from, now);
        }
    }

    /// Takes note that `entry` left the map (just removed by this caller):
    /// marks it gone, takes it out of the active count, and takes its cold
    /// state (for the caller to drop outside the lock: that ends its
    /// subscriptions now rather than when the map reclaims the node).
    fn left_map(&self, key: &QueryKey, entry: &Entry<V>) -> Option<Box<entry::Cold<V>>> {
        let mut w = entry.lock();
        match entry.mark_gone(&w) {
            Some((_, true)) => self.activity.subscribed_left(),
            Some((read, false)) => self.activity.left(entry, read),
            None => return w.take(),
        }
        // Cached anew meanwhile (after the removal)? Then the indexes hold
        // the new entry, which must stay.
        let guard = self.map.guard();
        let now_cached = || self.map.get(key, &guard);
        if let Some(at) = entry.updated_at() {
            self.recent.lock().removed(key, at, || {
                now_cached().is_some_and(|e| e.updated_at() == Some(at))
            });
        }
        self.keys.lock().remove(key, || now_cached().is_some());
        w.take()
    }

    /// A pass over the cache for [`QueryClient::recently_updated`]: the
    /// keys of the best `limit` entries, best first (those without an
    /// update time last, in key order), refilling the recent index on the
    /// way. Runs under the index's lock, so no update is lost meanwhile.
    fn refill_recent(
        &self,
        recent: &mut RecentIndex,
        limit: usize,
        guard: &papaya::LocalGuard<'_>,
    ) -> Vec<QueryKey> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let keep = RecentIndex::capacity_for(limit);
        // Larger rank = shown first: newer, then the smaller key. A min-heap
        // of the best so far: the worst one leaves first.
        type Rank<'k> = (Option<Stamp>, Reverse<&'k QueryKey>);
        let mut kept: BinaryHeap<Reverse<Rank<'_>>> = BinaryHeap::with_capacity(keep + 1);
        let mut left_out: Option<Rank<'_>> = None;
        for (key, entry) in self.map.iter(guard) {
            kept.push(Reverse((entry.updated_at(), Reverse(key))));
            if kept.len() > keep
                && let Some(Reverse(out)) = kept.pop()
            {
                left_out = left_out.max(Some(out));
            }
        }
        // Ascending Reverse<rank> is descending rank: best first.
        let best: Vec<Rank<'_>> = kept.into_sorted_vec().into_iter().map(|r| r.0).collect();
        let owned = |(at, key): &Rank<'_>| at.map(|at| (at, Reverse(key.0.clone())));
        recent.refill(
            limit,
            best.iter().filter_map(owned).collect(),
            left_out.as_ref().and_then(owned),
        );
        best.into_iter()
            .take(limit)
            .map(|(_, key)| key.0.clone())
            .collect()
    }

    /// Stores into `entry` (see `Entry::store`), keeping the index of
    /// recent updates in step.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        key: &QueryKey,
        entry: &Entry<V>,
        w: &mut entry::Locked<'_, V>,
        value: Option<V>,
        at: Stamp,
        validated: bool,
        versioning: entry::Versioning,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<(Option<Arc<V>>, bool)>
    where
        V: PartialEq,
    {
        let before = entry.updated_at();
        let stored = entry.store(w, value, at, validated, versioning, guard);
        if stored.is_some() {
            self.was_updated(key, entry, w, before);
        }
        stored
    }

    /// `entry`'s update time changed from `before` (its lock held): the
    /// recent index follows, unless the entry left the map.
    fn was_updated(
        &self,
        key: &QueryKey,
        entry: &Entry<V>,
        _w: &entry::Locked<'_, V>,
        before: Option<Stamp>,
    ) {
        if let Some(at) = entry.updated_at()
            && !entry.is_gone()
        {
            self.recent.lock().updated(key, before, at);
        }
    }

    fn state_of(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) -> QueryState<V> {
        let (last_error, observers) = {
            let w = entry.lock();
            let c = w.get();
            (
                c.and_then(|c| c.last_error.clone()),
                c.map_or(0, |c| c.observers()),
            )
        };
        let updated = entry.updated_at();
        // The value and its version as one pair (see `data_and_version`).
        let (data, version) = match entry.data_and_version(&self.map.guard()) {
            Some((data, version)) => (Some(data), version),
            None => (None, entry.version()),
        };
        let stale = data.is_some() && entry.is_stale(now);
        let status = if entry.is_fetching() {
            FetchStatus::Fetching
        } else if !self.network.is_online() && (stale || data.is_none()) {
            FetchStatus::Paused
        } else {
            FetchStatus::Idle
        };
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
            version,
            next_check: entry.slot.queued_at().map(|t| self.clock.wall_of(t)),
        }
    }

    /// Tells [`QueryClient::on_change`]'s listeners, then
    /// [`QueryClient::changes`]' receivers, that `key`'s data changed.
    fn announce(&self, key: &QueryKey, entry: &Entry<V>) {
        let listeners = self.listeners.read();
        if self.changes.receiver_count() == 0 && listeners.is_empty() {
            return;
        }
        let change = Change {
            key: key.clone(),
            version: entry.version(),
            updated_at: entry
                .updated_at()
                .map_or_else(|| self.clock.wall_now(), |t| self.clock.wall_of(t)),
        };
        for listener in listeners.iter() {
            listener(&change);
        }
        drop(listeners);
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(change);
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

    /// Attaches the store's write-behind; false if one is attached already.
    pub(crate) fn attach_hook(&self, hook: Arc<dyn ChangeHook<V>>) -> bool {
        self.hooks.set(hook).is_ok()
    }
}

impl<V: PartialEq + Send + Sync + 'static> Inner<V> {
    /// Takes note that another node confirmed `key`'s data at `version`
    /// (the source answered the same) at `updated_at`: the entry counts as
    /// fresh from then, if it holds that version and older news.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn confirm(&self, key: &QueryKey, version: u64, updated_at: SystemTime) -> bool {
        let now = self.clock.now();
        let guard = self.map.guard();
        let Some(entry) = self.map.get(key, &guard) else {
            return false;
        };
        let at = self.clock.stamp_of(updated_at).min(now);
        let mut w = entry.lock();
        if entry.version() != version || entry.updated_at().is_none_or(|u| u >= at) {
            return false;
        }
        self.store(
            key,
            entry,
            &mut w,
            None,
            at,
            true,
            entry::Versioning::Given(version),
            &guard,
        );
        let due = self.next_due_of(key, entry, &w, now);
        drop(w);
        self.reschedule(key, entry, due);
        self.changed(key);
        true
    }

    /// Renumbers `key`'s data from version `from` to `to` (a cluster gave
    /// this node's own write a version that is the same on every node).
    /// Does nothing if the data changed since (its version is not `from`)
    /// or `to` is not higher.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn renumber(&self, key: &QueryKey, from: u64, to: u64) -> bool {
        let guard = self.map.guard();
        let Some(entry) = self.map.get(key, &guard) else {
            return false;
        };
        let mut w = entry.lock();
        if entry.version() != from || to <= from {
            return false;
        }
        self.store(
            key,
            entry,
            &mut w,
            None,
            entry.updated_at().unwrap_or_default(),
            false,
            entry::Versioning::Given(to),
            &guard,
        )
        .is_some()
    }

    /// The cached read path. Calls `f` with the entry, its value and that
    /// value's version (one pair), the time and whether the value is stale;
    /// `None` when nothing is cached.
    #[inline]
    fn read<R>(
        &self,
        key: &QueryKey,
        f: impl FnOnce(&Entry<V>, (Arc<V>, u64), Stamp, bool) -> R,
    ) -> Option<R> {
        let guard = self.map.guard();
        let entry = self.map.get(key, &guard)?;
        let value = entry.data_and_version(&guard)?;
        let now = self.clock.now();
        self.touch(entry, now);
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

    fn hit(entry: &Entry<V>, (value, version): (Arc<V>, u64), now: Stamp, stale: bool) -> Hit<V> {
        let updated = entry.updated_at().unwrap_or(now);
        Hit {
            value,
            freshness: if stale {
                Freshness::Stale
            } else {
                Freshness::Fresh
            },
            age: now.since(updated),
            version,
        }
    }

    /// A stale value was served: make sure a refresh is on its way. Cheap
    /// after the first time: the entry's slot then shows a queued deadline.
    #[cold]
    fn stale_read(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) {
        if self.schedule.is_enabled() && entry.slot.is_idle() && !entry.is_fetching() {
            self.schedule
                .schedule(&entry.slot, entry.generation, key, now);
        }
    }

    fn count_miss(&self, key: &QueryKey) {
        self.action_info(key.action()).counters.read(Read::Miss);
    }

    /// What the client knows about `action`, created on first use.
    fn action_info(&self, action: &str) -> Arc<ActionInfo> {
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
        let info = Arc::new(ActionInfo::new(self.policy.staleness(action), counters));
        actions.get_or_insert(action.into(), info).clone()
    }

    /// The entry of `key`, created (empty) if there is none.
    fn entry_or_create<'g>(
        &self,
        key: &QueryKey,
        now: Stamp,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g Entry<V> {
        if let Some(entry) = self.map.get(key, guard) {
            return entry;
        }
        let floor = self.version_floor.load(Relaxed);
        let entry = Entry::new(self.action_info(key.action()), now, floor);
        if self.map.len() >= self.gc.max_queries() {
            self.evict_one(now);
        }
        match self.map.try_insert(key.clone(), entry, guard) {
            Ok(entry) => {
                self.activity.entered(entry, now);
                self.keys.lock().insert(key);
                // Collect a little first, then queue the new entry: it must
                // not be collected by the call that created it.
                self.collect_garbage(now, 16);
                self.gc.push(now, key.clone(), entry.generation);
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
                if !force && let Some(value) = entry.data_and_version(&guard) {
                    // Filled by another reader since we looked.
                    let stale = entry.is_stale(now);
                    return Ok(Self::hit(entry, value, now, stale));
                }
                if !counted {
                    entry.action.counters.read(Read::Miss);
                    counted = true;
                }
                self.touch(entry, now);
                self.join_or_lead(key, entry, &guard)
            };
            let lease = match role {
                flight::Role::Wait(flight) => match flight.await {
                    Ok(result) => return result,
                    // The reader running the fetch was cancelled: take over.
                    Err(oneshot::Canceled) => continue,
                },
                flight::Role::Lead(lease) => lease,
                flight::Role::Offline => return Err(self.skipped_offline(key)),
            };
            match self.fetch(lease).await {
                Ran::Done { result, .. } => return result,
                // The network went away while the fetch waited for its turn.
                Ran::Deferred => return Err(self.skipped_offline(key)),
                Ran::Skipped => unreachable!("readers are never skipped"),
            }
        }
    }

    /// Counts a read that could not fetch because the source is offline.
    fn skipped_offline(&self, key: &QueryKey) -> FetchError {
        let info = self.action_info(key.action());
        info.counters.skipped_offline.fetch_add(1, Relaxed);
        FetchError::offline()
    }
}
