//! Snapshots: what persistence stores of an entry, and restores.
//!
//! The client does not know how a store lays records out; it hands out and
//! takes back this plain description of an entry, in wall-clock times so
//! that ages stay true across a restart.

use std::sync::Arc;
use std::time::SystemTime;

use super::Inner;
use super::entry::ErrorRecord;
use crate::fetch::FetchError;
use crate::key::QueryKey;

/// One entry's persistent state.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot<V> {
    pub(crate) value: Arc<V>,
    pub(crate) version: u64,
    /// When the data was stored or last confirmed.
    pub(crate) updated_at: SystemTime,
    pub(crate) invalidated: bool,
    /// Failed fetches in a row.
    pub(crate) errors: u32,
    /// The last failure and when it happened, while failing.
    pub(crate) last_error: Option<(FetchError, SystemTime)>,
}

impl<V> Inner<V> {
    /// What the store should hold for `key`; `None` without data.
    pub(crate) fn snapshot(&self, key: &QueryKey) -> Option<Snapshot<V>> {
        let guard = self.map.guard();
        let entry = self.map.get(key, &guard)?;
        let w = entry.lock();
        let value = entry.data(&guard)?;
        let last_error = w
            .get()
            .and_then(|c| c.last_error.as_ref())
            .map(|e| (e.error.clone(), self.clock.wall_of(e.at)));
        Some(Snapshot {
            value,
            version: entry.version(),
            updated_at: self.clock.wall_of(entry.updated_at()?),
            invalidated: entry.is_invalidated(),
            errors: entry.errors(),
            last_error,
        })
    }
}

impl<V: PartialEq + Send + Sync + 'static> Inner<V> {
    /// Makes room in the map for `additional` more entries (at most the
    /// cache's limit) before hydrate restores them: the map is sized once,
    /// instead of doubling, and copying itself, some twenty times on the way
    /// to a million.
    pub(crate) fn reserve(&self, additional: usize) {
        let room = self.gc.max_queries().saturating_sub(self.map.len());
        self.map.pin().reserve(additional.min(room));
    }

    /// Restores a persisted entry (hydrate). Returns false, changing
    /// nothing, when the key already has data in memory.
    pub(crate) fn restore(&self, key: &QueryKey, snapshot: Snapshot<V>) -> bool {
        let now = self.clock.now();
        let guard = self.map.guard();
        let entry = self.entry_or_create(key, now, &guard);
        let mut w = entry.lock();
        if entry.has_data() {
            return false;
        }
        let before = entry.updated_at();
        entry.restore(
            &w,
            snapshot.value,
            self.clock.stamp_of(snapshot.updated_at),
            snapshot.version,
            &guard,
        );
        let error = snapshot.last_error.map(|(error, at)| ErrorRecord {
            error,
            at: self.clock.stamp_of(at),
            invalidations: entry.invalidations(),
        });
        entry.restore_error(&mut w, snapshot.errors, error);
        if snapshot.invalidated {
            entry.invalidate(&w);
        }
        // Hydrated entries were never stored in this process: they enter
        // the recent index here, which keeps the newest of them.
        self.was_updated(key, entry, &w, before);
        // Before a refresh service is attached (hydrate at start-up) there
        // is no schedule to queue into: the service seeds it from every
        // entry when it starts, so the due time is worked out once.
        let due = if self.schedule.is_enabled() {
            self.next_due_of(key, entry, &w, now)
        } else {
            None
        };
        drop(w);
        self.reschedule(key, entry, due);
        true
    }
}
