//! The executor: turns due work into jobs (single fetches or batches) and
//! runs each through the client's leases.
//!
//! A job leases every key it fetches ([`Inner::lease`]: readers of the key
//! then join it instead of fetching again) and hands the leases to
//! [`Inner::fetch`] or [`Inner::fetch_batch`], which take one permit of the
//! limit per request, fetch within the timeout and apply the results.
//! Dropping a job (shutdown) before it completes leaves every entry as it
//! was: a result is applied in one synchronous step, never half.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::client::{Inner, Lease, NoLease, Purpose, Ran};
use crate::fetch::Batching;
use crate::log::decision;
use crate::refresh::monitor::Work;
use crate::rt::compact_duration;

/// One request's worth of work.
#[derive(Debug)]
pub(crate) enum Job {
    /// One key, one request.
    Single(Work),
    /// Keys of one action, one batch request.
    Batch(Vec<Work>),
}

impl Job {
    pub(crate) fn works(&self) -> &[Work] {
        match self {
            Job::Single(w) => std::slice::from_ref(w),
            Job::Batch(ws) => ws,
        }
    }
}

/// Groups due work into jobs, keeping the order of service (the job holding
/// the longest-overdue key goes first). With [`Batching::Combined`], keys of
/// one action share batches of at most `batch_size`; otherwise every key is
/// its own request.
pub(crate) fn plan_jobs(
    work: Vec<Work>,
    batching: Batching,
    batch_size: usize,
    out: &mut VecDeque<Job>,
) {
    if batching != Batching::Combined || batch_size <= 1 {
        out.extend(work.into_iter().map(Job::Single));
        return;
    }
    let mut jobs: Vec<Vec<Work>> = Vec::new();
    // Per action: the index of its batch still being filled.
    let mut open: HashMap<Arc<str>, usize> = HashMap::new();
    for w in work {
        let action: Arc<str> = w.key.action().into();
        let idx = match open.get(&action) {
            Some(&i) if jobs[i].len() < batch_size => i,
            _ => {
                jobs.push(Vec::with_capacity(batch_size));
                open.insert(action, jobs.len() - 1);
                jobs.len() - 1
            }
        };
        jobs[idx].push(w);
    }
    out.extend(jobs.into_iter().map(|mut b| {
        if b.len() == 1 {
            Job::Single(b.pop().expect("one"))
        } else {
            Job::Batch(b)
        }
    }));
}

/// How a job ended.
#[derive(Debug, Default)]
pub(crate) struct JobReport {
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
    /// Could not start: the network went offline before it got its turn.
    pub(crate) deferred: Vec<Work>,
}

/// Runs a job; the future owns everything it needs. A `trial` runs while
/// offline: it is the probe that can bring the network back.
pub(crate) fn run<V: PartialEq + Send + Sync + 'static>(
    inner: Arc<Inner<V>>,
    job: Job,
    trial: bool,
) -> BoxFuture<'static, JobReport> {
    Box::pin(async move {
        match job {
            Job::Single(work) => run_single(&inner, work, trial).await,
            Job::Batch(works) => run_batch(&inner, works).await,
        }
    })
}

async fn run_single<V: PartialEq + Send + Sync + 'static>(
    inner: &Arc<Inner<V>>,
    work: Work,
    trial: bool,
) -> JobReport {
    let mut report = JobReport::default();
    let purpose = if trial {
        Purpose::Trial
    } else {
        Purpose::Refresh
    };
    let lease = match inner.lease(&work.key, work.generation, purpose) {
        Ok(lease) => lease,
        Err(NoLease::Offline) => {
            report.deferred.push(work);
            return report;
        }
        // One fetch per key: if a reader is fetching it already, that
        // fetch will do, and it reschedules the key when it completes.
        Err(NoLease::InFlight | NoLease::Gone) => return report,
    };
    decision!("🔄 refreshing {}", work.key);
    match inner.fetch(lease).await {
        Ran::Done {
            result: Ok(_),
            took,
        } => {
            decision!("✅ refreshed {} in {}", work.key, compact_duration(took));
            report.succeeded += 1;
        }
        Ran::Done { result: Err(_), .. } => report.failed += 1,
        Ran::Deferred => report.deferred.push(work),
        // Another node fetches it; the skip rescheduled it.
        Ran::Skipped => {}
    }
    report
}

async fn run_batch<V: PartialEq + Send + Sync + 'static>(
    inner: &Arc<Inner<V>>,
    works: Vec<Work>,
) -> JobReport {
    let mut report = JobReport::default();
    let mut leased: Vec<(Lease<V>, Work)> = Vec::with_capacity(works.len());
    for w in works {
        match inner.lease(&w.key, w.generation, Purpose::Refresh) {
            Ok(lease) => leased.push((lease, w)),
            Err(NoLease::Offline) => report.deferred.push(w),
            Err(NoLease::InFlight | NoLease::Gone) => {}
        }
    }
    let Some((first, _)) = leased.first() else {
        return report;
    };
    let action = first.key().action().to_owned();
    let n = leased.len();
    decision!("🔄 refreshing {n} × {action} in one batch");
    let (leases, works): (Vec<Lease<V>>, Vec<Work>) = leased.into_iter().unzip();
    let mut took = std::time::Duration::ZERO;
    for (ran, work) in inner.fetch_batch(leases).await.into_iter().zip(works) {
        match ran {
            Ran::Done { result, took: t } => {
                took = took.max(t);
                match result {
                    Ok(_) => report.succeeded += 1,
                    Err(_) => report.failed += 1,
                }
            }
            Ran::Deferred => report.deferred.push(work),
            Ran::Skipped => {}
        }
    }
    if report.succeeded + report.failed > 0 {
        decision!(
            "✅ refreshed {} × {action} in {} ({} failed)",
            report.succeeded,
            compact_duration(took),
            report.failed
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::QueryKey;
    use crate::rt::Stamp;

    fn work(action: &str, i: i64) -> Work {
        Work {
            key: QueryKey::new(action, serde_json::json!(i)),
            generation: 0,
            due: Stamp(i),
        }
    }

    fn shape(jobs: &VecDeque<Job>) -> Vec<Vec<i64>> {
        jobs.iter()
            .map(|j| j.works().iter().map(|w| w.due.0).collect())
            .collect()
    }

    #[test]
    fn batches_group_one_action_in_order_of_service() {
        let ws = vec![
            work("a", 1),
            work("b", 2),
            work("a", 3),
            work("a", 4),
            work("b", 5),
            work("a", 6),
        ];
        let mut jobs = VecDeque::new();
        plan_jobs(ws, Batching::Combined, 2, &mut jobs);
        assert_eq!(shape(&jobs), vec![vec![1, 3], vec![2, 5], vec![4, 6]]);
    }

    #[test]
    fn twelve_keys_of_one_action_make_three_batches_of_at_most_five() {
        let ws = (0..12).map(|i| work("process.list", i)).collect();
        let mut jobs = VecDeque::new();
        plan_jobs(ws, Batching::Combined, 5, &mut jobs);
        assert_eq!(
            jobs.iter().map(|j| j.works().len()).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
    }

    #[test]
    fn split_fetchers_get_one_job_per_key() {
        let ws = (0..4).map(|i| work("a", i)).collect();
        let mut jobs = VecDeque::new();
        plan_jobs(ws, Batching::Split, 5, &mut jobs);
        assert_eq!(jobs.len(), 4);
        assert!(jobs.iter().all(|j| matches!(j, Job::Single(_))));
    }
}
