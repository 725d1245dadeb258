//! [`Fallback`]: an ordered chain of backends, each behind its own timeout
//! and health breaker; a call goes to the first healthy one.

mod health;
mod ops;
mod recovery;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, RwLock};

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::StateBackend;
use crate::layers::timeout::timeout_error;
use crate::raw::recorder::StatsRecorder;

use self::health::{Admit, Breaker};
pub use self::health::{Health, HealthPolicy};
pub(super) use self::recovery::Mark;
use self::recovery::Outage;

/// What happens, when a member is healthy again, to the writes the members
/// after it took while it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Recovery {
    /// The keys deleted during the outage are deleted from the recovered
    /// member too (nothing deleted comes back); values written during the
    /// outage are dropped, not copied (copying would overwrite what other
    /// instances wrote to the recovered store meanwhile, and reset
    /// counters). Either way the keys are removed from the fallback, so
    /// that they cannot resurface in a later outage.
    #[default]
    ApplyDeletes,
    /// As `ApplyDeletes`, and the fallback's current value of every key
    /// written during the outage is copied to the recovered member, with
    /// its TTL: right for data only this instance writes (sessions), wrong
    /// for counters other instances also increment.
    CopyWrites,
}

/// An event of a [`Fallback`] chain, from [`Fallback::events`] (and logged
/// with `tracing`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// Member `member` failed `operation`; the call moved on to the next.
    FellBack {
        /// The member's position in the chain.
        member: usize,
        /// Its backend name.
        backend: &'static str,
        /// The operation.
        operation: Operation,
        /// What went wrong.
        error: String,
    },
    /// Member `member`'s health changed.
    HealthChanged {
        /// The member's position in the chain.
        member: usize,
        /// Its backend name.
        backend: &'static str,
        /// Its new health.
        health: Health,
    },
    /// Member `member` is healthy again and the outage's writes were
    /// settled as its [`Recovery`] says.
    Recovered {
        /// The member's position in the chain.
        member: usize,
        /// Its backend name.
        backend: &'static str,
        /// Keys deleted from it because they were deleted during the outage.
        deletes_applied: u64,
        /// Keys copied to it ([`Recovery::CopyWrites`]).
        copied: u64,
        /// Keys removed from the members after it.
        cleared: u64,
        /// Keys that could not be settled now (their errors were logged);
        /// they stay tracked and are settled at the next try.
        failed: u64,
        /// More keys were written during the outage than are tracked: the
        /// members after it were cleared entirely, and deletes beyond the
        /// bound were not applied.
        overflowed: bool,
    },
}

struct Member {
    backend: Arc<dyn StateBackend>,
    timeout: Duration,
    breaker: Breaker,
    outage: Mutex<Outage>,
    /// Whether `outage` holds anything (read without the lock).
    pending: std::sync::atomic::AtomicBool,
    served: AtomicU64,
    failures: AtomicU64,
}

