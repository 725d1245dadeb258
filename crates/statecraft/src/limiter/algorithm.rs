//! The four algorithms, each a pure function of (quota, stored state,
//! cost, now) → (state to write, decision): what every limiter runs, and
//! what the Lua and SQL copies are checked against.
//!
//! Time is microseconds of whichever clock decides (the process's for a
//! local limiter, the store's for a shared one). Every product stays
//! below 2^53 ([`Quota`]'s rules), so the copies that compute in doubles
//! decide exactly the same.

use std::time::Duration;

use super::quota::{Algorithm, Quota};

/// What a limiter keeps between decisions, one shape per algorithm. No
/// state (`None`) is a limit nobody has used lately: a full bucket, empty
/// windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitState {
    /// GCRA's theoretical arrival time: when the bucket would be empty
    /// again at the quota's rate.
    Gcra {
        /// The theoretical arrival time, in µs.
        tat_us: u64,
    },
    /// The bucket's level when it was last measured, in units of a
    /// token × the period in µs (so that a continuous refill is exact).
    TokenBucket {
        /// Tokens × period (µs).
        level: u64,
        /// When it was measured (µs).
        at_us: u64,
    },
    /// The counts of the current window and of the one before it.
    SlidingWindow {
        /// The current window's start (µs, a multiple of the period).
        start_us: u64,
        /// The count of the window before it.
        previous: u64,
        /// The current window's count.
        current: u64,
    },
    /// The current window's count.
    FixedWindow {
        /// The window's start (µs, a multiple of the period).
        start_us: u64,
        /// Permits taken in it.
        used: u64,
    },
}

/// Whether a request passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// It passes; its cost is taken.
    Allowed,
    /// Not now: it would pass after [`Decision::retry_after_us`]. Nothing
    /// is taken.
    Denied,
    /// Never: its cost is above the limit's burst, so no wait lets it
    /// through. Nothing is taken.
    TooLarge,
}

/// A decision with the figures redis-cell and the IETF RateLimit headers
/// report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Whether it passes.
    pub verdict: Verdict,
    /// The most permits that can pass at once ([`Quota::burst`]).
    pub limit: u64,
    /// Permits that would pass right after this decision.
    pub remaining: u64,
    /// For a denial, how long until the same request would pass (µs); 0
    /// otherwise.
    pub retry_after_us: u64,
    /// How long until the limit is whole again, as if nobody had used it
    /// (µs).
    pub reset_after_us: u64,
}

impl Decision {
    /// Whether the request passed.
    #[inline]
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    /// For a denial, how long until the same request would pass.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.verdict == Verdict::Denied).then(|| Duration::from_micros(self.retry_after_us))
    }

    /// How long until the limit is whole again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_micros(self.reset_after_us)
    }
}

/// What [`decide`] returns: the decision, and the state to store (only
/// when the request passes and costs something).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decided {
    /// The decision.
    pub decision: Decision,
    /// The state to write, or `None` to leave the stored state as it is.
    pub write: Option<LimitState>,
    /// How long the written state matters (µs): past it, having no state
    /// decides the same, so a store may expire it then.
    pub ttl_us: u64,
}

/// Decides a request of `cost` permits against `quota`, from the stored
/// `state` (ignored if it belongs to another algorithm or period) at
/// `now_us`.
///
/// A cost of 0 only asks: it passes, takes nothing and reports what is
/// left. A cost above the quota's burst is [`Verdict::TooLarge`].
///
/// ```
/// use statecraft::limiter::{decide, Quota, Verdict};
///
/// let quota = Quota::per_second(10).burst(2).build()?;
/// let first = decide(&quota, None, 1, 0);
/// assert_eq!((first.decision.verdict, first.decision.remaining), (Verdict::Allowed, 1));
/// let second = decide(&quota, first.write, 1, 0);
/// let third = decide(&quota, second.write, 1, 0);
/// assert_eq!(third.decision.verdict, Verdict::Denied);
/// assert_eq!(third.decision.retry_after_us, 100_000);
/// assert_eq!(decide(&quota, None, 3, 0).decision.verdict, Verdict::TooLarge);
/// # Ok::<(), statecraft::Error>(())
/// ```
#[inline]
pub fn decide(quota: &Quota, state: Option<LimitState>, cost: u64, now_us: u64) -> Decided {
    match quota.algorithm() {
        Algorithm::Gcra => gcra(quota, state, cost, now_us),
        Algorithm::TokenBucket => token_bucket(quota, state, cost, now_us),
        Algorithm::SlidingWindow => sliding_window(quota, state, cost, now_us),
        Algorithm::FixedWindow => fixed_window(quota, state, cost, now_us),
    }
}

