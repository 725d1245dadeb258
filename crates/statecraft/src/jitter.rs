//! Jitter for waits: a small, lock-free pseudo-random source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A small, lock-free source of jitter (splitmix64 over a counter).
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    pub(crate) fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5eed);
        Self::seeded(hasher.finish())
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        Jitter {
            state: AtomicU64::new(seed),
        }
    }

    /// A uniformly random duration in `[0, cap]`.
    pub(crate) fn below(&self, cap: Duration) -> Duration {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == u64::MAX {
            z
        } else {
            z % (nanos + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_cap_and_spreads() {
        let jitter = Jitter::seeded(7);
        let cap = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..1000).map(|_| jitter.below(cap)).collect();
        assert!(waits.iter().all(|w| *w <= cap));
        let low = waits.iter().filter(|w| **w < cap / 2).count();
        assert!(
            (350..650).contains(&low),
            "{low} of 1000 below half the cap"
        );
        assert_eq!(jitter.below(Duration::ZERO), Duration::ZERO);
    }
}
