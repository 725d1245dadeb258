//! [`Retry`]: runs an operation again after an error that says a retry can
//! help, with exponential backoff and full jitter.
//!
//! ```
//! # async fn demo() -> statecraft::Result<()> {
//! use std::time::Duration;
//! use statecraft::{MemoryBackend, Retry, RetryPolicy, StateBackend};
//!
//! let policy = RetryPolicy::new()
//!     .max_attempts(4)
//!     .initial_backoff(Duration::from_millis(10))
//!     .max_elapsed(Duration::from_secs(1));
//! let store = Retry::new(MemoryBackend::new(), policy);
//! store.put(b"k", "v".into()).await?;
//! # Ok(()) }
//! ```
//!
//! Only [`Error::is_retryable`] errors are retried: temporary ones whose
//! operation certainly did not run, or ran but is idempotent. An increment,
//! compare-and-swap, set-if-absent, get-and-delete, transaction or publish
//! whose reply was lost ([`Error::may_have_applied`]) is never sent again:
//! the caller gets the error and decides.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::error::{Error, Operation};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::jitter::Jitter;
use crate::layers::operation::{operation_layer, OperationLayer};

/// When and how often [`Retry`] tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// The backoff cap before the first retry; it doubles after each one.
    pub initial_backoff: Duration,
    /// The largest backoff cap.
    pub max_backoff: Duration,
    /// No retry starts after this long since the first attempt started
    /// (`None`: no limit beyond `max_attempts`).
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Some(Duration::from_secs(5)),
        }
    }
}

impl RetryPolicy {
    /// Three attempts, backoff from 20 ms up to 1 s, at most 5 s in all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the number of attempts in all (0 is taken as 1: no retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the backoff cap before the first retry.
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Sets the largest backoff cap.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Sets the time after which no retry starts.
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// The backoff cap before retry number `retry` (0 for the first):
    /// `min(max_backoff, initial_backoff × 2^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// A backend whose operations are retried by [`RetryPolicy`].
///
/// A retry waits a uniformly random time between zero and the backoff cap
/// ("full jitter"), so that many clients failing together do not retry in
/// step. In-process backends answer at once and their errors are not
/// temporary, so wrapping them costs one branch per call.
#[derive(Debug)]
pub struct Retry<B> {
    inner: B,
    policy: RetryPolicy,
    jitter: Jitter,
}

impl<B: crate::backend::StateBackend> Retry<B> {
    /// Wraps `inner`, retrying by `policy`.
    pub fn new(inner: B, policy: RetryPolicy) -> Self {
        Retry {
            inner,
            policy,
            jitter: Jitter::random(),
        }
    }

    /// Seeds the jitter, so that a test sees the same waits every run.
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter = Jitter::seeded(seed);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The inner backend.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner backend, consuming the layer.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// Whether to wait and try again after attempt `attempt` (1-based)
    /// failed with `err`, `elapsed` after the first attempt started.
    fn next_wait(
        &self,
        err: &Error,
        operation: Operation,
        attempt: u32,
        elapsed: Duration,
    ) -> Option<Duration> {
        if !retryable(err, operation) || attempt >= self.policy.max_attempts {
            return None;
        }
        let wait = self.jitter.below(self.policy.backoff_cap(attempt - 1));
        match self.policy.max_elapsed {
            Some(limit) if elapsed + wait > limit => None,
            _ => Some(wait),
        }
    }
}

impl<B: crate::backend::StateBackend> OperationLayer for Retry<B> {
    type Inner = B;

    fn inner(&self) -> &B {
        &self.inner
    }

    fn run<'a, T, F>(&'a self, operation: Operation, mut call: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: FnMut() -> StateFuture<'a, T> + Send + 'a,
    {
        // In-process backends answer at once: a success or a final error
        // goes back without boxing a retry loop.
        let first = match call().into_ready() {
            Ok(Ok(value)) => return StateFuture::ready(Ok(value)),
            Ok(Err(err)) if !retryable(&err, operation) => {
                return StateFuture::ready(Err(err.context(self.inner.name(), operation)))
            }
            Ok(Err(err)) => StateFuture::ready(Err(err)),
            Err(pending) => pending,
        };
        StateFuture::new(async move {
            let started = Instant::now();
            let mut attempt = 1;
            let mut pending = first;
            loop {
                let err = match pending.await {
                    Ok(value) => return Ok(value),
                    Err(err) => err.context(self.inner.name(), operation),
                };
                let Some(wait) = self.next_wait(&err, operation, attempt, started.elapsed()) else {
                    return Err(err);
                };
                tracing::debug!(
                    backend = self.inner.name(),
                    operation = operation.as_str(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    error = %err,
                    "retrying"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                pending = call();
            }
        })
    }
}

operation_layer!(Retry);

/// [`Error::is_retryable`], judged by the operation this layer would send
/// again (not by whatever inner step the error names).
fn retryable(err: &Error, operation: Operation) -> bool {
    err.is_temporary() && (!err.may_have_applied() || operation.is_idempotent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::new()
            .initial_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(50));
        let caps: Vec<u128> = (0..5).map(|n| policy.backoff_cap(n).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 50, 50]);
        assert_eq!(policy.backoff_cap(200), Duration::from_millis(50));
    }
}
