//! [`AdvisoryLocks`]: PostgreSQL's session-level advisory locks, each
//! holding a session of its own, with a fencing token from a readable
//! table.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::{watch, Mutex};
use tokio::task::AbortHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::backend::error::{Error, ErrorKind, Result};

use super::backend::PostgresBackend;
use super::config::quoted;
use super::errors::{pg_error, pool_error};
use super::migrations::MIGRATION_LOCK;

/// How [`AdvisoryLocks`] talk to the server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdvisoryConfig {
    /// The bound on each round trip (default 1 s) and on the wait for a
    /// free session; a wait for a lock is bounded by its own `wait` plus
    /// this.
    pub timeout: Duration,
    /// How often a holding checks that its session still lives (default
    /// 1 s): a holding whose session ended (the server restarted, the
    /// connection broke, the session was terminated) is told lost within
    /// about this long plus [`timeout`](Self::timeout).
    pub check_every: Duration,
    /// The most sessions held at once (default 16): each holding, and each
    /// waiter, has one of its own.
    pub sessions: usize,
}

impl Default for AdvisoryConfig {
    fn default() -> Self {
        AdvisoryConfig {
            timeout: Duration::from_secs(1),
            check_every: Duration::from_secs(1),
            sessions: 16,
        }
    }
}

/// Named locks held as PostgreSQL session-level advisory locks
/// (`pg_advisory_lock`), the second mode of PostgreSQL locks beside the
/// lease rows of [`Locks`](crate::lock::Locks).
///
/// A holding keeps a database session of its own for as long as it holds
/// the lock; the server ends the holding when it is unlocked or when the
/// session ends. Waiters wait in the server, woken in the order it queued
/// them, without polling. Each acquisition takes a fencing token,
/// `max(last + 1, the server's µs)`, kept per name in the readable table
/// `<table>_advisory` (name, token, holder_pid, taken_at), for
/// [`fenced_put`](crate::lock::fenced_put).
///
/// How it fails, unlike a lease:
///
/// - **No lease.** A holder that is paused (a GC, SIGSTOP) or hangs keeps
///   the lock for as long as its connection stays open: nobody else
///   enters, however long. Prefer [`Locks`](crate::lock::Locks) where a
///   stuck holder must not stop everyone.
/// - **A session that ends frees the lock** on the server — at once for a
///   killed process, a server restart or `pg_terminate_backend`; for a
///   network cut once the server's TCP keepalive gives up on the peer
///   (these sessions ask for about 11 s) — while the holder learns it only
///   at its next check ([`check_every`](AdvisoryConfig::check_every)):
///   another may enter meanwhile, so writes that matter should be fenced
///   by the token.
/// - **Not through a transaction-pooling proxy** (PgBouncer in
///   `transaction` mode): a session lock needs the session.
/// - Names are hashed to the lock's 64-bit key (`hashtextextended`): two
///   names that collide share one lock (contention, never two holders).
///
/// ```no_run
/// # async fn demo(backend: statecraft::PostgresBackend) -> statecraft::Result<()> {
/// use std::time::Duration;
/// use statecraft::lock::AdvisoryLocks;
///
/// let locks = AdvisoryLocks::new(&backend).await?;
/// let guard = locks.lock("nightly-report", Duration::from_secs(5)).await?;
/// let token = guard.token(); // for fenced writes
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AdvisoryLocks {
    inner: Arc<Advisory>,
}

struct Advisory {
    pool: Pool,
    config: AdvisoryConfig,
    /// Names are hashed with this prefix (the backend's table).
    prefix: String,
    try_take: String,
    wait_take: String,
    unlock: String,
    last_token: String,
}

impl std::fmt::Debug for AdvisoryLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryLocks")
            .field("prefix", &self.inner.prefix)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The token rule, with `$1` the hashed name, `$2` the name; `take` the
/// statement that takes the lock (`ok` true when taken). It answers one
/// row: whether the lock was taken, and its token.
fn take_sql(table: &str, take: &str) -> String {
    format!(
        "WITH got AS ({take}), \
         ins AS (INSERT INTO {table} AS t (name, token, holder_pid, taken_at) \
             SELECT $2, floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8, \
                    pg_backend_pid(), clock_timestamp() FROM got WHERE ok \
             ON CONFLICT (name) DO UPDATE SET token = greatest(t.token + 1, EXCLUDED.token), \
                 holder_pid = EXCLUDED.holder_pid, taken_at = EXCLUDED.taken_at \
             RETURNING token) \
         SELECT got.ok, ins.token FROM got LEFT JOIN ins ON true"
    )
}