#[inline]
fn too_large(limit: u64, remaining: u64, reset_after_us: u64) -> Decided {
    Decided {
        decision: Decision {
            verdict: Verdict::TooLarge,
            limit,
            remaining,
            retry_after_us: 0,
            reset_after_us,
        },
        write: None,
        ttl_us: 0,
    }
}

#[inline]
fn denied(limit: u64, remaining: u64, retry_after_us: u64, reset_after_us: u64) -> Decided {
    Decided {
        decision: Decision {
            verdict: Verdict::Denied,
            limit,
            remaining,
            retry_after_us,
            reset_after_us,
        },
        write: None,
        ttl_us: 0,
    }
}

#[inline]
fn allowed(
    cost: u64,
    limit: u64,
    remaining: u64,
    reset_after_us: u64,
    write: LimitState,
    ttl_us: u64,
) -> Decided {
    Decided {
        decision: Decision {
            verdict: Verdict::Allowed,
            limit,
            remaining,
            retry_after_us: 0,
            reset_after_us,
        },
        write: (cost > 0).then_some(write),
        ttl_us: ttl_us.max(1),
    }
}

/// GCRA: a request of `cost` passes when the theoretical arrival time it
/// leads to is at most `burst × interval` ahead of now.
#[inline]
pub(super) fn gcra(quota: &Quota, state: Option<LimitState>, cost: u64, now: u64) -> Decided {
    gcra_of(quota.interval_us(), quota.burst(), state, cost, now)
}

/// [`gcra`] given only the two figures of the quota it reads.
#[inline(always)]
pub(super) fn gcra_of(
    interval: u64,
    burst: u64,
    state: Option<LimitState>,
    cost: u64,
    now: u64,
) -> Decided {
    // (Never 0: a quota's rules. Said here, a division the caller does not
    // read is left out of the compiled check.)
    let interval = interval.max(1);
    let horizon = burst * interval;
    // The furthest the arrival time may be (saturating only for a time
    // near the end of u64, which no clock reads).
    let end = now.saturating_add(horizon);
    let tat = match state {
        // A valid state is never more than the horizon ahead; one that is
        // (a store's clock stepped back) counts as a full horizon.
        Some(LimitState::Gcra { tat_us }) => tat_us.clamp(now, end),
        _ => now,
    };
    // Headroom left before this request: at most `horizon`.
    let free = end - tat;
    if cost > burst {
        return too_large(burst, free / interval, tat - now);
    }
    let new_tat = tat.saturating_add(cost * interval);
    if new_tat > end {
        return denied(burst, free / interval, new_tat - end, tat - now);
    }
    allowed(
        cost,
        burst,
        (end - new_tat) / interval,
        new_tat - now,
        LimitState::Gcra { tat_us: new_tat },
        new_tat - now,
    )
}

