//! Per-key invalidation counters, striped: the check that keeps a layer
//! that copies values between stores (an L1, an upper tier) from keeping
//! one that an invalidation raced. A fill reads the key's stripe before
//! it reads the store and again after it stored the copy; an invalidation
//! bumps the stripe before it removes the copy. Keys that share a stripe
//! only cost each other a skipped fill.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::raw::MemoryHasher;

const STRIPES: usize = 4096;

/// The counters.
pub(crate) struct Stripes {
    counters: Box<[AtomicU64]>,
    hasher: MemoryHasher,
}

/// A key's stripe and its count when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    stripe: usize,
    count: u64,
}

impl Stripes {
    pub(crate) fn new() -> Self {
        Stripes {
            counters: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: MemoryHasher::default(),
        }
    }

    fn stripe_of(&self, key: &[u8]) -> usize {
        self.slot(key, STRIPES)
    }

    /// `key`'s slot among `n` (the same hash as its stripe).
    pub(crate) fn slot(&self, key: &[u8], n: usize) -> usize {
        (self.hasher.hash_one(key) as usize) % n.max(1)
    }

    /// Where `key`'s stripe stands now.
    pub(crate) fn mark(&self, key: &[u8]) -> Mark {
        let stripe = self.stripe_of(key);
        Mark {
            stripe,
            count: self.counters[stripe].load(Ordering::SeqCst),
        }
    }

    /// Whether no invalidation of the marked stripe happened since.
    pub(crate) fn unchanged(&self, mark: Mark) -> bool {
        self.counters[mark.stripe].load(Ordering::SeqCst) == mark.count
    }

    /// Marks every fill of `key` that started before now as raced.
    pub(crate) fn bump(&self, key: &[u8]) {
        self.counters[self.stripe_of(key)].fetch_add(1, Ordering::SeqCst);
    }
}
