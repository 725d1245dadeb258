//! [`PostgresBackend`]: durable shared state in a PostgreSQL table.
//!
//! One table per backend, `(key bytea PRIMARY KEY, value bytea NOT NULL,
//! expires_at timestamptz)`, created and upgraded by versioned migrations
//! under an advisory lock, so any number of instances may start at once.
//! Expiry uses the server's clock (`now()`), never the client's: an expired
//! row is filtered out of every read and purged in the background. Prefix
//! listing is a range scan on the primary key, never `LIKE`; batches are one
//! statement over `unnest` arrays.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, QueueMode, RecyclingMethod, Runtime,
};
use futures_util::stream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::limits::Limits;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::{Message, PubSub, Subscription};
use crate::backend::stats::BackendStats;
use crate::backend::transaction::{Transaction, TransactionWrite, Transactional};
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

const NAME: &str = "postgres";

/// How a [`PostgresBackend`] connects and behaves; build it with
/// [`PostgresConfig::builder`].
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    url: String,
    table: String,
    pool_size: usize,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    operation_timeout: Duration,
    purge_interval: Option<Duration>,
    default_ttl: Option<Duration>,
    limits: Limits,
}

impl PostgresConfig {
    /// A builder with the defaults: table `statecraft_state`, 16 connections,
    /// 5 s to acquire or open a connection, 5 s per operation, expired rows
    /// purged every 60 s, no default TTL.
    pub fn builder() -> PostgresConfigBuilder {
        PostgresConfigBuilder {
            config: PostgresConfig {
                url: String::new(),
                table: "statecraft_state".into(),
                pool_size: 16,
                acquire_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                operation_timeout: Duration::from_secs(5),
                purge_interval: Some(Duration::from_secs(60)),
                default_ttl: None,
                limits: Limits::default(),
            },
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// Builds a [`PostgresConfig`].
#[derive(Debug, Clone)]
pub struct PostgresConfigBuilder {
    config: PostgresConfig,
}

impl PostgresConfigBuilder {
    /// The connection string: `postgres://user:password@host:port/database`
    /// or the `key=value` form libpq accepts.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// The table to keep state in: a lowercase SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 50 bytes), optionally `schema.table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.config.table = table.into();
        self
    }

    /// The largest number of pooled connections.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.config.pool_size = size;
        self
    }

    /// How long an operation waits for a free pooled connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.config.acquire_timeout = timeout;
        self
    }

    /// How long opening a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The deadline of one operation, waiting for a connection included.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.operation_timeout = timeout;
        self
    }

    /// How often expired rows are deleted (`None`: only by
    /// [`PostgresBackend::purge_expired`]).
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.purge_interval = interval;
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<PostgresConfig> {
        let config = self.config;
        let invalid = |message: String| {
            Err(Error::new(ErrorKind::Config, message)
                .with_backend(NAME)
                .with_operation(Operation::Open))
        };
        if config.url.is_empty() {
            return invalid("a PostgreSQL connection string is required".into());
        }
        validate_table(&config.table)?;
        if config.pool_size == 0 {
            return invalid("pool_size must be at least 1".into());
        }
        for (name, value) in [
            ("acquire_timeout", config.acquire_timeout),
            ("connect_timeout", config.connect_timeout),
            ("operation_timeout", config.operation_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be above zero"));
            }
        }
        if config.purge_interval.is_some_and(|d| d.is_zero()) {
            return invalid("purge_interval must be above zero".into());
        }
        Ok(config)
    }
}

/// Accepts `table` or `schema.table`, each part a lowercase identifier, so
/// that a table name can never carry SQL.
fn validate_table(table: &str) -> Result<()> {
    let parts: Vec<&str> = table.split('.').collect();
    let valid_part = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some('a'..='z' | '_'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            && part.len() <= 50
    };
    if parts.len() > 2 || !parts.iter().all(|part| valid_part(part)) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "table name {table:?} is not a lowercase SQL identifier \
                 ([a-z_][a-z0-9_]*, at most 50 bytes, optionally schema.table)"
            ),
        )
        .with_backend(NAME)
        .with_operation(Operation::Open));
    }
    Ok(())
}

/// Wraps each part of a validated name in double quotes.
fn quoted(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".")
}

/// `expires_at` from a millisecond TTL parameter (`NULL`: no expiry).
const EXPIRY: &str = "now() + $3::int8 * interval '1 millisecond'";
const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

/// Every statement, with the table name filled in once.
#[derive(Debug)]
struct Sql {
    get: String,
    put: String,
    delete: String,
    ttl: String,
    list_first: String,
    list_first_bounded: String,
    list_next: String,
    list_next_bounded: String,
    count: String,
    clear: String,
    cas_swap: String,
    cas_delete: String,
    cas_insert: String,
    take: String,
    increment: String,
    batch_get: String,
    batch_put: String,
    batch_delete: String,
    purge: String,
    lock_present: String,
    lock_absent: String,
    lock_row: String,
}

