//! [`HybridCounter`]: local increments, flushed to the store in batches.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Mutex;

use super::distributed::DistributedCounter;
use super::sharded::ShardedCounter;
use crate::backend::error::Result;
use crate::backend::StateBackend;

/// What a [`HybridCounter`] has done with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HybridCounterStats {
    /// Flushes that reached the store.
    pub flushes: u64,
    /// Flushes that failed (their sum stays pending, for the next one).
    pub failed_flushes: u64,
}

struct Inner {
    store: DistributedCounter,
    pending: ShardedCounter,
    /// The store's total as the last flush returned it.
    known: AtomicI64,
    /// What a flush took from `pending` and has not yet seen land.
    in_flight: AtomicI64,
    /// One flush at a time, so that a failed one's sum goes back before
    /// the next takes.
    flushing: Mutex<()>,
    flushes: AtomicU64,
    failed: AtomicU64,
}

/// A counter whose adds are local (a [`ShardedCounter`]: nanoseconds, no
/// round trip) and reach the store in batches, one `increment` per flush,
/// from one background task per counter (every `flush_every`), or when
/// [`flush`](Self::flush) is called.
///
/// Staleness: the store's total lags this instance's adds by at most
/// `flush_every` plus one round trip while the store answers; a failed
/// flush keeps its sum pending (nothing is lost while the process lives)
/// and the next flush sends it. [`total`](Self::total) is the store's
/// total as of the last flush plus what is pending here. The task ends
/// when the counter is dropped; [`close`](Self::close) flushes first.
#[derive(Clone)]
pub struct HybridCounter {
    inner: Arc<Inner>,
}

impl fmt::Debug for HybridCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridCounter")
            .field("store", &self.inner.store)
            .field("pending", &self.inner.pending.sum())
            .finish()
    }
}

impl HybridCounter {
    /// The counter `name` in `backend` (key `counter:<name>`, as a
    /// [`DistributedCounter`]'s), flushed every `flush_every`; starts its
    /// task on the current tokio runtime.
    pub fn start(backend: Arc<dyn StateBackend>, name: &str, flush_every: Duration) -> Self {
        Self::over(DistributedCounter::new(backend, name), flush_every)
    }

    /// The same over `store` (with its TTL).
    pub fn over(store: DistributedCounter, flush_every: Duration) -> Self {
        let inner = Arc::new(Inner {
            store,
            pending: ShardedCounter::new(),
            known: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            flushing: Mutex::new(()),
            flushes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        tokio::spawn(flush_loop(
            Arc::downgrade(&inner),
            flush_every.max(Duration::from_millis(1)),
        ));
        HybridCounter { inner }
    }

    /// Adds `delta` here; the store gets it with the next flush.
    #[inline]
    pub fn add(&self, delta: i64) {
        self.inner.pending.add(delta);
    }

    /// Adds one.
    #[inline]
    pub fn increment(&self) {
        self.add(1);
    }

    /// What is added here and not yet flushed.
    pub fn pending(&self) -> i64 {
        self.inner.pending.sum()
    }

    /// The store's total at the last flush, plus what is pending here
    /// (also what a flush is sending now).
    pub fn total(&self) -> i64 {
        let inner = &*self.inner;
        inner
            .known
            .load(Ordering::Acquire)
            .wrapping_add(inner.in_flight.load(Ordering::Acquire))
            .wrapping_add(inner.pending.sum())
    }

    /// Sends what is pending now and returns the store's total (one round
    /// trip: an add, or a read when nothing is pending).
    pub async fn flush(&self) -> Result<i64> {
        self.inner.flush().await
    }

    /// Flushes and lets this handle go: the background task ends when
    /// the last handle is dropped (what a drop leaves pending is lost).
    pub async fn close(self) -> Result<i64> {
        self.inner.flush().await
    }

    /// How the flushes went.
    pub fn stats(&self) -> HybridCounterStats {
        HybridCounterStats {
            flushes: self.inner.flushes.load(Ordering::Relaxed),
            failed_flushes: self.inner.failed.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    async fn flush(&self) -> Result<i64> {
        let _one = self.flushing.lock().await;
        // Counted in flight before it leaves `pending`, so that `total`
        // does not dip (for an instant it may count an add made meanwhile
        // twice, or not yet).
        self.in_flight.store(self.pending.sum(), Ordering::Release);
        let delta = self.pending.take();
        self.in_flight.store(delta, Ordering::Release);
        // Until the store has it, the delta is pending again if this
        // flush fails or is dropped mid-trip (a caller's timeout).
        let mut unsent = Unsent { inner: self, delta };
        if delta == 0 {
            return self.store.get().await.inspect(|total| {
                self.known.store(*total, Ordering::Release);
            });
        }
        match self.store.add(delta).await {
            Ok(total) => {
                self.known.store(total, Ordering::Release);
                self.flushes.fetch_add(1, Ordering::Relaxed);
                unsent.delta = 0;
                Ok(total)
            }
            Err(err) => {
                // (An answer lost after the store applied it counts twice:
                // the store's increment is not idempotent.)
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }
}

/// A flush's delta while it is on its way: put back in `pending` unless
/// the store took it, and no longer in flight either way.
struct Unsent<'a> {
    inner: &'a Inner,
    delta: i64,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.delta != 0 {
            self.inner.pending.add(self.delta);
        }
        self.inner.in_flight.store(0, Ordering::Release);
    }
}

async fn flush_loop(weak: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.pending.sum() != 0 {
            if let Err(err) = inner.flush().await {
                tracing::warn!(counter = ?inner.store, error = %err, "a counter flush failed; kept pending");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    // Tokio's time is paused: the flush task's ticks come as the test
    // advances it, not by waiting.
    #[tokio::test(start_paused = true)]
    async fn adds_reach_the_store_within_the_flush_interval() {
        let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
        let every = Duration::from_millis(20);
        let here = HybridCounter::start(store.clone(), "visits", every);
        let there = HybridCounter::start(store.clone(), "visits", every);
        let shared = DistributedCounter::new(store, "visits");
        for _ in 0..50 {
            here.increment();
            there.add(2);
        }
        assert_eq!((here.pending(), here.total()), (50, 50));
        assert_eq!(shared.get().await.expect("get"), 0, "nothing flushed yet");
        // The bound: one interval (plus a round trip, and a tick's slack).
        tokio::time::advance(every * 3).await;
        tokio::task::yield_now().await;
        assert_eq!(shared.get().await.expect("get"), 150);
        assert_eq!(here.pending(), 0);
        assert!(here.stats().flushes >= 1);
        assert_eq!(there.flush().await.expect("flush"), 150);
        assert_eq!(there.total(), 150);
        assert_eq!(here.close().await.expect("close"), 150);
    }
}
