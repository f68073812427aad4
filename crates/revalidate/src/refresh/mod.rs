//! The background refresh service: the seed's Staleness Monitor, Refresh
//! Scheduler and Network Detection, running beside a [`QueryClient`].
//!
//! The service is a future. [`BackgroundRefresh::start`] spawns it on the
//! current tokio runtime and returns a [`RefreshHandle`]; [`BackgroundRefresh::run`]
//! is the future itself, for an application that spawns its own tasks. The
//! library spawns nothing else.
//!
//! What runs when:
//!
//! - Every `check_interval` (the coalescing window) the monitor pops the
//!   deadlines that have passed, drops those of inactive queries, and hands
//!   the rest to the executor, longest overdue first. Invalidations and stale
//!   reads within a window become one refresh per key at the next check.
//! - The executor keeps at most `max_concurrent_refreshes` requests in
//!   flight, batches keys of one action when the fetcher sends batches as
//!   one request, and stores results unless a newer write arrived meanwhile.
//! - A failure is retried after `retry_interval`, doubling, with jitter, up
//!   to `max_retries`; then the query waits for its next natural due time.
//! - While offline nothing is fetched: due queries are set aside, and when
//!   the network returns they are refreshed first, at once.

pub(crate) mod executor;
pub(crate) mod monitor;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;

use crate::client::{Inner, QueryClient};
use crate::log::decision;
use crate::stats::Stats;
use executor::{Job, JobReport};
use monitor::{CheckReport, Monitor, Work};

/// Why a refresh service could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// Another refresh service is already attached to this client.
    #[error("a refresh service is already running for this client; shut it down first")]
    AlreadyRunning,
}

impl RefreshError {
    /// Whether another service already runs for the client.
    pub fn is_already_running(&self) -> bool {
        matches!(self, RefreshError::AlreadyRunning)
    }
}

type ProbeFn = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Shared between the service and its controllers.
#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    /// Wakes the loop to stop or to check now.
    wake: Notify,
    check_now: AtomicBool,
    /// No checks while set (a hidden page): due work waits for the resume.
    paused: AtomicBool,
}

/// Controls a running service from elsewhere: stop it, or ask for a check
/// now. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RefreshController {
    control: Arc<Control>,
}

impl RefreshController {
    /// Asks the service to stop. In-flight fetches get the shutdown grace
    /// period to finish.
    pub fn stop(&self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.wake.notify_one();
    }

    /// Asks for a staleness check now instead of at the next interval (for
    /// example when a window regains focus).
    pub fn check_now(&self) {
        self.control.check_now.store(true, Ordering::Release);
        self.control.wake.notify_one();
    }

    /// Whether the service has been asked to stop.
    pub fn is_stopping(&self) -> bool {
        self.control.stop.load(Ordering::Acquire)
    }

    /// Pauses the service (`true`) or resumes it (`false`). While paused it
    /// starts no refreshes: what falls due waits, in-flight fetches finish,
    /// and reads still fetch what is not cached. A resume checks at once, so
    /// what went stale meanwhile is refreshed then (for example while a
    /// browser page is hidden).
    pub fn set_paused(&self, paused: bool) {
        let was = self.control.paused.swap(paused, Ordering::AcqRel);
        if was && !paused {
            self.check_now();
        } else {
            // The loop looks at the flag again (and stops arming its timer).
            self.control.wake.notify_one();
        }
    }

    /// Whether the service is paused.
    pub fn is_paused(&self) -> bool {
        self.control.paused.load(Ordering::Acquire)
    }
}

/// The background refresh service for one [`QueryClient`].
///
/// ```
/// use revalidate::{fetcher_fn, BackgroundRefresh, FetchError, QueryClient, QueryKey};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let client: QueryClient<String> = QueryClient::builder(fetcher_fn(|key: QueryKey| async move {
///     Ok::<_, FetchError>(format!("fresh {key}"))
/// }))
/// .build();
///
/// let refresh = BackgroundRefresh::new(&client)?.start();
/// // … the application reads through `client` as before …
/// refresh.shutdown().await;
/// # Ok::<(), revalidate::RefreshError>(())
/// # }).unwrap();
/// ```
#[must_use = "a refresh service does nothing until it is started or run"]
pub struct BackgroundRefresh<V: PartialEq + Send + Sync + 'static> {
    inner: Arc<Inner<V>>,
    control: Arc<Control>,
    probe: Option<(Duration, ProbeFn)>,
    /// Whether this value still owns the client's schedule (detaches on drop).
    attached: bool,
}

