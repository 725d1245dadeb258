//! [`Redlock`]: one lock over N independent stores (Redis servers, most
//! often), held when a majority of them grant it, in the way of Redis's
//! Redlock.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::distributed::{channel_of, key_of, LockGuard};
use super::guard::{lease_us, local_deadline, Acquired, Holding, Kind, LockConfig, Store};
use super::machine::{LockAnswer, LockOp, Owner};
use super::shared::{op_input, parse_answer, LockStep};

/// A lock over several independent stores, held when a majority of them
/// grant it.
///
/// Each acquisition asks every store at once (each within the configured
/// timeout) and holds when a majority grant it with time left: the lease
/// less the time the asking took, less 1 % of the lease and 2 ms for the
/// clocks' drift. Otherwise it gives back what it got, on every store that
/// granted it. Extensions and releases go to every store that granted it;
/// an extension keeps the holding while a majority still grant it.
///
/// **Its limits.** A Redlock holding is safe while the servers' clocks run
/// at about the same rate and no process pauses past its lease; it needs
/// no server to be up in particular, which is what it is for. Its fencing
/// token is the highest of the tokens the majority gave: every server's
/// tokens rise, and any two majorities share a server, but a later
/// holding's token is only sure to be higher when the servers' clocks
/// agree to within the time between the two acquisitions (each server's
/// token is its own time in µs). A server restarted without persistence
/// forgets the holdings it granted, so a holder can lose its majority
/// while still counting itself held (Redis's own advice: delay a
/// restarted server's return by a lease, or persist with fsync). A server
/// that did not answer an acquisition in time may still have granted it:
/// its grant is not given back (its token is not known) and runs out with
/// the lease. Each server must not evict keys (`maxmemory-policy
/// noeviction`): an evicted lock is a free one. When the
/// work under the lock writes to a store, prefer a [`Locks`](super::Locks)
/// on one store with writes fenced by its token: its safety needs neither
/// synchronized clocks nor persistence.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use statecraft::lock::Redlock;
/// use statecraft::{MemoryBackend, StateBackend};
///
/// let servers: Vec<Arc<dyn StateBackend>> =
///     (0..3).map(|_| Arc::new(MemoryBackend::new()) as Arc<dyn StateBackend>).collect();
/// let redlock = Redlock::new(servers)?;
/// let guard = redlock.try_lock("rebuild", Duration::from_secs(10)).await?.expect("free");
/// assert!(redlock.try_lock("rebuild", Duration::from_secs(10)).await?.is_none());
/// guard.unlock().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Redlock {
    stores: Arc<[Arc<Store>]>,
}

impl std::fmt::Debug for Redlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.stores.iter().map(|s| s.backend.name()).collect();
        f.debug_struct("Redlock")
            .field("stores", &names)
            .field("config", &self.stores[0].config)
            .finish()
    }
}

/// The stores a Redlock holding was granted by, with each one's token.
pub(super) struct Granted {
    pub(super) by: Vec<(Arc<Store>, u64)>,
    /// How many grants hold the lock.
    pub(super) quorum: usize,
}

impl Redlock {
    /// A Redlock over `servers` (1 to 15; an odd number: a majority of 3
    /// or 5 is what lets it stand a server down), by the default
    /// [`LockConfig`].
    pub fn new(servers: Vec<Arc<dyn StateBackend>>) -> Result<Redlock> {
        Redlock::with_config(servers, LockConfig::default())
    }