/// The token bucket: the level refills by `count` units a microsecond (a
/// token is `period` units), up to `burst` tokens; a request takes `cost`
/// tokens if they are there.
#[inline]
fn token_bucket(quota: &Quota, state: Option<LimitState>, cost: u64, now: u64) -> Decided {
    let period = quota.period_us().max(1);
    let rate = quota.count().max(1);
    let burst = quota.burst();
    let capacity = burst * period;
    let level = refilled(quota, state, now);
    let until_full = |level: u64| (capacity - level).div_ceil(rate);
    if cost > burst {
        return too_large(burst, level / period, until_full(level));
    }
    let need = cost * period;
    if need > level {
        return denied(
            burst,
            level / period,
            (need - level).div_ceil(rate),
            until_full(level),
        );
    }
    let left = level - need;
    allowed(
        cost,
        burst,
        left / period,
        until_full(left),
        LimitState::TokenBucket {
            level: left,
            at_us: now,
        },
        until_full(left),
    )
}

/// The sliding window counter: `previous × (W − elapsed) / W + current`
/// estimates the count of the last window of `W`, compared in whole
/// numbers (× W) so that nothing rounds.
#[inline]
fn sliding_window(quota: &Quota, state: Option<LimitState>, cost: u64, now: u64) -> Decided {
    let window = quota.period_us().max(1);
    let limit = quota.count();
    let start = now - now % window;
    let (previous, current) = match state {
        Some(LimitState::SlidingWindow {
            start_us,
            previous,
            current,
            // A window ahead of this one (the clock that decides stepped
            // back) counts as this one: its permits are not forgotten.
        }) if start_us >= start => (previous.min(limit), current.min(limit)),
        Some(LimitState::SlidingWindow {
            start_us, current, ..
        }) if start.checked_sub(window) == Some(start_us) => (current.min(limit), 0),
        _ => (0, 0),
    };
    let elapsed = now - start;
    let weight = window - elapsed;
    let budget = limit * window;
    let used = previous * weight + current * window;
    let remaining = budget.saturating_sub(used) / window;
    let reset_after = if current > 0 {
        weight + window
    } else if previous > 0 {
        weight
    } else {
        0
    };
    if cost > limit {
        return too_large(limit, remaining, reset_after);
    }
    // (A limit lowered since can leave more used than the budget: a
    // request of 0 still only asks.)
    if cost > 0 && used + cost * window > budget {
        let retry_after = if current + cost <= limit {
            // Within this window, once the previous one weighs little
            // enough: previous × (W − e) ≤ (limit − current − cost) × W.
            let room = (limit - current - cost) * window / previous;
            window - room - elapsed
        } else {
            // In the next window, where this one is the previous:
            // current × (W − e) ≤ (limit − cost) × W.
            let room = (limit - cost) * window / current;
            weight + window - room
        };
        return denied(limit, remaining, retry_after, reset_after);
    }
    let current = current + cost;
    allowed(
        cost,
        limit,
        budget.saturating_sub(used + cost * window) / window,
        if current > 0 {
            weight + window
        } else {
            reset_after
        },
        LimitState::SlidingWindow {
            start_us: start,
            previous,
            current,
        },
        weight + window,
    )
}

/// The fixed window: at most `count` permits per window of `period`,
/// the windows aligned to the epoch.
#[inline]
fn fixed_window(quota: &Quota, state: Option<LimitState>, cost: u64, now: u64) -> Decided {
    let window = quota.period_us().max(1);
    let limit = quota.count();
    let start = now - now % window;
    let used = match state {
        // A window ahead of this one counts as this one, as above.
        Some(LimitState::FixedWindow { start_us, used }) if start_us >= start => used.min(limit),
        _ => 0,
    };
    let ends = start + window - now;
    let reset_after = if used > 0 { ends } else { 0 };
    if cost > limit {
        return too_large(limit, limit - used, reset_after);
    }
    if used + cost > limit {
        return denied(limit, limit - used, ends, reset_after);
    }
    allowed(
        cost,
        limit,
        limit - used - cost,
        if used + cost > 0 { ends } else { 0 },
        LimitState::FixedWindow {
            start_us: start,
            used: used + cost,
        },
        ends,
    )
}