impl<V: PartialEq + Send + Sync + 'static> std::fmt::Debug for BackgroundRefresh<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundRefresh")
            .field("settings", self.inner.settings())
            .field("probe", &self.probe.as_ref().map(|p| p.0))
            .finish_non_exhaustive()
    }
}

impl<V: PartialEq + Send + Sync + 'static> BackgroundRefresh<V> {
    /// Attaches a refresh service to `client`. It follows the client's
    /// [`RefreshSettings`](crate::RefreshSettings) (set when the client was
    /// built, and never changed by the service): it checks every
    /// `check_interval`, batches up to `batch_size`, retries per the retry
    /// settings, and keeps fresh the queries active within `inactive_after`.
    ///
    /// # Errors
    ///
    /// Another service already attached to the client.
    pub fn new(client: &QueryClient<V>) -> Result<Self, RefreshError> {
        let inner = client.inner.clone();
        if !inner.schedule().enable() {
            return Err(RefreshError::AlreadyRunning);
        }
        inner.seed_schedule(inner.clock().now());
        Ok(Self {
            inner,
            control: Arc::default(),
            probe: None,
            attached: true,
        })
    }

    /// Adds a reachability probe, run every `interval`: `true` means the
    /// source answers. It drives the network state both ways, and it is the
    /// only traffic to the source while offline.
    pub fn with_probe<F, Fut>(mut self, interval: Duration, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probe = Some((interval, Arc::new(move || Box::pin(probe()))));
        self
    }

    /// A controller for the service (stop, check now).
    pub fn controller(&self) -> RefreshController {
        RefreshController {
            control: self.control.clone(),
        }
    }

    /// Spawns the service on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> RefreshHandle {
        let controller = self.controller();
        let inner = self.inner.clone();
        let task = crate::rt::spawn(self.run());
        RefreshHandle {
            controller,
            task: Some(task),
            stats: Box::new(move || {
                QueryClient {
                    inner: inner.clone(),
                }
                .stats()
            }),
        }
    }

    /// The service as a future, for applications that spawn their own tasks.
    /// It completes after [`RefreshController::stop`] (or when dropped).
    pub async fn run(mut self) {
        let mut service = Service {
            monitor: Monitor::new(self.inner.clone()),
            inner: self.inner.clone(),
            control: self.control.clone(),
            queue: VecDeque::new(),
            running: FuturesUnordered::new(),
            trial: false,
            last_check: None,
        };
        service.run(self.probe.take()).await;
        self.detach();
    }

    fn detach(&mut self) {
        if std::mem::take(&mut self.attached) {
            let schedule = self.inner.schedule();
            schedule.disable();
            schedule.clear();
        }
    }
}

impl<V: PartialEq + Send + Sync + 'static> Drop for BackgroundRefresh<V> {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A running refresh service. Dropping it stops the service (in-flight
/// fetches get the grace period); [`shutdown`](Self::shutdown) also waits for it.
pub struct RefreshHandle {
    controller: RefreshController,
    task: Option<crate::rt::Task<()>>,
    stats: Box<dyn Fn() -> Stats + Send + Sync>,
}

impl std::fmt::Debug for RefreshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshHandle").finish_non_exhaustive()
    }
}

impl RefreshHandle {
    /// Stops the service and waits until it has stopped: in-flight fetches
    /// finish within the grace period or are cancelled, leaving the cache as
    /// it was before them.
    pub async fn shutdown(mut self) {
        self.controller.stop();
        if let Some(task) = self.task.take() {
            task.join().await;
        }
    }

