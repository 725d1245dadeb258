//! [`Quota`]: how many permits, over what period, by which algorithm —
//! checked when it is built, so that a limiter never holds one it cannot
//! honour.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::error::{Error, ErrorKind, Result};

/// The largest integer every copy of the algorithms (Rust, Lua's doubles,
/// SQL) holds exactly: the quotas' products stay below it.
pub(crate) const EXACT: u64 = 1 << 53;

/// The furthest GCRA looks ahead (2^51 µs, 71 years): now plus twice it
/// stays below [`EXACT`] for the next decades.
const GCRA_HORIZON: u64 = 1 << 51;

/// The longest period a quota may have.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// How a limiter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// The generic cell rate algorithm (redis-cell's, governor's): a burst
    /// of at most `burst` permits, then one per `period / count`, spread
    /// evenly. One number of state (the theoretical arrival time).
    Gcra,
    /// A bucket of `burst` tokens refilled continuously at `count` per
    /// `period` (exactly: no rounding of the rate, no whole-second
    /// steps). It admits what GCRA admits, to the microsecond; its state
    /// (the level and when it was measured) is what people expect to read.
    TokenBucket,
    /// At most `count` permits in any window of `period`, estimated from
    /// the current and the previous fixed window (Cloudflare's sliding
    /// window counter): the previous window's count weighs by how much of
    /// it the sliding window still covers.
    SlidingWindow,
    /// At most `count` permits per window of `period`, the windows aligned
    /// to the Unix epoch (so every instance shares their boundaries); up
    /// to twice `count` can pass around a boundary.
    FixedWindow,
}

impl Algorithm {
    /// The name used in operation names and on the wire (`gcra`,
    /// `token_bucket`, `sliding_window`, `fixed_window`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];

    /// The algorithm called `name` (as [`Algorithm::name`] spells it).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rate limit: `count` permits per `period`, with a `burst` (the
/// bucket's capacity, for [`Gcra`](Algorithm::Gcra) and
/// [`TokenBucket`](Algorithm::TokenBucket)), decided by an [`Algorithm`].
///
/// ```
/// use std::time::Duration;
/// use statecraft::limiter::{Algorithm, Quota};
///
/// let quota = Quota::per_second(100).burst(20).build()?;
/// assert_eq!((quota.count(), quota.burst(), quota.algorithm()), (100, 20, Algorithm::Gcra));
/// assert_eq!(quota.interval(), Duration::from_millis(10));
///
/// let windowed = Quota::per_minute(600).algorithm(Algorithm::SlidingWindow).build()?;
/// assert_eq!(windowed.burst(), 600);
/// assert!(Quota::per_second(0).build().is_err());
/// # Ok::<(), statecraft::Error>(())
/// ```
///
/// Time is counted in whole microseconds, and every product of a
/// quota's figures that a limiter computes stays below 2^53 (so that the
/// Lua and SQL copies of the algorithms compute exactly what the Rust one
/// does); [`build`](QuotaBuilder::build) refuses a quota that breaks a
/// rule, with an error that names it. Deserializing checks the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "QuotaSpec", into = "QuotaSpec")]
pub struct Quota {
    algorithm: Algorithm,
    count: u64,
    period_us: u64,
    burst: u64,
    /// `ceil(period / count)`: GCRA's emission interval.
    interval_us: u64,
}

/// A quota's figures as written in a file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct QuotaSpec {
    algorithm: Algorithm,
    count: u64,
    period_us: u64,
    #[serde(default)]
    burst: Option<u64>,
}

impl TryFrom<QuotaSpec> for Quota {
    type Error = Error;

    fn try_from(spec: QuotaSpec) -> Result<Quota> {
        QuotaBuilder {
            algorithm: spec.algorithm,
            count: spec.count,
            period: Duration::from_micros(spec.period_us),
            burst: spec.burst,
        }
        .build()
    }
}

impl From<Quota> for QuotaSpec {
    fn from(quota: Quota) -> QuotaSpec {
        QuotaSpec {
            algorithm: quota.algorithm,
            count: quota.count,
            period_us: quota.period_us,
            burst: Some(quota.burst),
        }
    }
}

impl Quota {
    /// `count` permits per second.
    pub fn per_second(count: u64) -> QuotaBuilder {
        Self::with_period(count, Duration::from_secs(1))
    }

    /// `count` permits per minute.
    pub fn per_minute(count: u64) -> QuotaBuilder {
        Self::with_period(count, Duration::from_secs(60))
    }

