//! [`HybridLimiter`]: a shared limit spent locally, from leases of
//! permits taken from the store.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::algorithm::{Decision, Verdict};
use super::distributed::{by_policy, DistributedLimiter, WhenUnreachable};
use super::local::LocalLimiter;
use super::quota::{Algorithm, Quota};
use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::Result;
use crate::backend::StateBackend;

/// How a [`HybridLimiter`] leases.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HybridLimiterConfig {
    /// How much of this instance's recent rate one lease covers (default
    /// 50 ms): the lease size adapts to it, between the request's cost and
    /// [`max_lease`](Self::max_lease).
    pub lease_window: Duration,
    /// The most permits one lease takes (default: a tenth of the burst, at
    /// least 1): the over-admission bound per instance.
    pub max_lease: Option<u64>,
    /// How long a lease may be spent (default 1 s): what is left then is
    /// given back, so that permits are not spent long after the store
    /// granted them.
    pub lease_ttl: Duration,
    /// How long one round trip to the store may take (default 1 s).
    pub timeout: Duration,
    /// What it decides while the store does not answer (default
    /// [`WhenUnreachable::Deny`]; [`WhenUnreachable::Error`] returns the
    /// error).
    pub when_unreachable: WhenUnreachable,
    /// How long it decides without the store after a failed round trip
    /// before it asks again (default 500 ms).
    pub retry_every: Duration,
}

impl Default for HybridLimiterConfig {
    fn default() -> Self {
        HybridLimiterConfig {
            lease_window: Duration::from_millis(50),
            max_lease: None,
            lease_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            when_unreachable: WhenUnreachable::Deny,
            retry_every: Duration::from_millis(500),
        }
    }
}

/// What a [`HybridLimiter`] has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HybridLimiterStats {
    /// Leases the store granted.
    pub leases: u64,
    /// Permits they carried.
    pub leased: u64,
    /// Permits given back unused.
    pub returned: u64,
    /// Decisions made without the store, while it did not answer.
    pub decided_without_store: u64,
    /// Whether it is deciding without the store now.
    pub degraded: bool,
}

struct Inner {
    shared: DistributedLimiter,
    config: HybridLimiterConfig,
    clock: Arc<dyn Clock>,
    /// Permits of the current lease not yet spent.
    left: AtomicU64,
    /// When the current lease stops being spent (µs of `clock`).
    expires: AtomicU64,
    /// The last lease: when it was granted and its size (for the rate).
    granted_at: AtomicU64,
    granted: AtomicU64,
    /// Until when the store remembers the current lease's permits (µs of
    /// `clock`: the grant's time plus its reset time). A refund after it
    /// would credit permits the shared limit has already refilled.
    remembered_until: AtomicU64,
    /// Until when it decides without the store (µs of `clock`; 0: it asks).
    degraded_until: AtomicU64,
    fallback: Option<LocalLimiter>,
    leasing: tokio::sync::Mutex<()>,
    leases: AtomicU64,
    leased: AtomicU64,
    returned: AtomicU64,
    without_store: AtomicU64,
    said_degraded: AtomicBool,
}

