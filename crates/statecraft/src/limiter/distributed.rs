//! [`DistributedLimiter`]: limits shared by every instance that uses the
//! same store, each decision one atomic round trip ([`LimitStep`]:
//! natively on Redis and PostgreSQL, at the server's clock), so the
//! instances' clocks do not matter.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::algorithm::{Decision, Verdict};
use super::cell::QuotaCell;
use super::local::{same_algorithm, LocalLimiter};
use super::quota::Quota;
use super::shared::{parse_output, refund_input, step_input, LimitStep};
use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

/// `name` with `%` and `:` escaped, so that it never holds the `:` that
/// separates a limit's name from its keys.
pub(crate) fn escaped(name: &str) -> String {
    name.replace('%', "%25").replace(':', "%3A")
}

/// What a shared limiter decides when its store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenUnreachable {
    /// Return the store's error (the default): the caller decides.
    Error,
    /// Deny every request (retry after the quota's interval).
    Deny,
    /// Allow every request.
    Allow,
    /// Decide by this quota in this process, until the store answers
    /// again.
    Local(Quota),
}

/// A decision made without the store: `verdict`, a denial to be retried
/// after the quota's interval.
pub(super) fn by_policy(verdict: Verdict, quota: &Quota) -> Decision {
    Decision {
        verdict,
        limit: quota.burst(),
        remaining: 0,
        retry_after_us: if verdict == Verdict::Denied {
            quota.interval_us()
        } else {
            0
        },
        reset_after_us: 0,
    }
}

/// How the limiter's decisions went, since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LimiterStats {
    /// Decisions the store made.
    pub decided_by_store: u64,
    /// Decisions made without the store (by [`WhenUnreachable`]) because
    /// it did not answer in time.
    pub decided_without_store: u64,
}

/// A rate limit (or a limit per key) whose state lives in a store, shared
/// by every instance with the same store and name.
///
/// ```
/// # #[tokio::main] async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use statecraft::limiter::{DistributedLimiter, Quota};
/// use statecraft::MemoryBackend;
///
/// let store = Arc::new(MemoryBackend::new());
/// let limiter = DistributedLimiter::new(store, "api", Quota::per_second(2).build()?);
/// assert!(limiter.check().await?.is_allowed());
/// assert!(limiter.check().await?.is_allowed());
/// assert!(!limiter.check().await?.is_allowed());
/// // A limit per user, each with the same quota.
/// assert!(limiter.check_key(b"user:42", 1).await?.is_allowed());
/// # Ok(()) }
/// ```
///
/// Each decision sends the quota with it, so a [`set_quota`](Self::set_quota)
/// takes effect on the next decision of every instance that makes it, and
/// the store keeps no configuration that could go stale. Every key written
/// has a TTL, set in the same atomic step: the time after which having no
/// state decides the same (so an abandoned limit costs nothing). On
/// PostgreSQL a decision's commit does not wait for the disk
/// (`synchronous_commit = off` for that transaction): a crash of the
/// server may forget its last moments of decisions, as Redis without
/// `fsync` may.
pub struct DistributedLimiter {
    backend: Arc<dyn StateBackend>,
    name: Arc<str>,
    key: Bytes,
    quota: QuotaCell,
    timeout: Duration,
    unreachable: WhenUnreachable,
    clock: Arc<dyn Clock>,
    fallback: Option<LocalLimiter<Arc<dyn Clock>>>,
    by_store: AtomicU64,
    without_store: AtomicU64,
}

impl fmt::Debug for DistributedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedLimiter")
            .field("name", &self.name)
            .field("backend", &self.backend.name())
            .field("quota", &self.quota.load())
            .field("timeout", &self.timeout)
            .field("unreachable", &self.unreachable)
            .finish()
    }
}

impl DistributedLimiter {
    /// The limit `name` in `backend` (its key is `limiter:<name>`, a key
    /// of it `limiter:<name>:<key>`, with `%` and `:` in the name written
    /// `%25` and `%3A` so that no two limits share a key; on PostgreSQL
    /// their rows are in the table `<table>_limits`), with a 1 s store
    /// timeout, returning the store's errors.
    pub fn new(backend: Arc<dyn StateBackend>, name: impl Into<String>, quota: Quota) -> Self {
        let name: String = name.into();
        DistributedLimiter {
            key: Bytes::from(format!("limiter:{}", escaped(&name))),
            name: Arc::from(name),
            backend,
            quota: QuotaCell::new(quota),
            timeout: Duration::from_secs(1),
            unreachable: WhenUnreachable::Error,
            clock: Arc::new(MonotonicClock::new()),
            fallback: None,
            by_store: AtomicU64::new(0),
            without_store: AtomicU64::new(0),
        }
    }

    /// How long one round trip to the store may take (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What it decides when the store does not answer in time (default
    /// [`WhenUnreachable::Error`]).
    pub fn when_unreachable(mut self, policy: WhenUnreachable) -> Self {
        self.unreachable = policy;
        self.with_fallback()
    }

