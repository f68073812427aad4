//! `DataCell`: an entry's value, replaced atomically by writers and read
//! without locks under the map's epoch guard.
//!
//! This is what `arc_swap::ArcSwapOption` does, but it reuses the
//! protection the reader already holds: every read runs under a guard of the
//! map's collector (papaya's `seize`), so a read is one atomic load and one
//! reference-count increment. arc-swap's own protocol adds fences to every
//! load, which measured 330 ns more per hit at 100k keys (BENCHMARKS.md),
//! because the fences stop cache misses from overlapping.
//!
//! # Safety argument
//!
//! The cell owns one strong count of the `Arc` whose raw pointer it holds.
//! A writer swaps the pointer and hands the old one to the collector with
//! `defer_retire`; the collector drops it only after every guard that was
//! active at that moment is gone. A reader loads the pointer with
//! `Guard::protect` under such a guard, so the pointee (and the count the
//! cell owned) is alive while the reader increments the count to take its
//! own reference. When the cell itself is dropped (the map reclaiming a
//! removed entry, again after all guards that could see it are gone), it
//! releases its count directly.

#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use papaya::Guard;

pub(crate) struct DataCell<V> {
    /// `Arc::into_raw` of the current value, or null.
    ptr: AtomicPtr<V>,
    /// The cell owns an `Arc<V>`: Send and Sync only when `Arc<V>` is.
    _owns: PhantomData<Arc<V>>,
}

impl<V> DataCell<V> {
    pub(crate) const fn empty() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Whether a value is present (no reference is taken).
    pub(crate) fn is_some(&self) -> bool {
        !self.ptr.load(Ordering::Acquire).is_null()
    }

    /// The current value. `guard` must belong to the collector of the map
    /// that holds this cell.
    #[inline]
    pub(crate) fn load(&self, guard: &impl Guard) -> Option<Arc<V>> {
        let raw = guard.protect(&self.ptr, Ordering::Acquire);
        if raw.is_null() {
            return None;
        }
        // SAFETY: `raw` came from `Arc::into_raw` and, being protected by
        // `guard`, has not been released (see the module's safety argument).
        unsafe {
            Arc::increment_strong_count(raw);
            Some(Arc::from_raw(raw))
        }
    }

    /// Replaces the value; the old one is released once no reader can hold
    /// it. `guard` must belong to the collector of the map that holds this cell.
    pub(crate) fn store(&self, value: Arc<V>, guard: &impl Guard) {
        let new = Arc::into_raw(value).cast_mut();
        let old = self.ptr.swap(new, Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: `old` came from `Arc::into_raw`, the cell owned one
            // count of it, and after the swap no new reader can load it.
            unsafe { guard.defer_retire(old, release::<V>) };
        }
    }
}

/// Releases the count a cell owned.
///
/// # Safety
///
/// `raw` must come from `Arc::into_raw` and carry one count that is released
/// exactly once, here.
unsafe fn release<V>(raw: *mut V, _collector: &seize::Collector) {
    // SAFETY: guaranteed by the caller.
    unsafe { drop(Arc::from_raw(raw.cast_const())) };
}

impl<V> Drop for DataCell<V> {
    fn drop(&mut self) {
        let raw = *self.ptr.get_mut();
        if !raw.is_null() {
            // SAFETY: with `&mut self` no reader can see the cell any more,
            // and the cell owns one count of `raw`.
            unsafe { drop(Arc::from_raw(raw.cast_const())) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counted(usize, Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn values_are_released_once_and_only_after_readers() {
        let collector = seize::Collector::new();
        let drops = Arc::new(AtomicUsize::new(0));
        let cell = DataCell::empty();
        assert!(cell.load(&collector.enter()).is_none());
        cell.store(Arc::new(Counted(1, drops.clone())), &collector.enter());
        let reader = collector.enter();
        let held = cell.load(&reader).unwrap();
        cell.store(Arc::new(Counted(2, drops.clone())), &collector.enter());
        assert_eq!(held.0, 1, "a reader's value stays valid");
        drop(reader);
        drop(held);
        // Retired values are reclaimed in batches; force it.
        unsafe { collector.reclaim_all() };
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(cell.load(&collector.enter()).unwrap().0, 2);
        drop(cell);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let collector = seize::Collector::new();
        let cell = DataCell::empty();
        cell.store(Arc::new(0usize), &collector.enter());
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut last = 0;
                    for _ in 0..20_000 {
                        let v = *cell.load(&collector.enter()).unwrap();
                        assert!(v >= last, "values only move forward");
                        last = v;
                    }
                });
            }
            s.spawn(|| {
                for i in 1..=20_000usize {
                    cell.store(Arc::new(i), &collector.enter());
                }
            });
        });
        assert_eq!(*cell.load(&collector.enter()).unwrap(), 20_000);
    }
}
