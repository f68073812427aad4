//! The staleness monitor: at each check, what is due, and what to do about it.
//!
//! It never scans the cache. It pops the deadlines that have passed from the
//! client's [`RefreshSchedule`](crate::schedule::RefreshSchedule) and looks
//! only at those entries: a check with nothing due costs a peek.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::client::{Entry, Inner};
use crate::key::QueryKey;
use crate::log::decision;
use crate::refresh::plan;
use crate::rt::{Stamp, compact_duration};
use crate::schedule::{Due, RefreshSchedule};
use crate::settings::RefreshSettings;

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
    /// Not due after all (refreshed meanwhile): queued again.
    pub(crate) rescheduled: usize,
    /// Put aside while offline.
    pub(crate) deferred: usize,
}

/// Deadlines examined per check at most, so one check never stalls the
/// service for long; the rest waits for the next check.
const CHECK_BUDGET: usize = 1 << 20;

pub(crate) struct Monitor<V> {
    inner: Arc<Inner<V>>,
    settings: Arc<RefreshSettings>,
    /// Deadlines that passed while offline, in due order.
    backlog: VecDeque<Due>,
    popped: Vec<Due>,
}

impl<V: PartialEq + Send + Sync + 'static> Monitor<V> {
    pub(crate) fn new(inner: Arc<Inner<V>>, settings: Arc<RefreshSettings>) -> Self {
        Self {
            inner,
            settings,
            backlog: VecDeque::new(),
            popped: Vec::new(),
        }
    }

    /// Queues every cached query for its next due time: what a service
    /// starting on a filled (or restored) cache needs. Runs once, at start.
    pub(crate) fn seed(&self, now: Stamp) {
        let inner = &self.inner;
        let guard = inner.map.guard();
        for (key, entry) in inner.map.iter(&guard) {
            entry
                .queued_due
                .store(i64::MAX, std::sync::atomic::Ordering::Release);
            if let Some((due, _)) = self.due_time(key, entry, now) {
                inner
                    .schedule
                    .schedule(&entry.queued_due, entry.generation, key, due);
            }
        }
    }

    /// Deadlines put aside while offline.
    pub(crate) fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// When `entry` needs a refresh, and whether that time is a backoff
    /// (never served early). Now if it has no data or was invalidated, else
    /// when its data turns stale; `None` for never. While it is failing, not
    /// before its retry time: a failing source is backed off even when data
    /// goes stale sooner, unless an invalidation since asks for it.
    fn due_time(&self, key: &QueryKey, entry: &Entry<V>, now: Stamp) -> Option<(Stamp, bool)> {
        let natural = match entry.updated_at() {
            None => Some(now),
            Some(_) if entry.is_invalidated() => Some(now),
            Some(updated) => plan::due_after_update(
                entry.action.staleness,
                updated,
                key,
                entry.version(),
                self.settings.jitter,
            ),
        };
        let failing = entry.errors();
        if failing == 0 {
            return natural.map(|at| (at, false));
        }
        let Some(failure) = entry.last_error() else {
            return natural.map(|at| (at, false));
        };
        if entry.invalidations() != failure.invalidations {
            return Some((now, false));
        }
        let backoff = plan::not_before(
            &self.settings,
            entry.action.staleness,
            failing,
            &failure.error,
            failure.at,
            key,
        );
        match (natural, backoff) {
            (_, None) => None,
            (Some(at), Some(nb)) if at >= nb => Some((at, false)),
            (_, Some(nb)) => Some((nb, true)),
        }
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
        let schedule = &self.inner.schedule;
        if !online {
            self.popped.clear();
            schedule.pop_due(horizon, CHECK_BUDGET, &mut self.popped);
            let guard = self.inner.map.guard();
            for due in self.popped.drain(..) {
                let live = self
                    .inner
                    .entry_of(&due.key, due.generation, &guard)
                    .filter(|e| {
                        e.queued_due.load(std::sync::atomic::Ordering::Acquire) == due.at.0
                    });
                // A superseded deadline is garbage, offline or not.
                let Some(entry) = live else { continue };
                entry
                    .action
                    .counters
                    .skipped_offline
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let guard = self.inner.map.guard();
        if report.examined > 0 {
            decision!(
                "🔍 checking staleness for {} queries ({} cached)",
                report.examined,
                self.inner.map.len()
            );
        }
        for due in popped.drain(..) {
            let Some(entry) = self.inner.entry_of(&due.key, due.generation, &guard) else {
                continue;
            };
            // A deadline superseded by an earlier one is garbage (lazy deletion).
            if !RefreshSchedule::claim(&entry.queued_due, &due) {
                continue;
            }
            if entry.is_fetching() {
                // Its fetch reschedules it when it completes.
                continue;
            }
            let Some((at, backoff)) = self.due_time(&due.key, entry, now) else {
                continue;
            };
            // A backoff is a minimum: the window does not serve it early.
            if at > horizon || (backoff && at > now) {
                schedule.schedule(&entry.queued_due, entry.generation, &due.key, at);
                report.rescheduled += 1;
                continue;
            }
            if !self.inner.is_active(entry, now) {
                decision!("💤 {} is stale but inactive: not refreshing", due.key);
                report.inactive += 1;
                continue;
            }
            if let Some(updated) = entry.updated_at() {
                let age = compact_duration(now.since(updated));
                let limit = entry.action.staleness;
                if entry.is_invalidated() {
                    decision!("⏰ {} is invalidated (age: {age}, limit: {limit})", due.key);
                } else if entry.errors() > 0 {
                    decision!(
                        "⏰ {} is due for retry {} (age: {age}, limit: {limit})",
                        due.key,
                        entry.errors()
                    );
                } else if at <= now {
                    decision!("⏰ {} is stale (age: {age}, limit: {limit})", due.key);
                } else {
                    let early = compact_duration(at.since(now));
                    decision!(
                        "⏰ {} is due within this window (age: {age}, limit: {limit}, {early} early)",
                        due.key
                    );
                }
            } else {
                decision!("⏰ {} has no data yet", due.key);
            }
            report.due += 1;
            entry.queued_due.store(
                crate::schedule::IN_EXECUTOR,
                std::sync::atomic::Ordering::Release,
            );
            out.push(Work {
                key: due.key,
                generation: due.generation,
                due: due.at.min(at),
            });
        }
        self.popped = popped;
        report
    }

    /// The oldest query set aside while offline that still needs a refresh,
    /// to try as a probe.
    pub(crate) fn take_oldest(&mut self, now: Stamp) -> Option<Work> {
        let guard = self.inner.map.guard();
        while let Some(due) = self.backlog.pop_front() {
            let Some(entry) = self.inner.entry_of(&due.key, due.generation, &guard) else {
                continue;
            };
            if !RefreshSchedule::claim(&entry.queued_due, &due) || entry.is_fetching() {
                continue;
            }
            if !self.inner.is_active(entry, now) {
                continue;
            }
            entry.queued_due.store(
                crate::schedule::IN_EXECUTOR,
                std::sync::atomic::Ordering::Release,
            );
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
        let guard = self.inner.map.guard();
        if let Some(entry) = self.inner.entry_of(&work.key, work.generation, &guard) {
            self.inner
                .schedule
                .schedule(&entry.queued_due, entry.generation, &work.key, work.due);
        }
    }
}
