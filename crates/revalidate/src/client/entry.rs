//! One cached query: its value, timestamps and fetch state.
//!
//! An entry lives inline in the map's node, so a cached read touches the
//! node, the key text and the value, and nothing else. The fields a read
//! touches are atomics; everything a writer changes is changed under the
//! entry's `cold` mutex, which no reader ever takes and no fetch holds while
//! it waits on the source.

use crate::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering::*, fence};
use std::sync::Arc;

use crate::sync::{Mutex, MutexGuard};
use futures::channel::oneshot;
use futures::future::Shared;
use papaya::Guard;
use tokio::sync::watch;

use super::cell::DataCell;
use crate::fetch::FetchError;
use crate::policy::Staleness;
use crate::rt::Stamp;
use crate::schedule::Slot;
use crate::schedule::due::{Facts, Failing};
use crate::stats::ResourceCounters;

/// What the map knows about one action: its staleness limit and the
/// counters of its resource. Shared by every key of the action.
#[derive(Debug)]
pub(crate) struct ActionInfo {
    pub(crate) staleness: Staleness,
    /// `staleness` in nanoseconds; `i64::MAX` for never, 0 for always.
    limit_nanos: i64,
    pub(crate) counters: Arc<ResourceCounters>,
}

impl ActionInfo {
    pub(crate) fn new(staleness: Staleness, counters: Arc<ResourceCounters>) -> Self {
        let limit_nanos = staleness
            .limit()
            .map_or(i64::MAX, crate::rt::duration_nanos);
        Self {
            staleness,
            limit_nanos,
            counters,
        }
    }
}

/// Where a stored value's version comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Versioning {
    /// Numbered here: a change bumps the version by one.
    Local,
    /// Given from outside (a coordinator): stored only if not older.
    Given(u64),
}

/// The result a fetch hands to the readers waiting on it.
pub(crate) type FlightResult<V> = Result<super::Hit<V>, FetchError>;
/// A fetch in progress that readers can join; it resolves to `Canceled` if
/// the reader running the fetch gave up, and then one waiter takes over.
pub(crate) type Flight<V> = Shared<oneshot::Receiver<FlightResult<V>>>;

/// A failure, and when it happened.
#[derive(Clone, Debug)]
pub(crate) struct ErrorRecord {
    pub(crate) error: FetchError,
    pub(crate) at: Stamp,
    /// The entry's invalidation count then: an invalidation since asks for
    /// a refresh at once, whatever the backoff says.
    pub(crate) invalidations: u32,
}

/// Entry state that exists only now and then (a fetch in flight, a recorded
/// error, subscribers). Boxed and dropped when empty, to keep idle entries small.
pub(crate) struct Cold<V> {
    pub(crate) flight: Option<Flight<V>>,
    pub(crate) last_error: Option<ErrorRecord>,
    /// Subscribers' channel: carries the data version.
    pub(crate) changes: Option<watch::Sender<u64>>,
}

impl<V> Default for Cold<V> {
    fn default() -> Self {
        Self {
            flight: None,
            last_error: None,
            changes: None,
        }
    }
}

impl<V> Cold<V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.flight.is_none() && self.last_error.is_none() && self.changes.is_none()
    }

    pub(crate) fn observers(&self) -> usize {
        self.changes
            .as_ref()
            .map_or(0, watch::Sender::receiver_count)
    }
}

/// The writer's view of an entry, holding its `cold` lock.
pub(crate) struct Locked<'a, V> {
    cold: MutexGuard<'a, Option<Box<Cold<V>>>>,
}

impl<V> Locked<'_, V> {
    pub(crate) fn get(&self) -> Option<&Cold<V>> {
        self.cold.as_deref()
    }

    pub(crate) fn get_mut(&mut self) -> &mut Cold<V> {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the cold part if nothing is left in it.
    pub(crate) fn tidy(&mut self) {
        if self.cold.as_ref().is_some_and(|c| c.is_empty()) {
            *self.cold = None;
        }
    }

    pub(crate) fn take(&mut self) -> Option<Box<Cold<V>>> {
        self.cold.take()
    }
}

/// Set in `version` while the value is being replaced (under the entry's
/// lock): a reader pairing the value with its version without the lock
/// then knows the two may not match (see [`Entry::data_and_version`]).
/// Versions never reach it.
const WRITING: u64 = 1 << 63;

const FETCHING: u8 = 1;
const INVALIDATED: u8 = 2;

