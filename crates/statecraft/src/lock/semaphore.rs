//! [`Semaphore`]: a counting semaphore in a shared store, each permit a
//! lease; [`SemaphorePermit`]: one permit, given back on drop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::distributed::{lease_us_capped, leave_line, LeaveOnDrop, Line};
use super::guard::{lease_us, local_deadline, Acquired, Holding, Kind, LockConfig, Store};
use super::machine::{LockAnswer, Owner};
use super::permits::{parse_holders, semaphore_input, SemaphoreOp, SemaphoreStep, MAX_PERMITS};
use super::shared::PEEK;

/// A counting semaphore named `name` in a shared store: at most `permits`
/// holders at a time across every process sharing it, each permit a
/// lease the store's clock ends — a holder that dies leaks nothing, its
/// permit comes back when its lease runs out. Permits are renewed and
/// given back by their owner only (a random owner per acquisition,
/// checked by the store in the same atomic step). Every process should
/// name the same number of permits: each acquisition is decided by the
/// number it asks with (and a waiter asking with fewer holds up those
/// behind it in the line while it waits).
///
/// A holder knows its lease as a [lock](super::Locks)'s holder does
/// (from when it asked, less 1 %), with the same [`lost`] signal and
/// opt-in renewal ([`LockConfig::renew`]).
///
/// [`lost`]: SemaphorePermit::lost
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use statecraft::lock::Semaphore;
///
/// let exports = Semaphore::new(Arc::new(statecraft::MemoryBackend::new()), "exports", 2)?;
/// let lease = Duration::from_secs(30);
/// let first = exports.try_acquire(lease).await?.expect("a permit");
/// let second = exports.try_acquire(lease).await?.expect("a permit");
/// assert!(exports.try_acquire(lease).await?.is_none());
/// first.release().await?;
/// let third = exports.acquire(lease, Duration::from_secs(1)).await?;
/// # drop((second, third));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    store: Arc<Store>,
    name: Arc<str>,
    key: Bytes,
    channel: Arc<str>,
    permits: u64,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .field("backend", &self.store.backend.name())
            .field("config", &self.store.config)
            .finish()
    }
}

impl Semaphore {
    /// The semaphore `name` with `permits` permits (1 to 4,096) in
    /// `backend`, by the default [`LockConfig`].
    pub fn new(backend: Arc<dyn StateBackend>, name: &str, permits: u64) -> Result<Semaphore> {
        Semaphore::with_config(backend, name, permits, LockConfig::default())
    }