    /// The process's clock (a monotonic one unless told), read only by the
    /// local fallback of [`WhenUnreachable::Local`]: every decision made
    /// through the store is made at the store's clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self.with_fallback()
    }

    fn with_fallback(mut self) -> Self {
        self.fallback = match self.unreachable {
            WhenUnreachable::Local(quota) => {
                Some(LocalLimiter::with_clock(quota, self.clock.clone()))
            }
            _ => None,
        };
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key its state lives under.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The quota it sends.
    pub fn quota(&self) -> Quota {
        self.quota.load()
    }

    /// Replaces the quota, from this instance's next decision on (other
    /// instances decide by the quota they send). The algorithm cannot
    /// change.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        same_algorithm(&self.quota.load(), &quota)?;
        self.quota.store(quota);
        Ok(())
    }

    /// How its decisions went.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            decided_by_store: self.by_store.load(Ordering::Relaxed),
            decided_without_store: self.without_store.load(Ordering::Relaxed),
        }
    }

    /// Decides one permit (one round trip).
    pub async fn check(&self) -> Result<Decision> {
        self.check_n(1).await
    }

    /// Decides `cost` permits at once: all or none (0 only asks).
    pub async fn check_n(&self, cost: u64) -> Result<Decision> {
        let quota = self.quota.load();
        self.run(self.key.clone(), &quota, cost).await
    }

    /// Decides `cost` permits of `key`'s own limit (its key in the store
    /// is `limiter:<name>:<key>`), by the limiter's quota.
    pub async fn check_key(&self, key: &[u8], cost: u64) -> Result<Decision> {
        let quota = self.quota.load();
        self.check_key_with(key, &quota, cost).await
    }

    /// The same, by `quota` (a key's own quota; of any algorithm, as long
    /// as the key keeps to it).
    pub async fn check_key_with(&self, key: &[u8], quota: &Quota, cost: u64) -> Result<Decision> {
        let mut full = BytesMut::with_capacity(self.key.len() + 1 + key.len());
        full.put_slice(&self.key);
        full.put_u8(b':');
        full.put_slice(key);
        self.run(full.freeze(), quota, cost).await
    }

    /// Waits until `cost` permits pass, for at most `max_wait`: the
    /// allowing decision, the denial that would have had to wait past
    /// `max_wait` (at once, without waiting in vain), or at once a
    /// [`TooLarge`](Verdict::TooLarge) one.
    pub async fn until_ready(&self, cost: u64, max_wait: Duration) -> Result<Decision> {
        let started = tokio::time::Instant::now();
        loop {
            let decision = self.check_n(cost).await?;
            let Some(wait) = decision.retry_after() else {
                return Ok(decision);
            };
            if started.elapsed() + wait > max_wait {
                return Ok(decision);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Gives back `permits` taken and not used (a lease's rest): the
    /// limit as if they had never been taken (one round trip; nothing is
    /// decided without the store).
    pub async fn refund(&self, permits: u64) -> Result<Decision> {
        let quota = self.quota.load();
        let input = refund_input(&quota, permits, 0);
        let raw = tokio::time::timeout(
            self.timeout,
            self.backend
                .update_atomic(&self.key, &LimitStep, input.as_bytes()),
        )
        .await
        .map_err(|_| self.timed_out())??;
        parse_output(&raw)
    }

    /// A refund of `permits` that needs nothing of this limiter: for a
    /// task spawned when its owner is dropped (its answer is not awaited).
    pub(super) fn refund_later(&self, permits: u64) -> impl Future<Output = ()> + Send + 'static {
        let (backend, key, timeout) = (self.backend.clone(), self.key.clone(), self.timeout);
        let input = refund_input(&self.quota.load(), permits, 0);
        async move {
            let refund = backend.update_atomic(&key, &LimitStep, input.as_bytes());
            if let Ok(Err(err)) = tokio::time::timeout(timeout, refund).await {
                tracing::debug!(error = %err, "a dropped lease was not given back");
            }
        }
    }

    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "limiter {:?}: the store took longer than {:?}",
                self.name, self.timeout
            ),
        )
        .temporary(true)
        .maybe_applied(true)
    }

    async fn run(&self, key: Bytes, quota: &Quota, cost: u64) -> Result<Decision> {
        let input = step_input(quota, cost, 0);
        let update = self
            .backend
            .update_atomic(&key, &LimitStep, input.as_bytes());
        let answer = match tokio::time::timeout(self.timeout, update).await {
            Ok(answer) => answer,
            Err(_) => Err(self.timed_out()),
        };
        match answer.and_then(|raw| parse_output(&raw)) {
            Ok(decision) => {
                self.by_store.fetch_add(1, Ordering::Relaxed);
                Ok(decision)
            }
            // Only an outage is decided without the store; bad input or
            // a damaged answer is the caller's to see.
            Err(err) if !err.is_temporary() => Err(err),
            Err(err) => self.without_store(err, quota, cost),
        }
    }

    /// A decision by the policy, when the store did not answer.
    fn without_store(&self, err: Error, quota: &Quota, cost: u64) -> Result<Decision> {
        let verdict = match self.unreachable {
            WhenUnreachable::Error => return Err(err),
            WhenUnreachable::Local(_) => None,
            _ if cost > quota.burst() => Some(Verdict::TooLarge),
            WhenUnreachable::Deny => Some(Verdict::Denied),
            WhenUnreachable::Allow => Some(Verdict::Allowed),
        };
        self.without_store.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(limiter = %self.name, error = %err, policy = ?self.unreachable,
            "the store did not answer: deciding without it");
        Ok(match (verdict, &self.fallback) {
            (Some(verdict), _) => by_policy(verdict, quota),
            (None, Some(local)) => local.check_n(cost),
            (None, None) => return Err(err),
        })
    }
}
