//! [`Election`]: leader election on a lock — the leader is the lock's
//! holder, its term the holding's fencing token; [`Leadership`]: a term
//! held (renewed by a watchdog); [`LeaderChanges`]: the leaders one after
//! another, as an observer sees them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::pubsub::Subscription;
use crate::backend::StateBackend;

use super::distributed::{LockGuard, Locks};
use super::fenced::{fenced_get, fenced_put, Fenced};
use super::guard::LockConfig;

/// A leader as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its term: the fencing token of its holding, higher for every later
    /// leader.
    pub term: u64,
    /// The id it campaigned with (`None`: not known yet — it has not
    /// written it, or a later term's leader is writing it).
    pub id: Option<String>,
}

/// A change of leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderChange {
    /// A leader was elected.
    Elected(Leader),
    /// The last leader (of `term`) resigned or its lease ran out, and no
    /// other is elected yet.
    Vacant {
        /// The term that ended.
        term: u64,
    },
}

/// Leader election named `name` in a shared store: at most one leader at
/// a time across every process sharing it — the holder of the lock
/// `election:<name>` (through [`Locks`], so with its guarantees), its
/// lease renewed by a watchdog while it leads. Its term is the holding's
/// fencing token: make the leader's writes fenced by it
/// ([`fenced_put`](super::fenced_put)) and a deposed leader's late write
/// (after a pause past its lease) is refused.
///
/// A leader is told it lost its lease ([`Leadership::lost`],
/// [`Leadership::is_lost`]) by its own clock no later than the store frees
/// the lock, so before another can be elected — while its process runs; a
/// paused process finds out as soon as it runs again, which is why its
/// writes should be fenced.
///
/// The leader's id and term are stored (by a fenced write) under the key
/// `election:<name>:leader`, which is kept: one small key per election.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use statecraft::lock::{Election, LeaderChange};
///
/// let store = Arc::new(statecraft::MemoryBackend::new());
/// let election = Election::new(store, "scheduler", Duration::from_secs(5))?;
/// let mut changes = election.changes().await?;
/// let leadership = election.campaign("node-a", Duration::from_secs(1)).await?;
/// let leader = election.leader().await?.expect("a leader");
/// assert_eq!((leader.term, leader.id.as_deref()), (leadership.term(), Some("node-a")));
/// assert!(matches!(changes.next().await?, LeaderChange::Elected(l) if l.term == leadership.term()));
/// leadership.resign().await?;
/// assert!(matches!(changes.next().await?, LeaderChange::Vacant { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Election {
    locks: Locks,
    backend: Arc<dyn StateBackend>,
    name: Arc<str>,
    lease: Duration,
    poll_every: Duration,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("lease", &self.lease)
            .field("backend", &self.backend.name())
            .finish()
    }
}

fn lock_name(name: &str) -> String {
    format!("election:{name}")
}

fn leader_key(name: &str) -> Bytes {
    Bytes::from(format!("election:{}:leader", crate::limiter::escaped(name)))
}

fn channel_of(name: &str) -> String {
    format!("statecraft:election:{}", crate::limiter::escaped(name))
}

impl Election {
    /// The election `name` in `backend`, each term a lease of `lease`
    /// renewed while it leads (a leader that dies is replaced within
    /// about `lease`), by the default [`LockConfig`].
    pub fn new(backend: Arc<dyn StateBackend>, name: &str, lease: Duration) -> Result<Election> {
        Election::with_config(backend, name, lease, LockConfig::default())
    }

