//! Injectable time, so TTL tests advance a clock instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
///
/// Expiry times are absolute wall-clock milliseconds so that they survive a
/// restart (sled) and mean the same thing in every process.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;

    /// Microseconds since the Unix epoch (what a rate limiter decides on);
    /// by default the milliseconds, times a thousand.
    fn now_micros(&self) -> u64 {
        self.now_millis().saturating_mul(1_000)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_millis(&self) -> u64 {
        (**self).now_millis()
    }

    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}

/// A cheap monotonic clock: the wall clock read once, when it is created,
/// advanced by the CPU's timestamp counter (through `quanta`, which falls
/// back to the OS's monotonic clock where the counter is unreliable). It
/// costs a few nanoseconds per read, does not follow later changes to the
/// wall clock, and never goes backwards: what a cache's expiry checks need.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    /// The counter's raw reading at the start (scaled per read by a
    /// multiply and a shift, not by building a `Duration`).
    start_raw: u64,
    start_micros: u64,
}

impl MonotonicClock {
    /// A clock reading the wall clock's time now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        MonotonicClock {
            start_raw: clock.raw(),
            start_micros: SystemClock.now_micros(),
            clock,
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_millis(&self) -> u64 {
        self.now_micros() / 1_000
    }

    #[inline]
    fn now_micros(&self) -> u64 {
        let elapsed = self.clock.delta_as_nanos(self.start_raw, self.clock.raw());
        self.start_micros.saturating_add(elapsed / 1_000)
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_millis(&self) -> u64 {
        self.now_micros() / 1_000
    }

    #[inline]
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to; clones share the same time,
/// kept in microseconds.
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start_millis` since the Unix epoch.
    pub fn new(start_millis: u64) -> Self {
        ManualClock {
            micros: Arc::new(AtomicU64::new(start_millis.saturating_mul(1_000))),
        }
    }

    /// A clock that starts at the system's current time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_millis())
    }

    /// Moves the clock forward by `by` (rounded down to microseconds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.now_micros() / 1_000
    }

    fn now_micros(&self) -> u64 {
        self.micros.load(Ordering::SeqCst)
    }
}

/// The absolute expiry for a TTL starting at `now`; sub-millisecond TTLs
/// round up so that a TTL is never "already expired" when written.
pub(crate) fn expiry_after(now: u64, ttl: Duration) -> u64 {
    let millis = ttl.as_nanos().div_ceil(1_000_000).max(1);
    now.saturating_add(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_advances_for_every_clone() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        clock.advance(Duration::from_millis(250));
        assert_eq!(other.now_millis(), 1_250);
        clock.advance(Duration::from_micros(1_500));
        assert_eq!((other.now_millis(), other.now_micros()), (1_251, 1_251_500));
        assert_eq!(expiry_after(10, Duration::from_micros(1)), 11);
        assert_eq!(expiry_after(10, Duration::from_millis(5)), 15);
        assert_eq!(
            expiry_after(u64::MAX - 1, Duration::from_secs(10)),
            u64::MAX
        );
    }
}
