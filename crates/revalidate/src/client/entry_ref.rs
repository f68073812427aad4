//! `EntryRef`: what a staleness check sees of one entry.
//!
//! The refresh service's monitor decides what is due at a check; to do so it
//! needs to look at the entries whose deadlines surfaced, and to move their
//! [`Slot`](crate::schedule::Slot)s. This view gives it exactly that, and
//! keeps the entry itself private to the client.

use std::time::Duration;

use super::Inner;
use super::entry::Entry;
use crate::key::QueryKey;
use crate::policy::Staleness;
use crate::rt::Stamp;
use crate::schedule::due::Due;

/// One entry, as a staleness check sees it. Lives under a map guard.
pub(crate) struct EntryRef<'g, V> {
    inner: &'g Inner<V>,
    key: &'g QueryKey,
    entry: &'g Entry<V>,
}

impl<V> Inner<V> {
    /// The entry of `key` if it is still the incarnation `generation`.
    pub(crate) fn entry_ref<'g>(
        &'g self,
        key: &'g QueryKey,
        generation: u32,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Option<EntryRef<'g, V>> {
        self.entry_of(key, generation, guard).map(|entry| EntryRef {
            inner: self,
            key,
            entry,
        })
    }

    /// Queues every cached query for its next due time: what a refresh
    /// service starting on a filled (or restored) cache needs.
    pub(crate) fn seed_schedule(&self, now: Stamp) {
        let guard = self.map.guard();
        for (key, entry) in self.map.iter(&guard) {
            entry.slot.reset();
            let due = self.next_due_unlocked(key, entry, now);
            self.reschedule(key, entry, due);
        }
    }
}

impl<V> EntryRef<'_, V> {
    /// Whether the schedule's live deadline for it is `at`.
    pub(crate) fn is_queued_at(&self, at: Stamp) -> bool {
        self.entry.slot.queued_at() == Some(at)
    }

    /// Claims the deadline `at`: false if it was superseded.
    pub(crate) fn claim(&self, at: Stamp) -> bool {
        self.entry.slot.claim(at)
    }

    /// Hands it to the executor: nothing queues it again until its job starts.
    pub(crate) fn hand_to_executor(&self) {
        self.entry.slot.hand_to_executor();
    }

    /// Queues it to be looked at by `at`.
    pub(crate) fn reschedule(&self, at: Stamp) {
        self.inner
            .schedule
            .schedule(&self.entry.slot, self.entry.generation, self.key, at);
    }

    /// When it is next due, by the one rule.
    pub(crate) fn next_due(&self, now: Stamp) -> Option<Due> {
        self.inner.next_due_unlocked(self.key, self.entry, now)
    }

    /// Whether a fetch of it is in flight.
    pub(crate) fn is_fetching(&self) -> bool {
        self.entry.is_fetching()
    }

    /// Whether it has a subscriber or was read within the activity window.
    pub(crate) fn is_active(&self, now: Stamp) -> bool {
        self.inner.is_active(self.entry, now)
    }

    /// Its data's age, if it has data.
    pub(crate) fn age(&self, now: Stamp) -> Option<Duration> {
        self.entry.updated_at().map(|t| now.since(t))
    }

    pub(crate) fn staleness(&self) -> Staleness {
        self.entry.action.staleness
    }

    pub(crate) fn is_invalidated(&self) -> bool {
        self.entry.is_invalidated()
    }

    /// Failed fetches in a row.
    pub(crate) fn errors(&self) -> u32 {
        self.entry.errors()
    }

    /// Counts a refresh it missed because the source is offline.
    pub(crate) fn count_skipped_offline(&self) {
        self.entry
            .action
            .counters
            .skipped_offline
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
