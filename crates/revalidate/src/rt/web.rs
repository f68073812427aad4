//! The browser backend of [`rt`](super) (`wasm32-unknown-unknown`): one
//! thread, no tokio runtime.
//!
//! - **Clocks.** [`Instant`] is `performance.now()` (std's `Instant::now()`
//!   panics on this target), plus the manual clock's offset; the wall clock
//!   is `Date.now()`.
//! - **Timers.** `setTimeout`, in steps of at most 2³¹−1 ms (a longer
//!   browser timer fires at once).
//! - **Spawning.** `spawn_local` on the page's event loop.
//! - **A manual clock, for tests** ([`pause`], [`advance`], [`resume`]):
//!   tokio's paused clock does not exist here, so this one stands in for it.
//!   While paused, time stands still and no browser timer is armed; an
//!   advance moves time on and wakes every sleeper, which looks at the clock
//!   again.
//!
//! The browser's timers hold JavaScript objects, which are not `Send`; the
//! engine's futures are (native builds need it). On this target's single
//! thread a `SendWrapper` around the timer is sound: it checks the thread on
//! every use, and there is only one.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use futures::future::{Either, select};
use send_wrapper::SendWrapper;
use tokio::sync::{Notify, oneshot};

#[cfg(feature = "redb")]
compile_error!(
    "revalidate's `redb` feature is for native targets: in the browser, build with \
     `default-features = false, features = [\"web\"]` and use `IdbStore`"
);

/// The longest delay a browser timer takes: longer ones fire at once.
const MAX_TIMER: Duration = Duration::from_millis(i32::MAX as u64);

/// A point on the browser's monotonic clock (`performance.now()`, moved by
/// the manual clock), as time since the first reading.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub(crate) struct Instant(Duration);

impl Instant {
    /// The time now: frozen while the manual clock is paused.
    #[inline]
    pub(crate) fn now() -> Self {
        MANUAL.with(|m| {
            let m = m.get();
            Instant(m.frozen.unwrap_or_else(|| shifted(real_now(), m.offset)))
        })
    }

    pub(crate) fn duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub(crate) fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        self.0.checked_sub(earlier.0)
    }

    pub(crate) fn checked_sub(self, d: Duration) -> Option<Instant> {
        self.0.checked_sub(d).map(Instant)
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

/// Real time since the first reading (`performance.now()`).
fn real_now() -> Duration {
    static BASE: OnceLock<web_time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(web_time::Instant::now);
    web_time::Instant::now().saturating_duration_since(base)
}

fn shifted(real: Duration, offset_nanos: i64) -> Duration {
    let nanos = i128::try_from(real.as_nanos()).unwrap_or(i128::MAX) + i128::from(offset_nanos);
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

/// The manual clock's state: how far it was moved, and the frozen reading
/// while paused.
#[derive(Clone, Copy, Default)]
struct Manual {
    offset: i64,
    frozen: Option<Duration>,
}

thread_local! {
    static MANUAL: Cell<Manual> = const { Cell::new(Manual { offset: 0, frozen: None }) };
}

/// Woken when the manual clock moves: every sleeper looks at the clock again.
fn moved() -> &'static Notify {
    static MOVED: OnceLock<Notify> = OnceLock::new();
    MOVED.get_or_init(Notify::new)
}

fn is_paused() -> bool {
    MANUAL.with(|m| m.get().frozen.is_some())
}

/// Stops the engine's clock: time stands still until [`advance`] moves it
/// or [`resume`] lets it run again.
pub(crate) fn pause() {
    MANUAL.with(|m| {
        let mut s = m.get();
        if s.frozen.is_none() {
            s.frozen = Some(shifted(real_now(), s.offset));
        }
        m.set(s);
    });
}

/// Lets the clock run again from where it stands.
pub(crate) fn resume() {
    MANUAL.with(|m| {
        let mut s = m.get();
        if let Some(frozen) = s.frozen.take() {
            let diff = i128::try_from(frozen.as_nanos()).unwrap_or(i128::MAX)
                - i128::try_from(real_now().as_nanos()).unwrap_or(i128::MAX);
            s.offset = i64::try_from(diff).unwrap_or(i64::MAX);
        }
        m.set(s);
    });
    moved().notify_waiters();
}

/// Moves the clock `d` ahead (paused or not) and wakes every sleeper whose
/// time has come. The sleepers run when the caller next yields.
pub(crate) fn advance(d: Duration) {
    MANUAL.with(|m| {
        let mut s = m.get();
        match &mut s.frozen {
            Some(frozen) => *frozen = frozen.saturating_add(d),
            None => {
                s.offset = s
                    .offset
                    .saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
            }
        }
        m.set(s);
    });
    moved().notify_waiters();
}

/// Yields to the event loop: a zero-delay browser timer, which runs after
/// every task that is ready (they run as microtasks).
pub(crate) async fn yield_now() {
    SendWrapper::new(gloo_timers::future::TimeoutFuture::new(0)).await;
}

/// The wall-clock time (`Date.now()`), as a std `SystemTime`: std's `now()`
/// panics on this target, but its arithmetic works.
pub(crate) fn wall_now() -> SystemTime {
    let since = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + since
}

/// Nanoseconds of the browser's monotonic clock: in the browser the coarse
/// source is the same clock as the exact one.
#[inline]
pub(crate) fn coarse_nanos() -> i64 {
    super::duration_nanos(Instant::now().0)
}

/// Sleeps for `d`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn sleep(d: Duration) {
    sleep_until(Some(Instant::now() + d)).await;
}

