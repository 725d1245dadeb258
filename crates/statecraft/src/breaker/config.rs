//! [`BreakerConfig`]: when a breaker opens, how long it stays open, and how
//! it probes its way back — validated when it is built, so that a breaker
//! never runs on a configuration that cannot mean anything.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::error::{Error, ErrorKind, Result};

/// A fraction `num / den` with `0 < num ≤ den` (also when read from a
/// file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RatioSpec")]
pub struct Ratio {
    num: u32,
    den: u32,
}

/// A ratio as written in a file.
#[derive(Deserialize)]
struct RatioSpec {
    num: u32,
    den: u32,
}

impl TryFrom<RatioSpec> for Ratio {
    type Error = Error;

    fn try_from(spec: RatioSpec) -> Result<Ratio> {
        Ratio::new(spec.num, spec.den)
    }
}

impl Ratio {
    /// `num / den`; fails unless `0 < num ≤ den`.
    pub fn new(num: u32, den: u32) -> Result<Ratio> {
        if num == 0 || num > den {
            return Err(invalid(format!(
                "a ratio needs 0 < numerator ≤ denominator, not {num}/{den}"
            )));
        }
        Ok(Ratio { num, den })
    }

    /// The numerator.
    pub fn num(self) -> u32 {
        self.num
    }

    /// The denominator.
    pub fn den(self) -> u32 {
        self.den
    }

    /// Whether `part / whole` is at least this ratio (exact integer
    /// arithmetic; `whole == 0` never reaches it).
    pub fn reached(self, part: u64, whole: u64) -> bool {
        whole > 0
            && u128::from(part) * u128::from(self.den) >= u128::from(self.num) * u128::from(whole)
    }
}

/// The calls a breaker's rates and counts look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// The last `n` calls (1 ≤ n ≤ 10,000).
    Count(u32),
    /// The calls of the last `size`, kept in `buckets` buckets of
    /// `size / buckets` each (1 ≤ buckets ≤ 600; each bucket at least 1 ms).
    Time {
        /// How far back the window reaches.
        size: Duration,
        /// How many buckets it is kept in (its resolution).
        buckets: u32,
    },
}

/// What closes a half-open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseAfter {
    /// This many probe successes (any probe failure reopens).
    Successes(u32),
    /// This fraction of the probes succeeding (the breaker reopens as soon
    /// as the fraction can no longer be reached).
    Fraction(Ratio),
}

/// A validated breaker configuration; see [`BreakerConfig::builder`].
/// One read from a file (serde) is checked by the same rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Unchecked")]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) min_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) failures_in_window: Option<u32>,
    pub(crate) failure_rate: Option<Ratio>,
    pub(crate) slow_rate: Option<Ratio>,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) open_for: Duration,
    pub(crate) backoff_multiplier: u32,
    pub(crate) max_open_for: Duration,
    pub(crate) jitter_permille: u32,
    pub(crate) probes: u32,
    pub(crate) close_after: CloseAfter,
    pub(crate) half_open_max_wait: Duration,
}

impl BreakerConfig {
    /// Starts a configuration: add at least one rule to open on
    /// ([`consecutive_failures`](BreakerConfigBuilder::consecutive_failures),
    /// [`failures_within`](BreakerConfigBuilder::failures_within),
    /// [`failure_limit`](BreakerConfigBuilder::failure_limit),
    /// [`failure_rate`](BreakerConfigBuilder::failure_rate),
    /// [`slow_calls`](BreakerConfigBuilder::slow_calls)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use statecraft::breaker::BreakerConfig;
    ///
    /// let config = BreakerConfig::builder()
    ///     .failure_limit(3, 10) // 3 failures among the last 10 calls
    ///     .open_for(Duration::from_secs(30))
    ///     .build()?;
    /// assert!(BreakerConfig::builder().build().is_err()); // no rule to open on
    /// # Ok::<(), statecraft::Error>(())
    /// ```
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder::default()
    }

    /// The window the rates and counts look at.
    pub fn window(&self) -> Window {
        self.window
    }

    /// How long a call may take before it counts as slow, if slow calls count.
    pub fn slow_call(&self) -> Option<Duration> {
        self.slow_call
    }

    /// How many probes a half-open breaker admits at once.
    pub fn probes(&self) -> u32 {
        self.probes
    }

    /// The window's bucket length in milliseconds (time windows).
    pub(crate) fn bucket_ms(&self) -> u64 {
        match self.window {
            Window::Count(_) => 0,
            Window::Time { size, buckets } => millis(size) / u64::from(buckets.max(1)),
        }
    }
}