/// Reads do not record every read time: a read stores the time only when
/// the stored one is older than this, so hot keys read from several threads
/// do not bounce a cache line on every read. Activity windows are minutes.
const TOUCH_GRANULARITY_NANOS: i64 = 250_000_000;

/// Marks for the active count (`super::activity`), changed under the
/// writer lock: the entry has a subscribers' channel; the entry left the map.
const SUBSCRIBED: u8 = 4;
const GONE: u8 = 8;

/// One cached query. `repr(C)` keeps the fields a read touches together,
/// next to the key in the map's node.
#[repr(C)]
pub(crate) struct Entry<V> {
    data: DataCell<V>,
    pub(crate) action: Arc<ActionInfo>,
    /// When the data was last stored or confirmed; `i64::MIN` without data.
    updated_at: AtomicI64,
    last_read: AtomicI64,
    /// Data version: bumped on every change of the value, or set from
    /// outside (a coordinator), and never lowered.
    version: AtomicU64,
    /// Its standing with the refresh schedule.
    pub(crate) slot: Slot,
    /// Distinguishes this entry from an earlier one under the same key.
    pub(crate) generation: u32,
    /// Consecutive failed fetches.
    errors: AtomicU32,
    /// Invalidations so far; a fetch compares it before and after.
    invalidations: AtomicU32,
    flags: AtomicU8,
    cold: Mutex<Option<Box<Cold<V>>>>,
}

impl<V> Entry<V> {
    /// A new entry, without data, whose versions continue from `version`
    /// (see `Inner::version_floor`).
    pub(crate) fn new(action: Arc<ActionInfo>, now: Stamp, version: u64) -> Self {
        // A process-wide counter, not part of any entry's synchronisation.
        static GENERATION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        Self {
            data: DataCell::empty(),
            action,
            updated_at: AtomicI64::new(i64::MIN),
            last_read: AtomicI64::new(now.0),
            version: AtomicU64::new(version),
            slot: Slot::new(),
            generation: GENERATION.fetch_add(1, Relaxed),
            errors: AtomicU32::new(0),
            invalidations: AtomicU32::new(0),
            flags: AtomicU8::new(0),
            cold: Mutex::new(None),
        }
    }

    /// The cached value (a reference-count increment; no copy, no lock).
    /// `guard` is a guard of the map that holds the entry.
    #[inline]
    pub(crate) fn data(&self, guard: &impl Guard) -> Option<Arc<V>> {
        self.data.load(guard)
    }

    /// The cached value and the version it was stored under, as one pair.
    /// Loading the two one after the other could pair the old value with
    /// the new version when a store ran between the loads (CI once saw a
    /// node serve an old body under the version of the next: a reader
    /// descheduled between its two loads). A seqlock read: the version
    /// before and after the value must be the same and not [`WRITING`];
    /// when they are not, the pair is read under the entry's lock, which
    /// every store holds. Never call it with that lock held.
    #[inline]
    pub(crate) fn data_and_version(&self, guard: &impl Guard) -> Option<(Arc<V>, u64)> {
        let before = self.version.load(Acquire);
        if before & WRITING == 0 {
            let data = self.data.load(guard)?;
            fence(Acquire);
            if self.version.load(Relaxed) == before {
                return Some((data, before));
            }
        }
        let _w = self.lock();
        let data = self.data.load(guard)?;
        Some((data, self.version()))
    }

    pub(crate) fn has_data(&self) -> bool {
        self.data.is_some()
    }

    /// Whether the data is stale at `now`: invalidated, or older than the limit.
    #[inline]
    pub(crate) fn is_stale(&self, now: Stamp) -> bool {
        self.flags.load(Relaxed) & INVALIDATED != 0
            || now.0.saturating_sub(self.updated_at.load(Relaxed)) >= self.action.limit_nanos
    }

    /// Records a read at `now` (coarsely; see `TOUCH_GRANULARITY_NANOS`).
    /// Returns the previous read time when the read moved the time of an
    /// entry without a subscriber to another slice of `slice_nanos`, which
    /// the active count must follow (`super::activity`).
    #[inline]
    pub(crate) fn touch(&self, now: Stamp, slice_nanos: i64) -> Option<Stamp> {
        let seen = self.last_read.load(Relaxed);
        if now.0.saturating_sub(seen) >= TOUCH_GRANULARITY_NANOS {
            self.touch_slow(seen, now, slice_nanos)
        } else {
            None
        }
    }

