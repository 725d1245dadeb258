//! The connection pool: leased connections (closed when interrupted), the
//! shared state behind every handle, and [`PoolStatus`].

use std::future::Future;

use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::options::PutOptions;
use crate::raw::recorder::{Found, StatsRecorder};

use super::backend::PostgresBackend;
use super::config::PostgresConfig;
use super::errors::pool_error;
use super::sql::{millis, Sql};
use super::NAME;

/// A pooled connection lent to one operation.
///
/// If the operation's future is dropped while a statement is in flight (its
/// deadline passed, or the caller gave up), the connection is closed instead
/// of returned to the pool: the next borrower must never queue behind an
/// unfinished statement, or land inside an unfinished transaction. (The
/// server notices the closed connection and stops the statement.)
pub(super) struct Lease {
    pub(super) object: Option<Object>,
    pub(super) busy: bool,
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

    /// A native update's call (`$1` the key, `$2` the input, `$3` the
    /// default TTL): the input bound as `bytea` where the statement takes
    /// one there, else as `text` (then it must be UTF-8: `None` if not).
    pub(super) async fn call_native(
        &mut self,
        sql: &str,
        key: &[u8],
        input: &[u8],
        default_ttl: i64,
    ) -> Option<std::result::Result<Row, tokio_postgres::Error>> {
        let outcome = self
            .with(|client| async move {
                let statement = client.prepare_cached(sql).await?;
                let binary = statement.params().get(1) == Some(&tokio_postgres::types::Type::BYTEA);
                if binary {
                    return client
                        .query_one(&statement, &[&key, &input, &default_ttl])
                        .await
                        .map(Some);
                }
                let Ok(text) = std::str::from_utf8(input) else {
                    return Ok(None);
                };
                client
                    .query_one(&statement, &[&key, &text, &default_ttl])
                    .await
                    .map(Some)
            })
            .await;
        outcome.transpose()
    }

    pub(super) async fn query_opt(
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

    pub(super) async fn query_one(
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

    pub(super) async fn query(
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

    pub(super) async fn execute(
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

    pub(super) async fn batch_execute(
        &mut self,
        sql: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        self.with(|client| client.batch_execute(sql)).await
    }

    pub(super) async fn simple_query(
        &mut self,
        sql: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        self.with(|client| async move { client.simple_query(sql).await.map(drop) })
            .await
    }

    /// Hands the connection over (to a transaction) without the busy guard.
    pub(super) fn into_object(mut self) -> Object {
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

pub(super) struct Inner {
    pub(super) pool: Pool,
    pub(super) sql: Sql,
    pub(super) config: PostgresConfig,
    pub(super) pg_config: tokio_postgres::Config,
    pub(super) stats: StatsRecorder,
    /// The native atomic updates set up so far.
    pub(super) natives: super::native::Natives,
    /// The shared connections of point reads, opened after the migrations.
    pub(super) lanes: std::sync::OnceLock<super::pipeline::Lanes>,
}

impl Inner {
    pub(super) async fn client(&self) -> Result<Lease> {
        let object = self.pool.get().await.map_err(pool_error)?;
        Ok(Lease {
            object: Some(object),
            busy: false,
        })
    }

    /// Runs `work` within the operation timeout, adding the error context.
    pub(super) async fn run<T>(
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
            // A write that failed after its statement may have reached the
            // server (a timeout, a lost connection) has an unknown outcome;
            // one that never got a connection, or that the server rolled
            // back (serialization failure, deadlock), certainly did not run.
            let maybe_applied = !op.is_read()
                && err.operation() != Some(Operation::Connect)
                && matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable);
            let err = err.context(NAME, op).maybe_applied(maybe_applied);
            match key {
                Some(key) => err.with_key(key),
                None => err,
            }
        })
    }

    /// [`run`](Self::run), counted in the statistics as a write.
    pub(super) async fn write_op<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = self.run(op, key, work).await;
        self.stats.write(timer, result)
    }

    /// [`run`](Self::run), counted in the statistics as hits and misses.
    pub(super) async fn read_op<T: Found>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = self.run(op, key, work).await;
        self.stats.read(timer, result)
    }

    /// [`run`](Self::run), counted in the statistics as a scan.
    pub(super) async fn scan_op<T>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = self.run(op, key, work).await;
        self.stats.scan(timer, result)
    }

    /// The TTL in milliseconds `options` give a value written now (`None`: never expires).
    pub(super) fn ttl_of(&self, options: PutOptions) -> Option<i64> {
        millis(options.resolve_ttl(self.config.default_ttl))
    }
}

impl PostgresBackend {
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
