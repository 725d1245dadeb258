//! [`PostgresBackend`]: opening it, and its [`StateBackend`] impl.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::backend::atomic::{by_compare_and_swap, AtomicUpdate};
use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

use super::config::{quoted, PostgresConfig};
use super::errors::{corrupt, increment_error, pg_error};
use super::maintenance::purge_loop;
use super::migrations::migrate;
use super::pipeline::{Lanes, Read};
use super::pool::Inner;
use super::sql::{cas_outcome, last_write_wins, prefix_end, value_of, Sql};
use super::NAME;

/// A [`StateBackend`] over a PostgreSQL table: TTLs in an `expires_at`
/// column set from the server's clock, single-statement atomic operations,
/// migrations under an advisory lock, LISTEN/NOTIFY pub/sub.
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
    pub(super) inner: Arc<Inner>,
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
            natives: Default::default(),
            lanes: std::sync::OnceLock::new(),
            config,
        });
        if inner.config.migrate {
            inner.run(Operation::Migrate, None, migrate(&inner)).await?;
        } else {
            inner
                .run(Operation::Connect, None, table_exists(&inner))
                .await?;
        }
        let lanes = inner
            .run(
                Operation::Connect,
                None,
                Lanes::open(inner.config.read_connections, &inner.lane_config()),
            )
            .await?;
        if inner.lanes.set(lanes).is_err() {
            unreachable!("the lanes are opened once, here");
        }
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
}

/// Fails unless the backend's table exists (connecting without migrations).
async fn table_exists(inner: &Inner) -> Result<()> {
    let table = super::config::quoted(&inner.config.table);
    let mut client = inner.client().await?;
    let present: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(super::errors::pg_error)?;
    match present {
        true => Ok(()),
        false => Err(Error::new(
            ErrorKind::Config,
            format!("table {table} does not exist (and migrations are off)"),
        )),
    }
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
            key_tracking: false,
        }
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.read_op(Operation::Get, Some(key), async move {
            inner.config.limits.check_key(NAME, Operation::Get, key)?;
            let row = inner.read_row(Read::Get, key).await?;
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
            let ttl = inner.ttl_of(options);
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

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        let inner = &*self.inner;
        StateFuture::new(inner.read_op(Operation::GetWithTtl, Some(key), async move {
            inner
                .config
                .limits
                .check_key(NAME, Operation::GetWithTtl, key)?;
            let row = inner.read_row(Read::GetWithTtl, key).await?;
            let Some(row) = row else { return Ok(None) };
            let left: Option<i64> = row.try_get(1).map_err(corrupt)?;
            let ttl = match left {
                None => KeyTtl::Persistent,
                Some(ms) => {
                    KeyTtl::ExpiresIn(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                }
            };
            Ok(Some((value_of(&row, 0)?, ttl)))
        }))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let inner = &*self.inner;
        StateFuture::new(inner.read_op(Operation::Ttl, Some(key), async move {
            inner.config.limits.check_key(NAME, Operation::Ttl, key)?;
            let row = inner.read_row(Read::Ttl, key).await?;
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
            inner.scan_op(Operation::ListKeys, Some(prefix), async move {
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
        StateFuture::new(inner.scan_op(Operation::Count, None, async move {
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
        options: PutOptions,
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
                let ttl = inner.ttl_of(options);
                if expected.is_none() && new.is_none() {
                    let row = inner.read_row(Read::Get, key).await?;
                    return Ok(match row {
                        None => CasOutcome::Swapped,
                        Some(row) => CasOutcome::Conflict(Some(value_of(&row, 0)?)),
                    });
                }
                let mut client = inner.client().await?;
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

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        let Some(native) = update.postgres() else {
            return StateFuture::new(by_compare_and_swap(self, key, update, input));
        };
        let inner = &*self.inner;
        StateFuture::new(
            inner.write_op(Operation::UpdateAtomic, Some(key), async move {
                let limits = &inner.config.limits;
                if update.stores_input() {
                    limits.check_entry(NAME, Operation::UpdateAtomic, key, input)?;
                } else {
                    limits.check_key(NAME, Operation::UpdateAtomic, key)?;
                }
                inner.run_native(update, native, key, input).await
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

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.notify(channel, payload)
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        self.listen(channel)
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        self.apply_transaction(transaction)
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        StateFuture::new(async move {
            match task {
                MaintenanceTask::PurgeExpired => self.purge_expired().await,
                MaintenanceTask::Vacuum => self.vacuum().await.map(|()| 0),
                MaintenanceTask::Analyze => self.analyze().await.map(|()| 0),
                _ => Err(Error::unsupported(NAME, Operation::Maintenance)),
            }
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
            if let Some(lanes) = inner.lanes.get() {
                stats
                    .details
                    .insert("read_connections".into(), lanes.len() as u64);
                stats
                    .details
                    .insert("read_connections_open".into(), lanes.open_count() as u64);
                stats
                    .details
                    .insert("read_connections_reopened".into(), lanes.reopened());
            }
            Ok(stats)
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        StateFuture::new(inner.read_op(Operation::BatchGet, None, async move {
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
            let ttl = inner.ttl_of(options);
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
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        StateFuture::new(async move {
            let outcome = self.compare_and_swap(key, None, Some(value), options).await;
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
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        let inner = &*self.inner;
        StateFuture::new(inner.write_op(Operation::Increment, Some(key), async move {
            inner
                .config
                .limits
                .check_key(NAME, Operation::Increment, key)?;
            let ttl = inner.ttl_of(options);
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
