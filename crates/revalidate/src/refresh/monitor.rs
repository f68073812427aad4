//! The staleness monitor: at each check, what is due, and what to do about it.
//!
//! It never scans the cache. It pops the deadlines that have passed from the
//! client's schedule and looks only at those entries, through
//! [`EntryRef`](crate::client::EntryRef): a check with nothing due costs a
//! peek.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::client::{EntryRef, Inner};
use crate::key::QueryKey;
use crate::log::decision;
use crate::rt::{Stamp, compact_duration};
use crate::schedule::Deadline;

/// One query to refresh now.
#[derive(Debug, Clone)]
pub(crate) struct Work {
    pub(crate) key: QueryKey,
    pub(crate) generation: u32,
    /// When it fell due (the order of service: longest overdue first).
    pub(crate) due: Stamp,
}

/// What one check found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckReport {
    /// Deadlines examined.
    pub(crate) examined: usize,
    /// Queries handed out for refresh.
    pub(crate) due: usize,
    /// Due but nobody reads them: left until the next read.
    pub(crate) inactive: usize,
    /// Not due after all (refreshed meanwhile, or backing off): queued again.
    pub(crate) rescheduled: usize,
    /// Put aside while offline.
    pub(crate) deferred: usize,
}

/// Deadlines examined per check at most, so one check never stalls the
/// service for long; the rest waits for the next check.
const CHECK_BUDGET: usize = 1 << 20;

pub(crate) struct Monitor<V> {
    inner: Arc<Inner<V>>,
    /// Deadlines that passed while offline, in due order.
    backlog: VecDeque<Deadline>,
    popped: Vec<Deadline>,
}

impl<V: PartialEq + Send + Sync + 'static> Monitor<V> {
    pub(crate) fn new(inner: Arc<Inner<V>>) -> Self {
        Self {
            inner,
            backlog: VecDeque::new(),
            popped: Vec::new(),
        }
    }

    /// Deadlines put aside while offline.
    pub(crate) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// One check at `now`, taking what falls due up to `horizon` (the
    /// check's share of the coalescing window). Online: moves what is due
    /// into `out`, longest overdue first. Offline: puts what is due aside
    /// (counted as skipped), to be served first when the network returns.
    pub(crate) fn check(
        &mut self,
        now: Stamp,
        horizon: Stamp,
        online: bool,
        out: &mut Vec<Work>,
    ) -> CheckReport {
        let mut report = CheckReport::default();
        let schedule = self.inner.schedule();
        if !online {
            self.popped.clear();
            schedule.pop_due(horizon, CHECK_BUDGET, &mut self.popped);
            let guard = self.inner.guard();
            for due in self.popped.drain(..) {
                // A superseded deadline is garbage, offline or not; a live
                // one stays queued (unclaimed) until the network returns.
                let Some(entry) = self
                    .inner
                    .entry_ref(&due.key, due.generation, &guard)
                    .filter(|e| e.is_queued_at(due.at))
                else {
                    continue;
                };
                entry.count_skipped_offline();
                report.deferred += 1;
                self.backlog.push_back(due);
            }
            return report;
        }

        // The backlog is older than anything in the schedule: serve it first.
        let mut popped = std::mem::take(&mut self.popped);
        popped.clear();
        popped.extend(self.backlog.drain(..));
        schedule.pop_due(horizon, CHECK_BUDGET, &mut popped);
        report.examined = popped.len();
        let guard = self.inner.guard();
        if report.examined > 0 {
            decision!(
                "🔍 checking staleness for {} queries ({} cached)",
                report.examined,
                self.inner.len()
            );
        }
        for due in popped.drain(..) {
            let Some(entry) = self.inner.entry_ref(&due.key, due.generation, &guard) else {
                continue;
            };
            // A deadline superseded by an earlier one is garbage (lazy deletion).
            if !entry.claim(due.at) {
                continue;
            }
            if entry.is_fetching() {
                // Its fetch reschedules it when it completes.
                continue;
            }
            let Some(next) = entry.next_due(now) else {
                continue;
            };
            // A backoff is a minimum: the window does not serve it early.
            if next.at > horizon || (next.backoff && next.at > now) {
                entry.reschedule(next.at);
                report.rescheduled += 1;
                continue;
            }
            if !entry.is_active(now) {
                decision!("💤 {} is stale but inactive: not refreshing", due.key);
                report.inactive += 1;
                continue;
            }
            log_due(&due.key, &entry, next.at, now);
            report.due += 1;
            entry.hand_to_executor();
            out.push(Work {
                key: due.key,
                generation: due.generation,
                due: due.at.min(next.at),
            });
        }
        self.popped = popped;
        report
    }

    /// The oldest query set aside while offline that still needs a refresh,
    /// to try as a probe.
    pub(crate) fn take_oldest(&mut self, now: Stamp) -> Option<Work> {
        let guard = self.inner.guard();
        while let Some(due) = self.backlog.pop_front() {
            let Some(entry) = self.inner.entry_ref(&due.key, due.generation, &guard) else {
                continue;
            };
            if !entry.claim(due.at) || entry.is_fetching() || !entry.is_active(now) {
                continue;
            }
            entry.hand_to_executor();
            return Some(Work {
                key: due.key,
                generation: due.generation,
                due: due.at,
            });
        }
        None
    }

    /// Puts work that could not start (the network went away) back on the schedule.
    pub(crate) fn defer(&self, work: &Work) {
        let guard = self.inner.guard();
        if let Some(entry) = self.inner.entry_ref(&work.key, work.generation, &guard) {
            entry.reschedule(work.due);
        }
    }
}

/// The seed's "⏰" line: why a query is refreshed now.
fn log_due<V>(key: &QueryKey, entry: &EntryRef<'_, V>, at: Stamp, now: Stamp) {
    let Some(age) = entry.age(now) else {
        decision!("⏰ {key} has no data yet");
        return;
    };
    let age = compact_duration(age);
    let limit = entry.staleness();
    if entry.is_invalidated() {
        decision!("⏰ {key} is invalidated (age: {age}, limit: {limit})");
    } else if entry.errors() > 0 {
        decision!(
            "⏰ {key} is due for retry {} (age: {age}, limit: {limit})",
            entry.errors()
        );
    } else if at <= now {
        decision!("⏰ {key} is stale (age: {age}, limit: {limit})");
    } else {
        let early = compact_duration(at.since(now));
        decision!("⏰ {key} is due within this window (age: {age}, limit: {limit}, {early} early)");
    }
}
