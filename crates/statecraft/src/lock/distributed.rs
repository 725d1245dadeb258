//! [`Locks`]: named locks in a shared store, each acquisition with a
//! fencing token; [`LockGuard`]: a holding, released on drop.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::machine::{LockAnswer, LockOp, LockState, Owner, MAX_LEASE_US};
use super::shared::{op_input, parse_answer, parse_peek, LockStep, PEEK};

/// How [`Locks`] talk to the store and keep leases.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LockConfig {
    /// The bound on each round trip (default 1 s): an acquisition, an
    /// extension or a release not answered within it fails with
    /// [`Timeout`](ErrorKind::Timeout).
    pub timeout: Duration,
    /// The longest a waiter in [`Locks::lock`] sleeps between tries when
    /// no release wakes it (default 500 ms): releases are published to
    /// waiters on stores with pub/sub, and a waiter otherwise tries again
    /// when the holder's lease runs out or after this long.
    pub poll_every: Duration,
    /// Whether a holding renews its lease by itself (a watchdog, default
    /// off): every third of the lease, until it is released or lost.
    pub renew: bool,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            timeout: Duration::from_secs(1),
            poll_every: Duration::from_millis(500),
            renew: false,
        }
    }
}

impl LockConfig {
    /// The same, renewing its leases (see [`renew`](Self::renew)).
    pub fn renewing(mut self) -> Self {
        self.renew = true;
        self
    }
}

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
    inner: Arc<LocksInner>,
}

struct LocksInner {
    backend: Arc<dyn StateBackend>,
    config: LockConfig,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locks")
            .field("backend", &self.inner.backend.name())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// A lock's key: `lock:<name>`, the name's `%` and `:` escaped.
fn key_of(name: &str) -> Bytes {
    Bytes::from(format!("lock:{}", crate::limiter::escaped(name)))
}

/// The channel a lock's releases are published on.
fn channel_of(name: &str) -> String {
    format!("statecraft:lock:{}", crate::limiter::escaped(name))
}

fn lease_us(lease: Duration) -> Result<u64> {
    let us = u64::try_from(lease.as_micros()).unwrap_or(u64::MAX);
    if (1..=MAX_LEASE_US).contains(&us) {
        Ok(us)
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a lock's lease must be 1 µs to 366 days, not {lease:?}"),
        ))
    }
}

/// What a holder may count on: `left` from `sent`, less 1 % for drift.
fn local_deadline(sent: Instant, left_us: u64) -> Instant {
    sent + Duration::from_micros(left_us - left_us / 100)
}

impl Locks {
    /// Locks in `backend`, by the default [`LockConfig`].
    pub fn new(backend: Arc<dyn StateBackend>) -> Locks {
        Locks::with_config(backend, LockConfig::default())
    }

    /// Locks in `backend`, by `config`.
    pub fn with_config(backend: Arc<dyn StateBackend>, config: LockConfig) -> Locks {
        Locks {
            inner: Arc::new(LocksInner { backend, config }),
        }
    }

