//! `Activity`: the number of active queries, kept as reads and
//! subscriptions change it, so that counting them does not scan the cache.
//!
//! A query is active when it has a subscriber or was read within the
//! activity window (`inactive_after`). The count is two parts that never
//! overlap:
//!
//! - `subscribed`: queries with a subscribers' channel. An entry carries a
//!   `SUBSCRIBED` mark while it has one, set and cleared under the entry's
//!   lock (`Entry::mark_subscribed`), so this part is exact.
//! - read buckets: every other query is counted in the bucket of the slice
//!   of time its last read falls in. Slices are 1/128 of the window (at
//!   least 250 ms, the granularity reads record their time at). A read that
//!   moves an entry's read time into another slice (`Entry::touch`: once
//!   per slice per entry, a compare-exchange) moves it from one bucket to
//!   the other; the buckets of the slices the window overlaps, summed, are
//!   the recently read queries.
//!
//! Buckets form a ring: a bucket holds its slice number beside its count,
//! and a slice newer by a whole turn of the ring takes the bucket over,
//! dropping counts that left the window long ago. A move out of a slice
//! whose bucket was taken over is dropped too: its count was.
//!
//! Precision (a bounded approximation, chosen so that the read path takes
//! no locked instruction within a slice):
//!
//! - a query counts as read recently when its last read is in a slice that
//!   overlaps the window, so one read up to one slice longer ago than
//!   `inactive_after` may still be counted (`QueryState::is_active` and the
//!   refresh service keep the exact rule);
//! - a subscription, unsubscription or removal racing with a read that
//!   moves the same entry into a new slice can leave a bucket one off.
//!   That error lives in the buckets alone, so it leaves the count when its
//!   slice leaves the window: it lasts at most the window plus a slice, and
//!   never accumulates beyond the races of one window.
//!
//! The buckets are spread over a few stripes (by entry address), so that
//! readers on several threads moving entries into the current slice do not
//! all update one cache line. These are plain atomics, not `crate::sync`
//! ones: like the other statistics, no decision of the engine reads them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::rt::Stamp;

/// Stripes of buckets. A power of two; a few more than cores on a small
/// machine: the slow path of a read (once per 250 ms per entry) updates two
/// buckets of its entry's stripe.
const STRIPES: usize = 8;
/// The finest slice: the granularity reads record their time at.
const MIN_SLOT_NANOS: i64 = 250_000_000;
/// The most slices the window is cut into: a read takes a compare-exchange
/// once per slice per entry (4.7 s for the default 10-minute window).
const MAX_WINDOW_SLOTS: i64 = 128;
/// Slices beyond the window's in the ring: room for the slice of a read
/// whose clock ran slightly ahead, and for the one at the window's edge.
const SPARE_SLOTS: i64 = 3;

pub(super) struct Activity {
    slot_nanos: i64,
    /// Slices per ring turn.
    len: i64,
    /// `STRIPES * len` buckets: `(slice as u32) << 32 | count as u32`.
    buckets: Box<[AtomicU64]>,
    subscribed: AtomicI64,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("slot_nanos", &self.slot_nanos)
            .field("len", &self.len)
            .field("subscribed", &self.subscribed)
            .finish_non_exhaustive()
    }
}

