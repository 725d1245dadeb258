//! [`LocalLimiter`]: one limit in this process, decided by one
//! compare-and-swap, at an injectable clock.

use std::fmt;
use std::time::Duration;

use super::algorithm::{Decision, Verdict};
use super::cell::{QuotaCell, StateCell};
use super::quota::Quota;
use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::{Error, ErrorKind, Result};

/// A rate limit in this process: one atomic compare-and-swap per
/// decision (GCRA on a 64-bit word, the other algorithms on a 128-bit
/// one), no lock and no allocation (a [`set_quota`](Self::set_quota)
/// holds decisions back for the few instructions it takes). A clock that
/// only tells milliseconds (one implementing just
/// [`Clock::now_millis`]) makes its GCRA release permits by the
/// millisecond.
///
/// ```
/// use statecraft::limiter::{LocalLimiter, Quota};
/// use statecraft::ManualClock;
///
/// let clock = ManualClock::new(0);
/// let limiter = LocalLimiter::with_clock(Quota::per_second(2).build()?, clock.clone());
/// assert!(limiter.check().is_allowed());
/// assert!(limiter.check().is_allowed());
/// let denied = limiter.check();
/// assert_eq!(denied.retry_after(), Some(std::time::Duration::from_millis(500)));
/// clock.advance(std::time::Duration::from_millis(500));
/// assert!(limiter.check().is_allowed());
/// # Ok::<(), statecraft::Error>(())
/// ```
pub struct LocalLimiter<C: Clock = MonotonicClock> {
    quota: QuotaCell,
    cell: StateCell,
    clock: C,
}

impl<C: Clock> fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("quota", &self.quota.load())
            .field("state", &self.cell.state(self.quota.load().algorithm()))
            .finish()
    }
}

impl LocalLimiter {
    /// A limiter of `quota` at the process's monotonic clock.
    pub fn new(quota: Quota) -> LocalLimiter {
        Self::with_clock(quota, MonotonicClock::new())
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// A limiter of `quota` reading `clock` (a
    /// [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(quota: Quota, clock: C) -> LocalLimiter<C> {
        LocalLimiter {
            cell: StateCell::new(quota.algorithm()),
            quota: QuotaCell::new(quota),
            clock,
        }
    }

    /// Decides one permit.
    #[inline]
    pub fn check(&self) -> Decision {
        self.check_n(1)
    }

    /// Decides `cost` permits at once: all or none (0 only asks).
    #[inline]
    pub fn check_n(&self, cost: u64) -> Decision {
        self.cell
            .decide_by(&self.quota, cost, self.clock.now_micros())
    }

    /// Waits until `cost` permits pass, for at most `max_wait` (of tokio's
    /// time): the allowing decision, or the denial that would have had to
    /// wait past `max_wait` (returned at once, without waiting in vain),
    /// or at once a [`TooLarge`](Verdict::TooLarge) one.
    pub async fn until_ready(&self, cost: u64, max_wait: Duration) -> Decision {
        until_ready(|| self.check_n(cost), max_wait).await
    }

    /// The quota it decides by.
    pub fn quota(&self) -> Quota {
        self.quota.load()
    }

    /// Replaces the quota: the next decision uses it, on the state there
    /// is (a changed period starts the windows and the token bucket
    /// afresh: their state is counted in periods). The algorithm cannot
    /// change (its state would mean nothing to another one).
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let old = self.quota.load();
        same_algorithm(&old, &quota)?;
        self.quota.store(quota);
        if starts_afresh(&old, &quota) {
            self.cell.clear();
        }
        Ok(())
    }

    /// Forgets what was taken: the limit is whole again.
    pub fn reset(&self) {
        self.cell.clear();
    }
}

/// The error for a quota change to another algorithm.
pub(super) fn same_algorithm(old: &Quota, new: &Quota) -> Result<()> {
    if old.algorithm() == new.algorithm() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "a limiter of {} cannot change to {}: build another limiter",
            old.algorithm(),
            new.algorithm()
        ),
    ))
}

/// Whether a change from `old` to `new` leaves the state meaningless: a
/// token bucket's level is counted in units of its period.
pub(super) fn starts_afresh(old: &Quota, new: &Quota) -> bool {
    old.algorithm() == super::quota::Algorithm::TokenBucket && old.period_us() != new.period_us()
}

/// `until_ready` for any check: sleeps each denial's retry-after while the
/// total stays within `max_wait`.
pub(super) async fn until_ready(
    mut check: impl FnMut() -> Decision,
    max_wait: Duration,
) -> Decision {
    let started = tokio::time::Instant::now();
    loop {
        let decision = check();
        let Some(wait) = decision.retry_after() else {
            return decision;
        };
        debug_assert_eq!(decision.verdict, Verdict::Denied);
        if started.elapsed() + wait > max_wait {
            return decision;
        }
        tokio::time::sleep(wait).await;
    }
}