    /// A controller for the service.
    pub fn controller(&self) -> &RefreshController {
        &self.controller
    }

    /// The client's statistics (the seed's `getStats()`).
    pub fn stats(&self) -> Stats {
        (self.stats)()
    }
}

impl Drop for RefreshHandle {
    fn drop(&mut self) {
        self.controller.stop();
    }
}

/// The running loop's state.
struct Service<V: PartialEq + Send + Sync + 'static> {
    inner: Arc<Inner<V>>,
    control: Arc<Control>,
    monitor: Monitor<V>,
    /// Jobs waiting for their turn, in order of service.
    queue: VecDeque<Job>,
    running: FuturesUnordered<BoxFuture<'static, JobReport>>,
    /// A trial refresh runs while offline by errors without a probe.
    trial: bool,
    last_check: Option<crate::rt::Stamp>,
}

impl<V: PartialEq + Send + Sync + 'static> Service<V> {
    async fn run(&mut self, probe: Option<(Duration, ProbeFn)>) {
        let settings = self.inner.settings().clone();
        decision!(
            "🚀 background refresh started: check every {}, {} at once, batches of {}",
            crate::rt::compact_duration(settings.check_interval),
            settings.max_concurrent_refreshes,
            settings.batch_size
        );
        let window = settings.check_interval;
        // Housekeeping (garbage collection, metrics, trials while offline)
        // runs once per window whether anything is due or not.
        let mut housekeeping = crate::rt::interval(window);
        let mut network = self.inner.network().watch();
        let mut was_online = self.inner.network().is_online();
        let mut probe_ticker = probe.as_ref().map(|(every, _)| crate::rt::interval(*every));
        let mut probing: Option<BoxFuture<'static, bool>> = None;

        loop {
            let paused = self.control.paused.load(Ordering::Acquire);
            if !paused {
                self.start_jobs();
            }
            if self.control.stop.load(Ordering::Acquire) {
                break;
            }
            let wake_at = if paused { None } else { self.next_check() };
            tokio::select! {
                biased;
                () = self.control.wake.notified() => {
                    if self.control.check_now.swap(false, Ordering::AcqRel)
                        && !self.control.paused.load(Ordering::Acquire)
                    {
                        self.check();
                    }
                }
                Some(report) = self.running.next(), if !self.running.is_empty() => self.finished(report),
                () = crate::rt::sleep_until(wake_at), if wake_at.is_some() => {
                    self.check();
                }
                // An earlier deadline arrived: recompute when to wake.
                () = self.inner.schedule().wake.notified() => {}
                _ = housekeeping.tick() => {
                    let now = self.inner.clock().now();
                    self.inner.collect_garbage(now, 10_000);
                    if !self.inner.network().is_online() && probe.is_none() && !paused {
                        self.try_trial();
                    }
                    QueryClient { inner: self.inner.clone() }.publish_metrics();
                }
                changed = network.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let online = network.borrow_and_update().online;
                    if online && !was_online {
                        let waiting = self.monitor.backlog_len();
                        decision!("📶 online: {waiting} stale queries to refresh");
                        // Catch up at once rather than at the next window
                        // (while paused, at the resume).
                        if !paused {
                            self.check();
                        }
                    } else if !online && was_online {
                        decision!("📴 offline: pausing refreshes");
                    }
                    was_online = online;
                }
                reachable = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                    probing = None;
                    self.inner.network().probe_result(reachable);
                }
                _ = async { probe_ticker.as_mut().expect("guarded").tick().await }, if probe_ticker.is_some() && probing.is_none() => {
                    let (_, f) = probe.as_ref().expect("a probe ticker has a probe");
                    probing = Some(f());
                }
            }
        }
        self.shut_down().await;
    }

    /// When the next check should run: at the earliest deadline, but never
    /// sooner than one window after the last check. Each check also takes
    /// what falls due within the next half window, so deadlines close
    /// together go out together and checks come at most once per window.
    fn next_check(&self) -> Option<crate::rt::Instant> {
        let mut at = self.inner.schedule().next()?;
        let window = self.inner.settings().check_interval;
        if let Some(last) = self.last_check {
            at = at.max(last.add(window));
        }
        Some(self.inner.clock().instant_of(at))
    }

    /// One staleness check: what is due goes into the queue.
    fn check(&mut self) {
        let now = self.inner.clock().now();
        self.last_check = Some(now);
        let online = self.inner.network().is_online();
        let settings = self.inner.settings();
        let horizon = now.add(settings.check_interval / 2);
        let mut work: Vec<Work> = Vec::new();
        let report: CheckReport = self.monitor.check(now, horizon, online, &mut work);
        if !online {
            if report.deferred > 0 {
                decision!(
                    "📴 offline: {} due queries wait for the network",
                    report.deferred
                );
            }
            return;
        }
        executor::plan_jobs(
            work,
            self.inner.batching(),
            settings.batch_size,
            &mut self.queue,
        );
    }

    /// Offline because of errors and without a probe, nothing would ever
    /// bring the network back: one due query is tried per check, as a probe.
    fn try_trial(&mut self) {
        let tripped =
            self.inner.network().status().reason == Some(crate::network::OfflineReason::Errors);
        if !tripped || self.trial || !self.running.is_empty() {
            return;
        }
        if let Some(work) = self.monitor.take_oldest(self.inner.clock().now()) {
            decision!("🔎 offline after errors: trying {} as a probe", work.key);
            self.trial = true;
            self.running
                .push(executor::run(self.inner.clone(), Job::Single(work), true));
        }
    }

    fn start_jobs(&mut self) {
        while self.running.len() < self.inner.settings().max_concurrent_refreshes {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if !self.inner.network().is_online() {
                for w in job.works() {
                    self.monitor.defer(w);
                }
                continue;
            }
            self.running
                .push(executor::run(self.inner.clone(), job, false));
        }
    }

    fn finished(&mut self, report: JobReport) {
        self.trial = false;
        for w in &report.deferred {
            self.monitor.defer(w);
        }
    }

    async fn shut_down(&mut self) {
        let waiting = self.queue.len();
        self.queue.clear();
        let grace = self.inner.settings().shutdown_grace;
        let in_flight = self.running.len();
        if in_flight > 0 {
            decision!(
                "🛑 stopping: {in_flight} refreshes in flight get {} to finish",
                crate::rt::compact_duration(grace)
            );
        }
        let drained = crate::rt::timeout(grace, async {
            while self.running.next().await.is_some() {}
        })
        .await;
        if drained.is_none() {
            decision!(
                "🛑 cancelling {} refreshes still in flight",
                self.running.len()
            );
        }
        // Dropping a job releases its flights; entries keep their last state.
        self.running = FuturesUnordered::new();
        decision!("🛑 background refresh stopped ({waiting} queued refreshes dropped)");
    }
}

/// Hooks for the benchmarks: not part of the API, may change at any time.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Runs the staleness monitor's check by hand.
    #[allow(missing_debug_implementations)]
    pub struct Checker<V: PartialEq + Send + Sync + 'static> {
        service: BackgroundRefresh<V>,
        monitor: Monitor<V>,
        work: Vec<Work>,
    }

    impl<V: PartialEq + Send + Sync + 'static> Checker<V> {
        /// Attaches a (never started) service to `client`, seeding the schedule.
        pub fn new(client: &QueryClient<V>) -> Result<Self, RefreshError> {
            let service = BackgroundRefresh::new(client)?;
            let monitor = Monitor::new(service.inner.clone());
            Ok(Self {
                service,
                monitor,
                work: Vec::new(),
            })
        }

        /// One check now, as the service does it; returns how many queries are due.
        pub fn check(&mut self) -> usize {
            let inner = &self.service.inner;
            let now = inner.clock().now();
            let horizon = now.add(inner.settings().check_interval / 2);
            self.work.clear();
            self.monitor.check(now, horizon, true, &mut self.work);
            self.work.len()
        }

        /// Deadlines in the schedule.
        pub fn scheduled(&self) -> usize {
            self.service.inner.schedule().len()
        }
    }
}
