//! Statistics: hit and miss counters on the read path, refresh counters, and
//! their snapshots.
//!
//! Read counters are bumped on every cached read, from every thread, so they
//! are striped: each thread increments its own cache-line-padded stripe and a
//! snapshot sums the stripes. One shared counter would make two threads that
//! read the same hot keys fight over one cache line on every read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use serde::Serialize;

const STRIPES: usize = 16;

/// Counters of one thread stripe, alone on its cache lines.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    fresh: AtomicU64,
    stale: AtomicU64,
    miss: AtomicU64,
}

/// Which stripe the current thread increments.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Read {
    Fresh,
    Stale,
    Miss,
}

/// The counters of one resource type.
pub(crate) struct ResourceCounters {
    pub(crate) name: Arc<str>,
    reads: Box<[Stripe; STRIPES]>,
    pub(crate) refreshes: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) not_modified: AtomicU64,
    pub(crate) bad_data: AtomicU64,
    pub(crate) skipped_offline: AtomicU64,
    pub(crate) adopted: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) refresh_nanos: AtomicU64,
    pub(crate) last_refresh_unix_nanos: AtomicU64,
}

impl std::fmt::Debug for ResourceCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceCounters")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ResourceCounters {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            reads: Box::default(),
            refreshes: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
            bad_data: AtomicU64::new(0),
            skipped_offline: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            refresh_nanos: AtomicU64::new(0),
            last_refresh_unix_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one read. On the cached read path: one thread-local lookup and
    /// one uncontended atomic add.
    #[inline]
    pub(crate) fn read(&self, kind: Read) {
        let s = &self.reads[stripe()];
        let c = match kind {
            Read::Fresh => &s.fresh,
            Read::Stale => &s.stale,
            Read::Miss => &s.miss,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Counts a finished fetch.
    pub(crate) fn refreshed(&self, outcome: FetchEnd, took: Duration, bytes: u64, at: SystemTime) {
        if matches!(outcome, FetchEnd::Adopted) {
            self.adopted.fetch_add(1, Relaxed);
            return;
        }
        metrics::histogram!("revalidate_refresh_duration_seconds", "resource" => self.name.clone())
            .record(took.as_secs_f64());
        self.refreshes.fetch_add(1, Relaxed);
        self.refresh_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        match outcome {
            FetchEnd::Success => {
                self.successes.fetch_add(1, Relaxed);
            }
            FetchEnd::NotModified => {
                self.successes.fetch_add(1, Relaxed);
                self.not_modified.fetch_add(1, Relaxed);
            }
            FetchEnd::Failure { bad_data } => {
                self.failures.fetch_add(1, Relaxed);
                if bad_data {
                    self.bad_data.fetch_add(1, Relaxed);
                }
            }
            FetchEnd::Adopted => unreachable!("counted above"),
        }
        self.last_refresh_unix_nanos
            .fetch_max(crate::rt::unix_nanos(at).unsigned_abs(), Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ResourceStats {
        let mut cache = CacheStats::default();
        for s in self.reads.iter() {
            cache.fresh_hits += s.fresh.load(Relaxed);
            cache.stale_hits += s.stale.load(Relaxed);
            cache.misses += s.miss.load(Relaxed);
        }
        let total = self.refreshes.load(Relaxed);
        let nanos = self.refresh_nanos.load(Relaxed);
        ResourceStats {
            cache,
            total_refreshes: total,
            successful_refreshes: self.successes.load(Relaxed),
            failed_refreshes: self.failures.load(Relaxed),
            retries: self.retries.load(Relaxed),
            not_modified: self.not_modified.load(Relaxed),
            bad_data: self.bad_data.load(Relaxed),
            skipped_offline: self.skipped_offline.load(Relaxed),
            adopted: self.adopted.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            bytes_fetched: self.bytes.load(Relaxed),
            total_refresh_time: Duration::from_nanos(nanos),
            last_refresh_time: match self.last_refresh_unix_nanos.load(Relaxed) {
                0 => None,
                n => Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(n)),
            },
            average_refresh_time: Duration::from_nanos(nanos.checked_div(total).unwrap_or(0)),
        }
    }
}

/// How a fetch ended, for the counters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FetchEnd {
    Success,
    NotModified,
    Failure {
        bad_data: bool,
    },
    /// Not fetched: another node's value was adopted.
    Adopted,
}

/// Cache hits and misses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Reads served from the cache with fresh data.
    pub fresh_hits: u64,
    /// Reads served from the cache with stale data (stale-while-revalidate).
    pub stale_hits: u64,
    /// Reads that found nothing cached and waited for a fetch.
    pub misses: u64,
}

impl CacheStats {
    /// All reads.
    pub fn reads(&self) -> u64 {
        self.fresh_hits + self.stale_hits + self.misses
    }

    /// The share of reads served from the cache, from 0.0 to 1.0 (0.0 with no reads).
    pub fn hit_rate(&self) -> f64 {
        match self.reads() {
            0 => 0.0,
            n => (self.fresh_hits + self.stale_hits) as f64 / n as f64,
        }
    }

