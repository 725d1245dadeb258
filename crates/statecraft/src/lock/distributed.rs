//! [`Locks`]: named locks in a shared store, each acquisition with a
//! fencing token; [`LockGuard`]: a holding, released on drop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::guard::{lease_us, local_deadline, Acquired, Holding, Kind, LockConfig, Store};
use super::machine::{LockAnswer, LockOp, LockRecord, Owner};
use super::shared::{op_input, parse_answer, parse_peek, LockStep, PEEK};

/// Named locks in `backend`: at most one holder per name across every
/// process sharing the store, each acquisition with a fencing token that
/// strictly increases per name (see [the module](crate::lock) for how
/// tokens survive the key and a store restart). Releases and extensions
/// are by the holder only: each acquisition draws a random owner, checked
/// by the store in the same atomic step. The store's clock decides when a
/// lease runs out.
///
/// A holder knows its lease by its own monotonic clock, from when it sent
/// the acquisition (before the store started the lease) less 1 % for the
/// clocks' drift, so that it counts itself lost no later than the store
/// frees the lock — while the process runs. A process paused past its
/// lease (a GC, SIGSTOP) can still act after another took the lock: make
/// its writes fenced ([`fenced_put`](super::fenced_put)), which the store
/// rejects for a token older than one it has seen.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use statecraft::lock::Locks;
///
/// let locks = Locks::new(Arc::new(statecraft::MemoryBackend::new()));
/// let guard = locks.try_lock("report", Duration::from_secs(10)).await?.expect("free");
/// assert!(locks.try_lock("report", Duration::from_secs(10)).await?.is_none());
/// let token = guard.token();
/// guard.unlock().await?;
/// let again = locks.lock("report", Duration::from_secs(10), Duration::from_secs(1)).await?;
/// assert!(again.token() > token);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Locks {
    store: Arc<Store>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("backend", &self.store.backend.name())
            .field("config", &self.store.config)
            .finish()
    }
}

/// A lock's key: `lock:<name>`, the name's `%` and `:` escaped.
pub(super) fn key_of(name: &str) -> Bytes {
    Bytes::from(format!("lock:{}", crate::limiter::escaped(name)))
}

/// The channel a lock's releases are published on.
pub(super) fn channel_of(name: &str) -> String {
    format!("statecraft:lock:{}", crate::limiter::escaped(name))
}

impl Locks {
    /// Locks in `backend`, by the default [`LockConfig`].
    pub fn new(backend: Arc<dyn StateBackend>) -> Locks {
        Locks::with_config(backend, LockConfig::default())
    }

    /// Locks in `backend`, by `config`.
    pub fn with_config(backend: Arc<dyn StateBackend>, config: LockConfig) -> Locks {
        Locks {
            store: Arc::new(Store::new(backend, config)),
        }
    }