fn pack(slice: i64, count: i32) -> u64 {
    // Slices are numbered modulo 2^32: 34 years of 250 ms slices.
    #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)]
    let slice = slice as u32;
    #[allow(clippy::cast_sign_loss)]
    let count = count as u32;
    (u64::from(slice) << 32) | u64::from(count)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
fn unpack(word: u64) -> (u32, i32) {
    ((word >> 32) as u32, word as u32 as i32)
}

impl Activity {
    /// Buckets for an activity window of `window`, starting at `now`.
    pub(super) fn new(window: std::time::Duration, now: Stamp) -> Self {
        let window = crate::rt::duration_nanos(window).max(1);
        let div_ceil = |a: i64, b: i64| (a + b - 1) / b;
        let slot_nanos = MIN_SLOT_NANOS.max(div_ceil(window, MAX_WINDOW_SLOTS));
        let len = div_ceil(window, slot_nanos) + SPARE_SLOTS;
        // Bucket `i` holds the slices `i` modulo `len`. Each starts with
        // one more than a whole turn in the past: taken over by the first
        // slice that lands in it.
        let base = (now.0.div_euclid(slot_nanos) - 2 * len).div_euclid(len) * len;
        let buckets = (0..STRIPES)
            .flat_map(|_| (0..len).map(move |i| AtomicU64::new(pack(base + i, 0))))
            .collect();
        Self {
            slot_nanos,
            len,
            buckets,
            subscribed: AtomicI64::new(0),
        }
    }

    /// The length of a slice: `Entry::touch` needs it.
    pub(super) fn slot_nanos(&self) -> i64 {
        self.slot_nanos
    }

    fn slice_of(&self, t: Stamp) -> i64 {
        t.0.div_euclid(self.slot_nanos)
    }

    fn stripe_of<T>(entry: &T) -> usize {
        // Entries are separate allocations; mix the bits above the alignment.
        let a = std::ptr::from_ref(entry) as usize;
        (a >> 4 ^ a >> 9) & (STRIPES - 1)
    }

    fn bucket(&self, stripe: usize, slice: i64) -> &AtomicU64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = slice.rem_euclid(self.len) as usize;
        &self.buckets[stripe * self.len as usize + i]
    }

    /// Adds `delta` to the bucket of slice `slice` in `stripe`.
    fn add(&self, stripe: usize, slice: i64, delta: i32) {
        let bucket = self.bucket(stripe, slice);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let tag = slice as u32;
        let mut word = bucket.load(Relaxed);
        loop {
            let (held, count) = unpack(word);
            #[allow(clippy::cast_possible_wrap)]
            let ahead = tag.wrapping_sub(held) as i32;
            let next = match ahead {
                0 => pack(slice, count.wrapping_add(delta)),
                // The bucket holds a slice a whole turn (or more) older:
                // long out of the window, its count is dropped.
                1.. => pack(slice, delta),
                // `slice` itself was dropped so: nothing of it is counted.
                _ => return,
            };
            match bucket.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(now) => word = now,
            }
        }
    }

    /// A new entry, last read at `at`, entered the map.
    pub(super) fn entered<T>(&self, entry: &T, at: Stamp) {
        self.add(Self::stripe_of(entry), self.slice_of(at), 1);
    }

    /// An entry without a subscriber left the map (or got its first
    /// subscriber), last read at `at`.
    pub(super) fn left<T>(&self, entry: &T, at: Stamp) {
        self.add(Self::stripe_of(entry), self.slice_of(at), -1);
    }

    /// A read moved an entry without a subscriber from `from` to `to`.
    pub(super) fn moved<T>(&self, entry: &T, from: Stamp, to: Stamp) {
        let (from, to) = (self.slice_of(from), self.slice_of(to));
        if from != to {
            let stripe = Self::stripe_of(entry);
            self.add(stripe, to, 1);
            self.add(stripe, from, -1);
        }
    }

    /// An entry read last at `at` got its first subscriber.
    pub(super) fn subscribed<T>(&self, entry: &T, at: Stamp) {
        self.subscribed.fetch_add(1, Relaxed);
        self.left(entry, at);
    }

    /// An entry read last at `at` lost its last subscriber.
    pub(super) fn unsubscribed<T>(&self, entry: &T, at: Stamp) {
        self.entered(entry, at);
        self.subscribed.fetch_sub(1, Relaxed);
    }

    /// An entry with a subscriber left the map.
    pub(super) fn subscribed_left(&self) {
        self.subscribed.fetch_sub(1, Relaxed);
    }

    /// Queries active at `now`: subscribed, or (when `window_nanos` > 0)
    /// read within it. A cost of the ring's size, not of the cache's.
    pub(super) fn count(&self, now: Stamp, window_nanos: i64) -> usize {
        let mut n = self.subscribed.load(Relaxed);
        if window_nanos > 0 {
            let last = self.slice_of(now);
            // The slice of the window's far edge is counted whole.
            let first = self
                .slice_of(Stamp(now.0.saturating_sub(window_nanos)))
                .max(last - self.len + 1);
            for stripe in 0..STRIPES {
                for slice in first..=last {
                    let (held, count) = unpack(self.bucket(stripe, slice).load(Relaxed));
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    if held == slice as u32 {
                        n += i64::from(count);
                    }
                }
            }
        }
        usize::try_from(n).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: i64 = MIN_SLOT_NANOS;

    #[test]
    fn reads_move_between_slices_and_leave_the_window() {
        let a = Activity::new(Duration::from_secs(10), Stamp(0));
        let (x, y) = (1u64, 2u64);
        let window = 10 * 1_000_000_000;
        a.entered(&x, Stamp(0));
        a.entered(&y, Stamp(0));
        assert_eq!(a.count(Stamp(S), window), 2);
        a.moved(&x, Stamp(0), Stamp(8 * 1_000_000_000));
        // y's slice leaves the window; x's does not.
        assert_eq!(a.count(Stamp(window + 2 * S), window), 1);
        // Without a window only subscribers count.
        assert_eq!(a.count(Stamp(S), 0), 0);
        a.subscribed(&y, Stamp(0));
        assert_eq!(a.count(Stamp(window + 2 * S), window), 2);
        assert_eq!(a.count(Stamp(S), 0), 1);
        a.unsubscribed(&y, Stamp(window));
        assert_eq!(a.count(Stamp(window + S), window), 2);
        a.left(&x, Stamp(8 * 1_000_000_000));
        a.left(&y, Stamp(window));
        assert_eq!(a.count(Stamp(window + S), window), 0);
    }

    #[test]
    fn a_bucket_taken_over_drops_what_it_held() {
        let a = Activity::new(Duration::from_secs(1), Stamp(0));
        let x = 1u64;
        a.entered(&x, Stamp(0));
        let turn = a.len * S;
        // A read a whole turn later lands in the same bucket.
        let y = 2u64;
        a.entered(&y, Stamp(turn));
        // The move out of the dropped slice does not touch the new count.
        a.moved(&x, Stamp(0), Stamp(turn + S));
        assert_eq!(a.count(Stamp(turn + S), 1_000_000_000), 2);
    }
}
