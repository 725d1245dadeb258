//! The synchronisation of the local limiters: std's and portable-atomic's,
//! or shuttle's under `--cfg shuttle`, so that `shuttle_tests` explores how
//! threads interleave on them (`RUSTFLAGS="--cfg shuttle" cargo test -p
//! statecraft --lib shuttle`). Shuttle has no 128-bit atomic: there a
//! mutex stands in for it, with the same atomicity (one load, one
//! compare-and-swap).

#[cfg(shuttle)]
pub(super) use shuttle::sync::atomic::{AtomicU64, Ordering};
#[cfg(shuttle)]
pub(super) use shuttle::sync::Mutex;
#[cfg(not(shuttle))]
pub(super) use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(shuttle))]
pub(super) use std::sync::Mutex;

/// A 128-bit cell with load and compare-and-swap.
#[derive(Debug)]
pub(super) struct AtomicU128(
    #[cfg(not(shuttle))] portable_atomic::AtomicU128,
    #[cfg(shuttle)] shuttle::sync::Mutex<u128>,
);

#[cfg(not(shuttle))]
impl AtomicU128 {
    pub(super) fn new(value: u128) -> Self {
        AtomicU128(portable_atomic::AtomicU128::new(value))
    }

    #[inline]
    pub(super) fn load(&self) -> u128 {
        self.0.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn compare_exchange(&self, current: u128, new: u128) -> Result<u128, u128> {
        self.0
            .compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    pub(super) fn store(&self, value: u128) {
        self.0.store(value, Ordering::Release);
    }
}

#[cfg(shuttle)]
impl AtomicU128 {
    pub(super) fn new(value: u128) -> Self {
        AtomicU128(shuttle::sync::Mutex::new(value))
    }

    pub(super) fn load(&self) -> u128 {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn compare_exchange(&self, current: u128, new: u128) -> Result<u128, u128> {
        let mut value = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *value == current {
            *value = new;
            Ok(current)
        } else {
            Err(*value)
        }
    }

    pub(super) fn store(&self, value: u128) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}