    /// The same, by `config` (renewal is on, and campaigns unfair — see
    /// [`LockConfig::fair`] — whatever it says).
    pub fn with_config(
        backend: Arc<dyn StateBackend>,
        name: &str,
        lease: Duration,
        config: LockConfig,
    ) -> Result<Election> {
        super::guard::lease_us(lease)?;
        if lease < Duration::from_millis(30) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("an election's lease must be at least 30 ms, not {lease:?}"),
            ));
        }
        let poll_every = config
            .poll_every
            .min(lease / 2)
            .max(Duration::from_millis(1));
        Ok(Election {
            // Unfair: a queued candidate that paused or died would hold
            // up the election of another.
            locks: Locks::with_config(backend.clone(), config.renewing().unfair()),
            backend,
            name: name.into(),
            lease,
            poll_every,
        })
    }

    /// Campaigns as `id`, waiting at most `wait` to be elected: the
    /// leadership (its term the lock's token), or a
    /// [`Timeout`](ErrorKind::Timeout) error while another leads.
    pub async fn campaign(&self, id: &str, wait: Duration) -> Result<Leadership> {
        let guard = self
            .locks
            .lock(&lock_name(&self.name), self.lease, wait)
            .await?;
        let term = guard.token();
        // Written fenced by the term: a deposed leader's late write of its
        // id cannot overwrite a later leader's.
        let key = leader_key(&self.name);
        let written = match fenced_put(&*self.backend, &key, term, id.as_bytes()).await {
            Ok(Fenced::Written) => Ok(()),
            // A later term wrote first: this one is already over.
            Ok(Fenced::Stale { highest }) => Err(Error::new(
                ErrorKind::Lost,
                format!(
                    "election {:?}: term {term} was won after term {highest} began",
                    &*self.name
                ),
            )),
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            // Not a leader observers can know: give the term back.
            let _ = guard.unlock().await;
            return Err(err);
        }
        let channel = channel_of(&self.name);
        let message = Bytes::from(format!("elected {term} {id}"));
        let _ = tokio::time::timeout(self.lease / 2, self.backend.publish(&channel, message)).await;
        Ok(Leadership {
            guard,
            backend: self.backend.clone(),
            channel,
            lease: self.lease,
        })
    }

    /// The leader now, by the store's clock (`None`: none).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let Some((term, _left)) = self.locks.holder(&lock_name(&self.name)).await? else {
            return Ok(None);
        };
        let id = match fenced_get(&*self.backend, &leader_key(&self.name)).await? {
            Some((written, id)) if written == term => {
                Some(String::from_utf8_lossy(&id).into_owned())
            }
            _ => None,
        };
        Ok(Some(Leader { term, id }))
    }

    /// The changes of leadership from now on: elections as their leaders
    /// publish them (where the store has pub/sub), and what a look at the
    /// store every half lease (or [`poll_every`](LockConfig::poll_every),
    /// if sooner) finds — a leader whose process died, a vacancy.
    pub async fn changes(&self) -> Result<LeaderChanges> {
        let channel = channel_of(&self.name);
        let subscribe = self.backend.subscribe(&channel);
        let messages = tokio::time::timeout(self.lease / 2, subscribe)
            .await
            .ok()
            .and_then(Result::ok);
        Ok(LeaderChanges {
            election: self.clone(),
            messages,
            last: None,
            pending: Vec::new(),
        })
    }
}

/// A term of leadership: held while its lease is renewed, until
/// [`resign`](Self::resign) or drop (which resigns in the background).
#[must_use = "leadership ends when it is dropped"]
pub struct Leadership {
    guard: LockGuard,
    backend: Arc<dyn StateBackend>,
    channel: String,
    lease: Duration,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("term", &self.term())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Leadership {
    /// The term (the lock's fencing token): fence the leader's writes by
    /// it.
    pub fn term(&self) -> u64 {
        self.guard.token()
    }

    /// Whether the term is known over (its lease ran out by this
    /// process's clock, or a renewal found another leader): checked
    /// against the clock at each call, so a process resumed after a pause
    /// past its lease sees it at once.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// Resolves when the term is lost: the leader should stop leading.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.guard.lost()
    }

    /// Stores `value` under `key` fenced by this term (see
    /// [`fenced_put`](super::fenced_put)).
    pub async fn fenced_put(&self, key: &[u8], value: &[u8]) -> Result<Fenced> {
        fenced_put(&*self.backend, key, self.term(), value).await
    }

    /// Ends the term: the lock is released and observers are told.
    pub async fn resign(self) -> Result<()> {
        let term = self.term();
        let released = self.guard.unlock().await;
        let message = Bytes::from(format!("resigned {term}"));
        let publish = self.backend.publish(&self.channel, message);
        let _ = tokio::time::timeout(self.lease / 2, publish).await;
        released
    }
}

