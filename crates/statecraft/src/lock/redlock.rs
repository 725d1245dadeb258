//! [`Redlock`]: one lock over N independent stores (Redis servers, most
//! often), held when a majority of them grant it, in the way of Redis's
//! Redlock.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
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
/// timeout) and holds as soon as a majority grant it with time left: the
/// lease less the time the asking took, less 1 % of the lease and 2 ms for
/// the clocks' drift. The stores still to answer then are heard in the
/// background: a late grant joins the holding (or is given back at once
/// if the holding already ended). Without a majority it gives back what
/// it got, on every store that granted it. Extensions and releases go to
/// every store that granted it and return once a majority answered as
/// hoped (the others in the background: a process that exits right after
/// a release may leave the minority's grants to run out with the lease);
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

/// The stores a Redlock holding was granted by, with each one's token:
/// those of the majority it was taken with, and those that granted it
/// later, until it is released.
pub(super) struct Granted {
    grants: Mutex<Grants>,
    /// How many grants hold the lock.
    quorum: usize,
}

struct Grants {
    by: Vec<(Arc<Store>, u64)>,
    /// Whether it was released (or never held): a late grant is given
    /// back by whoever hears it.
    closed: bool,
}

impl Granted {
    fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stores that granted it, so far.
    fn by(&self) -> Vec<(Arc<Store>, u64)> {
        self.grants().by.clone()
    }

    /// The stores that granted it, and no more to come: later grants are
    /// given back by whoever hears them.
    fn close(&self) -> Vec<(Arc<Store>, u64)> {
        let mut grants = self.grants();
        grants.closed = true;
        grants.by.clone()
    }

    /// Adds a late grant: whether it joined (`false`: closed, to give back).
    fn join(&self, store: Arc<Store>, token: u64) -> bool {
        let mut grants = self.grants();
        if grants.closed {
            return false;
        }
        grants.by.push((store, token));
        true
    }
}