    /// The same, by `config`.
    pub fn with_config(
        backend: Arc<dyn StateBackend>,
        name: &str,
        permits: u64,
        config: LockConfig,
    ) -> Result<Semaphore> {
        if !(1..=MAX_PERMITS).contains(&permits) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a semaphore has 1 to {MAX_PERMITS} permits, not {permits}"),
            ));
        }
        let escaped = crate::limiter::escaped(name);
        Ok(Semaphore {
            store: Arc::new(Store::new(backend, config)),
            name: name.into(),
            key: Bytes::from(format!("semaphore:{escaped}")),
            channel: format!("statecraft:semaphore:{escaped}").into(),
            permits,
        })
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many permits it has.
    pub fn permits(&self) -> u64 {
        self.permits
    }

    /// How many permits are held now, by the store's clock.
    pub async fn held(&self) -> Result<u64> {
        let raw = self
            .store
            .round_trip(&self.key, &SemaphoreStep, PEEK)
            .await?;
        let (now, holders) = parse_holders(&raw)?;
        Ok(holders.iter().filter(|h| h.1 > now).count() as u64)
    }

    /// Takes a permit for `lease` if one is free now: the permit, or
    /// `None` when all are held or the free ones are kept for waiters in
    /// line (see [`acquire`](Self::acquire)). An acquisition whose answer is lost (a
    /// timeout) may have taken a permit, which then stays taken until the
    /// lease runs out.
    pub async fn try_acquire(&self, lease: Duration) -> Result<Option<SemaphorePermit>> {
        let owner = Owner::random()?;
        match self.acquire_as(owner, lease).await? {
            Acquired::Held(holding) => Ok(Some(SemaphorePermit { holding })),
            Acquired::Busy { .. } => Ok(None),
        }
    }

    /// Takes a permit for `lease`, waiting at most `wait` for one to be
    /// free (woken by a release where the store has pub/sub, else when the
    /// soonest lease runs out or every [`poll_every`](LockConfig)): the
    /// permit, or a [`Timeout`](ErrorKind::Timeout) error.
    ///
    /// With a [`fair`](LockConfig::fair) configuration (the default)
    /// waiters take permits in the order they first asked, as
    /// [`Locks::lock`](super::Locks::lock)'s do: each stands in a line the
    /// store keeps with the semaphore, and a free permit goes to the first
    /// of them, not to a caller (of this or of
    /// [`try_acquire`](Self::try_acquire)) asking just then. One that gives
    /// up or is dropped leaves the line (giving back a permit an ask of its
    /// own took unanswered); one whose process died holds up a free permit
    /// until its place lapses (its place is kept for twice
    /// [`poll_every`](LockConfig::poll_every) plus three
    /// [`timeout`](LockConfig::timeout)s from each of its asks). The line
    /// keeps [`MAX_LINE`](super::MAX_LINE) waiters; more wait after them,
    /// in no order. An ask the store carries out only after its waiter
    /// left (a slow connection) takes a place or a permit again, until the
    /// place or the lease runs out. A release wakes every waiter, and
    /// those the line lets in take the permits.
    ///
    /// While processes of an older version (without the line) share the
    /// store, they read a semaphore with waiters as one with no permit
    /// held: run the new ones [`unfair`](LockConfig::unfair) until every
    /// process is upgraded.
    pub async fn acquire(&self, lease: Duration, wait: Duration) -> Result<SemaphorePermit> {
        let owner = Owner::random()?;
        let what = format!("semaphore {:?}", &*self.name);
        let lease_us = lease_us(lease)?;
        let op = if self.store.config.fair {
            SemaphoreOp::Wait {
                owner,
                permits: self.permits,
                lease_us,
                line_us: lease_us_capped(self.store.config.place_time()),
            }
        } else {
            SemaphoreOp::Acquire {
                owner,
                permits: self.permits,
                lease_us,
            }
        };
        let mut leave = LeaveOnDrop {
            // (Also unfair: a leave gives back a permit an ask took
            // unanswered.)
            store: Some(self.store.clone()),
            key: self.key.clone(),
            channel: self.channel.to_string(),
            owner,
            line: Line::Semaphore,
        };
        let waited = self
            .store
            .wait_for(&self.channel, None, &what, wait, || {
                self.ask(owner, op, lease)
            })
            .await;
        // Taken, the step took it out of the line; not taken, it leaves
        // before the answer (so that a caller trying next is not turned
        // away by its place).
        if let (Err(_), Some(store)) = (&waited, leave.store.take()) {
            leave_line(&store, &self.key, &self.channel, owner, Line::Semaphore).await;
        }
        Ok(SemaphorePermit { holding: waited? })
    }

    async fn acquire_as(&self, owner: Owner, lease: Duration) -> Result<Acquired> {
        let lease_us = lease_us(lease)?;
        let op = SemaphoreOp::Acquire {
            owner,
            permits: self.permits,
            lease_us,
        };
        self.ask(owner, op, lease).await
    }

    /// One acquisition by `owner`: `op` its
    /// [`Acquire`](SemaphoreOp::Acquire) or [`Wait`](SemaphoreOp::Wait)
    /// for `lease`.
    async fn ask(&self, owner: Owner, op: SemaphoreOp, lease: Duration) -> Result<Acquired> {
        let sent = Instant::now();
        let input = semaphore_input(op, 0);
        let raw = self
            .store
            .round_trip(&self.key, &SemaphoreStep, input.as_bytes())
            .await?;
        match super::shared::parse_answer(&raw)? {
            LockAnswer::Held { lease_us, .. } => Ok(Acquired::Held(Holding::start(
                self.store.clone(),
                &self.name,
                self.key.clone(),
                self.channel.to_string(),
                owner,
                Kind::Permit,
                lease,
                local_deadline(sent, lease_us),
            ))),
            LockAnswer::Busy {
                token,
                retry_after_us,
            } => Ok(Acquired::Busy {
                token,
                retry_after: Duration::from_micros(retry_after_us),
            }),
            other => Err(Error::new(
                ErrorKind::Corrupt,
                format!("a semaphore acquisition answered {other:?}"),
            )),
        }
    }
}

/// One permit of a [`Semaphore`]: given back when dropped (in the
/// background, on the runtime it was taken on) or by
/// [`release`](Self::release). Its [`lost`](Self::lost) future resolves
/// when the lease is no longer held.
#[must_use = "a permit is given back when it is dropped"]
pub struct SemaphorePermit {
    holding: Holding,
}

impl std::fmt::Debug for SemaphorePermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("semaphore", &self.holding.lease.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl SemaphorePermit {
    /// Whether the permit is known lost (its lease ran out by this
    /// process's clock, or a renewal found it gone).
    pub fn is_lost(&self) -> bool {
        self.holding.is_lost()
    }

    /// Resolves when the permit is lost (at once if it is), or once it is
    /// released and gone.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.holding.lost()
    }

    /// How long the lease surely still runs, by this process's clock.
    pub fn remaining(&self) -> Duration {
        self.holding.remaining()
    }

    /// Renews the lease for `lease` from now: a [`Lost`](ErrorKind::Lost)
    /// error if the permit is no longer held.
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        self.holding.extend(lease).await
    }

    /// Gives the permit back (renewal stops first): a
    /// [`Lost`](ErrorKind::Lost) error if it was no longer held.
    pub async fn release(mut self) -> Result<()> {
        self.holding.release().await
    }
}