    #[cold]
    fn touch_slow(&self, seen: i64, now: Stamp, slice_nanos: i64) -> Option<Stamp> {
        if seen.div_euclid(slice_nanos) == now.0.div_euclid(slice_nanos) {
            // Within one slice the count does not move: a plain store, as a
            // read did before there was a count. No locked instruction on
            // the read path: one would stall the misses of the reads after
            // it (measured: +90 ns per hit at 100k keys with three of them
            // every 250 ms per entry).
            self.last_read.store(now.0, Relaxed);
            return None;
        }
        // Into another slice (once per slice, a few seconds, per entry): a
        // compare-exchange, so that of two readers moving it at once only
        // one moves it in the count.
        let moved = self
            .last_read
            .compare_exchange(seen, now.0, Relaxed, Relaxed)
            .is_ok();
        (moved && self.flags.load(Relaxed) & (SUBSCRIBED | GONE) == 0).then_some(Stamp(seen))
    }

    pub(crate) fn last_read(&self) -> Stamp {
        Stamp(self.last_read.load(Relaxed))
    }

    /// Marks the entry as having a subscribers' channel (`on`) or not.
    /// Returns its read time when the mark changed; `None` when it did not
    /// change or the entry left the map. Called with the writer lock held
    /// (`_w`), which orders the marks' changes.
    pub(crate) fn mark_subscribed(&self, _w: &Locked<'_, V>, on: bool) -> Option<Stamp> {
        let flags = self.flags.load(Relaxed);
        if flags & GONE != 0 || (flags & SUBSCRIBED != 0) == on {
            return None;
        }
        if on {
            self.flags.fetch_or(SUBSCRIBED, Relaxed);
        } else {
            self.flags.fetch_and(!SUBSCRIBED, Relaxed);
        }
        Some(self.last_read())
    }

    /// Whether the entry left the map (see `mark_gone`).
    pub(crate) fn is_gone(&self) -> bool {
        self.flags.load(Relaxed) & GONE != 0
    }

    /// Marks the entry as gone from the map (with the writer lock held,
    /// right after its removal). Returns its read time and whether it had a
    /// subscribers' channel; `None` if it was marked before.
    pub(crate) fn mark_gone(&self, _w: &Locked<'_, V>) -> Option<(Stamp, bool)> {
        let flags = self.flags.fetch_or(GONE, Relaxed);
        (flags & GONE == 0).then(|| (self.last_read(), flags & SUBSCRIBED != 0))
    }

    pub(crate) fn updated_at(&self) -> Option<Stamp> {
        match self.updated_at.load(Relaxed) {
            i64::MIN => None,
            t => Some(Stamp(t)),
        }
    }

