//! Rate limiters: four algorithms ([`Algorithm`]), each a pure function
//! ([`decide`]) of a [`Quota`], the stored [`LimitState`], a request's
//! cost and the time, that every limiter runs: in this process
//! ([`LocalLimiter`], and [`KeyedLimiter`] for a limit per key) or in a
//! store shared by every instance ([`DistributedLimiter`], one atomic
//! round trip per decision at the store's clock: [`LimitStep`], natively
//! on Redis and PostgreSQL), or spent here from leases of the shared limit
//! ([`HybridLimiter`]).
//!
//! ```
//! use std::time::Duration;
//! use statecraft::limiter::{Algorithm, LocalLimiter, Quota, Verdict};
//!
//! // 100 requests a second, at most 10 at once.
//! let quota = Quota::per_second(100).burst(10).build()?;
//! let limiter = LocalLimiter::new(quota);
//! let decision = limiter.check_n(4);
//! assert!(decision.is_allowed());
//! assert_eq!((decision.limit, decision.remaining), (10, 6));
//! // More than the burst never passes, however long one waits.
//! assert_eq!(limiter.check_n(11).verdict, Verdict::TooLarge);
//!
//! // The same quota as a sliding window of one second.
//! let windowed = Quota::per_second(100).algorithm(Algorithm::SlidingWindow).build()?;
//! assert_eq!(LocalLimiter::new(windowed).check().remaining, 99);
//! # Ok::<(), statecraft::Error>(())
//! ```
//!
//! Every decision says whether the request passes, and with it the
//! limit, what remains, when to retry and when the limit is whole again:
//! the figures of redis-cell and of the IETF RateLimit headers
//! ([`RateLimitHeaders`] formats them; with the `tower` feature,
//! [`RateLimitLayer`] limits an HTTP service by a key of each request and
//! answers 429 with them).

mod algorithm;
mod cell;
mod distributed;
mod headers;
mod hybrid;
mod keyed;
#[cfg(feature = "tower")]
mod layer;
mod local;
mod quota;
mod shared;
#[cfg(all(test, shuttle))]
mod shuttle_tests;
mod sync;

#[cfg(test)]
mod tests;

pub use algorithm::{decide, is_idle, refund, Decided, Decision, LimitState, Verdict};
pub(crate) use distributed::escaped;
pub use distributed::{DistributedLimiter, LimiterStats, WhenUnreachable};
pub use headers::RateLimitHeaders;
pub use hybrid::{HybridLimiter, HybridLimiterConfig, HybridLimiterStats};
pub use keyed::KeyedLimiter;
#[cfg(feature = "tower")]
pub use layer::{Limits, RateLimit, RateLimitLayer};
pub use local::LocalLimiter;
pub use quota::{Algorithm, Quota, QuotaBuilder, MAX_PERIOD};
pub use shared::{
    decode_state, encode_output, encode_state, parse_output, refund_input, step_input, LimitStep,
};
