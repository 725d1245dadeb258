//! [`RedbBackend`] and its [`StateBackend`] impl.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::StateBackend;
use crate::backends::sweeper::Sweeper;
use crate::raw::recorder::Found;

use super::builder::RedbBackendBuilder;
use super::store::Inner;
use super::writer::{Answer, Write};
use super::NAME;

/// A persistent backend in one redb database file.
///
/// A write is acknowledged once it is on disk (by default: see
/// [`RedbBackendBuilder::durable_commits`]); writes that arrive together
/// share one commit. Reads see every acknowledged write.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{RedbBackend, StateBackend};
/// let file = std::env::temp_dir().join(format!("statecraft-doc-{}.redb", std::process::id()));
/// let backend = RedbBackend::open(&file)?;
/// backend.put(b"k", "v".into()).await?;
/// assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// # drop(backend); let _ = std::fs::remove_file(&file);
/// # Ok(()) }
/// ```
pub struct RedbBackend {
    // Dropped first: the sweeper ends before the last of `inner` goes.
    pub(super) _sweeper: Option<Sweeper>,
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbBackend")
            .field("path", &self.inner.shared.path)
            .field("default_ttl", &self.inner.shared.default_ttl)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl RedbBackend {
    /// Opens (or creates) a database file at `path` with default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder().path(path).open()
    }

    /// A builder for a configured backend.
    pub fn builder() -> RedbBackendBuilder {
        RedbBackendBuilder::default()
    }

    /// Makes every acknowledged write durable now (with
    /// [`durable_commits`](RedbBackendBuilder::durable_commits), they
    /// already are: this commits nothing new).
    pub async fn flush(&self) -> Result<()> {
        self.write(Write::Flush, Operation::Flush, |answer| match answer {
            Answer::Done => Ok(()),
            other => Err(other),
        })
        .await
    }

    /// Removes expired keys now; returns how many.
    pub async fn sweep_expired(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let (removed, more) = self
                .write(
                    Write::Sweep,
                    Operation::Maintenance,
                    |answer| match answer {
                        Answer::Swept { removed, more } => Ok((removed, more)),
                        other => Err(other),
                    },
                )
                .await?;
            total += removed;
            if !more {
                return Ok(total);
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// The size of the database file in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        std::fs::metadata(self.path())
            .map(|meta| meta.len())
            .map_err(|e| {
                Error::new(ErrorKind::Io, "cannot read the redb file's size")
                    .with_source(e)
                    .context(NAME, Operation::Stats)
            })
    }

    /// Sends `write` to the writer thread and takes its answer apart.
    async fn write<T>(
        &self,
        write: Write,
        op: Operation,
        take: impl FnOnce(Answer) -> std::result::Result<T, Answer>,
    ) -> Result<T> {
        let answer = self.inner.ask(write, op).await?;
        take(answer).map_err(|answer| {
            Error::new(
                ErrorKind::Backend,
                format!("the redb writer answered {answer:?} to a {}", op.as_str()),
            )
            .context(NAME, op)
        })
    }

    /// [`write`](Self::write), counted in the stats as a write.
    fn counted<T: Send + 'static>(
        &self,
        write: Write,
        op: Operation,
        take: impl FnOnce(Answer) -> std::result::Result<T, Answer> + Send + 'static,
    ) -> StateFuture<'_, T> {
        let timer = self.inner.stats.start();
        StateFuture::new(async move {
            let result = self.write(write, op, take).await;
            self.inner.stats.write(timer, result)
        })
    }

    /// [`write`](Self::write), counted in the stats as the read it
    /// answers (its hit or miss).
    fn counted_read<T: Found + Send + 'static>(
        &self,
        write: Write,
        op: Operation,
        take: impl FnOnce(Answer) -> std::result::Result<T, Answer> + Send + 'static,
    ) -> StateFuture<'_, T> {
        let timer = self.inner.stats.start();
        StateFuture::new(async move {
            let result = self.write(write, op, take).await;
            self.inner.stats.read(timer, result)
        })
    }
}

fn owned(key: &[u8]) -> Bytes {
    Bytes::copy_from_slice(key)
}

