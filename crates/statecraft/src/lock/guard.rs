//! What locks and semaphores share: the store and its bounded round
//! trips, the wait for a release, and a holding (a lease kept, renewed,
//! told lost and released on drop).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::machine::{LockAnswer, LockOp, Owner, MAX_LEASE_US};
use super::permits::{semaphore_input, SemaphoreOp, SemaphoreStep};
use super::redlock::{extend_all, release_all, Granted};
use super::shared::{op_input, parse_answer, LockStep};

/// How [`Locks`](super::Locks) and [`Semaphore`](super::Semaphore)s talk
/// to the store and keep leases.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LockConfig {
    /// The bound on each round trip (default 1 s): an acquisition, an
    /// extension or a release not answered within it fails with
    /// [`Timeout`](ErrorKind::Timeout).
    pub timeout: Duration,
    /// The longest a waiter sleeps between tries when no release wakes it
    /// (default 500 ms): releases are published to waiters on stores with
    /// pub/sub, and a waiter otherwise tries again when the holder's lease
    /// runs out or after this long.
    pub poll_every: Duration,
    /// Whether a holding renews its lease by itself (a watchdog, default
    /// off): every third of the lease, until it is released or lost.
    pub renew: bool,
    /// Whether waiters take a lock or a semaphore's permit in the order
    /// they asked (default on): see [`Locks::lock`](super::Locks::lock)
    /// and [`Semaphore::acquire`](super::Semaphore::acquire). Off, a free
    /// lock or permit goes to whichever waiter asks first, and a release
    /// wakes them all: a waiter that paused or died then holds up nobody,
    /// which an [`Election`](super::Election) prefers (its campaigns are
    /// unfair). Unfair askers still yield to the fair waiters standing in
    /// a line; and while older versions share a store (they read a stored
    /// line as nothing held), run the new processes unfair: they then
    /// write no line.
    pub fair: bool,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            timeout: Duration::from_secs(1),
            poll_every: Duration::from_millis(500),
            renew: false,
            fair: true,
        }
    }
}

impl LockConfig {
    /// The same, renewing its leases (see [`renew`](Self::renew)).
    pub fn renewing(mut self) -> Self {
        self.renew = true;
        self
    }

    /// The same, its waiters in no order (see [`fair`](Self::fair)).
    pub fn unfair(mut self) -> Self {
        self.fair = false;
        self
    }

    /// How long a waiter's place in a lock's or a semaphore's line is kept
    /// from its last
    /// ask: twice the longest nap between its asks, plus three round trips
    /// (its answer, its subscription, its next ask).
    pub(super) fn place_time(&self) -> Duration {
        self.poll_every
            .max(Duration::from_millis(1))
            .saturating_mul(2)
            .saturating_add(self.timeout.saturating_mul(3))
    }
}

/// The store locks and semaphores live in, with their configuration.
pub(super) struct Store {
    pub(super) backend: Arc<dyn StateBackend>,
    pub(super) config: LockConfig,
    /// The release channels subscribed to, each shared by this store's
    /// waiters on it (a subscription can cost a connection: PostgreSQL's
    /// `LISTEN` has one of its own).
    wakeups: Mutex<HashMap<String, Arc<Wakeups>>>,
}