/// An ordered chain of backends, itself a [`StateBackend`]: each call goes
/// to the first member whose health breaker lets it through, within that
/// member's timeout, and on a failure (unavailable, timed out, or any
/// temporary error) moves on to the next. A [`NullBackend`](crate::NullBackend)
/// at the end makes the chain fail open.
///
/// # Writes during an outage
///
/// Writes that land on a member while a member before it is unhealthy live
/// only there, and their keys are tracked (up to
/// [`max_tracked_keys`](FallbackBuilder::max_tracked_keys)). When the
/// earlier member answers its probe (a health check), the outage's writes
/// are settled as [`Recovery`] says, with every other call waiting and the
/// member taking no calls until they are: a clear or a delete made during
/// the outage (a compare-and-swap or transaction counts only if it
/// applied) is applied to it, values are dropped (or copied), and the keys
/// are removed from the later members. Only then is the member closed;
/// what could not be settled stays tracked and the member is probed again
/// later. A write that failed or was dropped on a fallback may have
/// applied: it is removed from the fallback but not applied to the
/// recovered member. A write that lands on a fallback while the first
/// member's breaker is still closed (one failed call) is settled as soon
/// as that member answers again. Nothing deleted during an outage comes
/// back when it ends, and nothing from one outage resurfaces in the next
/// (beyond [`max_tracked_keys`](FallbackBuilder::max_tracked_keys), the
/// fallback is cleared at recovery and deletes past the bound are not
/// applied).
///
/// Reads during an outage see only what the fallback holds. Operations that
/// need a capability (pub/sub, transactions) go to the first healthy member
/// that has it. [`capabilities`](StateBackend::capabilities) are the first
/// member's.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use std::time::Duration;
/// use statecraft::{Fallback, MemoryBackend, NullBackend, StateBackend};
///
/// let chain = Fallback::builder()
///     .member(MemoryBackend::new(), Duration::from_millis(100))
///     .member(NullBackend::new(), Duration::from_millis(10))
///     .build()?;
/// let mut events = chain.events();
/// chain.put(b"k", "v".into()).await?;
/// assert!(events.try_recv().is_err(), "the first member served it");
/// # Ok(()) }
/// ```
pub struct Fallback {
    members: Vec<Member>,
    /// Calls hold it shared; settling an outage holds it alone.
    gate: RwLock<()>,
    recovery: Recovery,
    max_tracked: usize,
    events: broadcast::Sender<FallbackEvent>,
    stats: StatsRecorder,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<(&str, Health)> = self
            .members
            .iter()
            .map(|m| (m.backend.name(), m.breaker.health()))
            .collect();
        f.debug_struct("Fallback")
            .field("members", &members)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Fallback`]; see [`Fallback::builder`].
#[derive(Default)]
pub struct FallbackBuilder {
    members: Vec<(Arc<dyn StateBackend>, Duration)>,
    policy: HealthPolicy,
    recovery: Recovery,
    max_tracked: Option<usize>,
}

impl std::fmt::Debug for FallbackBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("members", &self.members.len())
            .field("policy", &self.policy)
            .field("recovery", &self.recovery)
            .finish_non_exhaustive()
    }
}

impl FallbackBuilder {
    /// Appends `backend`, whose calls are cut off after `timeout`.
    pub fn member(self, backend: impl StateBackend + 'static, timeout: Duration) -> Self {
        self.shared_member(Arc::new(backend), timeout)
    }

    /// Appends a shared backend, whose calls are cut off after `timeout`.
    pub fn shared_member(mut self, backend: Arc<dyn StateBackend>, timeout: Duration) -> Self {
        self.members.push((backend, timeout));
        self
    }

    /// When every member's breaker opens and probes (default: 3 failures
    /// within 10 s; probe after 500 ms, doubling up to 2 s).
    pub fn health(mut self, policy: HealthPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// What happens to an outage's writes when it ends (default
    /// [`Recovery::ApplyDeletes`]).
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// How many keys written during an outage are tracked per member
    /// (default 100,000); see [`FallbackEvent::Recovered::overflowed`].
    pub fn max_tracked_keys(mut self, n: usize) -> Self {
        self.max_tracked = Some(n);
        self
    }

    /// The chain.
    pub fn build(self) -> Result<Fallback> {
        let invalid =
            |what: &str| Error::new(ErrorKind::InvalidArgument, format!("Fallback: {what}"));
        if self.members.is_empty() {
            return Err(invalid("a chain needs at least one member"));
        }
        if self.members.iter().any(|(_, timeout)| timeout.is_zero()) {
            return Err(invalid("a member's timeout must be positive"));
        }
        let policy = self.policy;
        if policy.failures == 0 || policy.window.is_zero() || policy.open_for.is_zero() {
            return Err(invalid(
                "the health policy needs at least one failure, a positive window and a positive opening",
            ));
        }
        let members = self
            .members
            .into_iter()
            .map(|(backend, timeout)| Member {
                backend,
                timeout,
                breaker: Breaker::new(HealthPolicy {
                    max_open_for: policy.max_open_for.max(policy.open_for),
                    ..policy
                }),
                outage: Mutex::default(),
                pending: std::sync::atomic::AtomicBool::new(false),
                served: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            })
            .collect();
        Ok(Fallback {
            members,
            gate: RwLock::new(()),
            recovery: self.recovery,
            max_tracked: self.max_tracked.unwrap_or(100_000),
            events: broadcast::channel(1024).0,
            stats: StatsRecorder::new(),
        })
    }
}

/// How a call's keys are written, for outage tracking.
pub(super) type Written<'w> = &'w [(&'w [u8], Mark)];

/// Whether an error says the member is unhealthy (rather than that the
/// call was wrong).
fn is_failure(err: &Error) -> bool {
    err.is_temporary()
        || matches!(
            err.kind(),
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Io | ErrorKind::Backend
        )
}

/// Re-arms a probe whose call never finished.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

impl Fallback {
    /// Starts building a chain.
    pub fn builder() -> FallbackBuilder {
        FallbackBuilder::default()
    }

    /// Fallbacks, health changes and recoveries as they happen (a receiver
    /// that falls more than 1,024 events behind skips the oldest).
    pub fn events(&self) -> broadcast::Receiver<FallbackEvent> {
        self.events.subscribe()
    }

    /// The health of every member, in chain order.
    pub fn health(&self) -> Vec<Health> {
        self.members.iter().map(|m| m.breaker.health()).collect()
    }

    fn emit(&self, event: FallbackEvent) {
        match &event {
            FallbackEvent::FellBack {
                member,
                backend,
                operation,
                error,
            } => {
                tracing::warn!(member, backend, operation = operation.as_str(), %error, "fallback")
            }
            FallbackEvent::HealthChanged {
                member,
                backend,
                health,
            } => tracing::info!(member, backend, ?health, "fallback member health"),
            FallbackEvent::Recovered {
                member, backend, ..
            } => {
                tracing::info!(member, backend, ?event, "fallback member recovered")
            }
        }
        let _ = self.events.send(event);
    }

    fn health_changed(&self, index: usize, health: Option<Health>) {
        if let Some(health) = health {
            self.emit(FallbackEvent::HealthChanged {
                member: index,
                backend: self.members[index].backend.name(),
                health,
            });
        }
    }

    /// Sends one operation down the chain: `call` runs it on a member;
    /// `written` names the keys it writes (for outage tracking), and
    /// `applied` says whether an answer changed anything.
    pub(super) fn route<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        written: Written<'a>,
        applied: fn(&T) -> bool,
        call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        StateFuture::new(self.dispatch(operation, written, applied, call))
    }

    /// [`route`](Self::route), with keys borrowed for less than the call.
    ///
    /// A member whose opening has elapsed is probed with a health check
    /// first; if it answers, the outage's writes are settled (with every
    /// other call waiting) while it still takes no calls, and only then is
    /// it closed; the call starts down the chain again.
    pub(super) async fn dispatch<'a, T>(
        &'a self,
        operation: Operation,
        written: Written<'_>,
        applied: fn(&T) -> bool,
        mut call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send,
    ) -> Result<T> {
        'chain: loop {
            let shared = self.gate.read().await;
            let mut last: Option<Error> = None;
            for (index, member) in self.members.iter().enumerate() {
                let (admit, health) = member.breaker.admit();
                self.health_changed(index, health);
                match admit {
                    Admit::Skip => continue,
                    Admit::Probe => {
                        drop(shared);
                        self.probe(index).await;
                        continue 'chain;
                    }
                    Admit::Call => {}
                }
                // Tracked as touched until the answer says more: a call
                // dropped while a later member runs it may have applied.
                let mut unfinished = Unfinished {
                    chain: self,
                    index,
                    written: (!operation.is_read() && index > 0).then_some(written),
                };
                // An in-process member answers at once: no timer for it.
                let answer = match call(&*member.backend).into_ready() {
                    Ok(answer) => answer,
                    Err(pending) => match tokio::time::timeout(member.timeout, pending).await {
                        Ok(answer) => answer,
                        Err(_) => Err(timeout_error(
                            member.backend.name(),
                            operation,
                            member.timeout,
                        )),
                    },
                };
                let tracked = unfinished.written.take();
                if operation == Operation::Clear
                    && index > 0
                    && !matches!(&answer, Err(e) if e.kind() == ErrorKind::Unsupported)
                {
                    self.track_clear(index);
                }
                match answer {
                    // Answered, but cannot do it: try the next one.
                    Err(err) if err.kind() == ErrorKind::Unsupported => last = Some(err),
                    Err(err) if is_failure(&err) => {
                        member.failures.fetch_add(1, Ordering::Relaxed);
                        let health = member.breaker.failure();
                        self.emit(FallbackEvent::FellBack {
                            member: index,
                            backend: member.backend.name(),
                            operation,
                            error: err.to_string(),
                        });
                        self.health_changed(index, health);
                        if let Some(written) = tracked {
                            self.track(index, written, true);
                        }
                        last = Some(err);
                    }
                    answer => {
                        member.served.fetch_add(1, Ordering::Relaxed);
                        if let Some(written) = tracked {
                            let changed = answer.as_ref().map_or(true, applied);
                            if changed {
                                self.track(index, written, answer.is_err());
                            }
                        }
                        if self.members[index + 1..]
                            .iter()
                            .any(|m| m.pending.load(Ordering::SeqCst))
                        {
                            // A later member took writes (while this one
                            // failed a call, say): settle them here now.
                            drop(shared);
                            self.settle(index).await;
                        }
                        return answer;
                    }
                }
            }
            return Err(last.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Unavailable,
                    "no member of the fallback chain is healthy",
                )
                .temporary(true)
                .with_backend("fallback")
                .with_operation(operation)
            }));
        }
    }

    /// Probes member `index` (admitted as the probe): if it answers a
    /// health check, settles the outage and closes it; otherwise reopens.
    async fn probe(&self, index: usize) {
        let member = &self.members[index];
        let mut guard = ProbeGuard {
            breaker: &member.breaker,
            armed: true,
        };
        let check = tokio::time::timeout(member.timeout, member.backend.health_check());
        let settled = matches!(check.await, Ok(Ok(_))) && self.settle(index).await;
        guard.armed = false;
        if settled {
            let health = member.breaker.close();
            self.health_changed(index, health);
        } else {
            member.failures.fetch_add(1, Ordering::Relaxed);
            let health = member.breaker.failure();
            self.health_changed(index, health);
        }
    }
}

/// Tracks a call's keys as touched if it is dropped while a member after
/// the first runs it.
struct Unfinished<'c, 'w> {
    chain: &'c Fallback,
    index: usize,
    written: Option<Written<'w>>,
}

impl Drop for Unfinished<'_, '_> {
    fn drop(&mut self) {
        if let Some(written) = self.written.take() {
            self.chain.track(self.index, written, true);
        }
    }
}