impl Sql {
    fn new(table: &str) -> Sql {
        let t = quoted(table);
        let upsert = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                      expires_at = EXCLUDED.expires_at";
        let list = |lower: &str, bounded: bool| {
            format!(
                "SELECT key FROM {t} WHERE key {lower} $1 {} AND {LIVE} ORDER BY key LIMIT $2",
                if bounded { "AND key < $3" } else { "" }
            )
        };
        let cas = |change: &str| {
            format!(
                "WITH cur AS (SELECT value FROM {t} WHERE key = $1 AND {LIVE}), \
                 change AS ({change} RETURNING 1) \
                 SELECT (SELECT count(*) FROM change) > 0, (SELECT value FROM cur)"
            )
        };
        Sql {
            get: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE}"),
            put: format!(
                "INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, {EXPIRY}) {upsert}"
            ),
            delete: format!("DELETE FROM {t} WHERE key = $1 RETURNING {LIVE}"),
            ttl: format!(
                "SELECT (extract(epoch FROM expires_at - now()) * 1000)::int8 \
                 FROM {t} WHERE key = $1 AND {LIVE}"
            ),
            list_first: list(">=", false),
            list_first_bounded: list(">=", true),
            list_next: list(">", false),
            list_next_bounded: list(">", true),
            count: format!("SELECT count(*) FROM {t} WHERE {LIVE}"),
            clear: format!("DELETE FROM {t}"),
            cas_swap: cas(&format!(
                "UPDATE {t} SET value = $4, expires_at = {EXPIRY} \
                 WHERE key = $1 AND value = $2 AND {LIVE}"
            )),
            cas_delete: cas(&format!(
                "DELETE FROM {t} WHERE key = $1 AND value = $2 AND {LIVE}"
            )),
            cas_insert: cas(&format!(
                "INSERT INTO {t} AS s (key, value, expires_at) VALUES ($1, $2, {EXPIRY}) \
                 {upsert} WHERE s.expires_at IS NOT NULL AND s.expires_at <= now()"
            )),
            take: format!("DELETE FROM {t} WHERE key = $1 RETURNING value, {LIVE}"),
            // The stored text must be a plain decimal i64: anything else makes
            // the new value NULL, which the NOT NULL constraint rejects
            // (23502, reported as NotAnInteger) without writing. The sum is
            // numeric, so only the final ::int8 can overflow (22003).
            increment: format!(
                "INSERT INTO {t} AS s (key, value, expires_at) \
                 VALUES ($1, convert_to($2::int8::text, 'UTF8'), {EXPIRY}) \
                 ON CONFLICT (key) DO UPDATE SET \
                 value = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= now() \
                     THEN EXCLUDED.value \
                     ELSE convert_to(((CASE \
                         WHEN encode(s.value, 'escape') ~ '^(0|-?[1-9][0-9]{{0,18}})$' \
                         AND encode(s.value, 'escape')::numeric \
                             BETWEEN -9223372036854775808 AND 9223372036854775807 \
                         THEN encode(s.value, 'escape')::numeric END) \
                         + $2::int8)::int8::text, 'UTF8') END, \
                 expires_at = CASE WHEN s.expires_at IS NOT NULL AND s.expires_at <= now() \
                     THEN EXCLUDED.expires_at ELSE s.expires_at END \
                 RETURNING value"
            ),
            batch_get: format!("SELECT key, value FROM {t} WHERE key = ANY($1) AND {LIVE}"),
            batch_put: format!(
                "INSERT INTO {t} (key, value, expires_at) \
                 SELECT k, v, {EXPIRY} FROM unnest($1::bytea[], $2::bytea[]) AS u(k, v) \
                 ORDER BY k {upsert}"
            ),
            batch_delete: format!("DELETE FROM {t} WHERE key = ANY($1) RETURNING {LIVE}"),
            purge: format!(
                "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} \
                 WHERE expires_at <= now() LIMIT 10000)"
            ),
            lock_present: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE} FOR UPDATE"),
            lock_absent: format!(
                "INSERT INTO {t} (key, value, expires_at) VALUES ($1, '', '-infinity') \
                 ON CONFLICT (key) DO NOTHING RETURNING 1"
            ),
            lock_row: format!("SELECT value, {LIVE} FROM {t} WHERE key = $1 FOR UPDATE"),
        }
    }
}

/// The schema, one migration per version; each runs once per table.
fn migrations(table: &str) -> Vec<String> {
    let t = quoted(table);
    let index = format!("\"{}_expires_idx\"", table.replace('.', "_"));
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {t} (\
             key bytea PRIMARY KEY, \
             value bytea NOT NULL, \
             expires_at timestamptz); \
         CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) \
             WHERE expires_at IS NOT NULL"
    )]
}

/// The advisory lock every migrating instance takes first.
const MIGRATION_LOCK: i64 = 0x5354_4154_4543_5246; // "STATECRF"

/// A PostgreSQL error, classified: lost connections, shutdowns and
/// serialization failures are temporary.
fn pg_error(err: tokio_postgres::Error) -> Error {
    let code = err.code().cloned();
    let (kind, temporary) = match &code {
        _ if err.is_closed() => (ErrorKind::Unavailable, true),
        Some(code) if *code == SqlState::QUERY_CANCELED => (ErrorKind::Timeout, true),
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            (ErrorKind::Backend, true)
        }
        Some(code)
            if code.code().starts_with("08")
                || code.code().starts_with("57P")
                || *code == SqlState::TOO_MANY_CONNECTIONS =>
        {
            (ErrorKind::Unavailable, true)
        }
        Some(_) => (ErrorKind::Backend, false),
        // No SQLSTATE: the socket failed or the protocol broke.
        None => (ErrorKind::Unavailable, true),
    };
    let message = match (&code, err.as_db_error()) {
        (Some(code), Some(db)) => format!("PostgreSQL error {}: {}", code.code(), db.message()),
        (Some(code), None) => format!("PostgreSQL error {}", code.code()),
        (None, _) => "PostgreSQL connection failed".to_string(),
    };
    Error::new(kind, message)
        .temporary(temporary)
        .with_source(err)
}

