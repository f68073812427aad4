//! Two indexes beside the map, so that listings cost what they list and
//! not a pass over the cache:
//!
//! - [`KeyIndex`]: every cached key in key order, for
//!   `QueryClient::queries_page` (a page is a range of it). It holds each
//!   key's text as a [`KeyText`] (16 bytes, sharing the key's allocation).
//! - [`RecentIndex`]: the entries updated most recently, for
//!   `QueryClient::recently_updated`, bounded to a few thousand.
//!
//! Both are behind a `crate::sync` mutex taken after an entry's lock, never
//! before (a writer updates them while it holds its entry's lock; a listing
//! reads them without taking any entry's lock).

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::ops::Bound;

use crate::key::{KeyText, QueryKey};
use crate::rt::Stamp;

/// Every cached key, in key order.
#[derive(Debug, Default)]
pub(super) struct KeyIndex {
    keys: BTreeSet<KeyText>,
}

impl KeyIndex {
    pub(super) fn insert(&mut self, key: &QueryKey) {
        self.keys.insert(key.key_text());
    }

    /// Forgets `key`, unless `still_cached` (the map holds it again: it was
    /// cached anew since the removal that calls this). Asked under the
    /// index's lock, so that a key cached anew is never left out: its
    /// insertion comes after the map's, hence after this answer or after
    /// this removal.
    pub(super) fn remove(&mut self, key: &QueryKey, still_cached: impl FnOnce() -> bool) {
        if !still_cached() {
            self.keys.remove(key.text());
        }
    }

    /// At most `limit` keys after `after` (from the first when `None`), in order.
    pub(super) fn after(&self, after: Option<&QueryKey>, limit: usize) -> Vec<KeyText> {
        let from = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.text()));
        self.keys
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .cloned()
            .collect()
    }
}

/// Where an entry stands in `recently_updated`: a later update first, then
/// the smaller key.
pub(super) type Rank = (Stamp, Reverse<QueryKey>);

/// The fewest ranks the recent index keeps. `recently_updated(limit)` asks
/// for up to half of what it keeps; a larger limit grows it (once, with a
/// pass over the cache).
const MIN_RECENT: usize = 1024;

/// The best-ranked entries that have an update time.
///
/// Invariant (between changes): `ranks` holds exactly the ranks of the
/// cached entries with an update time that rank above `floor`, and at most
/// `capacity` of them. So when it holds at least `limit`, its best `limit`
/// are the cache's best `limit`; otherwise a pass over the cache answers,
/// and refills it.
#[derive(Debug)]
pub(super) struct RecentIndex {
    ranks: BTreeSet<Rank>,
    capacity: usize,
    /// The best rank ever left out for want of room; `None`: none was.
    floor: Option<Rank>,
}

impl Default for RecentIndex {
    fn default() -> Self {
        Self {
            ranks: BTreeSet::new(),
            capacity: MIN_RECENT,
            floor: None,
        }
    }
}

impl RecentIndex {
    /// `key`'s entry was updated at `at` (it had `before`), under its lock.
    pub(super) fn updated(&mut self, key: &QueryKey, before: Option<Stamp>, at: Stamp) {
        if before == Some(at) {
            return;
        }
        if let Some(before) = before {
            self.ranks.remove(&(before, Reverse(key.clone())));
        }
        let rank = (at, Reverse(key.clone()));
        if self.floor.as_ref().is_some_and(|f| rank <= *f) {
            return;
        }
        self.ranks.insert(rank);
        if self.ranks.len() > self.capacity
            && let Some(out) = self.ranks.pop_first()
        {
            self.floor = self.floor.take().max(Some(out));
        }
    }

    /// `key`'s entry, updated at `at`, left the map (unless
    /// `same_rank_cached`: the key was cached anew since, with the same
    /// update time, and the rank is the new entry's).
    pub(super) fn removed(
        &mut self,
        key: &QueryKey,
        at: Stamp,
        same_rank_cached: impl FnOnce() -> bool,
    ) {
        let rank = (at, Reverse(key.clone()));
        if self.ranks.contains(&rank) && !same_rank_cached() {
            self.ranks.remove(&rank);
        }
    }