    /// `count` permits per hour.
    pub fn per_hour(count: u64) -> QuotaBuilder {
        Self::with_period(count, Duration::from_secs(3600))
    }

    /// `count` permits per `period`.
    pub fn with_period(count: u64, period: Duration) -> QuotaBuilder {
        QuotaBuilder {
            algorithm: Algorithm::Gcra,
            count,
            period,
            burst: None,
        }
    }

    /// The algorithm that decides.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Permits per [`period`](Self::period).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period (for the windowed algorithms, the window).
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The most permits that can pass at once: the bucket's capacity, or
    /// for the windowed algorithms the window's count.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The time one permit takes to come back, rounded up to a
    /// microsecond (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        Duration::from_micros(self.interval_us)
    }

    /// Where [`to_words`](Self::to_words) puts the interval.
    pub(crate) const INTERVAL_WORD: usize = 4;
    /// Where [`to_words`](Self::to_words) puts the burst.
    pub(crate) const BURST_WORD: usize = 3;

    /// The quota as five words, for a lock-free cell.
    pub(crate) fn to_words(self) -> [u64; 5] {
        let algorithm = Algorithm::ALL
            .iter()
            .position(|a| *a == self.algorithm)
            .unwrap_or(0) as u64;
        [
            algorithm,
            self.count,
            self.period_us,
            self.burst,
            self.interval_us,
        ]
    }

    /// The quota [`to_words`](Self::to_words) wrote (only ever given its
    /// words: nothing is checked again).
    #[inline]
    pub(crate) fn from_words(words: [u64; 5]) -> Quota {
        let [algorithm, count, period_us, burst, interval_us] = words;
        Quota {
            algorithm: Algorithm::ALL[(algorithm as usize) % Algorithm::ALL.len()],
            count,
            period_us,
            burst,
            interval_us,
        }
    }

    pub(crate) fn period_us(&self) -> u64 {
        self.period_us
    }

    pub(crate) fn interval_us(&self) -> u64 {
        self.interval_us
    }

    /// The same quota decided by `algorithm`, checked again (a window's
    /// count is its burst).
    pub fn with_algorithm(&self, algorithm: Algorithm) -> Result<Quota> {
        let windowed = matches!(algorithm, Algorithm::SlidingWindow | Algorithm::FixedWindow);
        QuotaBuilder {
            algorithm,
            count: self.count,
            period: self.period(),
            burst: (!windowed).then_some(self.burst),
        }
        .build()
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {:?} ({}, burst {})",
            self.count,
            self.period(),
            self.algorithm,
            self.burst
        )
    }
}

/// Builds a [`Quota`]; see [`Quota::per_second`] and its siblings.
#[derive(Debug, Clone, Copy)]
#[must_use = "a quota builder does nothing until it is built"]
pub struct QuotaBuilder {
    algorithm: Algorithm,
    count: u64,
    period: Duration,
    burst: Option<u64>,
}