/// One subscription to a release channel, fanned out to the waiters: each
/// release's payload (the owner of the waiter it is for, or empty: for
/// all).
struct Wakeups {
    sender: broadcast::Sender<Bytes>,
    pump: JoinHandle<()>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Store {
    /// A store for locks in `backend`.
    pub(super) fn new(backend: Arc<dyn StateBackend>, config: LockConfig) -> Store {
        Store {
            backend,
            config,
            wakeups: Mutex::default(),
        }
    }

    /// A receiver of `channel`'s releases, sharing this store's one
    /// subscription to it (`None`: the store has no pub/sub, or it did not
    /// answer). A subscription stays while it has waiters, and one without
    /// is dropped when another channel is subscribed to.
    async fn wakeups(&self, channel: &str) -> Option<broadcast::Receiver<Bytes>> {
        {
            let known = self.wakeups.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(wakeups) = known.get(channel).filter(|w| !w.pump.is_finished()) {
                return Some(wakeups.sender.subscribe());
            }
        }
        let subscribe = self.backend.subscribe(channel);
        let mut subscription = tokio::time::timeout(self.config.timeout, subscribe)
            .await
            .ok()?
            .ok()?;
        let (sender, receiver) = broadcast::channel(16);
        let pump = tokio::spawn({
            let sender = sender.clone();
            async move {
                while let Some(Ok(message)) = subscription.next_message().await {
                    let _ = sender.send(message.payload);
                }
            }
        });
        let mut known = self.wakeups.lock().unwrap_or_else(PoisonError::into_inner);
        known.retain(|_, w| w.sender.receiver_count() > 0 && !w.pump.is_finished());
        known.insert(channel.to_string(), Arc::new(Wakeups { sender, pump }));
        Some(receiver)
    }

    /// One step of `update` on `key`, bounded by the configured timeout.
    pub(super) async fn round_trip(
        &self,
        key: &[u8],
        update: &dyn AtomicUpdate,
        input: &[u8],
    ) -> Result<Bytes> {
        let step = self.backend.update_atomic(key, update, input);
        match tokio::time::timeout(self.config.timeout, step).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the lock store did not answer within {:?}",
                    self.config.timeout
                ),
            )),
        }
    }

    /// Tries `attempt` until it holds or `wait` has passed, woken between
    /// tries by a release published on `channel` (where the store has
    /// pub/sub) for all or for `me`, by the holder's lease running out, or
    /// every [`poll_every`](LockConfig::poll_every). `what` names the wait
    /// in the timeout's error.
    pub(super) async fn wait_for<F, Fut>(
        &self,
        channel: &str,
        me: Option<Owner>,
        what: &str,
        wait: Duration,
        mut attempt: F,
    ) -> Result<Holding>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Acquired>>,
    {
        let started = Instant::now();
        let me = me.map(Owner::to_hex);
        let mine = |payload: &Bytes| {
            payload.is_empty() || me.as_deref().is_some_and(|me| payload == me.as_bytes())
        };
        let mut releases = None;
        let mut subscribed = false;
        loop {
            let busy = match attempt().await {
                Ok(Acquired::Held(holding)) => return Ok(holding),
                Ok(Acquired::Busy { token, retry_after }) => Some((token, retry_after)),
                // The same owner asks again: an acquisition that took the
                // lease unanswered is answered by the next try.
                Err(err) if err.is_temporary() => None,
                Err(err) => return Err(err),
            };
            let elapsed = started.elapsed();
            if elapsed >= wait {
                let holder = busy.map_or("unknown".to_string(), |(token, _)| token.to_string());
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{what}: still busy ({holder}) after waiting {wait:?}"),
                ));
            }
            if !subscribed {
                subscribed = true;
                releases = self.wakeups(channel).await;
                // A release between the try and the subscription is seen
                // by trying once more at once.
                continue;
            }
            let poll_every = self.config.poll_every.max(Duration::from_millis(1));
            let nap = busy
                .map_or(poll_every, |(_, retry_after)| retry_after)
                .min(poll_every)
                .min(wait - elapsed);
            let until = Instant::now() + nap;
            match releases.as_mut() {
                // Woken by a release for all or for this waiter (or one it
                // may have missed); another waiter's turn is not its own.
                Some(woken) => loop {
                    match tokio::time::timeout_at(until, woken.recv()).await {
                        Ok(Ok(payload)) if !mine(&payload) => continue,
                        Ok(Err(broadcast::error::RecvError::Closed)) => {
                            // The subscription ended: poll from now on.
                            releases = None;
                            break;
                        }
                        _ => break,
                    }
                },
                None => tokio::time::sleep_until(until).await,
            }
        }
    }
}

/// An acquisition's outcome.
pub(super) enum Acquired {
    /// Taken.
    Held(Holding),
    /// Taken by others: the lock's token or the permits' holders, and
    /// when the soonest lease runs out.
    Busy { token: u64, retry_after: Duration },
}

/// A lease in µs (1 µs to [`MAX_LEASE_US`]).
pub(super) fn lease_us(lease: Duration) -> Result<u64> {
    let us = u64::try_from(lease.as_micros()).unwrap_or(u64::MAX);
    if (1..=MAX_LEASE_US).contains(&us) {
        Ok(us)
    } else {
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("a lease must be 1 µs to 366 days, not {lease:?}"),
        ))
    }
}

/// What a holder may count on: `left` from `sent`, less 1 % for drift.
pub(super) fn local_deadline(sent: Instant, left_us: u64) -> Instant {
    sent + Duration::from_micros(left_us - left_us / 100)
}

/// What is held: a lock's holding (with its token), a semaphore's
/// permit, or a Redlock holding (the stores that granted it).
#[derive(Clone)]
pub(super) enum Kind {
    Lock { token: u64 },
    Permit,
    Redlock { token: u64, granted: Arc<Granted> },
}