    fn add(&mut self, o: &CacheStats) {
        self.fresh_hits += o.fresh_hits;
        self.stale_hits += o.stale_hits;
        self.misses += o.misses;
    }
}

/// The statistics of one resource type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ResourceStats {
    /// Hits and misses.
    pub cache: CacheStats,
    /// Fetches made (foreground loads and background refreshes).
    pub total_refreshes: u64,
    /// Fetches that succeeded, including "not modified".
    pub successful_refreshes: u64,
    /// Fetches that failed.
    pub failed_refreshes: u64,
    /// Fetches that were retries of a failed refresh.
    pub retries: u64,
    /// Successful fetches that found the cached value current (HTTP 304).
    pub not_modified: u64,
    /// Failed fetches whose data could not be decoded.
    pub bad_data: u64,
    /// Due refreshes not attempted because the network was offline.
    pub skipped_offline: u64,
    /// Values taken from another node (through a
    /// [`Coordinator`](crate::Coordinator)) instead of fetched from the source.
    pub adopted: u64,
    /// Queries evicted to stay within
    /// [`max_queries`](crate::QueryClientBuilder::max_queries).
    pub evicted: u64,
    /// Bytes transferred, as reported by the fetcher.
    pub bytes_fetched: u64,
    /// Total time spent in fetches.
    #[serde(serialize_with = "ser_millis")]
    pub total_refresh_time: Duration,
    /// Mean time of a fetch.
    #[serde(serialize_with = "ser_millis")]
    pub average_refresh_time: Duration,
    /// When the last fetch finished.
    #[serde(serialize_with = "ser_time")]
    pub last_refresh_time: Option<SystemTime>,
}

impl ResourceStats {
    fn add(&mut self, o: &ResourceStats) {
        self.cache.add(&o.cache);
        self.total_refreshes += o.total_refreshes;
        self.successful_refreshes += o.successful_refreshes;
        self.failed_refreshes += o.failed_refreshes;
        self.retries += o.retries;
        self.not_modified += o.not_modified;
        self.bad_data += o.bad_data;
        self.skipped_offline += o.skipped_offline;
        self.adopted += o.adopted;
        self.evicted += o.evicted;
        self.bytes_fetched += o.bytes_fetched;
        self.total_refresh_time += o.total_refresh_time;
        self.last_refresh_time = self.last_refresh_time.max(o.last_refresh_time);
        self.average_refresh_time = match self.total_refreshes {
            0 => Duration::ZERO,
            n => self.total_refresh_time / u32::try_from(n).unwrap_or(u32::MAX),
        };
    }
}

/// A snapshot of the engine's statistics: the seed's `getStats()` and more.
///
/// The top-level figures are the sums over [`resources`](Stats::resources).
///
/// [`QueryClient::publish_metrics`](crate::QueryClient::publish_metrics)
/// publishes them through the [`metrics`] facade, each with its description:
/// counters `revalidate_refreshes_total{resource,outcome}`,
/// `revalidate_retries_total{resource}`,
/// `revalidate_skipped_offline_total{resource}`,
/// `revalidate_adopted_total{resource}`, `revalidate_evicted_total{resource}`,
/// `revalidate_cache_reads_total{resource,result}`,
/// `revalidate_bytes_fetched_total{resource}`; gauges `revalidate_queries`,
/// `revalidate_online`, `revalidate_fetches_in_flight`,
/// `revalidate_fetch_limit`; and the histogram
/// `revalidate_refresh_duration_seconds{resource}`, recorded as fetches end.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// All resources together.
    #[serde(flatten)]
    pub total: ResourceStats,
    /// Queries with a subscriber or read within `inactive_after`. Counted
    /// as reads and subscriptions change, not by a pass over the cache, to
    /// a slice of 1/128 of `inactive_after` (at least 250 ms): a query read
    /// up to one slice more than `inactive_after` ago may still be counted,
    /// and a race of a subscription or removal with a read of the same
    /// query can leave it one off until that slice leaves the window.
    /// Without a refresh service, reads keep nothing active: subscribers
    /// alone count.
    pub active_queries: usize,
    /// Queries in the cache.
    pub cached_queries: usize,
    /// Per resource type.
    pub resources: BTreeMap<String, ResourceStats>,
}

impl Stats {
    pub(crate) fn from_resources(resources: BTreeMap<String, ResourceStats>) -> Self {
        let mut total = ResourceStats::default();
        for r in resources.values() {
            total.add(r);
        }
        Stats {
            total,
            active_queries: 0,
            cached_queries: 0,
            resources,
        }
    }
}

impl std::ops::Deref for Stats {
    type Target = ResourceStats;
    fn deref(&self) -> &ResourceStats {
        &self.total
    }
}

/// The client-wide gauges published beside the per-resource counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) queries: usize,
    pub(crate) online: bool,
    pub(crate) in_flight: usize,
    pub(crate) limit: usize,
}