/// Builds a [`BreakerConfig`]; see [`BreakerConfig::builder`].
#[derive(Debug, Clone, Default)]
pub struct BreakerConfigBuilder {
    window: Option<Window>,
    min_calls: Option<u32>,
    consecutive_failures: Option<u32>,
    failures_in_window: Option<u32>,
    failure_rate: Option<(u32, u32)>,
    slow: Option<(Duration, u32, u32)>,
    open_for: Option<Duration>,
    backoff: Option<(u32, Duration)>,
    jitter_permille: Option<u32>,
    probes: Option<u32>,
    close_after: Option<CloseAfter>,
    half_open_max_wait: Option<Duration>,
    conflicts: Vec<String>,
}

fn invalid(message: String) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("breaker configuration: {message}"),
    )
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl BreakerConfigBuilder {
    fn set_window(&mut self, window: Window) {
        match self.window {
            Some(existing) if existing != window => self.conflicts.push(format!(
                "one window per breaker: {existing:?} and {window:?} were both asked for"
            )),
            _ => self.window = Some(window),
        }
    }

    /// Opens after `n` failures in a row (successes reset the run).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Opens after `n` failures within the last `period` (a time window of
    /// 10 buckets, as seed 003's bucket memory).
    pub fn failures_within(mut self, n: u32, period: Duration) -> Self {
        self.failures_in_window = Some(n);
        self.set_window(Window::Time {
            size: period,
            buckets: 10,
        });
        self
    }

    /// Opens when `failures` of the last `of_calls` calls failed (seed
    /// 004's `failure_limit=Fraction(3, 10)`: a count window of `of_calls`).
    pub fn failure_limit(mut self, failures: u32, of_calls: u32) -> Self {
        self.failures_in_window = Some(failures);
        self.set_window(Window::Count(of_calls));
        if failures > of_calls {
            self.conflicts.push(format!(
                "failure_limit({failures}, {of_calls}) can never be reached"
            ));
        }
        self
    }

    /// Opens when at least `num / den` of the window's calls failed, once
    /// the window holds [`min_calls`](Self::min_calls) calls.
    pub fn failure_rate(mut self, num: u32, den: u32) -> Self {
        self.failure_rate = Some((num, den));
        self
    }

    /// Counts calls that take `threshold` or longer as slow, and opens when
    /// at least `num / den` of the window's calls were slow (once it holds
    /// [`min_calls`](Self::min_calls)).
    pub fn slow_calls(mut self, threshold: Duration, num: u32, den: u32) -> Self {
        self.slow = Some((threshold, num, den));
        self
    }

    /// The window the rates look at (default: the last 100 calls).
    pub fn window(mut self, window: Window) -> Self {
        self.set_window(window);
        self
    }

    /// How many calls the window must hold before a rate can open the
    /// breaker (default 10, at most the count window's size).
    pub fn min_calls(mut self, n: u32) -> Self {
        self.min_calls = Some(n);
        self
    }

    /// How long the breaker stays open after its first opening (default 30 s).
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = Some(duration);
        self
    }

    /// Each consecutive opening (the breaker reopened from half-open) stays
    /// open `multiplier` times longer than the last, up to `max`.
    pub fn backoff(mut self, multiplier: u32, max: Duration) -> Self {
        self.backoff = Some((multiplier, max));
        self
    }

    /// Spreads each opening's length by up to ± `permille` / 1000 of it, so
    /// that instances do not probe in step.
    pub fn jitter(mut self, permille: u32) -> Self {
        self.jitter_permille = Some(permille);
        self
    }

    /// A half-open breaker admits at most `probes` calls at once (across
    /// every instance, for a shared breaker) and closes as `close_after`
    /// says (default: 1 probe, closing on its success).
    pub fn half_open(mut self, probes: u32, close_after: CloseAfter) -> Self {
        self.probes = Some(probes);
        self.close_after = Some(close_after);
        self
    }

    /// A half-open breaker whose probes have not closed it within `wait`
    /// opens again (a probe whose caller vanished must not hold it
    /// half-open; default 60 s).
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = Some(wait);
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<BreakerConfig> {
        if let Some(conflict) = self.conflicts.into_iter().next() {
            return Err(invalid(conflict));
        }
        let window = self.window.unwrap_or(Window::Count(100));
        let failure_rate = self
            .failure_rate
            .map(|(num, den)| Ratio::new(num, den))
            .transpose()?;
        let (slow_call, slow_rate) = match self.slow {
            Some((threshold, num, den)) => (Some(threshold), Some(Ratio::new(num, den)?)),
            None => (None, None),
        };
        let min_calls = match (self.min_calls, window) {
            (Some(n), _) => n,
            (None, Window::Count(size)) => size.min(10),
            (None, Window::Time { .. }) => 10,
        };
        let open_for = self.open_for.unwrap_or(Duration::from_secs(30));
        let (backoff_multiplier, max_open_for) = self.backoff.unwrap_or((1, open_for));
        let probes = self.probes.unwrap_or(1);
        let config = BreakerConfig {
            window,
            min_calls,
            consecutive_failures: self.consecutive_failures,
            failures_in_window: self.failures_in_window,
            failure_rate,
            slow_rate,
            slow_call,
            open_for,
            backoff_multiplier,
            max_open_for,
            jitter_permille: self.jitter_permille.unwrap_or(0),
            probes,
            close_after: self.close_after.unwrap_or(CloseAfter::Successes(1)),
            half_open_max_wait: self.half_open_max_wait.unwrap_or(Duration::from_secs(60)),
        };
        config.check()?;
        Ok(config)
    }
}

