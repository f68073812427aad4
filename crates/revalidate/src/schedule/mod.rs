//! The schedule: when each query is next due for a refresh (and for
//! garbage collection), and the rule that says when.
//!
//! - [`due`]: the one due-time rule, used after every write and at every
//!   check.
//! - [`Slot`]: each entry's standing with the schedule (idle, queued at a
//!   time, in the executor), with named transitions.
//! - [`Deadlines`] and [`RefreshSchedule`]: a binary heap ordered by due
//!   time, with lazy deletion. Rescheduling an entry does not search the
//!   heap: it pushes the new deadline and leaves the old one to be discarded
//!   when it surfaces. Each entry's slot remembers the earliest deadline it
//!   has queued, so a later deadline for an entry already queued earlier is
//!   not pushed at all and the heap holds about one item per scheduled
//!   entry. Finding what is due costs a peek plus one pop per due item,
//!   however many queries are cached.
//!
//! The schedule knows keys, stamps and slots, never entries.

pub(crate) mod due;
mod slot;

pub(crate) use slot::Slot;

use crate::sync::atomic::{AtomicBool, AtomicI64, Ordering::*};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::sync::Mutex;
use tokio::sync::Notify;

use crate::key::QueryKey;
use crate::rt::Stamp;

/// One deadline: 40 bytes, one per scheduled entry, so kept small.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    pub(crate) at: Stamp,
    /// The entry generation it was queued for; a recreated entry under the
    /// same key has another.
    pub(crate) generation: u32,
    pub(crate) key: QueryKey,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    // Equal deadlines come out in no particular order.
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<Deadline>>>,
    /// The earliest deadline (`i64::MAX` when empty), readable without the lock.
    next: AtomicI64,
}

impl Deadlines {
    pub(crate) fn new() -> Self {
        Self {
            heap: Mutex::default(),
            next: AtomicI64::new(i64::MAX),
        }
    }

    /// Adds a deadline; returns whether it is now the earliest.
    pub(crate) fn push(&self, at: Stamp, key: QueryKey, generation: u32) -> bool {
        let mut heap = self.heap.lock();
        heap.push(Reverse(Deadline {
            at,
            generation,
            key,
        }));
        self.next.fetch_min(at.0, Relaxed) > at.0
    }

    /// The earliest deadline, if any.
    pub(crate) fn next(&self) -> Option<Stamp> {
        match self.next.load(Relaxed) {
            i64::MAX => None,
            t => Some(Stamp(t)),
        }
    }

    /// Moves up to `limit` deadlines at or before `now` into `out`, earliest first.
    pub(crate) fn pop_due(&self, now: Stamp, limit: usize, out: &mut Vec<Deadline>) -> usize {
        if self.next.load(Relaxed) > now.0 {
            return 0;
        }
        let mut heap = self.heap.lock();
        let mut n = 0;
        while n < limit {
            match heap.peek() {
                Some(Reverse(d)) if d.at <= now => {}
                _ => break,
            }
            let Reverse(d) = heap.pop().expect("peeked");
            out.push(d);
            n += 1;
        }
        self.next
            .store(heap.peek().map_or(i64::MAX, |Reverse(d)| d.at.0), Relaxed);
        n
    }

    /// Takes the earliest deadline, due or not.
    pub(crate) fn pop_earliest(&self) -> Option<Deadline> {
        let mut heap = self.heap.lock();
        let first = heap.pop().map(|Reverse(d)| d);
        self.next
            .store(heap.peek().map_or(i64::MAX, |Reverse(d)| d.at.0), Relaxed);
        first
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.lock().len()
    }

    pub(crate) fn clear(&self) {
        self.heap.lock().clear();
        self.next.store(i64::MAX, Relaxed);
    }
}

/// The refresh schedule: the deadline queue plus each entry's [`Slot`],
/// switched on when a refresh service attaches to a client.
#[derive(Debug)]
pub(crate) struct RefreshSchedule {
    enabled: AtomicBool,
    queue: Deadlines,
    /// Wakes the service early for urgent work (coming online, shutdown).
    pub(crate) wake: Notify,
}

impl RefreshSchedule {
    pub(crate) fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            queue: Deadlines::new(),
            wake: Notify::new(),
        }
    }

    #[inline]
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Switches scheduling on; false if it already was (one service per client).
    pub(crate) fn enable(&self) -> bool {
        !self.enabled.swap(true, AcqRel)
    }

    pub(crate) fn disable(&self) {
        self.enabled.store(false, Release);
    }

    /// Queues `key` to be looked at by `at`, unless its slot is queued at
    /// or before `at` already, or is in the executor. Does nothing while no
    /// service is attached.
    pub(crate) fn schedule(&self, slot: &Slot, generation: u32, key: &QueryKey, at: Stamp) {
        if self.is_enabled() && slot.lower_to(at) && self.queue.push(at, key.clone(), generation) {
            // The service sleeps until the earliest deadline: tell it.
            self.wake.notify_one();
        }
    }

    /// Takes up to `limit` due deadlines, earliest first. The caller must
    /// [`Slot::claim`] each before acting on it: it may be superseded.
    pub(crate) fn pop_due(&self, now: Stamp, limit: usize, out: &mut Vec<Deadline>) -> usize {
        self.queue.pop_due(now, limit, out)
    }

    pub(crate) fn next(&self) -> Option<Stamp> {
        self.queue.next()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Drops every deadline (the service detached).
    pub(crate) fn clear(&self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> QueryKey {
        QueryKey::new("a", serde_json::json!(i))
    }

    #[test]
    fn pops_in_deadline_order_and_only_due() {
        let q = Deadlines::new();
        q.push(Stamp(30), key(3), 0);
        q.push(Stamp(10), key(1), 0);
        q.push(Stamp(20), key(2), 0);
        q.push(Stamp(10), key(4), 0);
        assert_eq!(q.next(), Some(Stamp(10)));
        let mut out = Vec::new();
        assert_eq!(q.pop_due(Stamp(20), 10, &mut out), 3);
        let mut keys: Vec<_> = out.iter().map(|d| d.key.clone()).collect();
        keys[..2].sort();
        assert_eq!(keys, vec![key(1), key(4), key(2)]);
        assert_eq!(std::mem::size_of::<Deadline>(), 40);
        assert_eq!(q.next(), Some(Stamp(30)));
        out.clear();
        assert_eq!(q.pop_due(Stamp(29), 10, &mut out), 0);
        assert_eq!(q.pop_due(Stamp(30), 10, &mut out), 1);
        assert_eq!(q.next(), None);
    }

    #[test]
    fn lazy_deletion_keeps_one_live_item_per_entry() {
        let s = RefreshSchedule::new();
        let slot = Slot::new();
        let k = key(1);
        s.schedule(&slot, 0, &k, Stamp(100)); // disabled: ignored
        assert_eq!(s.len(), 0);
        assert!(slot.is_idle());
        s.enable();
        s.schedule(&slot, 0, &k, Stamp(100));
        s.schedule(&slot, 0, &k, Stamp(200)); // later: not pushed
        assert_eq!(s.len(), 1);
        s.schedule(&slot, 0, &k, Stamp(50)); // earlier: pushed, 100 is now stale
        assert_eq!(s.len(), 2);
        let mut out = Vec::new();
        s.pop_due(Stamp(1000), 10, &mut out);
        let live: Vec<_> = out.iter().filter(|d| slot.claim(d.at)).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].at, Stamp(50));
        assert!(slot.is_idle());
    }
}