    /// Takes `name` for `lease` if it is free now: the holding, or `None`
    /// when another holds it. An acquisition whose answer is lost (a
    /// timeout) may have taken the lock, which then stays taken until the
    /// lease runs out.
    pub async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
        let owner = Owner::random()?;
        match self.acquire(name, owner, lease).await? {
            Acquired::Held(guard) => Ok(Some(guard)),
            Acquired::Busy { .. } => Ok(None),
        }
    }

    /// Takes `name` for `lease`, waiting at most `wait` for it to be free
    /// (woken by the holder's release where the store has pub/sub, else
    /// when its lease runs out or every [`poll_every`](LockConfig)): the
    /// holding, or a [`Timeout`](ErrorKind::Timeout) error naming the
    /// holder's token.
    pub async fn lock(&self, name: &str, lease: Duration, wait: Duration) -> Result<LockGuard> {
        let owner = Owner::random()?;
        let started = Instant::now();
        let mut releases = None;
        let mut subscribed = false;
        loop {
            let busy = match self.acquire(name, owner, lease).await {
                Ok(Acquired::Held(guard)) => return Ok(guard),
                Ok(Acquired::Busy { token, retry_after }) => Some((token, retry_after)),
                // The same owner asks again: an acquisition that took the
                // lock unanswered is answered by the next try.
                Err(err) if err.is_temporary() => None,
                Err(err) => return Err(err),
            };
            let elapsed = started.elapsed();
            if elapsed >= wait {
                let holder = busy.map_or("unknown".to_string(), |(token, _)| token.to_string());
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("lock {name:?}: still held (token {holder}) after waiting {wait:?}"),
                ));
            }
            if !subscribed {
                subscribed = true;
                let channel = channel_of(name);
                let subscribe = self.inner.backend.subscribe(&channel);
                releases = tokio::time::timeout(self.inner.config.timeout, subscribe)
                    .await
                    .ok()
                    .and_then(Result::ok);
                // A release between the try and the subscription is seen
                // by trying once more at once.
                continue;
            }
            let nap = busy
                .map_or(self.inner.config.poll_every, |(_, retry_after)| retry_after)
                .min(self.inner.config.poll_every)
                .min(wait - elapsed);
            match releases.as_mut() {
                Some(subscription) => {
                    let woken = tokio::time::timeout(nap, subscription.next_message()).await;
                    if let Ok(None | Some(Err(_))) = woken {
                        // The subscription ended: poll from now on.
                        releases = None;
                    }
                }
                None => tokio::time::sleep(nap).await,
            }
        }
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
            None => Err(guard.lost_error()),
        }
    }

    /// Who holds `name` now: its token and its lease left, by the store's
    /// clock (`None`: free).
    pub async fn holder(&self, name: &str) -> Result<Option<(u64, Duration)>> {
        let raw = self.round_trip(&key_of(name), PEEK).await?;
        let (now, state) = parse_peek(&raw)?;
        Ok(state
            .as_ref()
            .and_then(|s| s.holder(now))
            .map(|(_, token, expires)| (token, Duration::from_micros(expires - now))))
    }

    /// The last token given for `name` (0: none remembered).
    pub async fn last_token(&self, name: &str) -> Result<u64> {
        let raw = self.round_trip(&key_of(name), PEEK).await?;
        Ok(parse_peek(&raw)?.1.as_ref().map_or(0, LockState::token))
    }

    async fn round_trip(&self, key: &[u8], input: &[u8]) -> Result<Bytes> {
        round_trip(&self.inner, key, input).await
    }

    async fn acquire(&self, name: &str, owner: Owner, lease: Duration) -> Result<Acquired> {
        let lease_us = lease_us(lease)?;
        let key = key_of(name);
        let sent = Instant::now();
        let op = LockOp::Acquire { owner, lease_us };
        let raw = self.round_trip(&key, op_input(op, 0).as_bytes()).await?;
        match parse_answer(&raw)? {
            LockAnswer::Held { token, lease_us } => Ok(Acquired::Held(LockGuard::start(
                self.inner.clone(),
                name,
                key,
                owner,
                token,
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

async fn round_trip(inner: &LocksInner, key: &[u8], input: &[u8]) -> Result<Bytes> {
    let update = inner.backend.update_atomic(key, &LockStep, input);
    match tokio::time::timeout(inner.config.timeout, update).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "the lock store did not answer within {:?}",
                inner.config.timeout
            ),
        )),
    }
}

enum Acquired {
    Held(LockGuard),
    Busy { token: u64, retry_after: Duration },
}

/// One holding of a lock: released when dropped (in the background, on
/// the runtime it was taken on) or by [`unlock`](Self::unlock). Its
/// [`lost`](Self::lost) future resolves when the lease is no longer held.
#[must_use = "a lock is released when its guard is dropped"]
pub struct LockGuard {
    held: Arc<Held>,
    released: bool,
}

struct Held {
    inner: Arc<LocksInner>,
    name: String,
    key: Bytes,
    owner: Owner,
    token: u64,
    lease: Duration,
    /// Until when the lease surely runs, by this process's clock.
    deadline: Mutex<Instant>,
    lost: watch::Sender<bool>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.held.name)
            .field("token", &self.held.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Held {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
    }

    fn lose(&self) {
        self.lost.send_replace(true);
    }

    fn stop_keeper(&self) {
        if let Some(keeper) = self
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            keeper.abort();
        }
    }

    /// One extension by `lease` from now.
    async fn extend(&self, lease: Duration) -> Result<()> {
        let lease_us = lease_us(lease)?;
        let sent = Instant::now();
        let op = LockOp::Extend {
            owner: self.owner,
            token: self.token,
            lease_us,
        };
        let raw = round_trip(&self.inner, &self.key, op_input(op, 0).as_bytes()).await?;
        match parse_answer(&raw)? {
            LockAnswer::Held { lease_us, .. } => {
                self.set_deadline(local_deadline(sent, lease_us));
                Ok(())
            }
            _ => {
                self.lose();
                Err(self.lost_error())
            }
        }
    }

    fn lost_error(&self) -> Error {
        Error::new(
            ErrorKind::Lost,
            format!(
                "lock {:?}: the holding of token {} is lost",
                self.name, self.token
            ),
        )
    }

    /// Keeps the lease: renews it every third of the lease (with
    /// renewal on), or marks it lost when it runs out.
    async fn keep(self: Arc<Self>, renew: bool) {
        loop {
            let deadline = self.deadline();
            if !renew {
                tokio::time::sleep_until(deadline).await;
                if Instant::now() >= self.deadline() {
                    self.lose();
                    return;
                }
                continue;
            }
            let lease = self.lease;
            let renew_at = (deadline - lease.mul_f64(2.0 / 3.0)).max(Instant::now());
            tokio::time::sleep_until(renew_at).await;
            // A renewal still unanswered when the lease runs out is too
            // late: the holding counts as lost then, not when it answers.
            let extended = tokio::select! {
                extended = self.extend(lease) => extended,
                () = tokio::time::sleep_until(deadline) => {
                    self.lose();
                    return;
                }
            };
            match extended {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::Lost => return,
                Err(err) => {
                    tracing::warn!(lock = %self.name, token = self.token, error = %err,
                        "a lock's renewal failed: trying again while the lease runs");
                    // Tries again soon (from the top: the renewal time has
                    // passed), or counts the holding lost when the lease
                    // runs out first.
                    let retry = (lease / 10).min(Duration::from_millis(100));
                    let next = Instant::now() + retry;
                    if next >= deadline {
                        tokio::time::sleep_until(deadline).await;
                        self.lose();
                        return;
                    }
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }

    async fn release(&self) -> Result<()> {
        let op = LockOp::Release {
            owner: self.owner,
            token: self.token,
        };
        let raw = round_trip(&self.inner, &self.key, op_input(op, 0).as_bytes()).await?;
        let answer = parse_answer(&raw)?;
        // Waiters are woken (at most once: a waiter that misses it polls).
        let channel = channel_of(&self.name);
        let publish = self
            .inner
            .backend
            .publish(&channel, Bytes::from(self.token.to_string()));
        let _ = tokio::time::timeout(self.inner.config.timeout, publish).await;
        match answer {
            LockAnswer::Released { .. } => Ok(()),
            _ => {
                self.lose();
                Err(self.lost_error())
            }
        }
    }
}

impl LockGuard {
    fn start(
        inner: Arc<LocksInner>,
        name: &str,
        key: Bytes,
        owner: Owner,
        token: u64,
        lease: Duration,
        deadline: Instant,
    ) -> LockGuard {
        let renew = inner.config.renew;
        let held = Arc::new(Held {
            inner,
            name: name.to_string(),
            key,
            owner,
            token,
            lease,
            deadline: Mutex::new(deadline),
            lost: watch::channel(false).0,
            keeper: Mutex::new(None),
        });
        let keeper = tokio::spawn(held.clone().keep(renew));
        *held.keeper.lock().unwrap_or_else(PoisonError::into_inner) = Some(keeper);
        LockGuard {
            held,
            released: false,
        }
    }

    /// The fencing token of this holding.
    pub fn token(&self) -> u64 {
        self.held.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.held.name
    }

    /// Whether the holding is known lost (its lease ran out by this
    /// process's clock, a renewal or release found another holder).
    pub fn is_lost(&self) -> bool {
        *self.held.lost.borrow()
    }

    /// Resolves when the holding is lost (at once if it is), or once the
    /// guard is released and gone; work done under the lock should stop
    /// then.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.held.lost.subscribe();
        async move {
            // The sender lives in the guard's holding: an error means it
            // is gone, which only a released guard allows.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// How long the lease surely still runs, by this process's clock.
    pub fn remaining(&self) -> Duration {
        self.held
            .deadline()
            .saturating_duration_since(Instant::now())
    }

    /// Renews the lease for `lease` from now: a [`Lost`](ErrorKind::Lost)
    /// error if it is no longer held.
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        if self.is_lost() {
            return Err(self.held.lost_error());
        }
        self.held.extend(lease).await
    }

    /// Releases the lock (renewal stops first): a [`Lost`](ErrorKind::Lost)
    /// error if it was no longer held.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.held.stop_keeper();
        self.held.release().await
    }

    fn lost_error(&self) -> Error {
        self.held.lost_error()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.held.stop_keeper();
        // Released in the background; without a runtime, the lease runs
        // out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let held = self.held.clone();
            runtime.spawn(async move {
                if let Err(err) = held.release().await {
                    tracing::debug!(lock = %held.name, error = %err, "a dropped lock's release failed");
                }
            });
        }
    }
}