    /// The data version (the one before a store in progress: it is
    /// published when the store ends).
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Acquire) & !WRITING
    }

    pub(crate) fn errors(&self) -> u32 {
        self.errors.load(Relaxed)
    }

    pub(crate) fn invalidations(&self) -> u32 {
        self.invalidations.load(Acquire)
    }

    pub(crate) fn is_fetching(&self) -> bool {
        self.flags.load(Relaxed) & FETCHING != 0
    }

    pub(crate) fn is_invalidated(&self) -> bool {
        self.flags.load(Relaxed) & INVALIDATED != 0
    }

    /// Takes the writer lock.
    pub(crate) fn lock(&self) -> Locked<'_, V> {
        Locked {
            cold: self.cold.lock(),
        }
    }

    // The setters below are called with the writer lock held (`_w`), which
    // orders every change of data, version and flags.

    pub(crate) fn set_fetching(&self, _w: &Locked<'_, V>, on: bool) {
        if on {
            self.flags.fetch_or(FETCHING, Relaxed);
        } else {
            self.flags.fetch_and(!FETCHING, Relaxed);
        }
    }

    pub(crate) fn invalidate(&self, _w: &Locked<'_, V>) {
        self.invalidations.fetch_add(1, Release);
        self.flags.fetch_or(INVALIDATED, Relaxed);
    }

    /// Stores `value` (if it differs) and marks the data updated at `at`.
    /// Returns the value now cached and whether it changed, or `None`,
    /// touching nothing, when `version` comes from outside and is older than
    /// the entry's. Data never changes under the same version: a given
    /// version equal to the held one, with other data, becomes the next.
    /// `validated` clears the invalidated mark (the data is known current).
    pub(crate) fn store(
        &self,
        w: &mut Locked<'_, V>,
        value: Option<V>,
        at: Stamp,
        validated: bool,
        version: Versioning,
        guard: &impl Guard,
    ) -> Option<(Option<Arc<V>>, bool)>
    where
        V: PartialEq,
    {
        let held = self.version();
        if let Versioning::Given(v) = version
            && v < held
        {
            return None;
        }
        let current = self.data.load(guard);
        let held_a_value = current.is_some();
        let (cached, changed) = match (value, current) {
            (Some(new), Some(cur)) if *cur == new => (Some(cur), false),
            (Some(new), _) => {
                let new = Arc::new(new);
                self.begin_write(held);
                self.data.store(new.clone(), guard);
                (Some(new), true)
            }
            (None, cur) => (cur, false),
        };
        self.updated_at.store(at.0, Relaxed);
        if validated {
            self.flags.fetch_and(!INVALIDATED, Relaxed);
        }
        let next = match version {
            // The version held, with other data: two nodes numbered
            // different data alike while apart. A version names one
            // value, so this one moves past it (the nodes converge on the
            // next version either gives out).
            Versioning::Given(v) if changed && held_a_value && v == held => held + 1,
            Versioning::Given(v) => v,
            Versioning::Local if changed => held + 1,
            Versioning::Local => held,
        };
        if next != held || changed {
            // Also ends the write `begin_write` marked.
            self.version.store(next, Release);
        }
        if changed && let Some(tx) = w.get().and_then(|c| c.changes.as_ref()) {
            tx.send_replace(next);
        }
        Some((cached, changed))
    }

    /// Restores persisted state into a fresh entry.
    pub(crate) fn restore(
        &self,
        _w: &Locked<'_, V>,
        value: Arc<V>,
        updated: Stamp,
        version: u64,
        guard: &impl Guard,
    ) {
        self.begin_write(self.version());
        self.data.store(value, guard);
        self.updated_at.store(updated.0, Relaxed);
        self.version.store(version, Release);
    }

    /// Marks the version (`held`, under the lock) as being written before
    /// the value is replaced; the store that publishes the new version ends
    /// it. The fence orders the mark before the value for any reader that
    /// sees the new value (the seqlock's writer half).
    fn begin_write(&self, held: u64) {
        self.version.store(held | WRITING, Relaxed);
        fence(Release);
    }

    pub(crate) fn record_success(&self, w: &mut Locked<'_, V>) {
        self.errors.store(0, Relaxed);
        if let Some(c) = w.cold.as_mut() {
            c.last_error = None;
        }
    }

    pub(crate) fn record_error(&self, w: &mut Locked<'_, V>, error: FetchError, at: Stamp) -> u32 {
        let invalidations = self.invalidations();
        w.get_mut().last_error = Some(ErrorRecord {
            error,
            at,
            invalidations,
        });
        self.errors.fetch_add(1, Relaxed) + 1
    }

    /// What the due-time rule needs to know of this entry, without its lock
    /// when it is not failing (the common case, at every check).
    pub(crate) fn facts_if_healthy(&self) -> Option<Facts<'static>> {
        (self.errors() == 0).then(|| Facts {
            staleness: self.action.staleness,
            updated_at: self.updated_at(),
            version: self.version(),
            salt: 0,
            invalidated: self.is_invalidated(),
            invalidations: self.invalidations(),
            failing: None,
        })
    }

    /// What the due-time rule needs to know of this entry.
    pub(crate) fn facts<'w>(&self, w: &'w Locked<'_, V>) -> Facts<'w> {
        let failing = match (self.errors(), w.get().and_then(|c| c.last_error.as_ref())) {
            (0, _) | (_, None) => None,
            (attempt, Some(e)) => Some(Failing {
                attempt,
                error: &e.error,
                at: e.at,
                invalidations: e.invalidations,
            }),
        };
        Facts {
            staleness: self.action.staleness,
            updated_at: self.updated_at(),
            version: self.version(),
            salt: 0,
            invalidated: self.is_invalidated(),
            invalidations: self.invalidations(),
            failing,
        }
    }

    /// Restores a persisted error count and error.
    pub(crate) fn restore_error(
        &self,
        w: &mut Locked<'_, V>,
        count: u32,
        error: Option<ErrorRecord>,
    ) {
        self.errors.store(count, Relaxed);
        w.get_mut().last_error = error;
        w.tidy();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_entries_are_small() {
        // The per-entry memory target (≤ 256 bytes beyond the payload) leaves
        // room for the key and the map's own overhead only if this stays small.
        assert!(
            std::mem::size_of::<Entry<u64>>() <= 88,
            "{}",
            std::mem::size_of::<Entry<u64>>()
        );
    }
}