fn pool_error(err: PoolError) -> Error {
    match err {
        PoolError::Timeout(_) => Error::new(
            ErrorKind::Timeout,
            "no pooled PostgreSQL connection became free in time",
        ),
        PoolError::Backend(err) => {
            let mut error = pg_error(err);
            if error.kind() == ErrorKind::Backend {
                error = Error::new(ErrorKind::Unavailable, "PostgreSQL refused the connection")
                    .temporary(false)
                    .with_source(error);
            }
            error
        }
        other => {
            Error::new(ErrorKind::Unavailable, "the connection pool failed").with_source(other)
        }
    }
}

fn corrupt(err: tokio_postgres::Error) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "a row is not in the shape this backend writes",
    )
    .with_source(err)
}

/// The longest TTL written: 100 years, which PostgreSQL timestamps hold
/// (`Duration::MAX` would overflow them); longer ones are cut to it.
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

fn millis(ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| {
        i64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1))
            .unwrap_or(MAX_TTL_MS)
            .min(MAX_TTL_MS)
    })
}

/// Channel names are identifiers: 1 to 63 bytes.
fn check_channel(channel: &str) -> Result<()> {
    if channel.is_empty() || channel.len() > 63 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a PostgreSQL channel name is 1 to 63 bytes",
        ));
    }
    Ok(())
}

/// The smallest byte string above every string that starts with `prefix`,
/// or `None` when there is none (an empty prefix or only `0xff` bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A pooled connection lent to one operation.
///
/// If the operation's future is dropped while a statement is in flight (its
/// deadline passed, or the caller gave up), the connection is closed instead
/// of returned to the pool: the next borrower must never queue behind an
/// unfinished statement, or land inside an unfinished transaction. (The
/// server notices the closed connection and stops the statement.)
struct Lease {
    object: Option<Object>,
    busy: bool,
}

type Params<'p> = [&'p (dyn tokio_postgres::types::ToSql + Sync)];

impl Lease {
    /// Runs `work` on the connection, marking it busy until `work` is done.
    async fn with<'s, T, F, Fut>(
        &'s mut self,
        work: F,
    ) -> std::result::Result<T, tokio_postgres::Error>
    where
        F: FnOnce(&'s Object) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        self.busy = true;
        let object = match self.object.as_ref() {
            Some(object) => object,
            None => unreachable!("a lease holds its connection until dropped"),
        };
        let result = work(object).await;
        self.busy = false;
        result
    }

    async fn query_opt(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        self.with(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query_opt(&statement, params).await
        })
        .await
    }

    async fn query_one(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        self.with(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query_one(&statement, params).await
        })
        .await
    }

    async fn query(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.with(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }

    async fn execute(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        self.with(|client| async move {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, params).await
        })
        .await
    }

    async fn batch_execute(&mut self, sql: &str) -> std::result::Result<(), tokio_postgres::Error> {
        self.with(|client| client.batch_execute(sql)).await
    }

    async fn simple_query(&mut self, sql: &str) -> std::result::Result<(), tokio_postgres::Error> {
        self.with(|client| async move { client.simple_query(sql).await.map(drop) })
            .await
    }

    /// Hands the connection over (to a transaction) without the busy guard.
    fn into_object(mut self) -> Object {
        self.busy = false;
        match self.object.take() {
            Some(object) => object,
            None => unreachable!("a lease holds its connection until dropped"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(object)) = (self.busy, self.object.take()) {
            drop(Object::take(object));
        }
    }
}

struct Inner {
    pool: Pool,
    sql: Sql,
    config: PostgresConfig,
    pg_config: tokio_postgres::Config,
    stats: StatsRecorder,
}

impl Inner {
    async fn client(&self) -> Result<Lease> {
        let object = self.pool.get().await.map_err(pool_error)?;
        Ok(Lease {
            object: Some(object),
            busy: false,
        })
    }

    /// Runs `work` within the operation timeout, adding the error context.
    async fn run<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = match tokio::time::timeout(self.config.operation_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no answer within the operation timeout of {:?}",
                    self.config.operation_timeout
                ),
            )),
        };
        result.map_err(|err| {
            let err = err.context(NAME, op);
            match key {
                Some(key) => err.with_key(key),
                None => err,
            }
        })
    }

    /// [`run`](Self::run), counted in the statistics as a write.
    async fn write_op<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = self.run(op, key, work).await;
        self.stats.write(timer, result)
    }

    /// [`run`](Self::run), counted in the statistics as a hit or a miss.
    async fn read_op<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<Option<T>>>,
    ) -> Result<Option<T>> {
        let timer = self.stats.start();
        let result = self.run(op, key, work).await;
        self.stats.read(timer, result)
    }

    fn ttl_or_default(&self, ttl: Option<Duration>) -> Option<i64> {
        millis(ttl.or(self.config.default_ttl))
    }

    async fn purge(&self) -> Result<u64> {
        let mut client = self.client().await?;
        let mut purged = 0;
        loop {
            let n = client
                .execute(self.sql.purge.as_str(), &[])
                .await
                .map_err(pg_error)?;
            purged += n;
            if n < 10_000 {
                return Ok(purged);
            }
        }
    }
}