/// A limit shared by every instance through a store, spent here in
/// nanoseconds: each instance takes a lease of permits from the shared
/// limit (one [`DistributedLimiter`] round trip, at the store's clock)
/// and spends it locally; when it runs out, the next request takes a new
/// one (one request at a time takes it; the others wait for it). A
/// lease's size follows this instance's rate (what it spent of the last
/// one, over how long, times [`lease_window`](HybridLimiterConfig::lease_window)),
/// and what is left of it is given back when it expires
/// ([`lease_ttl`](HybridLimiterConfig::lease_ttl)), on
/// [`close`](Self::close), and when the last handle is dropped inside a
/// tokio runtime (by a task: a drop cannot wait).
///
/// **Over-admission bound.** Every permit spent was granted by the shared
/// limit, and a refund gives back only what the limit has not refilled
/// since the grant, so the limit's own bound holds for the grants; a
/// permit is spent at most `lease_ttl` after its grant. Over any stretch
/// of time `T` the instances together admit at most
/// `burst + rate × (T + lease_ttl)`, and at most one lease (≤ `max_lease`)
/// per instance more than the shared limit would have admitted in `T` by
/// itself. A decision's `remaining` is what this
/// instance's lease has left, not the shared limit's.
///
/// ```
/// # #[tokio::main] async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use statecraft::limiter::{HybridLimiter, HybridLimiterConfig, Quota};
/// use statecraft::MemoryBackend;
///
/// let store = Arc::new(MemoryBackend::new()); // Redis or PostgreSQL across processes
/// let quota = Quota::per_second(1_000).burst(100).build()?;
/// let limiter = HybridLimiter::new(store, "api", quota, HybridLimiterConfig::default());
/// assert!(limiter.check().await?.is_allowed()); // a first lease, of one permit
/// assert!(limiter.check().await?.is_allowed()); // a bigger one: this instance is busy
/// assert!(limiter.try_check(1).is_some_and(|d| d.is_allowed())); // spends it, no round trip
/// limiter.close().await?; // gives the rest back
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HybridLimiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for HybridLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridLimiter")
            .field("shared", &self.inner.shared)
            .field("left", &self.inner.left.load(Ordering::Relaxed))
            .field("stats", &self.stats())
            .finish()
    }
}

impl HybridLimiter {
    /// The limit `name` in `backend` (the same key as a
    /// [`DistributedLimiter`] of that name: both can share it).
    pub fn new(
        backend: Arc<dyn StateBackend>,
        name: impl Into<String>,
        quota: Quota,
        config: HybridLimiterConfig,
    ) -> HybridLimiter {
        HybridLimiter::with_clock(
            backend,
            name,
            quota,
            config,
            Arc::new(MonotonicClock::new()),
        )
    }

