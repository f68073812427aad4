//! The concurrency limit on requests to the source.
//!
//! A semaphore whose size can change while permits are out: the refresh
//! service sets it from its settings when it starts. Shrinking forgets the
//! permits that are free and records the rest as debt, paid by forgetting
//! permits as they come back, so the limit holds at every moment.

use std::sync::atomic::{AtomicUsize, Ordering::*};

use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug)]
pub(crate) struct Limiter {
    sem: Semaphore,
    limit: AtomicUsize,
    debt: AtomicUsize,
    in_flight: AtomicUsize,
}

/// Permission for one request to the source; released on drop.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    limiter: &'a Limiter,
    permit: Option<SemaphorePermit<'a>>,
}

impl Limiter {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            sem: Semaphore::new(limit),
            limit: AtomicUsize::new(limit),
            debt: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub(crate) async fn acquire(&self) -> Permit<'_> {
        let permit = self
            .sem
            .acquire()
            .await
            .expect("the limiter's semaphore is never closed");
        self.in_flight.fetch_add(1, Relaxed);
        Permit {
            limiter: self,
            permit: Some(permit),
        }
    }

    /// Requests to the source in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Relaxed)
    }

    pub(crate) fn resize(&self, new: usize) {
        let new = new.max(1);
        let old = self.limit.swap(new, AcqRel);
        if new > old {
            let mut grow = new - old;
            // Cancel debt first: those permits were never given back.
            let _ = self.debt.fetch_update(AcqRel, Acquire, |d| {
                let paid = d.min(grow);
                grow -= paid;
                Some(d - paid)
            });
            self.sem.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.sem.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, AcqRel);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Relaxed);
        let Some(permit) = self.permit.take() else {
            return;
        };
        let paid = self
            .limiter
            .debt
            .fetch_update(AcqRel, Acquire, |d| d.checked_sub(1))
            .is_ok();
        if paid {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shrinking_holds_the_new_limit_once_permits_return() {
        let l = Limiter::new(3);
        let a = l.acquire().await;
        let b = l.acquire().await;
        l.resize(1);
        assert_eq!(l.limit(), 1);
        drop(a);
        drop(b);
        let c = l.acquire().await;
        assert!(
            l.sem.try_acquire().is_err(),
            "only one permit may exist now"
        );
        drop(c);
        l.resize(4);
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| l.acquire())).await;
        assert_eq!(l.in_flight(), 4);
        assert!(l.sem.try_acquire().is_err());
        drop(held);
        assert_eq!(l.in_flight(), 0);
    }
}