/// Server settings for a session that may hold a lock: the server probes
/// an idle peer after 5 s, every 2 s, 3 times, so that a network cut ends
/// the session (and frees the lock) in about 11 s rather than the
/// system's default of hours. (Ignored on a Unix-domain socket.)
const KEEPALIVES: &str =
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3";

impl AdvisoryLocks {
    /// Advisory locks on `backend`'s server, by the default
    /// [`AdvisoryConfig`]; sets up the token table if need be.
    pub async fn new(backend: &PostgresBackend) -> Result<AdvisoryLocks> {
        AdvisoryLocks::with_config(backend, AdvisoryConfig::default()).await
    }

    /// Advisory locks on `backend`'s server, by `config`.
    pub async fn with_config(
        backend: &PostgresBackend,
        config: AdvisoryConfig,
    ) -> Result<AdvisoryLocks> {
        if config.sessions == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "advisory locks need at least one session",
            ));
        }
        let backend = &backend.inner;
        let mut pg_config = backend.pg_config.clone();
        let options = format!("{} {KEEPALIVES}", pg_config.get_options().unwrap_or(""));
        pg_config.options(options.trim());
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.sessions)
            .wait_timeout(Some(config.timeout))
            .create_timeout(Some(backend.config.connect_timeout))
            .recycle_timeout(Some(config.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| {
                Error::new(ErrorKind::Config, "building the session pool failed").with_source(err)
            })?;
        let raw = format!("{}_advisory", backend.config.table);
        let table = quoted(&raw);
        let setup = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
                 name text PRIMARY KEY, \
                 token int8 NOT NULL, \
                 holder_pid int4, \
                 taken_at timestamptz NOT NULL); \
             COMMENT ON TABLE {table} IS \
                 'statecraft advisory locks: the last fencing token per lock name, \
                  and the server process that took it (NULL: released)'"
        );
        let purge = format!(
            "DELETE FROM {table} WHERE taken_at < clock_timestamp() - interval '1 hour' \
             AND (holder_pid IS NULL \
                  OR holder_pid NOT IN (SELECT pid FROM pg_stat_activity))"
        );
        let mut client = backend.client().await?.into_object();
        let present: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(pg_error)?;
        if !present {
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg_error)?;
            tx.batch_execute(&setup).await.map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
        }
        backend.natives.add_purge(purge);
        let key = "hashtextextended($1, 0)";
        let inner = Advisory {
            pool,
            prefix: format!("{}:", backend.config.table),
            try_take: take_sql(&table, &format!("SELECT pg_try_advisory_lock({key}) AS ok")),
            // The wait bounded by the server's lock_timeout, set for this
            // statement's transaction only, then set to the round trip's
            // bound for the token's row (subqueries with volatile functions
            // run inside out, once).
            wait_take: take_sql(
                &table,
                &format!(
                    "SELECT true AS ok, set_config('lock_timeout', $4, true) \
                     FROM (SELECT pg_advisory_lock({key}) \
                           FROM (SELECT set_config('lock_timeout', $3, true)) AS bound) AS taken"
                ),
            ),
            unlock: format!(
                "WITH u AS (SELECT pg_advisory_unlock({key}) AS ok), \
                 w AS (UPDATE {table} SET holder_pid = NULL FROM u \
                       WHERE u.ok AND name = $2 AND token = $3::text::int8) \
                 SELECT ok FROM u"
            ),
            last_token: format!("SELECT token FROM {table} WHERE name = $1"),
            config,
        };
        Ok(AdvisoryLocks {
            inner: Arc::new(inner),
        })
    }

    /// Takes `name` if it is free now: the holding, or `None` when another
    /// session holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<AdvisoryGuard>> {
        let key = self.key(name);
        let sql = &self.inner.try_take;
        self.take(name, self.inner.config.timeout, sql, &[&key, &name])
            .await
    }

    /// Takes `name`, waiting at most `wait` in the server's queue for it
    /// (in the order the server queued the waiters): the holding, or a
    /// [`Timeout`](ErrorKind::Timeout) error.
    pub async fn lock(&self, name: &str, wait: Duration) -> Result<AdvisoryGuard> {
        let key = self.key(name);
        // lock_timeout 0 would wait for ever: 1 ms to its largest (24 days).
        let ms = |time: Duration| time.as_millis().clamp(1, i32::MAX as u128);
        let bound = format!("{}ms", ms(wait));
        let row_bound = format!("{}ms", ms(self.inner.config.timeout));
        let within = wait.saturating_add(self.inner.config.timeout);
        let sql = &self.inner.wait_take;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&key, &name, &bound, &row_bound];
        match self.take(name, within, sql, &params).await? {
            Some(guard) => Ok(guard),
            None => Err(Error::new(
                ErrorKind::Corrupt,
                format!("advisory lock {name:?}: the server neither took it nor refused"),
            )),
        }
    }

    /// The last token given for `name` (0: none remembered).
    pub async fn last_token(&self, name: &str) -> Result<u64> {
        let session = self.session().await?;
        let row = bounded(
            self.inner.config.timeout,
            session.query_opt(&self.inner.last_token, &[&name]),
        )
        .await;
        let token = match row {
            Ok(row) => row.map_or(Ok(0), |row| row.try_get::<_, i64>(0)),
            Err(err) => {
                discard(session);
                return Err(err);
            }
        };
        Ok(u64::try_from(token.map_err(pg_error)?).unwrap_or(0))
    }

    /// The text `name` is hashed from.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.inner.prefix)
    }

    async fn session(&self) -> Result<Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// Runs `sql` (a take statement) with `params` on a session of its own
    /// within `within`: a holding when it answered a token.
    async fn take(
        &self,
        name: &str,
        within: Duration,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<AdvisoryGuard>> {
        // A statement cut off (by the timeout, or the caller dropping this
        // future) leaves its session unclean: it is cancelled on the server
        // and closed (see `Held`), never returned to the pool still
        // waiting for or holding the lock.
        let mut held = Held::new(self.session().await?);
        held.in_flight = true;
        let answer = match held.session.as_ref() {
            Some(session) => tokio::time::timeout(within, session.query_opt(sql, params)).await,
            None => return Err(Error::new(ErrorKind::Unavailable, "no session")),
        };
        if let Ok(Ok(_) | Err(_)) = &answer {
            held.in_flight = false;
        }
        let row = match answer {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("advisory lock {name:?}: no answer within {within:?}"),
                ))
            }
            // (The session is closed all the same: the wait may have ended
            // on the token's row after the lock was taken.)
            Ok(Err(err)) if err.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("advisory lock {name:?}: still held after waiting"),
                ))
            }
            Ok(Err(err)) => return Err(pg_error(err)),
            Ok(Ok(row)) => row,
        };
        let corrupt = || {
            Error::new(
                ErrorKind::Corrupt,
                format!("advisory lock {name:?}: a take answered no token"),
            )
        };
        let taken = row.as_ref().map(|row| {
            let ok: bool = row.try_get(0).unwrap_or(true);
            (ok, row.try_get::<_, Option<i64>>(1).ok().flatten())
        });
        match taken {
            // Not taken, by the server's own answer: the session holds
            // nothing.
            Some((false, _)) => {
                held.clean = true;
                Ok(None)
            }
            Some((true, Some(token))) => Ok(Some(AdvisoryGuard::start(
                self.inner.clone(),
                name,
                u64::try_from(token).unwrap_or(0),
                held,
            ))),
            _ => Err(corrupt()),
        }
    }
}

