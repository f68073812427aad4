//! The locks and atomics of the engine's own synchronisation, behind one
//! shim.
//!
//! Normally these are `parking_lot`'s mutex and the standard atomics. With
//! the `shuttle` feature (for the model checker only: `src/model.rs`) they
//! are shuttle's, so that shuttle can interleave the engine's tasks at every
//! lock and every atomic operation of an entry, its slot, the schedule and
//! the concurrency limit, and explore the orders a real scheduler might
//! produce. Counters that no decision reads (statistics, the debug flag)
//! stay plain atomics, and the value cell keeps the map's epoch-protected
//! `AtomicPtr`.

#[cfg(not(feature = "shuttle"))]
mod imp {
    pub(crate) use parking_lot::{Mutex, MutexGuard};

    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::{
            AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
        };
    }
}

#[cfg(feature = "shuttle")]
mod imp {
    /// shuttle's mutex with `parking_lot`'s interface (no poisoning: a
    /// panic fails the model run anyway).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    pub(crate) type MutexGuard<'a, T> = shuttle::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    pub(crate) mod atomic {
        pub(crate) use shuttle::sync::atomic::{
            AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, fence,
        };
        pub(crate) use std::sync::atomic::Ordering;
    }
}

pub(crate) use imp::*;
