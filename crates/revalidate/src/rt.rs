//! Time and spawning, in one place.
//!
//! The engine reads the time and waits only through this module, and it
//! spawns nothing except blocking store I/O through [`spawn_blocking`]. Everything
//! here runs on tokio's clock, so tests drive the engine with a paused clock
//! (`#[tokio::test(start_paused = true)]`).
//!
//! In the browser (`wasm32-unknown-unknown`) the same functions have a second
//! implementation, in `rt/web.rs`: the browser's clocks and timers, its event
//! loop for spawning, and a manual clock for tests. Everything else in the
//! engine is the same code on both.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod web;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
pub(crate) use web::*;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
use std::future::Future;
use std::time::{Duration, SystemTime};

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub(crate) use tokio::time::Instant;

/// A point on the engine's timeline, in nanoseconds since the [`Clock`]'s
/// origin. Signed, because entries restored from a store can predate the
/// process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub(crate) struct Stamp(pub(crate) i64);

impl Stamp {
    pub(crate) fn add(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(duration_nanos(d)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        let nanos = self.0.saturating_sub(earlier.0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }
}

pub(crate) fn duration_nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Nanoseconds since the Unix epoch (0 before it, saturating far after).
pub(crate) fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, duration_nanos)
}

/// The time `nanos` after the Unix epoch (the epoch for negative values).
pub(crate) fn from_unix_nanos(nanos: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// Milliseconds since the Unix epoch, for JSON.
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The splitmix64 finaliser: a cheap, well-mixed 64-bit hash of `x`, for
/// deterministic jitter (the same in every run and process).
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where the engine reads the time.
///
/// Every timestamp of a client comes from one source, chosen when the client
/// is built ([`QueryClientBuilder::clock`](crate::QueryClientBuilder::clock)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClockSource {
    /// tokio's clock (`tokio::time::Instant`): exact, and it follows a paused
    /// test clock (`start_paused`, `tokio::time::advance`). The default.
    #[default]
    Tokio,
    /// The operating system's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`
    /// on Linux: the same clock as tokio's real one, to a few milliseconds).
    /// Reading it needs no serialising instruction, which makes cached reads
    /// markedly cheaper when many run back to back (see `BENCHMARKS.md`). It
    /// does not follow tokio's paused test clock. Elsewhere than Linux it is
    /// the standard monotonic clock. In the browser both sources are
    /// `performance.now()` (and follow the manual test clock of
    /// `revalidate::web`).
    Coarse,
}

/// The engine's clock: monotonic [`Stamp`]s, and their wall-clock
/// equivalents for display and persistence.
///
/// Wall time is derived from the monotonic clock (`wall_origin + elapsed`), so
/// it advances with a paused test clock, and ages computed from stored wall
/// times stay consistent with ages computed in memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    source: ClockSource,
    origin: Instant,
    /// The coarse clock's reading at `origin`, in nanoseconds.
    coarse_origin: i64,
    wall_origin: SystemTime,
}

impl Clock {
    pub(crate) fn new(source: ClockSource) -> Self {
        let origin = Instant::now();
        Self {
            source,
            origin,
            coarse_origin: coarse_nanos(),
            wall_origin: wall_at(origin),
        }
    }

    /// The current time. This is on the cached read path: one clock read.
    #[inline]
    pub(crate) fn now(&self) -> Stamp {
        match self.source {
            ClockSource::Tokio => Stamp(duration_nanos(Instant::now().duration_since(self.origin))),
            ClockSource::Coarse => Stamp(coarse_nanos() - self.coarse_origin),
        }
    }

    pub(crate) fn wall_of(self, t: Stamp) -> SystemTime {
        if t.0 >= 0 {
            self.wall_origin + Duration::from_nanos(t.0.unsigned_abs())
        } else {
            self.wall_origin
                .checked_sub(Duration::from_nanos(t.0.unsigned_abs()))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    /// The wall-clock time now, as the engine reckons it: the system's, or
    /// the clock's own mapping when that is later (a paused test clock that
    /// was advanced). Ages computed against it are never negative.
    pub(crate) fn wall_now(self) -> SystemTime {
        wall_now().max(self.wall_of(self.now()))
    }

    pub(crate) fn stamp_of(self, wall: SystemTime) -> Stamp {
        match wall.duration_since(self.wall_origin) {
            Ok(after) => Stamp(duration_nanos(after)),
            Err(before) => Stamp(-duration_nanos(before.duration())),
        }
    }

    /// The tokio instant of a stamp, for sleeping until it.
    pub(crate) fn instant_of(self, t: Stamp) -> Instant {
        if t.0 >= 0 {
            // Far-future stamps (`i64::MAX`: never) clamp to about 30 years out,
            // which tokio's timer accepts.
            let far = Duration::from_secs(86_400 * 365 * 30);
            self.origin + Duration::from_nanos(t.0.unsigned_abs()).min(far)
        } else {
            self.origin
                .checked_sub(Duration::from_nanos(t.0.unsigned_abs()))
                .unwrap_or(self.origin)
        }
    }
}

/// Nanoseconds of the coarse monotonic clock.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[inline]
fn coarse_nanos() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

/// Nanoseconds of the standard monotonic clock, where no coarse one exists.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    all(target_arch = "wasm32", target_os = "unknown")
)))]
#[inline]
fn coarse_nanos() -> i64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    duration_nanos(BASE.get_or_init(std::time::Instant::now).elapsed())
}