/// Publishes counters and gauges through the `metrics` facade, with their
/// descriptions (Prometheus `# HELP`). Descriptions are set every time,
/// which costs little and works whenever the recorder was installed.
pub(crate) fn publish(resources: &BTreeMap<String, ResourceStats>, gauges: &Gauges) {
    use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
    describe_counter!(
        "revalidate_refreshes_total",
        "Fetches from the source, by resource and outcome (success, not_modified, failure)"
    );
    describe_counter!(
        "revalidate_retries_total",
        "Fetches that retried a failed refresh, by resource"
    );
    describe_counter!(
        "revalidate_skipped_offline_total",
        "Due refreshes and misses not fetched because the source was offline, by resource"
    );
    describe_counter!(
        "revalidate_adopted_total",
        "Values taken from another node instead of fetched from the source, by resource"
    );
    describe_counter!(
        "revalidate_evicted_total",
        "Queries evicted to stay within max_queries, by resource"
    );
    describe_counter!(
        "revalidate_cache_reads_total",
        "Reads, by resource and result (fresh, stale, miss)"
    );
    describe_counter!(
        "revalidate_bytes_fetched_total",
        Unit::Bytes,
        "Bytes fetched from the source, by resource"
    );
    metrics::describe_histogram!(
        "revalidate_refresh_duration_seconds",
        Unit::Seconds,
        "How long fetches from the source took, by resource"
    );
    describe_gauge!("revalidate_queries", "Queries in the cache");
    describe_gauge!(
        "revalidate_online",
        "Whether the source counts as reachable (1) or offline (0)"
    );
    describe_gauge!(
        "revalidate_fetches_in_flight",
        "Requests to the source in flight now"
    );
    describe_gauge!(
        "revalidate_fetch_limit",
        "The most requests to the source in flight at once"
    );
    for (name, s) in resources {
        let r = name.clone();
        let outcome = |o: &'static str| counter!("revalidate_refreshes_total", "resource" => r.clone(), "outcome" => o);
        outcome("success").absolute(s.successful_refreshes - s.not_modified);
        outcome("not_modified").absolute(s.not_modified);
        outcome("failure").absolute(s.failed_refreshes);
        counter!("revalidate_retries_total", "resource" => r.clone()).absolute(s.retries);
        counter!("revalidate_skipped_offline_total", "resource" => r.clone())
            .absolute(s.skipped_offline);
        counter!("revalidate_adopted_total", "resource" => r.clone()).absolute(s.adopted);
        counter!("revalidate_evicted_total", "resource" => r.clone()).absolute(s.evicted);
        counter!("revalidate_bytes_fetched_total", "resource" => r.clone())
            .absolute(s.bytes_fetched);
        let read = |o: &'static str| counter!("revalidate_cache_reads_total", "resource" => r.clone(), "result" => o);
        read("fresh").absolute(s.cache.fresh_hits);
        read("stale").absolute(s.cache.stale_hits);
        read("miss").absolute(s.cache.misses);
    }
    gauge!("revalidate_queries").set(gauges.queries as f64);
    gauge!("revalidate_online").set(if gauges.online { 1.0 } else { 0.0 });
    gauge!("revalidate_fetches_in_flight").set(gauges.in_flight as f64);
    gauge!("revalidate_fetch_limit").set(gauges.limit as f64);
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn ser_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&crate::rt::unix_millis(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_sum_across_threads() {
        let c = Arc::new(ResourceCounters::new("process"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.read(Read::Fresh);
                        c.read(Read::Miss);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.read(Read::Stale);
        let s = c.snapshot().cache;
        assert_eq!((s.fresh_hits, s.stale_hits, s.misses), (4000, 1, 4000));
        assert!((s.hit_rate() - 4001.0 / 8001.0).abs() < 1e-9);
    }

    #[test]
    fn refresh_figures_aggregate() {
        let a = ResourceCounters::new("a");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        a.refreshed(FetchEnd::Success, Duration::from_millis(100), 10, at);
        a.refreshed(
            FetchEnd::Failure { bad_data: true },
            Duration::from_millis(300),
            0,
            at,
        );
        let b = ResourceCounters::new("b");
        b.refreshed(
            FetchEnd::NotModified,
            Duration::from_millis(200),
            5,
            at + Duration::from_secs(1),
        );
        let s =
            Stats::from_resources([("a".into(), a.snapshot()), ("b".into(), b.snapshot())].into());
        assert_eq!(s.total_refreshes, 3);
        assert_eq!(s.successful_refreshes, 2);
        assert_eq!(s.failed_refreshes, 1);
        assert_eq!(s.bad_data, 1);
        assert_eq!(s.not_modified, 1);
        assert_eq!(s.bytes_fetched, 15);
        assert_eq!(s.average_refresh_time, Duration::from_millis(200));
        assert_eq!(s.last_refresh_time, Some(at + Duration::from_secs(1)));
        assert_eq!(
            s.resources["a"].average_refresh_time,
            Duration::from_millis(200)
        );
    }
}