    /// The best `limit` ranks, best first, if the index knows them: it
    /// holds `limit` ranks, or every entry of the cache (`all_in(n)`: the
    /// cache holds no more than `n` entries) and never left one out.
    /// `None` asks for a pass over the cache.
    pub(super) fn best(
        &self,
        limit: usize,
        all_in: impl FnOnce(usize) -> bool,
    ) -> Option<Vec<Rank>> {
        if limit > self.capacity / 2 {
            return None;
        }
        let known = self.ranks.len() >= limit || (self.floor.is_none() && all_in(self.ranks.len()));
        known.then(|| self.ranks.iter().rev().take(limit).cloned().collect())
    }

    /// Forgets a rank found stale (its entry was updated or removed without
    /// the index hearing of it: a race with a removal).
    pub(super) fn forget(&mut self, rank: &Rank) {
        self.ranks.remove(rank);
    }

    /// Refills the index from a pass over the cache that kept the best
    /// ranks (`kept`, at most `capacity_for(limit)` of them) and the best
    /// one it left out (`left_out`).
    pub(super) fn refill(&mut self, limit: usize, kept: Vec<Rank>, left_out: Option<Rank>) {
        self.capacity = Self::capacity_for(limit).max(self.capacity);
        self.ranks = kept.into_iter().collect();
        self.floor = left_out;
    }

    /// How many ranks a pass for `limit` keeps.
    pub(super) fn capacity_for(limit: usize) -> usize {
        limit.saturating_mul(2).max(MIN_RECENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> QueryKey {
        QueryKey::new("a", serde_json::json!(i))
    }

    #[test]
    fn pages_are_ranges_of_the_key_order() {
        let mut idx = KeyIndex::default();
        for i in [5, 1, 3, 2, 4] {
            idx.insert(&k(i));
        }
        let keys = |v: Vec<KeyText>| v.iter().map(KeyText::to_key).collect::<Vec<_>>();
        assert_eq!(keys(idx.after(None, 2)), vec![k(1), k(2)]);
        assert_eq!(keys(idx.after(Some(&k(2)), 10)), vec![k(3), k(4), k(5)]);
        idx.remove(&k(3), || true);
        assert_eq!(idx.after(Some(&k(2)), 10).len(), 3, "cached anew: kept");
        idx.remove(&k(3), || false);
        assert_eq!(keys(idx.after(Some(&k(2)), 10)), vec![k(4), k(5)]);
    }

    #[test]
    fn the_recent_index_keeps_the_best_and_knows_when_it_does_not() {
        let mut idx = RecentIndex {
            capacity: 4,
            ..RecentIndex::default()
        };
        for i in 0..6u32 {
            idx.updated(&k(i), None, Stamp(i64::from(i)));
        }
        // Ranks 0 and 1 were left out: the floor is 1.
        assert_eq!(idx.floor, Some((Stamp(1), Reverse(k(1)))));
        let best = |idx: &RecentIndex, n| {
            idx.best(n, |_| false)
                .map(|v| v.into_iter().map(|(_, Reverse(k))| k).collect::<Vec<_>>())
        };
        assert_eq!(best(&idx, 2), Some(vec![k(5), k(4)]));
        assert_eq!(best(&idx, 3), None, "more than half the capacity");
        // An update below the floor is not taken in; one above moves up.
        idx.updated(&k(0), Some(Stamp(0)), Stamp(1));
        assert_eq!(idx.ranks.len(), 4);
        idx.updated(&k(2), Some(Stamp(2)), Stamp(9));
        assert_eq!(best(&idx, 2), Some(vec![k(2), k(5)]));
        idx.removed(&k(2), Stamp(9), || false);
        idx.removed(&k(5), Stamp(5), || false);
        idx.removed(&k(4), Stamp(4), || false);
        assert_eq!(best(&idx, 2), None, "one left above the floor");
    }
}
