//! Garbage collection: queries nobody uses leave the cache.
//!
//! A query is collected once it has had no subscriber, no fetch in flight
//! and no read for `gc_time`, counted from when it stopped being active. The
//! queue is a deadline heap like the refresh schedule's, and collection runs
//! a little at a time (as new queries are created, and once per refresh
//! window), so it never scans the cache.

use std::time::Duration;

use std::sync::atomic::Ordering::Relaxed;

use super::Inner;
use super::entry::Entry;
use crate::key::QueryKey;
use crate::rt::Stamp;
use crate::schedule::{Deadline, Deadlines};

/// When each query may be collected, and the cap on how many are kept.
#[derive(Debug)]
pub(super) struct GarbageQueue {
    deadlines: Deadlines,
    gc_time: Duration,
    max_queries: usize,
}

/// Candidates looked at per eviction before giving up: the queue is
/// ordered by idle time, so the first few are almost always evictable.
const EVICTION_TRIES: usize = 32;
/// Of those, how many read within the activity window get a second chance.
const SECOND_CHANCES: usize = 8;

impl GarbageQueue {
    pub(super) fn new(gc_time: Duration, max_queries: usize) -> Self {
        Self {
            deadlines: Deadlines::new(),
            gc_time,
            max_queries,
        }
    }

    pub(super) fn max_queries(&self) -> usize {
        self.max_queries
    }

    /// A query created or kept at `now` is looked at again after the gc time.
    pub(super) fn push(&self, now: Stamp, key: QueryKey, generation: u32) {
        self.deadlines.push(now.add(self.gc_time), key, generation);
    }
}

impl<V: PartialEq + Send + Sync + 'static> Inner<V> {
    /// Whether a subscriber or a fetch keeps `entry` from being removed.
    fn is_busy(entry: &Entry<V>) -> bool {
        entry.is_fetching() || entry.lock().get().is_some_and(|c| c.observers() > 0)
    }

    /// When `entry` may be collected: the gc time after it stopped being
    /// active (its last read plus the activity window).
    fn expiry(&self, entry: &Entry<V>) -> Stamp {
        Stamp(
            entry
                .last_read()
                .0
                .saturating_add(self.inactive_after_nanos()),
        )
        .add(self.gc.gc_time)
    }

    /// Removes the query of `d` if it is still the same idle incarnation
    /// (not read, subscribed or fetched since it was looked at); otherwise
    /// queues it to be looked at again.
    fn remove_idle(
        &self,
        d: Deadline,
        idle_since: Stamp,
        now: Stamp,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<QueryKey> {
        let gone = self.map.remove_if(
            &d.key,
            |_, e| {
                let idle = e.generation == d.generation
                    && e.last_read() == idle_since
                    && !Self::is_busy(e);
                if idle {
                    // Before the entry leaves the map, so that an entry
                    // created for the key right after starts above it.
                    self.version_floor.fetch_max(e.version(), Relaxed);
                }
                idle
            },
            guard,
        );
        match gone {
            Ok(Some((_, entry))) => {
                drop(self.left_map(&d.key, entry));
                Some(d.key)
            }
            _ => {
                self.gc.push(now, d.key, d.generation);
                None
            }
        }
    }

    /// Makes room for one query: evicts the one idle the longest that has
    /// no subscriber and no fetch in flight, giving a second chance to a few
    /// read within the activity window. Returns whether one was evicted.
    pub(super) fn evict_one(&self, now: Stamp) -> bool {
        let guard = self.map.guard();
        let mut chances = 0;
        // Deadlines looked at and kept go back after the search, so that
        // one search never meets the same busy entry twice.
        let mut kept = Vec::new();
        let mut evicted = false;
        for _ in 0..EVICTION_TRIES {
            let Some(d) = self.gc.deadlines.pop_earliest() else {
                break;
            };
            let Some(entry) = self.entry_of(&d.key, d.generation, &guard) else {
                continue;
            };
            if Self::is_busy(entry) {
                kept.push((now.add(self.gc.gc_time), d));
                continue;
            }
            if self.read_recently(entry, now) && chances < SECOND_CHANCES {
                chances += 1;
                kept.push((self.expiry(entry), d));
                continue;
            }
            let counters = entry.action.counters.clone();
            if let Some(key) = self.remove_idle(d, entry.last_read(), now, &guard) {
                counters.evicted.fetch_add(1, Relaxed);
                crate::log::decision!("🧹 evicted {key} to stay within max_queries");
                evicted = true;
                break;
            }
        }
        for (at, d) in kept {
            self.gc.deadlines.push(at, d.key, d.generation);
        }
        evicted
    }

    /// Removes up to `budget` queries whose gc time has passed.
    pub(crate) fn collect_garbage(&self, now: Stamp, budget: usize) -> usize {
        let mut due = Vec::new();
        self.gc.deadlines.pop_due(now, budget, &mut due);
        let mut removed = 0;
        let guard = self.map.guard();
        for d in due {
            let Some(entry) = self.entry_of(&d.key, d.generation, &guard) else {
                continue;
            };
            let expires = self.expiry(entry);
            if Self::is_busy(entry) {
                self.gc.push(now, d.key, d.generation);
            } else if expires > now {
                self.gc.deadlines.push(expires, d.key, d.generation);
            } else if self
                .remove_idle(d, entry.last_read(), now, &guard)
                .is_some()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            crate::log::decision!("🧹 collected {removed} unused queries");
        }
        removed
    }
}
