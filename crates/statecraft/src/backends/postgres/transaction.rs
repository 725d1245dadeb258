//! [`PgTransaction`], and the [`Transactional`] impl.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use deadpool_postgres::Object;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::options::PutOptions;
use crate::backend::transaction::{Transaction, TransactionWrite};

use super::backend::PostgresBackend;
use super::errors::{corrupt, pg_error};
use super::pool::{Inner, Lease};
use super::sql::value_of;
use super::NAME;

impl PostgresBackend {
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

    /// Stores `value` under `key` with `options`.
    pub async fn put(&self, key: &[u8], value: Bytes, options: PutOptions) -> Result<()> {
        let inner = &self.inner;
        let result = inner
            .run(Operation::Put, Some(key), async {
                inner
                    .config
                    .limits
                    .check_entry(NAME, Operation::Put, key, &value)?;
                let ttl = inner.ttl_of(options);
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

impl PostgresBackend {
    pub(super) fn apply_transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        StateFuture::new(async move {
            let timer = self.inner.stats.start();
            let result = self.transact(transaction).await;
            self.inner.stats.write(timer, result)
        })
    }

    async fn transact(&self, transaction: Transaction) -> Result<bool> {
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
                                    found =
                                        Some(if live { Some(value_of(&row, 0)?) } else { None });
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
                TransactionWrite::Put {
                    key,
                    value,
                    options,
                } => tx.put(key, value.clone(), *options).await?,
                TransactionWrite::Delete { key } => {
                    tx.delete(key).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }
}