    /// [`new`](Self::new) with the clock that times its leases here and
    /// how long it decides without the store: a
    /// [`ManualClock`](crate::ManualClock) in tests. The shared limit's
    /// decisions stay at the store's clock, and a
    /// [`Local`](WhenUnreachable::Local) fallback quota at the process's.
    pub fn with_clock(
        backend: Arc<dyn StateBackend>,
        name: impl Into<String>,
        quota: Quota,
        config: HybridLimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> HybridLimiter {
        let shared = DistributedLimiter::new(backend, name, quota).timeout(config.timeout);
        let fallback = match config.when_unreachable {
            WhenUnreachable::Local(quota) => Some(LocalLimiter::new(quota)),
            _ => None,
        };
        HybridLimiter {
            inner: Arc::new(Inner {
                shared,
                clock,
                left: AtomicU64::new(0),
                expires: AtomicU64::new(0),
                granted_at: AtomicU64::new(0),
                granted: AtomicU64::new(0),
                remembered_until: AtomicU64::new(0),
                degraded_until: AtomicU64::new(0),
                fallback,
                leasing: tokio::sync::Mutex::new(()),
                leases: AtomicU64::new(0),
                leased: AtomicU64::new(0),
                returned: AtomicU64::new(0),
                without_store: AtomicU64::new(0),
                said_degraded: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The quota of the shared limit.
    pub fn quota(&self) -> Quota {
        self.inner.shared.quota()
    }

    /// Decides one permit.
    pub async fn check(&self) -> Result<Decision> {
        self.check_n(1).await
    }

    /// Decides `cost` permits: from the lease here when it has them (no
    /// round trip), else after taking a new lease.
    pub async fn check_n(&self, cost: u64) -> Result<Decision> {
        if let Some(decision) = self.try_check(cost) {
            return Ok(decision);
        }
        self.lease_and_check(cost).await
    }

    /// Decides `cost` permits from the lease here, without a round trip:
    /// `None` when the lease (or the way it decides while the store is
    /// down) cannot say, and [`check_n`](Self::check_n) must ask.
    #[inline]
    pub fn try_check(&self, cost: u64) -> Option<Decision> {
        let inner = &*self.inner;
        let quota = inner.shared.quota();
        if cost > quota.burst() {
            // Never, wherever it is decided.
            return Some(Decision {
                verdict: Verdict::TooLarge,
                limit: quota.burst(),
                remaining: 0,
                retry_after_us: 0,
                reset_after_us: 0,
            });
        }
        let now = inner.clock.now_micros();
        if inner.degraded_until.load(Ordering::Relaxed) > now {
            return Some(inner.without_store(cost));
        }
        if inner.expires.load(Ordering::Acquire) <= now {
            return None;
        }
        let mut left = inner.left.load(Ordering::Acquire);
        loop {
            if left < cost {
                return None;
            }
            match inner.left.compare_exchange_weak(
                left,
                left - cost,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(inner.spent(left - cost)),
                Err(now_left) => left = now_left,
            }
        }
    }

    /// Takes a new lease (one request at a time) and decides from it.
    async fn lease_and_check(&self, cost: u64) -> Result<Decision> {
        let inner = &*self.inner;
        let _one = inner.leasing.lock().await;
        // Another request may have taken a lease meanwhile.
        if let Some(decision) = self.try_check(cost) {
            return Ok(decision);
        }
        if cost == 0 {
            // Only asks: no lease for it.
            return match inner.shared.check_n(0).await {
                Ok(decision) => Ok(decision),
                Err(err) => inner.unreachable(err, 0),
            };
        }
        inner.lease(cost).await
    }

    /// Gives back what is left of the lease (one round trip). The limiter
    /// takes a new lease if it is asked again.
    pub async fn close(&self) -> Result<()> {
        let _one = self.inner.leasing.lock().await;
        self.inner.give_back(self.inner.clock.now_micros()).await
    }

    /// What it has done.
    pub fn stats(&self) -> HybridLimiterStats {
        let inner = &*self.inner;
        HybridLimiterStats {
            leases: inner.leases.load(Ordering::Relaxed),
            leased: inner.leased.load(Ordering::Relaxed),
            returned: inner.returned.load(Ordering::Relaxed),
            decided_without_store: inner.without_store.load(Ordering::Relaxed),
            degraded: inner.degraded_until.load(Ordering::Relaxed) > inner.clock.now_micros(),
        }
    }
}

impl Drop for Inner {
    /// The last handle dropped: what is left of a live lease goes back to
    /// the store, by a task on the runtime (if there is one).
    fn drop(&mut self) {
        let left = *self.left.get_mut();
        let back = self.returnable(left, self.clock.now_micros());
        if back > 0 {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(self.shared.refund_later(back));
            }
        }
    }
}

impl Inner {
    fn spent(&self, left: u64) -> Decision {
        Decision {
            verdict: Verdict::Allowed,
            limit: self.shared.quota().burst(),
            remaining: left,
            retry_after_us: 0,
            reset_after_us: 0,
        }
    }

    /// A decision by the policy, while the store does not answer.
    fn without_store(&self, cost: u64) -> Decision {
        self.without_store.fetch_add(1, Ordering::Relaxed);
        let quota = self.shared.quota();
        let verdict = match (&self.config.when_unreachable, &self.fallback) {
            (_, Some(local)) => return local.check_n(cost),
            (WhenUnreachable::Allow, _) => Verdict::Allowed,
            _ => Verdict::Denied,
        };
        by_policy(verdict, &quota)
    }

    /// The next lease's size: this instance's rate over the last lease,
    /// times the lease window, within [cost, max lease].
    fn lease_size(&self, cost: u64, now: u64) -> u64 {
        let quota = self.shared.quota();
        let most = self
            .config
            .max_lease
            .unwrap_or(quota.burst() / 10)
            .clamp(1, quota.burst());
        let granted = self.granted.load(Ordering::Relaxed);
        let elapsed = now
            .saturating_sub(self.granted_at.load(Ordering::Relaxed))
            .max(1);
        let window = self.config.lease_window.as_micros() as u64;
        let wanted = (u128::from(granted) * u128::from(window) / u128::from(elapsed)) as u64;
        wanted.clamp(cost.max(1), most.max(cost))
    }

    /// Takes a lease big enough for `cost` (the caller holds `leasing`)
    /// and spends `cost` of it.
    async fn lease(&self, cost: u64) -> Result<Decision> {
        let now = self.clock.now_micros();
        // The rest of the last lease (expired, or too small for this
        // request) goes back first, never riding along with the new one.
        self.give_back(now).await.ok();
        if self.said_degraded.load(Ordering::Relaxed) {
            // Asking a store that was down: the other requests go on by the
            // policy until it answers (or the timeout passes).
            let timeout = self.config.timeout.as_micros() as u64;
            self.degraded_until
                .store(now.saturating_add(timeout), Ordering::Relaxed);
        }
        let size = self.lease_size(cost, now);
        let mut granted = match self.shared.check_n(size).await {
            Ok(decision) => decision,
            Err(err) => return self.unreachable(err, cost),
        };
        let mut size = size;
        if granted.verdict == Verdict::Denied && size > cost {
            // Not a whole lease left: take what there is, or ask for just
            // the cost (whose denial has the true retry-after).
            size = granted.remaining.max(cost);
            granted = match self.shared.check_n(size).await {
                Ok(decision) => decision,
                Err(err) => return self.unreachable(err, cost),
            };
        }
        self.recovered();
        if !granted.is_allowed() {
            return Ok(granted);
        }
        self.leases.fetch_add(1, Ordering::Relaxed);
        self.leased.fetch_add(size, Ordering::Relaxed);
        self.granted.store(size, Ordering::Relaxed);
        self.granted_at.store(now, Ordering::Relaxed);
        let ttl = self.config.lease_ttl.as_micros() as u64;
        self.remembered_until.store(
            now.saturating_add(granted.reset_after_us),
            Ordering::Relaxed,
        );
        self.left.fetch_add(size - cost, Ordering::AcqRel);
        self.expires
            .store(now.saturating_add(ttl), Ordering::Release);
        Ok(self.spent(self.left.load(Ordering::Acquire)))
    }

    /// Of `left` unspent permits, how many the store still remembers at
    /// `now` and may take back: for a bucket, what has not refilled since
    /// the grant (at one permit an interval); for a window, all of them
    /// while the windows that counted them last; after that, none.
    fn returnable(&self, left: u64, now: u64) -> u64 {
        let until = self.remembered_until.load(Ordering::Relaxed);
        if left == 0 || now >= until {
            return 0;
        }
        let quota = self.shared.quota();
        match quota.algorithm() {
            Algorithm::Gcra | Algorithm::TokenBucket => {
                left.min((until - now) / quota.interval_us().max(1))
            }
            _ => left,
        }
    }

    /// Gives what is left of the lease back to the store (what it still
    /// remembers of it; the rest it has refilled already).
    async fn give_back(&self, now: u64) -> Result<()> {
        let left = self.left.swap(0, Ordering::AcqRel);
        self.expires.store(0, Ordering::Release);
        let back = self.returnable(left, now);
        if back == 0 {
            return Ok(());
        }
        self.shared.refund(back).await?;
        self.returned.fetch_add(back, Ordering::Relaxed);
        Ok(())
    }

    fn unreachable(&self, err: crate::Error, cost: u64) -> Result<Decision> {
        if self.config.when_unreachable == WhenUnreachable::Error || !err.is_temporary() {
            return Err(err);
        }
        let retry = self.config.retry_every.as_micros() as u64;
        self.degraded_until.store(
            self.clock.now_micros().saturating_add(retry),
            Ordering::Relaxed,
        );
        if !self.said_degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(limiter = %self.shared.name(), error = %err,
                policy = ?self.config.when_unreachable, "the store did not answer: deciding without it");
        }
        Ok(self.without_store(cost))
    }

    fn recovered(&self) {
        if self.said_degraded.swap(false, Ordering::Relaxed) {
            self.degraded_until.store(0, Ordering::Relaxed);
            tracing::info!(limiter = %self.shared.name(), "the store answers again");
        }
    }
}