    /// Takes `name` for `lease` if it is free now: the holding, or `None`
    /// when another holds it or it is kept for a waiter (see
    /// [`lock`](Self::lock)). An acquisition whose answer is lost (a
    /// timeout) may have taken the lock, which then stays taken until the
    /// lease runs out.
    pub async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
        let owner = Owner::random()?;
        match self.acquire(name, owner, lease).await? {
            Acquired::Held(holding) => Ok(Some(LockGuard { holding })),
            Acquired::Busy { .. } => Ok(None),
        }
    }

    /// Takes `name` for `lease`, waiting at most `wait` for it to be free
    /// (woken by the holder's release where the store has pub/sub, else
    /// when its lease runs out or every [`poll_every`](LockConfig)): the
    /// holding, or a [`Timeout`](ErrorKind::Timeout) error naming the
    /// last token given.
    ///
    /// Waiters take the lock in the order they first asked: each stands
    /// in a line the store keeps with the lock, and a free lock goes to
    /// the first of them, not to a caller (of this or of
    /// [`try_lock`](Self::try_lock)) asking just then. A waiter's place is
    /// kept for twice [`poll_every`](LockConfig::poll_every) plus three
    /// [`timeout`](LockConfig::timeout)s from each of its asks; one that
    /// gives up or is dropped leaves the line (in the background), giving
    /// the lock back if an ask of its own took it unanswered, and one
    /// whose process died holds up a free lock until its place lapses.
    /// The line keeps [`MAX_LINE`](super::MAX_LINE) waiters; more wait
    /// after them, in no order.
    ///
    /// A try whose answer timed out is tried again by the same owner,
    /// which gets it back if it took the lock; but a try the store only
    /// carries out after a later one (a slow connection) — or after the
    /// waiter left — takes the lock or a place again, until its lease or
    /// its place runs out.
    pub async fn lock(&self, name: &str, lease: Duration, wait: Duration) -> Result<LockGuard> {
        let owner = Owner::random()?;
        let what = format!("lock {name:?}");
        let lease_us = lease_us(lease)?;
        let fair = self.store.config.fair;
        let op = if fair {
            LockOp::Wait {
                owner,
                lease_us,
                line_us: lease_us_capped(self.store.config.place_time()),
            }
        } else {
            LockOp::Acquire { owner, lease_us }
        };
        let mut leave = LeaveOnDrop {
            store: Some(self.store.clone()),
            key: key_of(name),
            channel: channel_of(name),
            owner,
            line: Line::Lock,
        };
        // Woken by a release for this waiter, or for all when unfair.
        let me = fair.then_some(owner);
        let waited = self
            .store
            .wait_for(&channel_of(name), me, &what, wait, || {
                self.ask(name, owner, op, lease)
            })
            .await;
        // Taken, the step took it out of the line; not taken, it leaves
        // before the answer (so that a caller trying next is not turned
        // away by its place).
        if let (Err(_), Some(store)) = (&waited, leave.store.take()) {
            leave_line(&store, &leave.key, &leave.channel, owner, Line::Lock).await;
        }
        Ok(LockGuard { holding: waited? })
    }

    /// Runs `work` holding `name` (taken as [`lock`](Self::lock) takes
    /// it), then releases it. If the lease is lost while `work` runs,
    /// `work` is dropped where it is (cancelled) and the answer is a
    /// [`Lost`](ErrorKind::Lost) error.
    pub async fn with_lock<T, F, Fut>(
        &self,
        name: &str,
        lease: Duration,
        wait: Duration,
        work: F,
    ) -> Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(name, lease, wait).await?;
        let outcome = tokio::select! {
            value = work() => Some(value),
            () = guard.lost() => None,
        };
        match outcome {
            Some(value) => {
                guard.unlock().await?;
                Ok(value)
            }
            None => Err(guard.holding.lease.lost_error()),
        }
    }

    /// Who holds `name` now: its token and its lease left, by the store's
    /// clock (`None`: free).
    pub async fn holder(&self, name: &str) -> Result<Option<(u64, Duration)>> {
        let raw = self
            .store
            .round_trip(&key_of(name), &LockStep, PEEK)
            .await?;
        let (now, state) = parse_peek(&raw)?;
        Ok(state
            .as_ref()
            .and_then(|s| s.holder(now))
            .map(|(_, token, expires)| (token, Duration::from_micros(expires - now))))
    }

    /// The last token given for `name` (0: none remembered).
    pub async fn last_token(&self, name: &str) -> Result<u64> {
        let raw = self
            .store
            .round_trip(&key_of(name), &LockStep, PEEK)
            .await?;
        Ok(parse_peek(&raw)?.1.as_ref().map_or(0, LockRecord::token))
    }

    async fn acquire(&self, name: &str, owner: Owner, lease: Duration) -> Result<Acquired> {
        let lease_us = lease_us(lease)?;
        self.ask(name, owner, LockOp::Acquire { owner, lease_us }, lease)
            .await
    }

    /// One acquisition by `owner`: `op` its [`Acquire`](LockOp::Acquire)
    /// or [`Wait`](LockOp::Wait) for `lease`.
    async fn ask(&self, name: &str, owner: Owner, op: LockOp, lease: Duration) -> Result<Acquired> {
        let key = key_of(name);
        let sent = Instant::now();
        let input = op_input(op, 0);
        let raw = self
            .store
            .round_trip(&key, &LockStep, input.as_bytes())
            .await?;
        match parse_answer(&raw)? {
            LockAnswer::Held { token, lease_us } => Ok(Acquired::Held(Holding::start(
                self.store.clone(),
                name,
                key,
                channel_of(name),
                owner,
                Kind::Lock { token },
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
                format!("a lock acquisition answered {other:?}"),
            )),
        }
    }
}

