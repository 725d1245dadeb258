//! [`SledBackend`] and its [`StateBackend`] impl.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::StateBackend;
use crate::backends::sweeper::Sweeper;

use super::builder::SledBackendBuilder;
use super::errors::sled_error;
use super::store::Inner;
use super::NAME;

/// A persistent backend over a sled database directory.
///
/// Writes are durable once flushed: sled flushes in the background every
/// `flush_every` (500 ms by default), and [`SledBackend::flush`] forces it.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{SledBackend, StateBackend};
/// let dir = std::env::temp_dir().join(format!("statecraft-doc-{}", std::process::id()));
/// let backend = SledBackend::open(&dir)?;
/// backend.put(b"k", "v".into()).await?;
/// backend.flush().await?;
/// # drop(backend); let _ = std::fs::remove_dir_all(&dir);
/// # Ok(()) }
/// ```
pub struct SledBackend {
    // Dropped first: the sweeper ends before the last of `inner` goes.
    pub(super) _sweeper: Option<Sweeper>,
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledBackend")
            .field("path", &self.inner.path)
            .field("default_ttl", &self.inner.default_ttl)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl SledBackend {
    /// Opens (or creates) a database at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder().path(path).open()
    }

    /// A builder for a configured backend.
    pub fn builder() -> SledBackendBuilder {
        SledBackendBuilder::default()
    }

    /// Writes everything acknowledged so far to disk; returns the bytes flushed.
    pub async fn flush(&self) -> Result<usize> {
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|e| sled_error(e, Operation::Flush))
    }

    /// Removes expired keys now; returns how many.
    pub fn sweep_expired(&self) -> Result<usize> {
        self.inner.sweep()
    }

    /// The database size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.inner
            .db
            .size_on_disk()
            .map_err(|e| sled_error(e, Operation::Stats))
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the database was recovered from an earlier run.
    pub fn was_recovered(&self) -> bool {
        self.inner.db.was_recovered()
    }
}

impl StateBackend for SledBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: true,
            native_ttl: true,
            transactions: true,
            ordered_listing: true,
            atomic_batch: true,
            key_tracking: false,
            ..Capabilities::NONE
        }
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.get(key)))
    }

    #[inline]
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let timer = self.inner.stats.start();
        let result = self.inner.put(key, &value, options);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .remove(key, Operation::Delete)
            .map(|old| old.is_some());
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.get_with_ttl(key)))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.ttl(key)))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .limits
            .check_key(NAME, Operation::Contains, key)
            .and_then(|()| self.inner.live_raw(key, Operation::Contains))
            .map(|found| found.map(|_| ()));
        StateFuture::ready(self.inner.stats.read(timer, result).map(|f| f.is_some()))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let timer = self.inner.stats.start();
        let result = self.inner.list_page(prefix, cursor, limit);
        StateFuture::ready(self.inner.stats.scan(timer, result))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.scan(timer, self.inner.count()))
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.write(timer, self.inner.clear()))
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        let result = keys
            .iter()
            .map(|key| {
                let timer = inner.stats.start();
                inner.stats.read(timer, inner.get(key))
            })
            .collect();
        StateFuture::ready(result)
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let timer = self.inner.stats.start();
        let transaction = entries
            .into_iter()
            .fold(Transaction::new(), |txn, (key, value)| {
                txn.put_with(key, value, options)
            });
        let result = self
            .inner
            .apply(&transaction, Operation::BatchPut)
            .map(|_| ());
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let timer = self.inner.stats.start();
        let result = keys.iter().try_fold(0u64, |removed, key| {
            Ok(removed + u64::from(self.inner.remove(key, Operation::BatchDelete)?.is_some()))
        });
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .compare_and_swap(key, None, Some(&value), options, Operation::SetIfNotExists)
            .map(|outcome| outcome.is_swapped());
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let timer = self.inner.stats.start();
        let result = self.inner.remove(key, Operation::GetAndDelete);
        StateFuture::ready(self.inner.stats.read(timer, result))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let timer = self.inner.stats.start();
        let result = self.inner.compare_and_swap(
            key,
            expected,
            new.as_deref(),
            options,
            Operation::CompareAndSwap,
        );
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        let timer = self.inner.stats.start();
        let result = self.inner.increment(key, delta, options);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let started = Instant::now();
        let result = self
            .inner
            .expiry
            .first()
            .map(|_| HealthReport::new(NAME, started.elapsed()))
            .map_err(|e| sled_error(e, Operation::HealthCheck));
        StateFuture::ready(result)
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        self.apply_transaction(transaction)
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        let result = match task {
            MaintenanceTask::PurgeExpired => self.sweep_expired().map(|n| n as u64),
            MaintenanceTask::Flush => {
                return StateFuture::new(async move { self.flush().await.map(|n| n as u64) })
            }
            _ => Err(Error::unsupported(NAME, Operation::Maintenance)),
        };
        StateFuture::ready(result)
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let mut stats = self.inner.stats.snapshot(NAME);
        match self.inner.db.size_on_disk() {
            Ok(size) => {
                stats.details.insert("size_on_disk_bytes".into(), size);
                stats.details.insert(
                    "expiry_index_entries".into(),
                    self.inner.expiry.len() as u64,
                );
            }
            Err(err) => return StateFuture::ready(Err(sled_error(err, Operation::Stats))),
        }
        StateFuture::ready(Ok(stats))
    }
}
