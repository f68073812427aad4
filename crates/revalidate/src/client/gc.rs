//! Garbage collection: queries nobody uses leave the cache.
//!
//! A query is collected once it has had no subscriber, no fetch in flight
//! and no read for `gc_time`, counted from when it stopped being active. The
//! queue is a deadline heap like the refresh schedule's, and collection runs
//! a little at a time (as new queries are created, and once per refresh
//! window), so it never scans the cache.

use std::time::Duration;

use super::Inner;
use crate::key::QueryKey;
use crate::rt::Stamp;
use crate::schedule::Deadlines;

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
    /// Makes room for one query: evicts the one idle the longest that has
    /// no subscriber and no fetch in flight, giving a second chance to a few
    /// read within the activity window. Returns whether one was evicted.
    pub(super) fn evict_one(&self, now: Stamp) -> bool {
        let guard = self.map.guard();
        let mut chances = 0;
        for _ in 0..EVICTION_TRIES {
            let Some(d) = self.gc.deadlines.pop_earliest() else {
                return false;
            };
            let Some(entry) = self.entry_of(&d.key, d.generation, &guard) else {
                continue;
            };
            let busy = entry.is_fetching() || entry.lock().get().is_some_and(|c| c.observers() > 0);
            if busy {
                self.gc.push(now, d.key, d.generation);
                continue;
            }
            if self.read_recently(entry, now) && chances < SECOND_CHANCES {
                chances += 1;
                let expires = Stamp(
                    entry
                        .last_read()
                        .0
                        .saturating_add(self.inactive_after_nanos()),
                )
                .add(self.gc.gc_time);
                self.gc.deadlines.push(expires, d.key, d.generation);
                continue;
            }
            let idle_since = entry.last_read();
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
                    entry
                        .action
                        .counters
                        .evicted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(entry.lock().take());
                    crate::log::decision!("🧹 evicted {} to stay within max_queries", d.key);
                    return true;
                }
                _ => self.gc.push(now, d.key, d.generation),
            }
        }
        false
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
            let idle_since = entry.last_read();
            // Garbage time counts from when the query stops being active.
            let expires = Stamp(idle_since.0.saturating_add(self.inactive_after_nanos()))
                .add(self.gc.gc_time);
            let busy = entry.is_fetching() || entry.lock().get().is_some_and(|c| c.observers() > 0);
            if busy {
                self.gc.push(now, d.key, d.generation);
            } else if expires > now {
                self.gc.deadlines.push(expires, d.key, d.generation);
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
                    _ => self.gc.push(now, d.key, d.generation),
                }
            }
        }
        if removed > 0 {
            crate::log::decision!("🧹 collected {removed} unused queries");
        }
        removed
    }
}
