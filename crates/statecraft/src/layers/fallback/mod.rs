//! [`Fallback`]: an ordered chain of backends, each behind its own timeout
//! and health breaker; a call goes to the first healthy one.

mod health;
mod ops;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, RwLock};

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::options::KeyTtl;
use crate::backend::StateBackend;
use crate::layers::timeout::timeout_error;
use crate::raw::recorder::StatsRecorder;

use self::health::{Admit, Breaker};
pub use self::health::{Health, HealthPolicy};

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
        /// Keys that could not be settled (their errors were logged).
        failed: u64,
        /// More keys were written during the outage than are tracked: the
        /// members after it were cleared entirely, and deletes beyond the
        /// bound were not applied.
        overflowed: bool,
    },
}

/// Keys written to a member while members before it were unhealthy
/// (`true`: the last write deleted the key).
#[derive(Debug, Default)]
struct Outage {
    keys: HashMap<Bytes, bool>,
    overflowed: bool,
}

struct Member {
    backend: Arc<dyn StateBackend>,
    timeout: Duration,
    breaker: Breaker,
    outage: Mutex<Outage>,
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
/// earlier member is healthy again, the next call waits while the outage's
/// writes are settled as [`Recovery`] says: by default deleted keys are
/// deleted from it too and the rest is dropped; the keys are removed from
/// the later members either way. Nothing deleted during an outage comes
/// back when it ends, and nothing from one outage resurfaces in the next.
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
pub(super) type Written<'w> = &'w [(&'w [u8], bool)];

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

    fn track(&self, index: usize, written: Written<'_>) {
        if index == 0 || written.is_empty() {
            return;
        }
        let member = &self.members[index];
        let mut outage = member.outage.lock().unwrap_or_else(|p| p.into_inner());
        for &(key, deleted) in written {
            if let Some(slot) = outage.keys.get_mut(key) {
                *slot = deleted;
            } else if outage.keys.len() < self.max_tracked {
                outage.keys.insert(Bytes::copy_from_slice(key), deleted);
            } else {
                outage.overflowed = true;
            }
        }
    }

    /// Sends one operation down the chain: `call` runs it on a member;
    /// `written` names the keys it writes (for outage tracking).
    pub(super) fn route<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        written: Written<'a>,
        call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        StateFuture::new(self.dispatch(operation, written, call))
    }

    /// [`route`](Self::route), with keys borrowed for less than the call.
    ///
    /// A member whose opening has elapsed is probed with a health check
    /// first; if it answers, the outage's writes are settled (with every
    /// other call waiting) before any call reaches it, and the call starts
    /// down the chain again.
    pub(super) async fn dispatch<'a, T>(
        &'a self,
        operation: Operation,
        written: Written<'_>,
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
                        let mut probe = ProbeGuard {
                            breaker: &member.breaker,
                            armed: true,
                        };
                        let check =
                            tokio::time::timeout(member.timeout, member.backend.health_check());
                        let answered = matches!(check.await, Ok(Ok(_)));
                        probe.armed = false;
                        if !answered {
                            member.failures.fetch_add(1, Ordering::Relaxed);
                            let health = member.breaker.failure();
                            self.health_changed(index, health);
                            continue;
                        }
                        let health = member.breaker.success();
                        self.health_changed(index, health);
                        drop(shared);
                        self.settle(index).await;
                        continue 'chain;
                    }
                    Admit::Call => {}
                }
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
                        if !operation.is_read() {
                            // It may have applied here: count it as written.
                            self.track(index, written);
                        }
                        last = Some(err);
                    }
                    answer => {
                        member.served.fetch_add(1, Ordering::Relaxed);
                        let _ = member.breaker.success();
                        if !operation.is_read() {
                            self.track(index, written);
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

    /// Member `index` is healthy again: settle the writes the members after
    /// it took meanwhile, with every other call waiting.
    async fn settle(&self, index: usize) {
        let _alone = self.gate.write().await;
        let target = &*self.members[index].backend;
        let limit = self.members[index].timeout;
        let (mut deletes_applied, mut copied, mut cleared, mut failed) = (0u64, 0u64, 0u64, 0u64);
        let mut overflowed = false;
        for later in &self.members[index + 1..] {
            let outage =
                std::mem::take(&mut *later.outage.lock().unwrap_or_else(|p| p.into_inner()));
            overflowed |= outage.overflowed;
            let mut moved = Vec::new();
            for (key, deleted) in outage.keys {
                let settle_one = async {
                    if deleted {
                        target.delete(&key).await?;
                        deletes_applied += 1;
                    } else if self.recovery == Recovery::CopyWrites {
                        match later.backend.get_with_ttl(&key).await? {
                            Some((value, KeyTtl::ExpiresIn(left))) => {
                                target.put_with_ttl(&key, value, left).await?
                            }
                            Some((value, _)) => target.put(&key, value).await?,
                            None => {
                                target.delete(&key).await?;
                            }
                        }
                        copied += 1;
                    }
                    Ok::<(), Error>(())
                };
                let settled = match tokio::time::timeout(limit, settle_one).await {
                    Ok(settled) => settled,
                    Err(_) => Err(timeout_error(target.name(), Operation::Put, limit)),
                };
                match settled {
                    Ok(()) => moved.push(key),
                    Err(err) => {
                        failed += 1;
                        tracing::warn!(key_len = key.len(), error = %err, "fallback recovery left a key unsettled");
                    }
                }
            }
            if outage.overflowed {
                if later.backend.clear().await.is_err() {
                    failed += 1;
                }
            } else if !moved.is_empty() {
                match later.backend.batch_delete(&moved).await {
                    Ok(_) => cleared += moved.len() as u64,
                    Err(_) => failed += moved.len() as u64,
                }
            }
            // What the recovered member now holds from the outage is its
            // own tracking, if it is itself a fallback for an earlier one.
            if index > 0 && self.recovery == Recovery::CopyWrites {
                let written: Vec<(&[u8], bool)> = moved.iter().map(|k| (&k[..], false)).collect();
                self.track(index, &written);
            }
        }
        self.emit(FallbackEvent::Recovered {
            member: index,
            backend: target.name(),
            deletes_applied,
            copied,
            cleared,
            failed,
            overflowed,
        });
    }
}