/// Sleeps until `deadline` on the browser's timers; forever without one.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    let Some(at) = deadline else {
        return std::future::pending().await;
    };
    loop {
        // Listen for a move of the manual clock before reading it, so that
        // none is missed.
        let mut moved = pin!(moved().notified());
        moved.as_mut().enable();
        let now = Instant::now();
        if now >= at {
            return;
        }
        if is_paused() {
            moved.await;
            continue;
        }
        let left = at.duration_since(now).min(MAX_TIMER);
        // Round up: a timer that fires a fraction early would only loop.
        let millis = u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let timer = SendWrapper::new(gloo_timers::future::TimeoutFuture::new(millis));
        let _ = select(moved, timer).await;
    }
}

/// A ticker on the browser's timers, as tokio's with
/// `MissedTickBehavior::Delay`: the first tick is at once, and a tick that
/// comes late delays the next ones rather than firing a burst.
#[derive(Debug)]
pub(crate) struct Interval {
    next: Instant,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick. Cancel-safe: a tick not waited for to its
    /// end is not used up.
    pub(crate) async fn tick(&mut self) -> Instant {
        sleep_until(Some(self.next)).await;
        let due = self.next;
        let now = Instant::now();
        // tokio counts a tick as missed when it is more than 5 ms late.
        self.next = if now > due + Duration::from_millis(5) {
            now + self.period
        } else {
            due + self.period
        };
        due
    }
}

/// A ticker every `period`.
pub(crate) fn interval(period: Duration) -> Interval {
    Interval {
        next: Instant::now(),
        period,
    }
}

/// Spawns a task on the page's event loop (`spawn_local`). No `Send` needed.
pub(crate) fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (tx, rx) = oneshot::channel();
    wasm_bindgen_futures::spawn_local(async move {
        let _ = tx.send(fut.await);
    });
    Task(rx)
}

/// A spawned task.
#[derive(Debug)]
pub(crate) struct Task<T>(oneshot::Receiver<T>);

impl<T> Task<T> {
    /// Waits for the task: its output, or `None` if it never finished.
    pub(crate) async fn join(self) -> Option<T> {
        self.0.await.ok()
    }
}

/// Runs `fut` with a time limit on the browser's timers; `None` when it ran out.
pub(crate) async fn timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let deadline = Instant::now() + limit;
    match select(pin!(fut), pin!(sleep_until(Some(deadline)))).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(((), _)) => None,
    }
}