/// The wall-clock time of `instant`, by one mapping for the whole process
/// (taken at first use), so that every client agrees on wall times, also
/// when tests advance a paused clock between a client that persists and one
/// that restores.
fn wall_at(instant: Instant) -> SystemTime {
    static ANCHOR: std::sync::OnceLock<(Instant, SystemTime)> = std::sync::OnceLock::new();
    let (at, wall) = *ANCHOR.get_or_init(|| (Instant::now(), wall_now()));
    match instant.checked_duration_since(at) {
        Some(after) => wall + after,
        None => wall - at.duration_since(instant),
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// The wall-clock time, for display fields that are not on a [`Clock`].
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::now()
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// Sleeps for `d` on tokio's clock.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// Sleeps until `deadline` on tokio's clock; forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// A ticker on tokio's clock. A tick that comes late (the loop was busy)
/// delays the next ones rather than firing a burst.
pub(crate) fn interval(period: Duration) -> Interval {
    let mut t = tokio::time::interval(period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// tokio's ticker.
pub(crate) type Interval = tokio::time::Interval;

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// Spawns a task on the current tokio runtime. Only
/// [`BackgroundRefresh::start`](crate::BackgroundRefresh::start) and
/// [`Persistence::start`](crate::Persistence::start) do, when the application
/// asks for it.
pub(crate) fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Task(tokio::spawn(fut))
}

/// A spawned task.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
#[derive(Debug)]
pub(crate) struct Task<T>(tokio::task::JoinHandle<T>);

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
impl<T> Task<T> {
    /// Waits for the task: its output, or `None` if it was cancelled. A
    /// panic in the task is resumed here.
    pub(crate) async fn join(self) -> Option<T> {
        match self.0.await {
            Ok(value) => Some(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }
}

/// Runs `fut` with a time limit on tokio's clock; `None` when it ran out.
#[cfg(not(any(
    feature = "shuttle",
    all(target_arch = "wasm32", target_os = "unknown")
)))]
pub(crate) async fn timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// Under the model checker there is no timer: the model's fetches end by
/// themselves, and shuttle explores when.
#[cfg(feature = "shuttle")]
pub(crate) async fn timeout<F: Future>(_limit: Duration, fut: F) -> Option<F::Output> {
    Some(fut.await)
}

#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
/// Runs blocking work (store I/O) off the async threads.
#[allow(dead_code)] // Used by the on-disk store.
pub(crate) async fn spawn_blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// Formats a duration compactly for logs: `234ms`, `6m`, `1h 5m`, `2d 3h`.
pub(crate) fn compact_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if s < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{s}s")
        } else {
            format!("{s}.{tenths}s")
        };
    }
    let (d_, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    match (d_, h, m, sec) {
        (0, 0, m, 0) => format!("{m}m"),
        (0, 0, m, sec) => format!("{m}m {sec}s"),
        (0, h, 0, _) => format!("{h}h"),
        (0, h, m, _) => format!("{h}h {m}m"),
        (d_, 0, _, _) => format!("{d_}d"),
        (d_, h, _, _) => format!("{d_}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_durations() {
        let cases = [
            (Duration::from_millis(234), "234ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(360), "6m"),
            (Duration::from_secs(365), "6m 5s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(3900), "1h 5m"),
            (Duration::from_secs(86_400 * 2 + 3 * 3600), "2d 3h"),
        ];
        for (d, want) in cases {
            assert_eq!(compact_duration(d), want);
        }
    }

    #[test]
    fn the_coarse_clock_tracks_the_real_one() {
        let clock = Clock::new(ClockSource::Coarse);
        let exact = Clock::new(ClockSource::Tokio);
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(30));
        let coarse = clock.now().since(t0);
        let real = exact.now().since(Stamp(0));
        // Coarse readings lag by at most a scheduler tick (1-10 ms).
        assert!(
            coarse >= Duration::from_millis(15) && coarse <= real + Duration::from_millis(15),
            "{coarse:?} vs {real:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_the_paused_clock() {
        let clock = Clock::new(ClockSource::Tokio);
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        let t1 = clock.now();
        assert_eq!(t1.since(t0), Duration::from_secs(90));
        let w0 = clock.wall_of(t0);
        assert_eq!(
            clock.wall_of(t1).duration_since(w0).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(clock.stamp_of(clock.wall_of(t1)), t1);
        let old = clock.wall_of(t0) - Duration::from_secs(3600);
        assert_eq!(
            clock.now().since(clock.stamp_of(old)),
            Duration::from_secs(3690)
        );
    }
}