/// Whose line a waiter stands in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Line {
    /// A lock's: a leave names the next waiter to wake.
    Lock,
    /// A semaphore's: a leave wakes every waiter (a freed place or permit
    /// may let any of them in).
    Semaphore,
}

/// A line's place given up when a [`Locks::lock`] (or a semaphore's
/// wait) is dropped while it waits: [`leave_line`], in the background on
/// the runtime of the wait.
pub(super) struct LeaveOnDrop {
    /// `None` once the lock is taken (or left).
    pub(super) store: Option<Arc<Store>>,
    pub(super) key: Bytes,
    pub(super) channel: String,
    pub(super) owner: Owner,
    pub(super) line: Line,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let (Some(store), Ok(runtime)) = (self.store.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let (key, channel, owner, line) = (
            self.key.clone(),
            std::mem::take(&mut self.channel),
            self.owner,
            self.line,
        );
        runtime.spawn(async move { leave_line(&store, &key, &channel, owner, line).await });
    }
}

/// `owner` gives up waiting: out of the line, and the lock (or permit)
/// given back if an ask of its own took it unanswered; the waiters a free
/// lock or permit now awaits are woken. (A place not given back lapses by
/// itself.)
pub(super) async fn leave_line(
    store: &Arc<Store>,
    key: &[u8],
    channel: &str,
    owner: Owner,
    line: Line,
) {
    let (update, input): (&dyn crate::AtomicUpdate, String) = match line {
        Line::Lock => (&LockStep, op_input(LockOp::Leave { owner }, 0)),
        Line::Semaphore => (
            &super::permits::SemaphoreStep,
            super::permits::semaphore_input(super::permits::SemaphoreOp::Leave { owner }, 0),
        ),
    };
    let Ok(raw) = store.round_trip(key, update, input.as_bytes()).await else {
        return;
    };
    let wake = match (line, parse_answer(&raw)) {
        (
            Line::Lock,
            Ok(
                LockAnswer::Released {
                    next: Some(next), ..
                }
                | LockAnswer::Left { next: Some(next) },
            ),
        ) => Bytes::from(next.to_hex()),
        (Line::Semaphore, Ok(LockAnswer::Released { .. } | LockAnswer::Left { .. })) => {
            Bytes::new()
        }
        _ => return,
    };
    let publish = store.backend.publish(channel, wake);
    let _ = tokio::time::timeout(store.config.timeout, publish).await;
}

/// A duration in µs for a step (1 µs to [`MAX_LEASE_US`](super::MAX_LEASE_US)).
pub(super) fn lease_us_capped(time: Duration) -> u64 {
    u64::try_from(time.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, super::MAX_LEASE_US)
}

/// One holding of a lock: released when dropped (in the background, on
/// the runtime it was taken on) or by [`unlock`](Self::unlock). Its
/// [`lost`](Self::lost) future resolves when the lease is no longer held.
#[must_use = "a lock is released when its guard is dropped"]
pub struct LockGuard {
    pub(super) holding: Holding,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name())
            .field("token", &self.token())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl LockGuard {
    pub(super) fn from_holding(holding: Holding) -> LockGuard {
        LockGuard { holding }
    }

    /// The fencing token of this holding.
    pub fn token(&self) -> u64 {
        self.holding.lease.kind.token()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.holding.lease.name
    }

    /// Whether the holding is known lost (its lease ran out by this
    /// process's clock, a renewal or release found another holder).
    pub fn is_lost(&self) -> bool {
        self.holding.is_lost()
    }

    /// Resolves when the holding is lost (at once if it is), or once the
    /// guard is released and gone; work done under the lock should stop
    /// then.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.holding.lost()
    }

    /// How long the lease surely still runs, by this process's clock.
    pub fn remaining(&self) -> Duration {
        self.holding.remaining()
    }

    /// Renews the lease for `lease` from now: a [`Lost`](ErrorKind::Lost)
    /// error if it is no longer held.
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        self.holding.extend(lease).await
    }

    /// Releases the lock (renewal stops first): a [`Lost`](ErrorKind::Lost)
    /// error if it was no longer held.
    pub async fn unlock(mut self) -> Result<()> {
        self.holding.release().await
    }
}