/// The changes of one election's leadership, in order of terms (see
/// [`Election::changes`]). Each [`next`](Self::next) waits for the next
/// change. It shows every term whose leader's announcement it receives or
/// that is still held when it looks; a term announced late (its leader
/// paused between winning and announcing) after a later one was shown,
/// or begun and ended between two looks with its announcement lost, is
/// skipped. A leader is shown without its id when a look found it before
/// it had written it.
pub struct LeaderChanges {
    election: Election,
    messages: Option<Subscription>,
    /// The last change given.
    last: Option<LeaderChange>,
    /// Changes seen and not given yet, in order.
    pending: Vec<LeaderChange>,
}

impl std::fmt::Debug for LeaderChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderChanges")
            .field("election", &self.election.name)
            .field("last", &self.last)
            .field("subscribed", &self.messages.is_some())
            .finish()
    }
}

/// The term a change is about, and whether it is its end.
fn order(change: &LeaderChange) -> (u64, bool) {
    match change {
        LeaderChange::Elected(leader) => (leader.term, false),
        LeaderChange::Vacant { term } => (*term, true),
    }
}

impl LeaderChanges {
    /// The next change of leadership (waiting for it). An error is the
    /// store's, when it cannot be looked at (after waiting a look's
    /// interval); the stream goes on after it.
    pub async fn next(&mut self) -> Result<LeaderChange> {
        loop {
            if !self.pending.is_empty() {
                let change = self.pending.remove(0);
                self.last = Some(change.clone());
                return Ok(change);
            }
            if let Err(err) = self.look().await {
                tokio::time::sleep(self.election.poll_every).await;
                return Err(err);
            }
            if !self.pending.is_empty() {
                continue;
            }
            self.wait().await;
        }
    }

    /// Takes `change` if it is later than every change given or pending.
    fn offer(&mut self, change: LeaderChange) {
        let latest = self.pending.last().or(self.last.as_ref()).map(order);
        let later = match (latest, order(&change)) {
            (None, (_, vacant)) => !vacant,
            (Some(seen), new) => new > seen,
        };
        if later {
            self.pending.push(change);
        }
    }

    fn take_message(&mut self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next().and_then(|t| t.parse().ok())) {
            (Some("elected"), Some(term)) => self.offer(LeaderChange::Elected(Leader {
                term,
                id: words.next().map(str::to_string),
            })),
            (Some("resigned"), Some(term)) => self.offer(LeaderChange::Vacant { term }),
            _ => {}
        }
    }

    /// Takes the messages already here, without waiting.
    fn drain(&mut self) {
        while let Some(messages) = self.messages.as_mut() {
            match futures_util::FutureExt::now_or_never(messages.next_message()) {
                Some(Some(Ok(message))) => self.take_message(&message.payload),
                Some(None | Some(Err(_))) => self.messages = None,
                None => return,
            }
        }
    }

    /// Looks at the store: the leader now, or a vacancy.
    async fn look(&mut self) -> Result<()> {
        self.drain();
        let leader = self.election.leader().await?;
        // A message of an earlier term published before this answer may
        // still be on its way: given a moment, it is taken first.
        if self.messages.is_some() {
            let newer = match (&leader, self.pending.last().or(self.last.as_ref())) {
                (Some(now), Some(seen)) => now.term > order(seen).0,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if newer {
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.drain();
            }
        }
        match leader {
            Some(leader) => self.offer(LeaderChange::Elected(leader)),
            None => {
                let term = self.pending.last().or(self.last.as_ref()).map(order);
                if let Some((term, false)) = term {
                    self.offer(LeaderChange::Vacant { term });
                }
            }
        }
        Ok(())
    }

    /// Waits for a message or the next look.
    async fn wait(&mut self) {
        let nap = self.election.poll_every;
        match self.messages.as_mut() {
            Some(messages) => match tokio::time::timeout(nap, messages.next_message()).await {
                Ok(Some(Ok(message))) => self.take_message(&message.payload),
                Ok(None | Some(Err(_))) => self.messages = None,
                Err(_) => {}
            },
            None => tokio::time::sleep(nap).await,
        }
    }
}