/// A [`StateBackend`] over a PostgreSQL table; see the [module docs](self).
///
/// ```no_run
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{PostgresBackend, StateBackend};
/// let backend = PostgresBackend::connect("postgres://app@db.internal/app", "state").await?;
/// backend.put(b"k", "v".into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("table", &self.inner.config.table)
            .field("pool", &self.inner.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects with the default configuration to `url`, keeping state in
    /// `table` (created if needed).
    pub async fn connect(url: &str, table: &str) -> Result<PostgresBackend> {
        Self::new(PostgresConfig::builder().url(url).table(table).build()?).await
    }

    /// Connects, runs the pending migrations, and starts the purge task.
    /// Must be called inside a Tokio runtime.
    pub async fn new(config: PostgresConfig) -> Result<PostgresBackend> {
        let open = |err: Error| err.context(NAME, Operation::Open);
        let mut pg_config: tokio_postgres::Config = config.url.parse().map_err(|err| {
            open(
                Error::new(
                    ErrorKind::Config,
                    "the PostgreSQL connection string is invalid",
                )
                .with_source(err),
            )
        })?;
        pg_config.connect_timeout(config.connect_timeout);
        pg_config.keepalives(true);
        pg_config.application_name("statecraft");
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            // The most recently used connection first: it is the one whose
            // socket and task are warm, and idle ones can age out.
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| {
                open(
                    Error::new(ErrorKind::Config, "building the connection pool failed")
                        .with_source(err),
                )
            })?;
        let inner = Arc::new(Inner {
            pool,
            sql: Sql::new(&config.table),
            pg_config,
            stats: StatsRecorder::new(),
            config,
        });
        inner.run(Operation::Migrate, None, migrate(&inner)).await?;
        crate::backends::anchor::spawn(Arc::downgrade(&inner));
        if let Some(every) = inner.config.purge_interval {
            tokio::spawn(purge_loop(Arc::downgrade(&inner), every));
        }
        Ok(PostgresBackend { inner })
    }

    /// The table this backend keeps state in.
    pub fn table(&self) -> &str {
        &self.inner.config.table
    }

    /// Deletes expired rows now; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.run(Operation::Maintenance, None, inner.purge()).await
    }

    /// `VACUUM (ANALYZE)` the table, reclaiming dead rows' space for reuse.
    pub async fn vacuum(&self) -> Result<()> {
        self.maintenance("VACUUM (ANALYZE)").await
    }

    /// `ANALYZE` the table, refreshing the planner's statistics.
    pub async fn analyze(&self) -> Result<()> {
        self.maintenance("ANALYZE").await
    }

    async fn maintenance(&self, command: &str) -> Result<()> {
        let inner = &self.inner;
        let sql = format!("{command} {}", quoted(&inner.config.table));
        inner
            .run(Operation::Maintenance, None, async {
                let mut client = inner.client().await?;
                client.batch_execute(&sql).await.map_err(pg_error)
            })
            .await
    }

    /// Starts an interactive transaction on its own pooled connection.
    ///
    /// Reads see the transaction's own writes; nothing is visible to others
    /// until [`PgTransaction::commit`]. Dropping it without committing rolls
    /// it back (the connection is closed rather than returned to the pool).
    pub async fn begin(&self) -> Result<PgTransaction> {
        let inner = &self.inner;
        inner
            .run(Operation::Transaction, None, async {
                // The transaction owns the connection before BEGIN is sent:
                // if BEGIN fails, or this future is dropped mid-way, its
                // `Drop` closes the connection instead of pooling it.
                let transaction = PgTransaction {
                    inner: self.inner.clone(),
                    client: Some(inner.client().await?.into_object()),
                    failed: AtomicBool::new(false),
                };
                transaction
                    .client()?
                    .batch_execute("BEGIN")
                    .await
                    .map_err(pg_error)?;
                Ok(transaction)
            })
            .await
    }

    /// How many connections the pool holds, how many are idle, and how many
    /// callers wait for one.
    pub fn pool_status(&self) -> PoolStatus {
        let status = self.inner.pool.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }
}

/// The connection pool's state; see [`PostgresBackend::pool_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections that are idle.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

async fn migrate(inner: &Inner) -> Result<()> {
    let mut client = inner.client().await?.into_object();
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS statecraft_migrations (\
             table_name text NOT NULL, \
             version int4 NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (table_name, version))",
    )
    .await
    .map_err(pg_error)?;
    let table = inner.config.table.as_str();
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM statecraft_migrations WHERE table_name = $1",
            &[&table],
        )
        .await
        .map_err(pg_error)?;
    let applied: i32 = row.try_get(0).map_err(corrupt)?;
    for (index, sql) in migrations(table).iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO statecraft_migrations (table_name, version) VALUES ($1, $2)",
            &[&table, &version],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(table, version, "applied statecraft migration");
    }
    tx.commit().await.map_err(pg_error)
}

async fn purge_loop(inner: Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(err) = inner.purge().await {
            tracing::warn!(error = %err, "purging expired rows failed");
        }
    }
}

fn value_of(row: &Row, index: usize) -> Result<Bytes> {
    row.try_get::<_, Vec<u8>>(index)
        .map(Bytes::from)
        .map_err(corrupt)
}

fn cas_outcome(row: &Row) -> Result<CasOutcome> {
    let swapped: bool = row.try_get(0).map_err(corrupt)?;
    if swapped {
        return Ok(CasOutcome::Swapped);
    }
    let current: Option<Vec<u8>> = row.try_get(1).map_err(corrupt)?;
    Ok(CasOutcome::Conflict(current.map(Bytes::from)))
}

/// `increment`'s SQLSTATEs mean the contract's errors.
fn increment_error(err: tokio_postgres::Error) -> Error {
    match err.code() {
        Some(code)
            if *code == SqlState::NOT_NULL_VIOLATION
                || *code == SqlState::INVALID_TEXT_REPRESENTATION =>
        {
            Error::new(
                ErrorKind::NotAnInteger,
                "the stored value is not a decimal 64-bit integer",
            )
        }
        Some(code) if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE => {
            Error::new(ErrorKind::Overflow, "the sum overflows a 64-bit integer")
        }
        _ => pg_error(err),
    }
}