/// `work` bounded by `within`, its error the contract's.
async fn bounded<T>(
    within: Duration,
    work: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match tokio::time::timeout(within, work).await {
        Ok(answer) => answer.map_err(pg_error),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("no answer within {within:?}"),
        )),
    }
}

/// A session closed rather than pooled: it may hold a lock.
fn discard(session: Object) {
    drop(Object::take(session));
}

/// A session that may hold an advisory lock: closed when dropped (which
/// ends every lock it holds), unless `clean` — known to hold none — when
/// it goes back to the pool. A statement still `in_flight` then (a wait
/// in the server's queue) is cancelled first: the server does not notice
/// a closed client while it waits.
struct Held {
    session: Option<Object>,
    clean: bool,
    in_flight: bool,
}

impl Held {
    fn new(session: Object) -> Held {
        Held {
            session: Some(session),
            clean: false,
            in_flight: false,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if self.clean {
            return;
        }
        if let (true, Ok(runtime)) = (self.in_flight, tokio::runtime::Handle::try_current()) {
            let cancel = session.cancel_token();
            runtime.spawn(async move {
                let _ = cancel.cancel_query(NoTls).await;
            });
        }
        discard(session);
    }
}

/// One holding of an advisory lock, with its session: unlocked when
/// dropped (in the background, on the runtime it is dropped on; without
/// one, its session is closed, which ends the lock too) or by
/// [`unlock`](Self::unlock).
#[must_use = "an advisory lock is released when its guard is dropped"]
pub struct AdvisoryGuard {
    name: String,
    token: u64,
    inner: Arc<Advisory>,
    /// The session while it holds the lock (`None`: lost or released).
    session: Arc<Mutex<Held>>,
    lost: watch::Receiver<bool>,
    keeper: AbortHandle,
    released: bool,
}

impl std::fmt::Debug for AdvisoryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdvisoryGuard")
            .field("name", &self.name)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl AdvisoryGuard {
    fn start(inner: Arc<Advisory>, name: &str, token: u64, held: Held) -> AdvisoryGuard {
        let (lost_tx, lost) = watch::channel(false);
        let session = Arc::new(Mutex::new(held));
        let keeper = tokio::spawn(keep(
            Arc::downgrade(&session),
            lost_tx,
            inner.config.check_every.max(Duration::from_millis(1)),
            inner.config.timeout,
        ))
        .abort_handle();
        AdvisoryGuard {
            name: name.to_string(),
            token,
            inner,
            session,
            lost,
            keeper,
            released: false,
        }
    }

    /// The fencing token of this holding.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the holding is known lost: its session ended or stopped
    /// answering.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the holding is known lost (at once if it is), or once
    /// the guard is released and gone.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Unlocks: a [`Lost`](ErrorKind::Lost) error if the session no longer
    /// held it. (Dropped before it answers, the guard unlocks in the
    /// background as when dropped.)
    pub async fn unlock(mut self) -> Result<()> {
        self.keeper.abort();
        let unlocked = release(&self.inner, &self.session, &self.name, self.token).await;
        self.released = true;
        unlocked
    }
}

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.keeper.abort();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Closed with its session (the keeper only holds it weakly).
            return;
        };
        let (inner, session, name, token) = (
            self.inner.clone(),
            self.session.clone(),
            std::mem::take(&mut self.name),
            self.token,
        );
        runtime.spawn(async move {
            let _ = release(&inner, &session, &name, token).await;
        });
    }
}