/// Gives back `permits` taken earlier and not used (a lease's rest),
/// at `now_us`: the state as if they had never been taken (never more
/// than a whole limit), and what a request of 0 would report after it.
/// Permits taken in an earlier window than the last two (or already
/// refilled) are gone: nothing changes for them.
///
/// ```
/// use statecraft::limiter::{decide, refund, Quota};
///
/// let quota = Quota::per_second(10).burst(5).build()?;
/// let taken = decide(&quota, None, 5, 0);
/// assert_eq!(taken.decision.remaining, 0);
/// let back = refund(&quota, taken.write, 3, 0);
/// assert_eq!(back.decision.remaining, 3);
/// # Ok::<(), statecraft::Error>(())
/// ```
pub fn refund(quota: &Quota, state: Option<LimitState>, permits: u64, now_us: u64) -> Decided {
    let now = now_us;
    let given = match (quota.algorithm(), state) {
        (Algorithm::Gcra, Some(LimitState::Gcra { tat_us })) => {
            let horizon = quota.burst() * quota.interval_us();
            let tat = tat_us.clamp(now, now.saturating_add(horizon));
            let back = permits.min(quota.burst()) * quota.interval_us();
            Some(LimitState::Gcra {
                tat_us: tat.saturating_sub(back).max(now),
            })
        }
        (Algorithm::TokenBucket, Some(LimitState::TokenBucket { .. })) => {
            let capacity = quota.burst() * quota.period_us();
            let back = permits.min(quota.burst()) * quota.period_us();
            Some(LimitState::TokenBucket {
                level: (refilled(quota, state, now) + back).min(capacity),
                at_us: now,
            })
        }
        (
            Algorithm::SlidingWindow,
            Some(LimitState::SlidingWindow {
                start_us,
                previous,
                current,
            }),
        ) => {
            let window = quota.period_us();
            let start = now - now % window;
            let limit = quota.count();
            let counts = if start_us == start {
                Some((previous.min(limit), current.min(limit)))
            } else if start.checked_sub(window) == Some(start_us) {
                Some((current.min(limit), 0))
            } else {
                None
            };
            // The previous window's first: it weighs less, so a refund of
            // permits taken in this window is under-credited, never over.
            counts.map(|(previous, current)| {
                let from_previous = permits.min(previous);
                let from_current = (permits - from_previous).min(current);
                LimitState::SlidingWindow {
                    start_us: start,
                    previous: previous - from_previous,
                    current: current - from_current,
                }
            })
        }
        (Algorithm::FixedWindow, Some(LimitState::FixedWindow { start_us, used })) => {
            let window = quota.period_us();
            let start = now - now % window;
            (start_us == start).then(|| LimitState::FixedWindow {
                start_us: start,
                used: used.min(quota.count()) - permits.min(used.min(quota.count())),
            })
        }
        _ => None,
    };
    let peek = decide(quota, given.or(state), 0, now);
    Decided {
        decision: peek.decision,
        write: given.filter(|_| permits > 0),
        ttl_us: state_ttl(quota, given, now).max(1),
    }
}

/// A token bucket's level at `now` (full without a state).
#[inline]
fn refilled(quota: &Quota, state: Option<LimitState>, now: u64) -> u64 {
    let capacity = quota.burst() * quota.period_us();
    match state {
        Some(LimitState::TokenBucket { level, at_us }) => {
            let level = level.min(capacity);
            let elapsed = now.saturating_sub(at_us);
            if elapsed >= (capacity - level).div_ceil(quota.count()) {
                capacity
            } else {
                level + elapsed * quota.count()
            }
        }
        _ => capacity,
    }
}

/// How long `state` matters after `now` (µs; 0: it decides as none).
fn state_ttl(quota: &Quota, state: Option<LimitState>, now: u64) -> u64 {
    decide(quota, state, 0, now).decision.reset_after_us
}

/// Whether `state` decides as no state at all at `now` (the limit is
/// whole again), so that a store of many limits may drop it.
pub fn is_idle(quota: &Quota, state: Option<LimitState>, now_us: u64) -> bool {
    state.is_none()
        || decide(quota, state, 0, now_us).decision == decide(quota, None, 0, now_us).decision
}