impl Kind {
    /// The fencing token (0: a permit has none).
    pub(super) fn token(&self) -> u64 {
        match self {
            Kind::Lock { token } | Kind::Redlock { token, .. } => *token,
            Kind::Permit => 0,
        }
    }
}

/// A lease held in the store.
pub(super) struct Lease {
    pub(super) store: Arc<Store>,
    pub(super) name: String,
    pub(super) key: Bytes,
    pub(super) channel: String,
    pub(super) owner: Owner,
    pub(super) kind: Kind,
    pub(super) lease: Duration,
    /// Until when the lease surely runs, by this process's clock.
    deadline: Mutex<Instant>,
    lost: watch::Sender<bool>,
    keeper: Mutex<Option<JoinHandle<()>>>,
    /// Held through each extension: one at a time, so that the deadline
    /// an answer sets is the one of the extension the store did last.
    extending: tokio::sync::Mutex<()>,
}

impl Lease {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
    }

    fn lose(&self) {
        self.lost.send_replace(true);
    }

    /// Whether its keeper (the watchdog, or the wait for the deadline)
    /// still runs.
    #[cfg(test)]
    pub(super) fn keeping(&self) -> bool {
        self.keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|keeper| !keeper.is_finished())
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

    /// The step and its input that `op` asks for (`Some(lease)`: extend,
    /// `None`: release) of a holding in one store.
    fn input(&self, extend_us: Option<u64>) -> (&'static dyn AtomicUpdate, String) {
        let owner = self.owner;
        match (&self.kind, extend_us) {
            (Kind::Lock { token } | Kind::Redlock { token, .. }, Some(lease_us)) => (
                &LockStep,
                op_input(
                    LockOp::Extend {
                        owner,
                        token: *token,
                        lease_us,
                    },
                    0,
                ),
            ),
            (Kind::Lock { token } | Kind::Redlock { token, .. }, None) => (
                &LockStep,
                op_input(
                    LockOp::Release {
                        owner,
                        token: *token,
                    },
                    0,
                ),
            ),
            (Kind::Permit, Some(lease_us)) => (
                &SemaphoreStep,
                semaphore_input(SemaphoreOp::Extend { owner, lease_us }, 0),
            ),
            (Kind::Permit, None) => (
                &SemaphoreStep,
                semaphore_input(SemaphoreOp::Release { owner }, 0),
            ),
        }
    }

    /// One extension by `lease` from now.
    async fn extend(&self, lease: Duration) -> Result<()> {
        let lease_us = lease_us(lease)?;
        let _one_at_a_time = self.extending.lock().await;
        let sent = Instant::now();
        if let Kind::Redlock { granted, .. } = &self.kind {
            if extend_all(granted, &self.key, self.owner, lease_us).await? {
                let deadline = local_deadline(sent, lease_us)
                    .checked_sub(Duration::from_millis(2))
                    .unwrap_or(sent);
                self.set_deadline(deadline);
                return Ok(());
            }
            self.lose();
            return Err(self.lost_error());
        }
        let (update, input) = self.input(Some(lease_us));
        let raw = self
            .store
            .round_trip(&self.key, update, input.as_bytes())
            .await?;
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

    pub(super) fn lost_error(&self) -> Error {
        let what = match &self.kind {
            Kind::Lock { token } => format!("lock {:?}: the holding of token {token}", self.name),
            Kind::Redlock { token, .. } => {
                format!("redlock {:?}: the holding of token {token}", self.name)
            }
            Kind::Permit => format!("semaphore {:?}: the permit", self.name),
        };
        Error::new(ErrorKind::Lost, format!("{what} is lost"))
    }

    /// The watchdog: renews the lease every third of it, and marks it
    /// lost when a renewal finds it gone or it runs out first.
    async fn keep(self: Arc<Self>) {
        loop {
            let deadline = self.deadline();
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
                    tracing::warn!(lock = %self.name, error = %err,
                        "a lease's renewal failed: trying again while the lease runs");
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
        // Whom to wake: a lock's first waiter in line (nobody when none
        // waits there), all waiters of a semaphore (the line lets in those
        // it keeps the permits for) or a Redlock (no line).
        let (released, wake) = if let Kind::Redlock { granted, .. } = &self.kind {
            (
                release_all(granted, &self.key, self.owner).await?,
                Some(Bytes::new()),
            )
        } else {
            let (update, input) = self.input(None);
            let raw = self
                .store
                .round_trip(&self.key, update, input.as_bytes())
                .await?;
            match (parse_answer(&raw)?, &self.kind) {
                (LockAnswer::Released { next, .. }, Kind::Lock { .. })
                    if self.store.config.fair =>
                {
                    (true, next.map(|owner| Bytes::from(owner.to_hex())))
                }
                (LockAnswer::Released { .. }, _) => (true, Some(Bytes::new())),
                _ => (false, Some(Bytes::new())),
            }
        };
        // Woken at most once (a waiter that misses it polls), in the
        // background: the release is done, the holder goes on.
        if let Some(payload) = wake {
            let (store, channel) = (self.store.clone(), self.channel.clone());
            tokio::spawn(async move {
                let publish = store.backend.publish(&channel, payload);
                let _ = tokio::time::timeout(store.config.timeout, publish).await;
            });
        }
        if released {
            return Ok(());
        }
        self.lose();
        Err(self.lost_error())
    }
}

/// A [`Lease`] owned by a guard: kept while it lives, released when
/// dropped (in the background, on the runtime it was taken on) or by
/// [`release`](Self::release).
pub(super) struct Holding {
    pub(super) lease: Arc<Lease>,
    released: bool,
}

impl Holding {
    /// Starts keeping a lease the store just granted: `deadline` by this
    /// process's clock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        store: Arc<Store>,
        name: &str,
        key: Bytes,
        channel: String,
        owner: Owner,
        kind: Kind,
        lease: Duration,
        deadline: Instant,
    ) -> Holding {
        let renew = store.config.renew;
        let held = Arc::new(Lease {
            store,
            name: name.to_string(),
            key,
            channel,
            owner,
            kind,
            lease,
            deadline: Mutex::new(deadline),
            lost: watch::channel(false).0,
            keeper: Mutex::new(None),
            extending: tokio::sync::Mutex::new(()),
        });
        // Only a watchdog needs a task: without one, the deadline is read
        // where the holding is asked about ([`is_lost`](Self::is_lost),
        // [`lost`](Self::lost)).
        if renew {
            let keeper = tokio::spawn(held.clone().keep());
            *held.keeper.lock().unwrap_or_else(PoisonError::into_inner) = Some(keeper);
        }
        Holding {
            lease: held,
            released: false,
        }
    }

    /// Lost: told so, or past the deadline by the clock now (a process
    /// resumed after a pause past its lease knows at once, before its
    /// keeper runs). The clock is the monotonic one, which stops while
    /// the machine is suspended (a VM paused or migrated): there only
    /// fenced writes protect.
    pub(super) fn is_lost(&self) -> bool {
        if *self.lease.lost.borrow() {
            return true;
        }
        if Instant::now() >= self.lease.deadline() {
            self.lease.lose();
            return true;
        }
        false
    }

    /// Resolves when the lease is lost: told so, or its deadline passed
    /// (a holding without a watchdog has no task of its own that would
    /// tell it), or once the lease is released and gone.
    pub(super) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let lease = Arc::downgrade(&self.lease);
        let mut lost = self.lease.lost.subscribe();
        async move {
            loop {
                let Some(deadline) = lease.upgrade().map(|held| held.deadline()) else {
                    return;
                };
                if *lost.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    // An error: the sender, in the lease, is gone.
                    changed = lost.changed() => if changed.is_err() {
                        return;
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        let Some(held) = lease.upgrade() else {
                            return;
                        };
                        // (An extension may have moved the deadline.)
                        if Instant::now() >= held.deadline() {
                            held.lose();
                            return;
                        }
                    }
                }
            }
        }
    }

    pub(super) fn remaining(&self) -> Duration {
        self.lease
            .deadline()
            .saturating_duration_since(Instant::now())
    }

    pub(super) async fn extend(&self, lease: Duration) -> Result<()> {
        if self.is_lost() {
            return Err(self.lease.lost_error());
        }
        self.lease.extend(lease).await
    }

    /// Releases the lease now (renewal stops first).
    pub(super) async fn release(&mut self) -> Result<()> {
        self.released = true;
        self.lease.stop_keeper();
        self.lease.release().await
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.lease.stop_keeper();
        // Released in the background; without a runtime, the lease runs
        // out by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let lease = self.lease.clone();
            runtime.spawn(async move {
                if let Err(err) = lease.release().await {
                    tracing::debug!(lock = %lease.name, error = %err, "a dropped lease's release failed");
                }
            });
        }
    }
}