/// Unlocks on the holding's session, then pools the session (closed
/// instead if the unlock did not answer yes).
async fn release(inner: &Advisory, session: &Mutex<Held>, name: &str, token: u64) -> Result<()> {
    let mut held = session.lock().await;
    let lost = || {
        Error::new(
            ErrorKind::Lost,
            format!("advisory lock {name:?}: its session ended before the unlock"),
        )
    };
    let key = format!("{}{name}", inner.prefix);
    let token = token.to_string();
    held.in_flight = true;
    let Some(client) = held.session.as_ref() else {
        return Err(lost());
    };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&key, &name, &token];
    let answer = bounded(
        inner.config.timeout,
        client.query_one(&inner.unlock, &params),
    )
    .await;
    held.in_flight = false;
    match answer {
        Ok(row) => {
            let unlocked = row.try_get::<_, bool>(0).unwrap_or(false);
            let session = held.session.take();
            if unlocked {
                // Back to the pool: it holds no lock now.
                drop(session);
                Ok(())
            } else {
                if let Some(session) = session {
                    discard(session);
                }
                Err(lost())
            }
        }
        Err(err) => {
            // Closing the session ends the lock on the server.
            if let Some(session) = held.session.take() {
                discard(session);
            }
            Err(err)
        }
    }
}

/// A holding's keeper: every `every`, a round trip on its session; the
/// first that fails or takes longer than `timeout` closes the session
/// (which ends the lock, if the server still had it) and tells the
/// holder.
/// It holds the session weakly: a guard gone (and its release done)
/// ends it.
async fn keep(
    session: Weak<Mutex<Held>>,
    lost: watch::Sender<bool>,
    every: Duration,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let mut held = session.lock().await;
        held.in_flight = true;
        let alive = match held.session.as_ref() {
            Some(client) if !client.is_closed() => {
                bounded(timeout, client.simple_query("SELECT 1"))
                    .await
                    .is_ok()
            }
            Some(_) => false,
            None => return,
        };
        held.in_flight = false;
        if !alive {
            if let Some(session) = held.session.take() {
                discard(session);
            }
            let _ = lost.send(true);
            return;
        }
    }
}
