//! The concurrency limit on requests to the source.
//!
//! A semaphore, plus a count of the permits out so that dashboards can show
//! how many requests are in flight. A permit lives as long as its request:
//! dropping it (the request ended, or its future was cancelled) gives it back.

use crate::sync::atomic::{AtomicUsize, Ordering::*};

use tokio::sync::{Semaphore, SemaphorePermit};

#[derive(Debug)]
pub(crate) struct Limiter {
    sem: Semaphore,
    limit: usize,
    in_flight: AtomicUsize,
}

/// Permission for one request to the source; released on drop.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    limiter: &'a Limiter,
    _permit: SemaphorePermit<'a>,
}

impl Limiter {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            sem: Semaphore::new(limit),
            limit,
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
            _permit: permit,
        }
    }

    /// Requests to the source in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_are_bounded_and_counted() {
        let l = Limiter::new(2);
        let a = l.acquire().await;
        let b = l.acquire().await;
        assert_eq!(l.in_flight(), 2);
        assert!(l.sem.try_acquire().is_err(), "no third permit");
        drop(a);
        assert_eq!(l.in_flight(), 1);
        let c = l.acquire().await;
        drop((b, c));
        assert_eq!(l.in_flight(), 0);
        assert_eq!(Limiter::new(0).limit(), 1, "a limit of 0 would never fetch");
    }
}
