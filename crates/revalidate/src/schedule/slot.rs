//! `Slot`: where one entry stands with the refresh schedule.
//!
//! An entry is in one of three states, held in one atomic word so that the
//! read path can look at it without a lock:
//!
//! - **idle**: no deadline is queued for it;
//! - **queued at `t`**: the schedule holds a deadline at `t` for it (and may
//!   hold later, superseded ones, which are discarded when they surface);
//! - **in the executor**: a check found it due and handed it to the executor;
//!   nothing queues it again until its job starts.
//!
//! The transitions are the methods below; nothing else writes the word.

use crate::sync::atomic::{AtomicI64, Ordering::*};

use crate::rt::Stamp;

const IDLE: i64 = i64::MAX;
/// Earlier than any deadline, so that `lower_to` never queues an entry
/// that waits in the executor.
const IN_EXECUTOR: i64 = i64::MIN;

/// One entry's standing with the refresh schedule.
#[derive(Debug)]
pub(crate) struct Slot(AtomicI64);

impl Slot {
    pub(crate) const fn new() -> Self {
        Self(AtomicI64::new(IDLE))
    }

    /// The deadline the schedule holds for the entry, if it waits on one.
    pub(crate) fn queued_at(&self) -> Option<Stamp> {
        match self.0.load(Acquire) {
            IDLE | IN_EXECUTOR => None,
            t => Some(Stamp(t)),
        }
    }

    /// Neither queued nor in the executor.
    pub(crate) fn is_idle(&self) -> bool {
        self.0.load(Acquire) == IDLE
    }

    /// Asks for the entry to be looked at by `at`. Returns whether the
    /// schedule must push a deadline: false when one at or before `at` is
    /// queued already, or the entry is in the executor.
    pub(crate) fn lower_to(&self, at: Stamp) -> bool {
        let mut current = self.0.load(Acquire);
        loop {
            if current <= at.0 {
                return false;
            }
            match self.0.compare_exchange_weak(current, at.0, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// A deadline at `at` surfaced: whether it is the entry's live one (the
    /// entry becomes idle) rather than one superseded by an earlier deadline.
    pub(crate) fn claim(&self, at: Stamp) -> bool {
        self.0.compare_exchange(at.0, IDLE, AcqRel, Acquire).is_ok()
    }

    /// A claimed entry goes to the executor.
    pub(crate) fn hand_to_executor(&self) {
        self.0.store(IN_EXECUTOR, Release);
    }

    /// Its job started: from here the job's outcome reschedules it.
    pub(crate) fn leave_executor(&self) {
        let _ = self.0.compare_exchange(IN_EXECUTOR, IDLE, AcqRel, Acquire);
    }

    /// Forgets any deadline (a service starting on a filled cache seeds
    /// every entry afresh).
    pub(crate) fn reset(&self) {
        self.0.store(IDLE, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let s = Slot::new();
        assert!(s.is_idle());
        assert!(s.lower_to(Stamp(100)));
        assert!(!s.lower_to(Stamp(200)), "a later deadline is not pushed");
        assert!(s.lower_to(Stamp(50)), "an earlier one is");
        assert_eq!(s.queued_at(), Some(Stamp(50)));
        assert!(!s.claim(Stamp(100)), "100 was superseded");
        assert!(s.claim(Stamp(50)));
        assert!(s.is_idle());
        s.hand_to_executor();
        assert!(
            !s.lower_to(Stamp(0)),
            "nothing queues an entry in the executor"
        );
        assert_eq!(s.queued_at(), None);
        assert!(!s.is_idle());
        s.leave_executor();
        assert!(s.is_idle());
        assert!(s.lower_to(Stamp(7)));
        s.leave_executor();
        assert_eq!(
            s.queued_at(),
            Some(Stamp(7)),
            "only an entry in the executor leaves it"
        );
        s.reset();
        assert!(s.is_idle());
    }
}
