//! The option and outcome types of the contract's operations.

use std::time::Duration;

use bytes::Bytes;

/// Options of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// Time to live. `None` uses the backend's default TTL, if it has one,
    /// and otherwise keeps the value until it is deleted.
    pub ttl: Option<Duration>,
    /// With no `ttl`, keep the value until it is deleted even if the backend
    /// has a default TTL (a restored checkpoint entry that had none, say).
    pub no_expiry: bool,
}

impl PutOptions {
    /// Options with no TTL.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps the value until it is deleted, whatever the backend's default
    /// TTL (unless [`ttl`](Self::ttl) is also set, which wins).
    pub fn no_expiry(mut self) -> Self {
        self.no_expiry = true;
        self
    }

    /// The TTL a backend whose default TTL is `default` applies.
    pub fn resolve_ttl(&self, default: Option<Duration>) -> Option<Duration> {
        match (self.ttl, self.no_expiry) {
            (Some(ttl), _) => Some(ttl),
            (None, true) => None,
            (None, false) => default,
        }
    }
}

/// What [`StateBackend::ttl`](crate::StateBackend::ttl) found for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// No such key (or it has expired).
    Missing,
    /// The key exists and does not expire.
    Persistent,
    /// The key exists and expires after this long.
    ExpiresIn(Duration),
}

/// One page of a key listing; see [`StateBackend::list_keys_page`](crate::StateBackend::list_keys_page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys of this page.
    pub keys: Vec<Bytes>,
    /// The cursor to pass to get the next page; `None` when the listing is done.
    pub next: Option<Bytes>,
}

/// The outcome of [`StateBackend::compare_and_swap`](crate::StateBackend::compare_and_swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The stored value was the expected one and has been replaced.
    Swapped,
    /// The stored value differed; this is what it was (`None`: absent).
    Conflict(Option<Bytes>),
}

impl CasOutcome {
    /// Whether the swap happened.
    pub fn is_swapped(&self) -> bool {
        matches!(self, CasOutcome::Swapped)
    }
}

/// The result of a successful [`StateBackend::health_check`](crate::StateBackend::health_check).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The backend that answered.
    pub backend: &'static str,
    /// How long the probe took (a round trip for remote stores).
    pub latency: Duration,
}

impl HealthReport {
    /// A report for `backend` whose probe took `latency`.
    pub fn new(backend: &'static str, latency: Duration) -> Self {
        HealthReport { backend, latency }
    }
}
