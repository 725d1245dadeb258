//! The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers:
//! `RateLimit-Policy` and `RateLimit`) and `Retry-After`, formatted from a
//! decision, for any HTTP framework.

use super::algorithm::{Decision, Verdict};
use super::quota::{Algorithm, Quota};

/// The header fields that tell a client about a limit, as text.
///
/// ```
/// use statecraft::limiter::{LocalLimiter, Quota, RateLimitHeaders};
///
/// let quota = Quota::per_minute(60).build()?;
/// let limiter = LocalLimiter::new(quota);
/// let headers = RateLimitHeaders::new("api", &quota, &limiter.check());
/// assert_eq!(headers.policy, r#""api";q=60;w=60"#);
/// assert_eq!(headers.limit, r#""api";r=59;t=1"#);
/// assert_eq!(headers.retry_after, None);
/// # Ok::<(), statecraft::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitHeaders {
    /// `RateLimit-Policy`: the quota (`q`, permits) and its window (`w`,
    /// seconds): for a bucket, the time it takes to refill from empty.
    pub policy: String,
    /// `RateLimit`: the permits remaining (`r`) and the seconds until the
    /// limit is whole again (`t`), rounded up.
    pub limit: String,
    /// `Retry-After` (seconds, rounded up) for a denied request.
    pub retry_after: Option<String>,
}

impl RateLimitHeaders {
    /// The fields for `decision`, made under `quota`, for the policy
    /// called `name` (a structured-field string: quotes and backslashes
    /// are escaped).
    pub fn new(name: &str, quota: &Quota, decision: &Decision) -> RateLimitHeaders {
        let name = quoted(name);
        let window_us = match quota.algorithm() {
            Algorithm::Gcra => quota.burst() * quota.interval_us(),
            Algorithm::TokenBucket => (quota.burst() * quota.period_us()).div_ceil(quota.count()),
            Algorithm::SlidingWindow | Algorithm::FixedWindow => quota.period_us(),
        };
        RateLimitHeaders {
            policy: format!(
                "{name};q={};w={}",
                decision.limit,
                seconds(window_us).max(1)
            ),
            limit: format!(
                "{name};r={};t={}",
                decision.remaining,
                seconds(decision.reset_after_us)
            ),
            retry_after: (decision.verdict == Verdict::Denied)
                .then(|| seconds(decision.retry_after_us).max(1).to_string()),
        }
    }
}

/// Whole seconds, rounded up.
fn seconds(micros: u64) -> u64 {
    micros.div_ceil(1_000_000)
}

/// A structured-field string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::decide;
    use std::time::Duration;

    #[test]
    fn the_fields_follow_the_decision() {
        let quota = Quota::with_period(10, Duration::from_secs(100))
            .burst(3)
            .build()
            .expect("quota");
        let mut state = None;
        for _ in 0..3 {
            state = decide(&quota, state, 1, 0).write;
        }
        let denied = decide(&quota, state, 1, 0).decision;
        let headers = RateLimitHeaders::new("per \"user\"", &quota, &denied);
        assert_eq!(headers.policy, r#""per \"user\"";q=3;w=30"#);
        assert_eq!(headers.limit, r#""per \"user\"";r=0;t=30"#);
        assert_eq!(headers.retry_after.as_deref(), Some("10"));
    }
}
