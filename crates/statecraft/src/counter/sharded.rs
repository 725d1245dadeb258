//! [`ShardedCounter`]: a counter spread over cache-line-sized shards.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

/// One shard, alone on its cache line (128 bytes: two lines, as adjacent
/// lines are fetched in pairs on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicI64);

thread_local! {
    /// This thread's shard number, handed out in turn.
    static SHARD: Cell<usize> = Cell::new({
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    });
}

/// A counter for many threads: each adds to its own shard (a relaxed
/// atomic add on a cache line no other thread on another core writes, as
/// long as there are no more threads than shards), and [`sum`](Self::sum)
/// adds the shards up.
///
/// Adds are exact and never lost; a `sum` taken while threads add is one
/// of the values the counter had during the call (each shard read once),
/// not a snapshot of one instant. Sums wrap on overflow.
#[derive(Debug)]
pub struct ShardedCounter {
    shards: Box<[Shard]>,
    mask: usize,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardedCounter {
    /// A counter with two shards per core (rounded up to a power of two).
    pub fn new() -> ShardedCounter {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards(cores * 2)
    }

    /// A counter with `shards` shards (at least 1, rounded up to a power
    /// of two).
    pub fn with_shards(shards: usize) -> ShardedCounter {
        let shards = shards.max(1).next_power_of_two();
        ShardedCounter {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            mask: shards - 1,
        }
    }

    #[inline]
    fn shard(&self) -> &AtomicI64 {
        let n = SHARD.with(Cell::get) & self.mask;
        &self.shards[n].0
    }

    /// Adds `delta` (negative to take away).
    #[inline]
    pub fn add(&self, delta: i64) {
        self.shard().fetch_add(delta, Ordering::Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// The total.
    pub fn sum(&self) -> i64 {
        self.shards.iter().fold(0i64, |sum, shard| {
            sum.wrapping_add(shard.0.load(Ordering::Relaxed))
        })
    }

    /// Takes the total out, leaving 0: every add lands in exactly one
    /// `take` (or stays for the next).
    pub fn take(&self) -> i64 {
        self.shards.iter().fold(0i64, |sum, shard| {
            sum.wrapping_add(shard.0.swap(0, Ordering::Relaxed))
        })
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_adding_at_once_lose_nothing() {
        let counter = ShardedCounter::with_shards(3);
        assert_eq!(counter.shards(), 4);
        let taken = AtomicI64::new(0);
        std::thread::scope(|scope| {
            for n in 0..6i64 {
                let counter = &counter;
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        counter.add(n);
                    }
                });
            }
            // Takes while they add: every add is in one take or the rest.
            scope.spawn(|| {
                for _ in 0..100 {
                    taken.fetch_add(counter.take(), Ordering::Relaxed);
                }
            });
        });
        let total = taken.load(Ordering::Relaxed) + counter.sum();
        assert_eq!(total, (0..6).sum::<i64>() * 10_000);
    }
}
