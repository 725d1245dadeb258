//! Permits, rejections and the errors of a protected call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::local::Shared;
use super::machine::Outcome;

/// Leave to make one call; record how it went with
/// [`success`](Permit::success), [`failure`](Permit::failure),
/// [`ignore`](Permit::ignore) or [`record`](Permit::record). A permit
/// dropped without a result counts as a failure (a cancelled call).
/// When slow calls count, the permit times the call from its creation.
#[must_use = "a dropped permit records a failure"]
pub struct Permit<'a> {
    shared: &'a Shared,
    /// A probe's half-open spell.
    probe: Option<u64>,
    started: Option<Instant>,
}

impl<'a> Permit<'a> {
    #[inline]
    pub(super) fn new(shared: &'a Shared, probe: Option<u64>) -> Permit<'a> {
        Permit {
            started: shared.config.slow_call().map(|_| Instant::now()),
            shared,
            probe,
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// A probe's half-open spell: when it began (the breaker's
    /// milliseconds). A probe's result counts only in its own spell.
    pub fn spell(&self) -> Option<u64> {
        self.probe
    }

    /// The call worked.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The call says nothing about the protected resource.
    #[inline]
    pub fn ignore(self) {
        self.record(Outcome::Ignored);
    }

    /// Records `outcome`.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        // Recorded here, so the drop's "cancelled" failure must not run.
        let this = std::mem::ManuallyDrop::new(self);
        this.finish(outcome);
    }

    #[inline]
    fn finish(&self, outcome: Outcome) {
        let slow = match self.started {
            None => false,
            Some(started) => self
                .shared
                .config
                .slow_call()
                .is_some_and(|threshold| started.elapsed() >= threshold),
        };
        self.shared.record(outcome, slow, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.finish(Outcome::Failure);
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &&*self.shared.name)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

/// A call the breaker did not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    breaker: Arc<str>,
    retry_after_ms: Option<u64>,
}

impl Rejected {
    pub(super) fn new(breaker: Arc<str>, retry_after_ms: Option<u64>) -> Rejected {
        Rejected {
            breaker,
            retry_after_ms,
        }
    }

    /// The breaker's name.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// When trying again can help (`None`: the breaker is held open until
    /// an operator releases it) — what an HTTP handler puts in `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_ms.map(Duration::from_millis)
    }

    /// [`retry_after`](Self::retry_after) in whole seconds, rounded up (at
    /// least 1): the value of an HTTP `Retry-After` header.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_ms.map(|ms| ms.div_ceil(1_000).max(1))
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after() {
            Some(after) => write!(
                f,
                "circuit breaker {:?} is open; retry after {after:?}",
                self.breaker
            ),
            None => write!(f, "circuit breaker {:?} is held open", self.breaker),
        }
    }
}

impl std::error::Error for Rejected {}

/// Why a protected call did not return a value.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker did not let it through.
    Rejected(Rejected),
    /// It ran and failed.
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected(rejected) => rejected.fmt(f),
            CallError::Failed(err) => err.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Rejected(rejected) => Some(rejected),
            CallError::Failed(err) => Some(err),
        }
    }
}