/// Keeps the last write of each key, so that one `INSERT … ON CONFLICT`
/// never touches a row twice. (The statement then writes in key order, so
/// that concurrent batches lock rows in the same order and never deadlock.)
fn last_write_wins(entries: Vec<(Bytes, Bytes)>) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut position: HashMap<Bytes, usize> = HashMap::with_capacity(entries.len());
    let mut keys = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        match position.get(&key) {
            Some(&at) => values[at] = value,
            None => {
                position.insert(key.clone(), keys.len());
                keys.push(key);
                values.push(value);
            }
        }
    }
    (keys, values)
}

impl StateBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: true,
            distributed: true,
            native_ttl: self.inner.config.purge_interval.is_some(),
            transactions: true,
            pubsub: true,
            ordered_listing: true,
            atomic_batch: true,
        }
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.read_op(Operation::Get, Some(key), async move {
            inner.config.limits.check_key(NAME, Operation::Get, key)?;
            let mut client = inner.client().await?;
            let row = client
                .query_opt(&inner.sql.get, &[&key])
                .await
                .map_err(pg_error)?;
            row.map(|row| value_of(&row, 0)).transpose()
        }))
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Put, Some(key), async move {
            inner
                .config
                .limits
                .check_entry(NAME, Operation::Put, key, &value)?;
            let ttl = millis(options.resolve_ttl(inner.config.default_ttl));
            let mut client = inner.client().await?;
            client
                .execute(&inner.sql.put, &[&key, &value.as_ref(), &ttl])
                .await
                .map_err(pg_error)?;
            Ok(())
        }))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Delete, Some(key), async move {
            inner
                .config
                .limits
                .check_key(NAME, Operation::Delete, key)?;
            let mut client = inner.client().await?;
            let row = client
                .query_opt(&inner.sql.delete, &[&key])
                .await
                .map_err(pg_error)?;
            match row {
                Some(row) => row.try_get::<_, bool>(0).map_err(corrupt),
                None => Ok(false),
            }
        }))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Ttl, Some(key), async move {
            inner.config.limits.check_key(NAME, Operation::Ttl, key)?;
            let mut client = inner.client().await?;
            let row = client
                .query_opt(&inner.sql.ttl, &[&key])
                .await
                .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(KeyTtl::Missing);
            };
            let left: Option<i64> = row.try_get(0).map_err(corrupt)?;
            Ok(match left {
                None => KeyTtl::Persistent,
                Some(ms) => {
                    KeyTtl::ExpiresIn(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                }
            })
        }))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let inner = &*self.inner;
        StateFuture::new(
            inner.write_op(Operation::ListKeys, Some(prefix), async move {
                if limit == 0 {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        "a page holds at least one key",
                    ));
                }
                let end = prefix_end(prefix);
                let (start, sql) = match (cursor, &end) {
                    (None, None) => (prefix, &inner.sql.list_first),
                    (None, Some(_)) => (prefix, &inner.sql.list_first_bounded),
                    (Some(after), None) => (after, &inner.sql.list_next),
                    (Some(after), Some(_)) => (after, &inner.sql.list_next_bounded),
                };
                // A cursor before the prefix would list keys outside it.
                let (start, sql) = if cursor.is_some_and(|c| c < prefix) {
                    let sql = if end.is_some() {
                        &inner.sql.list_first_bounded
                    } else {
                        &inner.sql.list_first
                    };
                    (prefix, sql)
                } else {
                    (start, sql)
                };
                let limit_param = i64::try_from(limit).unwrap_or(i64::MAX);
                let mut client = inner.client().await?;
                let rows = match &end {
                    Some(end) => {
                        client
                            .query(sql, &[&start, &limit_param, &end.as_slice()])
                            .await
                    }
                    None => client.query(sql, &[&start, &limit_param]).await,
                }
                .map_err(pg_error)?;
                let keys = rows
                    .iter()
                    .map(|row| value_of(row, 0))
                    .collect::<Result<Vec<_>>>()?;
                let next = (keys.len() == limit)
                    .then(|| keys.last().cloned())
                    .flatten();
                Ok(KeyPage { keys, next })
            }),
        )
    }

    fn count(&self) -> StateFuture<'_, u64> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Count, None, async move {
            let mut client = inner.client().await?;
            let row = client
                .query_one(&inner.sql.count, &[])
                .await
                .map_err(pg_error)?;
            let count: i64 = row.try_get(0).map_err(corrupt)?;
            Ok(u64::try_from(count).unwrap_or(0))
        }))
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Clear, None, async move {
            let mut client = inner.client().await?;
            client
                .execute(&inner.sql.clear, &[])
                .await
                .map_err(pg_error)?;
            Ok(())
        }))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, CasOutcome> {
        let inner = &*self.inner;
        StateFuture::new(
            inner.write_op(Operation::CompareAndSwap, Some(key), async move {
                let limits = &inner.config.limits;
                match &new {
                    Some(value) => {
                        limits.check_entry(NAME, Operation::CompareAndSwap, key, value)?
                    }
                    None => limits.check_key(NAME, Operation::CompareAndSwap, key)?,
                }
                let ttl = inner.ttl_or_default(ttl);
                let mut client = inner.client().await?;
                if expected.is_none() && new.is_none() {
                    let row = client
                        .query_opt(&inner.sql.get, &[&key])
                        .await
                        .map_err(pg_error)?;
                    return Ok(match row {
                        None => CasOutcome::Swapped,
                        Some(row) => CasOutcome::Conflict(Some(value_of(&row, 0)?)),
                    });
                }
                // The reported value comes from the statement's snapshot,
                // while the write re-checks the newest row version. When
                // they disagree (a concurrent writer committed between
                // the two), the report would equal `expected`: run again
                // on a fresh snapshot rather than report a stale value.
                for _ in 0..16 {
                    let row = match (expected, &new) {
                        (None, Some(value)) => {
                            client
                                .query_one(&inner.sql.cas_insert, &[&key, &value.as_ref(), &ttl])
                                .await
                        }
                        (Some(expected), None) => {
                            client
                                .query_one(&inner.sql.cas_delete, &[&key, &expected])
                                .await
                        }
                        (Some(expected), Some(value)) => {
                            client
                                .query_one(
                                    &inner.sql.cas_swap,
                                    &[&key, &expected, &ttl, &value.as_ref()],
                                )
                                .await
                        }
                        (None, None) => unreachable!("answered above"),
                    }
                    .map_err(pg_error)?;
                    match cas_outcome(&row)? {
                        CasOutcome::Conflict(current) if current.as_deref() == expected => continue,
                        outcome => return Ok(outcome),
                    }
                }
                Err(Error::new(
                    ErrorKind::Backend,
                    "the value kept changing under compare_and_swap",
                )
                .temporary(true))
            }),
        )
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(Operation::HealthCheck, None, async {
                    let started = Instant::now();
                    let mut client = inner.client().await?;
                    client.simple_query("SELECT 1").await.map_err(pg_error)?;
                    Ok(HealthReport::new(NAME, started.elapsed()))
                })
                .await
        })
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let mut stats = inner.stats.snapshot(NAME);
            let table = quoted(&inner.config.table);
            let figures = inner
                .run(Operation::Stats, None, async {
                    let mut client = inner.client().await?;
                    let row = client
                        .query_one(
                            "SELECT pg_database_size(current_database()), \
                                    pg_total_relation_size($1::text::regclass), \
                                    coalesce((SELECT n_dead_tup FROM pg_stat_user_tables \
                                              WHERE relid = $1::text::regclass), 0), \
                                    coalesce((SELECT n_live_tup FROM pg_stat_user_tables \
                                              WHERE relid = $1::text::regclass), 0)",
                            &[&table],
                        )
                        .await
                        .map_err(pg_error)?;
                    let mut figures = Vec::new();
                    for (index, name) in [
                        "database_size_bytes",
                        "table_size_bytes",
                        "dead_tuples",
                        "live_tuples",
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let value: i64 = row.try_get(index).map_err(corrupt)?;
                        figures.push((name, u64::try_from(value).unwrap_or(0)));
                    }
                    Ok(figures)
                })
                .await?;
            for (name, value) in figures {
                stats.details.insert(name.to_string(), value);
            }
            let pool = self.pool_status();
            stats
                .details
                .insert("pool_max".into(), pool.max_size as u64);
            stats.details.insert("pool_size".into(), pool.size as u64);
            stats
                .details
                .insert("pool_available".into(), pool.available as u64);
            stats
                .details
                .insert("pool_waiting".into(), pool.waiting as u64);
            Ok(stats)
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::BatchGet, None, async move {
            for key in keys {
                inner
                    .config
                    .limits
                    .check_key(NAME, Operation::BatchGet, key)?;
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let params: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
            let mut client = inner.client().await?;
            let rows = client
                .query(&inner.sql.batch_get, &[&params])
                .await
                .map_err(pg_error)?;
            let mut found: HashMap<Bytes, Bytes> = HashMap::with_capacity(rows.len());
            for row in &rows {
                found.insert(value_of(row, 0)?, value_of(row, 1)?);
            }
            Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
        }))
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::BatchPut, None, async move {
            for (key, value) in &entries {
                inner
                    .config
                    .limits
                    .check_entry(NAME, Operation::BatchPut, key, value)?;
            }
            if entries.is_empty() {
                return Ok(());
            }
            let ttl = millis(options.resolve_ttl(inner.config.default_ttl));
            let (keys, values) = last_write_wins(entries);
            let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
            let values: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
            let mut client = inner.client().await?;
            client
                .execute(&inner.sql.batch_put, &[&keys, &values, &ttl])
                .await
                .map_err(pg_error)?;
            Ok(())
        }))
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::BatchDelete, None, async move {
            for key in keys {
                inner
                    .config
                    .limits
                    .check_key(NAME, Operation::BatchDelete, key)?;
            }
            if keys.is_empty() {
                return Ok(0);
            }
            let params: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
            let mut client = inner.client().await?;
            let rows = client
                .query(&inner.sql.batch_delete, &[&params])
                .await
                .map_err(pg_error)?;
            let mut removed = 0;
            for row in &rows {
                removed += u64::from(row.try_get::<_, bool>(0).map_err(corrupt)?);
            }
            Ok(removed)
        }))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, bool> {
        StateFuture::new(async move {
            let outcome = self.compare_and_swap(key, None, Some(value), ttl).await;
            outcome
                .map(|outcome| outcome.is_swapped())
                .map_err(|err| err.with_operation(Operation::SetIfNotExists))
        })
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(
            inner.read_op(Operation::GetAndDelete, Some(key), async move {
                inner
                    .config
                    .limits
                    .check_key(NAME, Operation::GetAndDelete, key)?;
                let mut client = inner.client().await?;
                let row = client
                    .query_opt(&inner.sql.take, &[&key])
                    .await
                    .map_err(pg_error)?;
                let Some(row) = row else { return Ok(None) };
                let live: bool = row.try_get(1).map_err(corrupt)?;
                if live {
                    Ok(Some(value_of(&row, 0)?))
                } else {
                    Ok(None)
                }
            }),
        )
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, i64> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Increment, Some(key), async move {
            inner
                .config
                .limits
                .check_key(NAME, Operation::Increment, key)?;
            let ttl = inner.ttl_or_default(ttl);
            let mut client = inner.client().await?;
            let row = client
                .query_one(&inner.sql.increment, &[&key, &delta, &ttl])
                .await
                .map_err(increment_error)?;
            let value = value_of(&row, 0)?;
            crate::raw::counter::parse_counter(&value)
        }))
    }
}