impl StateBackend for RedbBackend {
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

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.get(key)))
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        if let Err(err) = self
            .inner
            .limits
            .check_entry(NAME, Operation::Put, key, &value)
        {
            return StateFuture::ready(Err(err));
        }
        let put = Write::Put {
            key: owned(key),
            value,
            options,
        };
        self.counted(put, Operation::Put, |answer| match answer {
            Answer::Done => Ok(()),
            other => Err(other),
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        if let Err(err) = self.inner.limits.check_key(NAME, Operation::Delete, key) {
            return StateFuture::ready(Err(err));
        }
        let remove = Write::Remove {
            key: owned(key),
            value: false,
        };
        self.counted(remove, Operation::Delete, |answer| match answer {
            Answer::Removed(old) => Ok(old.is_some()),
            other => Err(other),
        })
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
        let found = self.inner.live(key, Operation::Contains, |_, _| ());
        StateFuture::ready(self.inner.stats.read(timer, found).map(|f| f.is_some()))
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
        self.counted(Write::Clear, Operation::Clear, |answer| match answer {
            Answer::Done => Ok(()),
            other => Err(other),
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.get_many(keys)))
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        for (key, value) in &entries {
            if let Err(err) = self
                .inner
                .limits
                .check_entry(NAME, Operation::BatchPut, key, value)
            {
                return StateFuture::ready(Err(err));
            }
        }
        let transaction = entries
            .into_iter()
            .fold(Transaction::new(), |txn, (key, value)| {
                txn.put_with(key, value, options)
            });
        self.counted(
            Write::Apply(transaction),
            Operation::BatchPut,
            |answer| match answer {
                Answer::Committed(true) => Ok(()),
                other => Err(other),
            },
        )
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        for key in keys {
            if let Err(err) = self
                .inner
                .limits
                .check_key(NAME, Operation::BatchDelete, key)
            {
                return StateFuture::ready(Err(err));
            }
        }
        let remove = Write::RemoveAll(keys.to_vec());
        self.counted(remove, Operation::BatchDelete, |answer| match answer {
            Answer::Many(removed) => Ok(removed),
            other => Err(other),
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        if let Err(err) =
            self.inner
                .limits
                .check_entry(NAME, Operation::SetIfNotExists, key, &value)
        {
            return StateFuture::ready(Err(err));
        }
        let swap = Write::Swap {
            key: owned(key),
            expected: None,
            new: Some(value),
            options,
        };
        self.counted(swap, Operation::SetIfNotExists, |answer| match answer {
            Answer::Swapped(outcome) => Ok(outcome.is_swapped()),
            other => Err(other),
        })
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let op = Operation::GetAndDelete;
        if let Err(err) = self.inner.limits.check_key(NAME, op, key) {
            return StateFuture::ready(Err(err));
        }
        self.counted_read(
            Write::Remove {
                key: owned(key),
                value: true,
            },
            op,
            |answer| match answer {
                Answer::Removed(old) => Ok(old),
                other => Err(other),
            },
        )
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let op = Operation::CompareAndSwap;
        let checked = match &new {
            Some(value) => self.inner.limits.check_entry(NAME, op, key, value),
            None => self.inner.limits.check_key(NAME, op, key),
        };
        if let Err(err) = checked {
            return StateFuture::ready(Err(err));
        }
        let swap = Write::Swap {
            key: owned(key),
            expected: expected.map(Bytes::copy_from_slice),
            new,
            options,
        };
        self.counted(swap, op, |answer| match answer {
            Answer::Swapped(outcome) => Ok(outcome),
            other => Err(other),
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        let op = Operation::Increment;
        if let Err(err) = self.inner.limits.check_key(NAME, op, key) {
            return StateFuture::ready(Err(err));
        }
        let increment = Write::Increment {
            key: owned(key),
            delta,
            options,
        };
        self.counted(increment, op, |answer| match answer {
            Answer::Counted(next) => Ok(next),
            other => Err(other),
        })
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let started = Instant::now();
        let result = self
            .inner
            .check()
            .map(|()| HealthReport::new(NAME, started.elapsed()));
        StateFuture::ready(result)
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let op = Operation::Transaction;
        if let Err(err) = self.inner.limits.check_transaction(NAME, op, &transaction) {
            return StateFuture::ready(Err(err));
        }
        self.counted(Write::Apply(transaction), op, |answer| match answer {
            Answer::Committed(committed) => Ok(committed),
            other => Err(other),
        })
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        match task {
            MaintenanceTask::PurgeExpired => StateFuture::new(self.sweep_expired()),
            MaintenanceTask::Flush => {
                StateFuture::new(async move { self.flush().await.map(|()| 0) })
            }
            _ => StateFuture::ready(Err(Error::unsupported(NAME, Operation::Maintenance))),
        }
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let mut stats = self.inner.stats.snapshot(NAME);
        let size = match self.size_on_disk() {
            Ok(size) => size,
            Err(err) => return StateFuture::ready(Err(err)),
        };
        let expiring = match self.inner.index_len() {
            Ok(entries) => entries,
            Err(err) => return StateFuture::ready(Err(err)),
        };
        stats
            .details
            .insert("expiry_index_entries".into(), expiring);
        let (commits, writes) = self.inner.commit_counts();
        stats.details.insert("size_on_disk_bytes".into(), size);
        stats.details.insert("commits".into(), commits);
        stats.details.insert("committed_writes".into(), writes);
        StateFuture::ready(Ok(stats))
    }
}