    /// The same, by `config` (its timeout bounds the round trip to each
    /// server).
    pub fn with_config(servers: Vec<Arc<dyn StateBackend>>, config: LockConfig) -> Result<Redlock> {
        if servers.is_empty() || servers.len() > 15 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a Redlock takes 1 to 15 servers, not {}", servers.len()),
            ));
        }
        let stores = servers
            .into_iter()
            .map(|backend| Arc::new(Store::new(backend, config.clone())))
            .collect();
        Ok(Redlock { stores })
    }

    /// How many servers must grant a holding.
    pub fn quorum(&self) -> usize {
        self.stores.len() / 2 + 1
    }

    /// Takes `name` for `lease` if a majority grant it now: the holding, or
    /// `None` (also when too few servers answered).
    pub async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
        let owner = Owner::random()?;
        match self.acquire(name, owner, lease).await? {
            Acquired::Held(holding) => Ok(Some(LockGuard::from_holding(holding))),
            Acquired::Busy { .. } => Ok(None),
        }
    }

    /// Takes `name` for `lease`, waiting at most `wait`: woken by a
    /// release published on the first server (while it is up), else
    /// trying again when the holder's lease runs out or every
    /// [`poll_every`](LockConfig::poll_every).
    pub async fn lock(&self, name: &str, lease: Duration, wait: Duration) -> Result<LockGuard> {
        let owner = Owner::random()?;
        let what = format!("redlock {name:?}");
        let holding = self.stores[0]
            .wait_for(&channel_of(name), None, &what, wait, || {
                self.acquire(name, owner, lease)
            })
            .await?;
        Ok(LockGuard::from_holding(holding))
    }

    async fn acquire(&self, name: &str, owner: Owner, lease: Duration) -> Result<Acquired> {
        let lease_us = lease_us(lease)?;
        let key = key_of(name);
        let input = op_input(LockOp::Acquire { owner, lease_us }, 0);
        let sent = Instant::now();
        let answers = join_all(self.stores.iter().map(|store| {
            let (key, input) = (&key, input.as_bytes());
            async move {
                let raw = store.round_trip(key, &LockStep, input).await?;
                parse_answer(&raw)
            }
        }))
        .await;
        let mut by = Vec::new();
        let mut busy: Option<(u64, u64)> = None;
        for (store, answer) in self.stores.iter().zip(answers) {
            match answer {
                Ok(LockAnswer::Held { token, .. }) => by.push((store.clone(), token)),
                Ok(LockAnswer::Busy {
                    token,
                    retry_after_us,
                }) => {
                    let soonest = busy.map_or(retry_after_us, |b| b.1.min(retry_after_us));
                    busy = Some((token, soonest));
                }
                Ok(_) | Err(_) => {}
            }
        }
        let quorum = self.quorum();
        // What the majority surely still holds: the lease from before it
        // was asked, less the drift (1 %, and 2 ms).
        let deadline = local_deadline(sent, lease_us)
            .checked_sub(Duration::from_millis(2))
            .unwrap_or(sent);
        if by.len() >= quorum && Instant::now() < deadline {
            let token = by.iter().map(|g| g.1).max().unwrap_or(0);
            let granted = Arc::new(Granted { by, quorum });
            return Ok(Acquired::Held(Holding::start(
                self.stores[0].clone(),
                name,
                key,
                channel_of(name),
                owner,
                Kind::Redlock { token, granted },
                lease,
                deadline,
            )));
        }
        // Too few: what was granted is given back at once.
        let granted = Granted { by, quorum };
        let _ = release_all(&granted, &key, owner).await;
        // Tried again when the holder's lease ends or, with no holder
        // seen (too few servers answered, or the votes split), after a
        // random while, so that clients that split the votes part.
        let jitter = Owner::random()?.0[0];
        let retry_after = match busy {
            Some((_, retry_after_us)) => Duration::from_micros(retry_after_us),
            None => self.stores[0]
                .config
                .poll_every
                .mul_f64(0.1 + f64::from(jitter) / 255.0 * 0.4),
        };
        Ok(Acquired::Busy {
            token: busy.map_or(0, |b| b.0),
            retry_after: retry_after.max(Duration::from_millis(1)),
        })
    }
}

/// `op` (given each store's token) on every store that granted a
/// holding, at once: the answers, and how many are `want`.
async fn ask_all(
    granted: &Granted,
    key: &[u8],
    op: impl Fn(u64) -> LockOp,
    want: fn(&LockAnswer) -> bool,
) -> (Vec<Result<LockAnswer>>, usize) {
    let answers = join_all(granted.by.iter().map(|(store, token)| {
        let input = op_input(op(*token), 0);
        async move {
            let raw = store.round_trip(key, &LockStep, input.as_bytes()).await?;
            parse_answer(&raw)
        }
    }))
    .await;
    let wanted = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(want))
        .count();
    (answers, wanted)
}

/// Whether enough stores refused (answered `N`) that no majority can hold.
fn refused_by_enough(granted: &Granted, answers: &[Result<LockAnswer>]) -> bool {
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Ok(LockAnswer::NotHeld)))
        .count();
    granted.by.len() - refused < granted.quorum
}

/// Extends a Redlock holding on every store that granted it: whether a
/// majority still hold it.
pub(super) async fn extend_all(
    granted: &Granted,
    key: &[u8],
    owner: Owner,
    lease_us: u64,
) -> Result<bool> {
    let extend = |token| LockOp::Extend {
        owner,
        token,
        lease_us,
    };
    let (answers, held) = ask_all(granted, key, extend, |a| {
        matches!(a, LockAnswer::Held { .. })
    })
    .await;
    if held >= granted.quorum {
        return Ok(true);
    }
    // Not a majority: lost if the stores said so, else (unanswered) a
    // failure to try again.
    if refused_by_enough(granted, &answers) {
        return Ok(false);
    }
    Err(Error::new(
        ErrorKind::Timeout,
        format!(
            "a Redlock extension reached {held} of {} servers",
            granted.quorum
        ),
    ))
}

/// Releases a Redlock holding on every store that granted it: `true` when
/// a majority released it, `false` when enough refused it (it was lost);
/// a [`Timeout`](ErrorKind::Timeout) error when too few answered to know.
pub(super) async fn release_all(granted: &Granted, key: &[u8], owner: Owner) -> Result<bool> {
    let release = |token| LockOp::Release { owner, token };
    let (answers, released) = ask_all(granted, key, release, |a| {
        matches!(a, LockAnswer::Released { .. })
    })
    .await;
    if released >= granted.quorum {
        return Ok(true);
    }
    if refused_by_enough(granted, &answers) {
        return Ok(false);
    }
    Err(Error::new(
        ErrorKind::Timeout,
        format!(
            "a Redlock release reached {released} of {} servers",
            granted.quorum
        ),
    ))
}
