//! The synchronisation of the local breaker's paths: std's, or shuttle's
//! under `--cfg shuttle`, so that `shuttle_tests` explores how threads
//! interleave on them (`RUSTFLAGS="--cfg shuttle" cargo test -p statecraft
//! --lib shuttle`).

#[cfg(shuttle)]
pub(super) use shuttle::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(shuttle)]
pub(super) use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(shuttle))]
pub(super) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(not(shuttle))]
pub(super) use std::sync::{Mutex, MutexGuard};
