//! The executor: turns due work into jobs (single fetches or batches) and
//! runs them under the client's concurrency limit.
//!
//! A job holds the flight of every key it fetches (so a reader of the same
//! key joins it instead of fetching again), waits for one permit of the
//! limit per request it sends, fetches with the timeout, and stores the
//! results. Dropping a job (shutdown) before it completes leaves every entry
//! as it was: a result is applied in one synchronous step, never half.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::client::{Inner, Lease};
use crate::fetch::{Batching, FetchError, FetchRequest};
use crate::log::decision;
use crate::refresh::monitor::Work;
use crate::rt::{self, compact_duration};

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
    // One fetch per key: if a reader is fetching it already, that fetch
    // will do, and it reschedules the key when it completes.
    let Some(lease) = inner.try_lead(&work.key, work.generation) else {
        return report;
    };
    let permit = inner.limiter.acquire().await;
    if !trial && !inner.network.is_online() {
        drop(lease);
        report.deferred.push(work);
        return report;
    }
    decision!("🔄 refreshing {}", work.key);
    let started = inner.clock.now();
    let result = inner.fetch_one(lease.request()).await;
    drop(permit);
    let took = inner.clock.now().since(started);
    match inner.complete(lease, result, started) {
        Ok(_) => {
            decision!("✅ refreshed {} in {}", work.key, compact_duration(took));
            report.succeeded += 1;
        }
        Err(_) => report.failed += 1,
    }
    report
}

async fn run_batch<V: PartialEq + Send + Sync + 'static>(
    inner: &Arc<Inner<V>>,
    works: Vec<Work>,
) -> JobReport {
    let mut report = JobReport::default();
    let (leases, works): (Vec<Lease<V>>, Vec<Work>) = works
        .into_iter()
        .filter_map(|w| inner.try_lead(&w.key, w.generation).map(|l| (l, w)))
        .unzip();
    let Some(first) = works.first() else {
        return report;
    };
    let action = first.key.action().to_owned();
    let permit = inner.limiter.acquire().await;
    if !inner.network.is_online() {
        drop(leases);
        report.deferred = works;
        return report;
    }
    decision!("🔄 refreshing {} × {action} in one batch", leases.len());
    let started = inner.clock.now();
    let limit = inner.fetch_timeout();
    let results = {
        let requests: Vec<FetchRequest<'_, V>> = leases.iter().map(Lease::request).collect();
        rt::timeout(limit, inner.fetcher.fetch_batch(&requests)).await
    };
    drop(permit);
    let n = leases.len();
    let results: Vec<Result<_, FetchError>> = match results {
        Some(rs) if rs.len() == n => rs,
        Some(rs) => {
            let e = FetchError::bad_data(format!(
                "the batch answered {} results for {n} keys",
                rs.len()
            ));
            (0..n).map(|_| Err(e.clone())).collect()
        }
        None => {
            let e = FetchError::timeout(format!("no answer within {}", compact_duration(limit)));
            (0..n).map(|_| Err(e.clone())).collect()
        }
    };
    let took = inner.clock.now().since(started);
    for (lease, result) in leases.into_iter().zip(results) {
        match inner.complete(lease, result, started) {
            Ok(_) => report.succeeded += 1,
            Err(_) => report.failed += 1,
        }
    }
    decision!(
        "✅ refreshed {} × {action} in {} ({} failed)",
        report.succeeded,
        compact_duration(took),
        report.failed
    );
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