/// An interactive PostgreSQL transaction; see [`PostgresBackend::begin`].
pub struct PgTransaction {
    inner: Arc<Inner>,
    client: Option<Object>,
    /// A statement failed (or timed out): PostgreSQL has aborted the
    /// transaction, so `commit` must not report success.
    failed: AtomicBool,
}

impl fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTransaction")
            .field("table", &self.inner.config.table)
            .field("open", &self.client.is_some())
            .finish()
    }
}

impl PgTransaction {
    fn client(&self) -> Result<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "the transaction has ended"))
    }

    /// The value of `key` as this transaction sees it.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        let result = inner
            .run(Operation::Get, Some(key), async {
                inner.config.limits.check_key(NAME, Operation::Get, key)?;
                let client = self.client()?;
                let statement = client
                    .prepare_cached(&inner.sql.get)
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&key])
                    .await
                    .map_err(pg_error)?;
                row.map(|row| value_of(&row, 0)).transpose()
            })
            .await;
        self.note(result)
    }

    /// Like [`get`](Self::get), and locks the row until the transaction ends
    /// (`SELECT … FOR UPDATE`).
    pub async fn get_for_update(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        let result = inner
            .run(Operation::Get, Some(key), async {
                inner.config.limits.check_key(NAME, Operation::Get, key)?;
                let client = self.client()?;
                let statement = client
                    .prepare_cached(&inner.sql.lock_present)
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&key])
                    .await
                    .map_err(pg_error)?;
                row.map(|row| value_of(&row, 0)).transpose()
            })
            .await;
        self.note(result)
    }

    /// Stores `value` under `key` (with `ttl`, or the backend default).
    pub async fn put(&self, key: &[u8], value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let inner = &self.inner;
        let result = inner
            .run(Operation::Put, Some(key), async {
                inner
                    .config
                    .limits
                    .check_entry(NAME, Operation::Put, key, &value)?;
                let ttl = inner.ttl_or_default(ttl);
                let client = self.client()?;
                let statement = client
                    .prepare_cached(&inner.sql.put)
                    .await
                    .map_err(pg_error)?;
                client
                    .execute(&statement, &[&key, &value.as_ref(), &ttl])
                    .await
                    .map_err(pg_error)?;
                Ok(())
            })
            .await;
        self.note(result)
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        let inner = &self.inner;
        let result = inner
            .run(Operation::Delete, Some(key), async {
                inner
                    .config
                    .limits
                    .check_key(NAME, Operation::Delete, key)?;
                let client = self.client()?;
                let statement = client
                    .prepare_cached(&inner.sql.delete)
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(&statement, &[&key])
                    .await
                    .map_err(pg_error)?;
                match row {
                    Some(row) => row.try_get::<_, bool>(0).map_err(corrupt),
                    None => Ok(false),
                }
            })
            .await;
        self.note(result)
    }

    fn note<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn finish(mut self, command: &'static str) -> Result<()> {
        if command == "COMMIT" && self.failed.load(Ordering::Relaxed) {
            // Dropping closes the connection; the server rolls back.
            drop(self);
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a statement of this transaction failed, so PostgreSQL aborted it; \
                 nothing was committed",
            )
            .context(NAME, Operation::Transaction));
        }
        let inner = self.inner.clone();
        let client = self.client.take();
        inner
            .run(Operation::Transaction, None, async move {
                let client = client.ok_or_else(|| {
                    Error::new(ErrorKind::InvalidArgument, "the transaction has ended")
                })?;
                // Closed, not pooled, if the deadline interrupts it.
                let mut lease = Lease {
                    object: Some(client),
                    busy: false,
                };
                lease.batch_execute(command).await.map_err(pg_error)
            })
            .await
    }

    /// Makes every write of the transaction visible, atomically.
    pub async fn commit(self) -> Result<()> {
        self.finish("COMMIT").await
    }

    /// Discards every write of the transaction.
    pub async fn rollback(self) -> Result<()> {
        self.finish("ROLLBACK").await
    }
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing the connection makes the server roll the transaction
            // back; a connection mid-transaction never returns to the pool.
            drop(Object::take(client));
        }
    }
}