impl QuotaBuilder {
    /// The algorithm ([`Gcra`](Algorithm::Gcra) unless told).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The bucket's capacity: how many permits can pass at once (by
    /// default `count`). Only [`Gcra`](Algorithm::Gcra) and
    /// [`TokenBucket`](Algorithm::TokenBucket) have one; a window's burst
    /// is its count.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The quota, or an [`InvalidArgument`](crate::ErrorKind::InvalidArgument)
    /// error naming the rule it breaks.
    pub fn build(self) -> Result<Quota> {
        let invalid = |why: String| {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("quota: {why}"),
            ))
        };
        let QuotaBuilder {
            algorithm,
            count,
            period,
            burst,
        } = self;
        if count == 0 {
            return invalid("a count of zero admits nothing; use at least 1".into());
        }
        if period.is_zero() || period.subsec_nanos() % 1_000 != 0 {
            return invalid(format!(
                "the period ({period:?}) must be a positive whole number of microseconds"
            ));
        }
        if period > MAX_PERIOD {
            return invalid(format!("the period ({period:?}) is over a year"));
        }
        let period_us = period.as_micros() as u64;
        let windowed = matches!(algorithm, Algorithm::SlidingWindow | Algorithm::FixedWindow);
        let burst = match burst {
            Some(burst) if windowed && burst != count => {
                return invalid(format!(
                    "{algorithm} has no burst of its own: its window admits its count ({count})"
                ))
            }
            Some(0) => return invalid("a burst of zero admits nothing; use at least 1".into()),
            Some(burst) => burst,
            None => count,
        };
        let interval_us = period_us.div_ceil(count);
        let product = |a: u64, b: u64| a.checked_mul(b).filter(|p| *p < EXACT);
        match algorithm {
            Algorithm::Gcra => {
                if count > period_us {
                    return invalid(format!(
                        "GCRA spaces permits by whole microseconds: {count} per {period:?} is \
                         more than one per microsecond (use the token bucket)"
                    ));
                }
                if burst
                    .checked_mul(interval_us)
                    .filter(|h| *h <= GCRA_HORIZON)
                    .is_none()
                {
                    return invalid(format!(
                        "burst × interval ({burst} × {interval_us} µs) is over 2^51 µs"
                    ));
                }
            }
            Algorithm::TokenBucket => {
                let capacity = product(burst, period_us);
                if capacity
                    .and_then(|c| c.checked_add(count))
                    .filter(|c| *c < EXACT)
                    .is_none()
                {
                    return invalid(format!(
                        "burst × period + count ({burst} × {period_us} µs + {count}) is 2^53 or more"
                    ));
                }
            }
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {
                if count > u64::from(u32::MAX) {
                    return invalid(format!("a window's count ({count}) is over 2^32 - 1"));
                }
                if product(count, period_us.saturating_mul(2)).is_none() {
                    return invalid(format!(
                        "2 × count × window ({count} × {period_us} µs) is 2^53 or more"
                    ));
                }
            }
        }
        Ok(Quota {
            algorithm,
            count,
            period_us,
            burst,
            interval_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(builder: QuotaBuilder, needle: &str) {
        let err = builder.build().expect_err("an invalid quota");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn quotas_that_cannot_be_honoured_are_refused_with_the_rule() {
        refused(Quota::per_second(0), "count of zero");
        refused(Quota::per_second(5).burst(0), "burst of zero");
        refused(Quota::with_period(5, Duration::ZERO), "positive whole");
        refused(
            Quota::with_period(5, Duration::from_nanos(1_500)),
            "whole number",
        );
        refused(
            Quota::with_period(5, Duration::from_secs(400 * 86_400)),
            "over a year",
        );
        refused(
            Quota::per_second(2_000_000),
            "more than one per microsecond",
        );
        refused(Quota::per_second(1).burst(1 << 40), "burst × interval");
        refused(
            Quota::per_second(10)
                .burst(1 << 40)
                .algorithm(Algorithm::TokenBucket),
            "burst × period",
        );
        refused(
            Quota::per_second(10)
                .burst(3)
                .algorithm(Algorithm::FixedWindow),
            "no burst of its own",
        );
        refused(
            Quota::per_second(1 << 33).algorithm(Algorithm::SlidingWindow),
            "over 2^32",
        );
        refused(
            Quota::per_hour(u64::from(u32::MAX)).algorithm(Algorithm::FixedWindow),
            "2 × count × window",
        );
    }

    #[test]
    fn a_quota_keeps_its_figures_and_rounds_the_interval_up() {
        let quota = Quota::per_second(3).build().expect("valid");
        assert_eq!(quota.interval_us(), 333_334);
        assert_eq!((quota.count(), quota.burst()), (3, 3));
        let bucket = Quota::per_second(2_000_000)
            .algorithm(Algorithm::TokenBucket)
            .burst(500)
            .build()
            .expect("the token bucket takes more than one per µs");
        assert_eq!(bucket.burst(), 500);
        let windowed = bucket
            .with_algorithm(Algorithm::FixedWindow)
            .expect("valid");
        assert_eq!(windowed.burst(), 2_000_000);
        assert!(bucket.with_algorithm(Algorithm::Gcra).is_err());
        for algorithm in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(algorithm.name()), Some(algorithm));
        }
        let words = quota.to_words();
        assert_eq!(words[Quota::INTERVAL_WORD], quota.interval_us());
        assert_eq!(words[Quota::BURST_WORD], quota.burst());
        assert_eq!(Quota::from_words(words), quota);
    }

    #[test]
    fn a_quota_read_from_a_file_is_checked() {
        let quota = Quota::per_minute(60).burst(5).build().expect("valid");
        let text = serde_json::to_string(&quota).expect("serializes");
        let back: Quota = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, quota);
        let zero = r#"{"algorithm":"gcra","count":0,"period_us":1000000}"#;
        let err = serde_json::from_str::<Quota>(zero).expect_err("a zero count");
        assert!(err.to_string().contains("count of zero"), "{err}");
    }
}