/// One store asked for `input`'s step on `key`: the store, and its answer.
async fn ask(
    store: Arc<Store>,
    key: Bytes,
    input: impl AsRef<str>,
) -> (Arc<Store>, Result<LockAnswer>) {
    let answer = match store
        .round_trip(&key, &LockStep, input.as_ref().as_bytes())
        .await
    {
        Ok(raw) => parse_answer(&raw),
        Err(err) => Err(err),
    };
    (store, answer)
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
        let input: Arc<str> = op_input(LockOp::Acquire { owner, lease_us }, 0).into();
        let sent = Instant::now();
        let mut asks: FuturesUnordered<_> = self
            .stores
            .iter()
            .map(|store| ask(store.clone(), key.clone(), input.clone()))
            .collect();
        let quorum = self.quorum();
        let mut by = Vec::new();
        let mut busy: Option<(u64, u64)> = None;
        // Heard until a majority granted it or every store answered.
        while by.len() < quorum {
            let Some((store, answer)) = asks.next().await else {
                break;
            };
            note(&mut by, &mut busy, store, answer);
        }
        // What the majority surely still holds: the lease from before it
        // was asked, less the drift (1 %, and 2 ms).
        let deadline = local_deadline(sent, lease_us)
            .checked_sub(Duration::from_millis(2))
            .unwrap_or(sent);
        if by.len() >= quorum && Instant::now() < deadline {
            let token = by.iter().map(|g| g.1).max().unwrap_or(0);
            let granted = Arc::new(Granted {
                grants: Mutex::new(Grants { by, closed: false }),
                quorum,
            });
            if !asks.is_empty() {
                tokio::spawn(hear_late(asks, granted.clone(), key.clone(), owner));
            }
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
        // Too few, or too late: every store is heard out first (the next
        // try asks as the same owner, and a store re-grants its owner the
        // same token: an answer of this try must not come after it), then
        // what was granted is given back, on every store at once.
        while let Some((store, answer)) = asks.next().await {
            note(&mut by, &mut busy, store, answer);
        }
        give_back(by, &key, owner).await;
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

/// Counts one store's answer to an acquisition: its grant, or (busy) the
/// holder's token and the soonest retry.
fn note(
    by: &mut Vec<(Arc<Store>, u64)>,
    busy: &mut Option<(u64, u64)>,
    store: Arc<Store>,
    answer: Result<LockAnswer>,
) {
    match answer {
        Ok(LockAnswer::Held { token, .. }) => by.push((store, token)),
        Ok(LockAnswer::Busy {
            token,
            retry_after_us,
        }) => {
            let soonest = busy.map_or(retry_after_us, |b| b.1.min(retry_after_us));
            *busy = Some((token, soonest));
        }
        Ok(_) | Err(_) => {}
    }
}

/// The answers of the stores a holding did not wait for: a grant joins
/// the holding, or is given back (in a task of its own, so that the other
/// answers are still heard meanwhile) when the holding has ended.
async fn hear_late<F>(
    mut asks: FuturesUnordered<F>,
    granted: Arc<Granted>,
    key: Bytes,
    owner: Owner,
) where
    F: Future<Output = (Arc<Store>, Result<LockAnswer>)>,
{
    while let Some((store, answer)) = asks.next().await {
        if let Ok(LockAnswer::Held { token, .. }) = answer {
            if !granted.join(store.clone(), token) {
                let key = key.clone();
                tokio::spawn(async move {
                    let input = op_input(LockOp::Release { owner, token }, 0);
                    let _ = store.round_trip(&key, &LockStep, input.as_bytes()).await;
                });
            }
        }
    }
}

/// `op` (given each store's token) on each of `by` at once, until `need`
/// answers are `want` (the rest heard in the background) or all
/// answered: how many are `want`, and how many refused (`N`).
async fn ask_each(
    by: Vec<(Arc<Store>, u64)>,
    key: &Bytes,
    op: impl Fn(u64) -> LockOp,
    want: fn(&LockAnswer) -> bool,
    need: usize,
) -> (usize, usize) {
    let mut asks: FuturesUnordered<_> = by
        .into_iter()
        .map(|(store, token)| ask(store, key.clone(), op_input(op(token), 0)))
        .collect();
    let (mut wanted, mut refused) = (0, 0);
    while wanted < need {
        let Some((_, answer)) = asks.next().await else {
            break;
        };
        match answer {
            Ok(answer) if want(&answer) => wanted += 1,
            Ok(LockAnswer::NotHeld) => refused += 1,
            Ok(_) | Err(_) => {}
        }
    }
    if !asks.is_empty() {
        // Still bounded: each ask within the stores' timeout.
        tokio::spawn(async move { while asks.next().await.is_some() {} });
    }
    (wanted, refused)
}

/// Gives back what an acquisition without a majority was granted, waiting
/// for every store.
async fn give_back(by: Vec<(Arc<Store>, u64)>, key: &Bytes, owner: Owner) {
    let need = by.len();
    let release = |token| LockOp::Release { owner, token };
    ask_each(
        by,
        key,
        release,
        |a| matches!(a, LockAnswer::Released { .. }),
        need,
    )
    .await;
}

/// Extends a Redlock holding on every store that granted it: whether a
/// majority still hold it.
pub(super) async fn extend_all(
    granted: &Granted,
    key: &Bytes,
    owner: Owner,
    lease_us: u64,
) -> Result<bool> {
    let extend = |token| LockOp::Extend {
        owner,
        token,
        lease_us,
    };
    let by = granted.by();
    let asked = by.len();
    let held = |a: &LockAnswer| matches!(a, LockAnswer::Held { .. });
    let (held, refused) = ask_each(by, key, extend, held, granted.quorum).await;
    if held >= granted.quorum {
        return Ok(true);
    }
    // Not a majority: lost if the stores said so, else (unanswered) a
    // failure to try again.
    if asked - refused < granted.quorum {
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
pub(super) async fn release_all(granted: &Granted, key: &Bytes, owner: Owner) -> Result<bool> {
    let release = |token| LockOp::Release { owner, token };
    let by = granted.close();
    let asked = by.len();
    let released = |a: &LockAnswer| matches!(a, LockAnswer::Released { .. });
    let (released, refused) = ask_each(by, key, release, released, granted.quorum).await;
    if released >= granted.quorum {
        return Ok(true);
    }
    if asked - refused < granted.quorum {
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