impl Transactional for PostgresBackend {
    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        StateFuture::new(async move {
            let inner = &self.inner;
            for write in transaction.writes() {
                match write {
                    TransactionWrite::Put { key, value, .. } => {
                        inner
                            .config
                            .limits
                            .check_entry(NAME, Operation::Transaction, key, value)?
                    }
                    TransactionWrite::Delete { key } => {
                        inner
                            .config
                            .limits
                            .check_key(NAME, Operation::Transaction, key)?
                    }
                }
            }
            let tx = self.begin().await?;
            let client = tx.client()?;
            let holds = inner
                .run(Operation::Transaction, None, async {
                    for (key, expected) in transaction.checks() {
                        let current = match expected {
                            // Insert an already-expired placeholder: it locks
                            // the key against a concurrent insert until commit.
                            None => {
                                let insert = client
                                    .prepare_cached(&inner.sql.lock_absent)
                                    .await
                                    .map_err(pg_error)?;
                                let lock = client
                                    .prepare_cached(&inner.sql.lock_row)
                                    .await
                                    .map_err(pg_error)?;
                                // A row deleted between the INSERT and the
                                // locking read is neither inserted nor
                                // locked: try again until one of the two holds.
                                let mut found = None;
                                for _ in 0..100 {
                                    let inserted = client
                                        .query_opt(&insert, &[&key.as_ref()])
                                        .await
                                        .map_err(pg_error)?;
                                    if inserted.is_some() {
                                        found = Some(None);
                                        break;
                                    }
                                    let row = client
                                        .query_opt(&lock, &[&key.as_ref()])
                                        .await
                                        .map_err(pg_error)?;
                                    if let Some(row) = row {
                                        let live: bool = row.try_get(1).map_err(corrupt)?;
                                        found = Some(if live {
                                            Some(value_of(&row, 0)?)
                                        } else {
                                            None
                                        });
                                        break;
                                    }
                                }
                                found.ok_or_else(|| {
                                    Error::new(
                                        ErrorKind::Backend,
                                        "the key kept changing under the transaction's check",
                                    )
                                    .temporary(true)
                                })?
                            }
                            Some(_) => {
                                let statement = client
                                    .prepare_cached(&inner.sql.lock_present)
                                    .await
                                    .map_err(pg_error)?;
                                let row = client
                                    .query_opt(&statement, &[&key.as_ref()])
                                    .await
                                    .map_err(pg_error)?;
                                row.map(|row| value_of(&row, 0)).transpose()?
                            }
                        };
                        if current.as_ref() != expected.as_ref() {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })
                .await?;
            if !holds {
                tx.rollback().await?;
                return Ok(false);
            }
            for write in transaction.writes() {
                match write {
                    TransactionWrite::Put { key, value, ttl } => {
                        tx.put(key, value.clone(), *ttl).await?
                    }
                    TransactionWrite::Delete { key } => {
                        tx.delete(key).await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(true)
        })
    }
}

/// NOTIFY payloads are text of fewer than 8000 bytes.
const MAX_NOTIFY_PAYLOAD: usize = 7999;

impl PubSub for PostgresBackend {
    /// `pg_notify(channel, payload)`. PostgreSQL payloads are text: a payload
    /// that is not UTF-8, holds a NUL, or is 8000 bytes or longer, and a
    /// channel name outside 1–63 bytes, are [`ErrorKind::InvalidArgument`]
    /// errors.
    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(Operation::Publish, Some(channel.as_bytes()), async {
                    check_channel(channel)?;
                    let text = std::str::from_utf8(&payload)
                        .ok()
                        .filter(|text| !text.contains('\0'))
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::InvalidArgument,
                                "a PostgreSQL NOTIFY payload must be UTF-8 text without NUL",
                            )
                        })?;
                    if text.len() > MAX_NOTIFY_PAYLOAD {
                        return Err(Error::new(
                            ErrorKind::InvalidArgument,
                            format!(
                                "a NOTIFY payload is at most {MAX_NOTIFY_PAYLOAD} bytes, not {}",
                                text.len()
                            ),
                        ));
                    }
                    let mut client = inner.client().await?;
                    client
                        .execute("SELECT pg_notify($1, $2)", &[&channel, &text])
                        .await
                        .map_err(pg_error)?;
                    Ok(())
                })
                .await
        })
    }

    /// `LISTEN` on a dedicated connection (not a pooled one), which the
    /// subscription owns and closes when dropped.
    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(Operation::Subscribe, Some(channel.as_bytes()), async {
                    check_channel(channel)?;
                    let (client, mut connection) =
                        inner.pg_config.connect(NoTls).await.map_err(pg_error)?;
                    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = futures_util::StreamExt::next(&mut messages).await
                        {
                            let item = match message {
                                Ok(AsyncMessage::Notification(note)) => Ok(Message {
                                    channel: note.channel().to_string(),
                                    payload: Bytes::copy_from_slice(note.payload().as_bytes()),
                                }),
                                Ok(_) => continue,
                                Err(err) => Err(pg_error(err).context(NAME, Operation::Subscribe)),
                            };
                            let failed = item.is_err();
                            if sender.send(item).is_err() || failed {
                                return;
                            }
                        }
                    });
                    let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                    client.batch_execute(&listen).await.map_err(pg_error)?;
                    let messages =
                        stream::unfold((receiver, client), |(mut receiver, client)| async move {
                            let item = receiver.recv().await?;
                            Some((item, (receiver, client)))
                        });
                    Ok(Subscription::new(messages))
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        for good in ["state", "_s1", "app.state_v2"] {
            assert!(validate_table(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "State",
            "1state",
            "state; DROP TABLE x",
            "a.b.c",
            "st\"ate",
            "state-x",
            &"x".repeat(51),
        ] {
            let err = validate_table(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::Config), "{bad:?}");
        }
    }

    #[test]
    fn prefix_ends_bound_the_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn batches_keep_the_last_write_of_a_key() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let (keys, values) =
            last_write_wins(vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))]);
        assert_eq!(keys, vec![b("a"), b("b")]);
        assert_eq!(values, vec![b("3"), b("2")]);
    }
}