/// A configuration as written in a file, checked into a [`BreakerConfig`].
#[derive(Deserialize)]
struct Unchecked {
    window: Window,
    min_calls: u32,
    consecutive_failures: Option<u32>,
    failures_in_window: Option<u32>,
    failure_rate: Option<Ratio>,
    slow_rate: Option<Ratio>,
    slow_call: Option<Duration>,
    open_for: Duration,
    backoff_multiplier: u32,
    max_open_for: Duration,
    jitter_permille: u32,
    probes: u32,
    close_after: CloseAfter,
    half_open_max_wait: Duration,
}

impl TryFrom<Unchecked> for BreakerConfig {
    type Error = Error;

    fn try_from(raw: Unchecked) -> Result<BreakerConfig> {
        let config = BreakerConfig {
            window: raw.window,
            min_calls: raw.min_calls,
            consecutive_failures: raw.consecutive_failures,
            failures_in_window: raw.failures_in_window,
            failure_rate: raw.failure_rate,
            slow_rate: raw.slow_rate,
            slow_call: raw.slow_call,
            open_for: raw.open_for,
            backoff_multiplier: raw.backoff_multiplier,
            max_open_for: raw.max_open_for,
            jitter_permille: raw.jitter_permille,
            probes: raw.probes,
            close_after: raw.close_after,
            half_open_max_wait: raw.half_open_max_wait,
        };
        config.check()?;
        Ok(config)
    }
}

impl BreakerConfig {
    /// The rules every configuration keeps, built or read.
    fn check(&self) -> Result<()> {
        match self.window {
            Window::Count(n) if !(1..=10_000).contains(&n) => {
                return Err(invalid(format!(
                    "a count window holds 1 to 10,000 calls, not {n}"
                )))
            }
            Window::Time { size, buckets } => {
                if !(1..=600).contains(&buckets) {
                    return Err(invalid(format!(
                        "a time window has 1 to 600 buckets, not {buckets}"
                    )));
                }
                if millis(size) < u64::from(buckets) {
                    return Err(invalid(format!(
                        "a time window of {size:?} cannot hold {buckets} buckets of at least 1 ms"
                    )));
                }
                if millis(size) % u64::from(buckets) != 0 || size.subsec_nanos() % 1_000_000 != 0 {
                    return Err(invalid(format!(
                        "a time window of {size:?} does not split into {buckets} whole-millisecond buckets"
                    )));
                }
            }
            Window::Count(_) => {}
        }
        if self.consecutive_failures == Some(0) {
            return Err(invalid("consecutive_failures must be at least 1".into()));
        }
        if self.failures_in_window == Some(0) {
            return Err(invalid("the failure count must be at least 1".into()));
        }
        if matches!(self.slow_call, Some(threshold) if threshold.is_zero()) {
            return Err(invalid("the slow-call threshold must be positive".into()));
        }
        if self.slow_call.is_some() != self.slow_rate.is_some() {
            return Err(invalid(
                "a slow-call rule has both a threshold and a rate".into(),
            ));
        }
        if self.consecutive_failures.is_none()
            && self.failures_in_window.is_none()
            && self.failure_rate.is_none()
            && self.slow_rate.is_none()
        {
            return Err(invalid(
                "no rule to open on: set consecutive_failures, failures_within, failure_limit, \
                 failure_rate or slow_calls"
                    .into(),
            ));
        }
        match (self.min_calls, self.window) {
            (0, _) => return Err(invalid("min_calls must be at least 1".into())),
            (n, Window::Count(size)) if n > size => {
                return Err(invalid(format!(
                    "min_calls {n} exceeds the count window of {size}: the rates could never open"
                )))
            }
            _ => {}
        }
        if let (Some(n), Window::Count(size)) = (self.failures_in_window, self.window) {
            if n > size {
                return Err(invalid(format!(
                    "{n} failures can never fit in a window of the last {size} calls"
                )));
            }
        }
        if millis(self.open_for) == 0 {
            return Err(invalid("open_for must be at least 1 ms".into()));
        }
        if self.backoff_multiplier == 0 {
            return Err(invalid("the back-off multiplier must be at least 1".into()));
        }
        if self.max_open_for < self.open_for {
            return Err(invalid(format!(
                "the longest opening ({:?}) is shorter than the first ({:?})",
                self.max_open_for, self.open_for
            )));
        }
        if self.jitter_permille > 1000 {
            return Err(invalid(format!(
                "jitter is at most 1000 ‰ of the opening, not {}",
                self.jitter_permille
            )));
        }
        if self.probes == 0 {
            return Err(invalid(
                "a half-open breaker admits at least 1 probe".into(),
            ));
        }
        if let CloseAfter::Successes(n) = self.close_after {
            if n == 0 || n > self.probes {
                return Err(invalid(format!(
                    "closing after {n} successes needs 1 ≤ {n} ≤ probes ({})",
                    self.probes
                )));
            }
        }
        if millis(self.half_open_max_wait) == 0 {
            return Err(invalid("the half-open wait must be at least 1 ms".into()));
        }
        // Longer spans would lose precision in a store's script (its
        // numbers are doubles, exact to 2^53 ms with a timestamp added).
        let longest = Duration::from_millis(1 << 40);
        let spans = [
            ("open_for", self.open_for),
            ("the longest opening", self.max_open_for),
            ("the half-open wait", self.half_open_max_wait),
        ];
        for (name, span) in spans {
            if span > longest {
                return Err(invalid(format!(
                    "{name} is at most 2^40 ms (about 34 years), not {span:?}"
                )));
            }
        }
        if let Window::Time { size, .. } = self.window {
            if size > longest {
                return Err(invalid(format!(
                    "a time window is at most 2^40 ms, not {size:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(builder: BreakerConfigBuilder) -> String {
        match builder.build() {
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Config);
                err.to_string()
            }
            Ok(config) => panic!("built {config:?}"),
        }
    }

    #[test]
    fn bad_configurations_are_rejected_with_a_reason() {
        let b = BreakerConfig::builder;
        assert!(message(b()).contains("no rule to open on"));
        assert!(message(b().consecutive_failures(0)).contains("at least 1"));
        assert!(message(b().failure_rate(0, 10)).contains("0 < numerator"));
        assert!(message(b().failure_rate(11, 10)).contains("0 < numerator"));
        assert!(message(b().failure_limit(11, 10)).contains("never be reached"));
        assert!(message(
            b().failure_limit(3, 10)
                .failures_within(3, Duration::from_secs(1))
        )
        .contains("one window per breaker"));
        assert!(
            message(b().consecutive_failures(3).window(Window::Count(0))).contains("1 to 10,000")
        );
        assert!(message(b().consecutive_failures(3).window(Window::Time {
            size: Duration::from_millis(5),
            buckets: 10
        }))
        .contains("at least 1 ms"));
        assert!(
            message(b().failure_rate(1, 2).window(Window::Count(5)).min_calls(6))
                .contains("min_calls")
        );
        assert!(message(b().consecutive_failures(3).open_for(Duration::ZERO)).contains("open_for"));
        assert!(message(
            b().consecutive_failures(3)
                .open_for(Duration::from_secs(10))
                .backoff(2, Duration::from_secs(5))
        )
        .contains("shorter than the first"));
        assert!(message(b().consecutive_failures(3).jitter(1001)).contains("jitter"));
        assert!(message(
            b().consecutive_failures(3)
                .half_open(2, CloseAfter::Successes(3))
        )
        .contains("probes"));
        assert!(message(
            b().consecutive_failures(3)
                .half_open(0, CloseAfter::Successes(1))
        )
        .contains("at least 1 probe"));
        assert!(message(b().slow_calls(Duration::ZERO, 1, 2)).contains("slow-call threshold"));
        assert!(message(b().failures_within(3, Duration::from_millis(1005)))
            .contains("whole-millisecond buckets"));
        assert!(message(b().consecutive_failures(1).backoff(2, Duration::MAX)).contains("2^40"));
    }

    #[test]
    fn defaults_and_seed_semantics() {
        let config = BreakerConfig::builder()
            .failure_limit(3, 10)
            .build()
            .expect("config");
        assert_eq!(config.window, Window::Count(10));
        assert_eq!(config.failures_in_window, Some(3));
        assert_eq!(config.open_for, Duration::from_secs(30));
        assert_eq!(
            (config.probes, config.close_after),
            (1, CloseAfter::Successes(1))
        );
        let config = BreakerConfig::builder()
            .failures_within(5, Duration::from_secs(10))
            .build()
            .expect("config");
        assert_eq!(config.bucket_ms(), 1_000);
    }

    #[test]
    fn ratios_compare_exactly() {
        let r = Ratio::new(3, 10).expect("ratio");
        assert!(r.reached(3, 10) && !r.reached(2, 10) && r.reached(1, 3) && !r.reached(0, 0));
        let tiny = Ratio::new(1, u32::MAX).expect("ratio");
        assert!(tiny.reached(1, u64::from(u32::MAX)) && !tiny.reached(1, u64::from(u32::MAX) + 1));
        assert!(!tiny.reached(0, 1));
    }

    #[test]
    fn a_configuration_read_from_a_file_is_checked() {
        let config = BreakerConfig::builder()
            .failure_rate(1, 2)
            .half_open(3, CloseAfter::Fraction(Ratio::new(2, 3).expect("ratio")))
            .build()
            .expect("valid");
        let text = serde_json::to_string(&config).expect("serializes");
        let back: BreakerConfig = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, config);
        for (from, to, why) in [
            ("\"probes\":3", "\"probes\":0", "at least 1 probe"),
            (
                "\"jitter_permille\":0",
                "\"jitter_permille\":5000",
                "jitter",
            ),
            (
                "\"num\":1,\"den\":2",
                "\"num\":3,\"den\":2",
                "0 < numerator",
            ),
            ("\"min_calls\":10", "\"min_calls\":0", "min_calls"),
        ] {
            assert!(text.contains(from), "{text} lacks {from}");
            let bad = text.replace(from, to);
            let err = serde_json::from_str::<BreakerConfig>(&bad).expect_err("invalid");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }
}
