//! The state behind a [`RedbBackend`](super::RedbBackend), and its reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redb::{ReadOnlyTable, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};
use tokio::sync::oneshot;

use crate::backend::clock::{expiry_after, Clock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;
use crate::backend::options::{KeyPage, KeyTtl, PutOptions};
use crate::backends::stored::{decode_header, prefix_end, split_index_key, Header};
use crate::raw::recorder::StatsRecorder;

use super::errors::redb_error;
use super::writer::{Answer, Job, Write};
use super::{DATA, EXPIRY, NAME};

/// What the writer thread shares with the callers.
pub(super) struct Shared {
    pub(super) db: redb::Database,
    pub(super) path: PathBuf,
    /// Removes the file once the database is closed.
    pub(super) temporary: bool,
    pub(super) default_ttl: Option<Duration>,
    pub(super) clock: Arc<dyn Clock>,
    /// Write transactions committed, and the writes they carried
    /// (sweeps and flushes included).
    pub(super) commits: AtomicU64,
    pub(super) writes: AtomicU64,
    /// Whether a commit has failed: redb then takes no more writes from
    /// this handle.
    pub(super) failed: AtomicBool,
}

impl Shared {
    pub(super) fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    /// The expiry time `options` give a value written at `now` (0: never).
    pub(super) fn expiry(&self, options: PutOptions, now: u64) -> u64 {
        match options.resolve_ttl(self.default_ttl) {
            Some(ttl) => expiry_after(now, ttl),
            None => 0,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The database closes right after (its field drops next); the
        // file of an open handle can be unlinked.
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The backend's own: the shared state, the way to the writer, the
/// stats.
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    pub(super) limits: Limits,
    pub(super) stats: StatsRecorder,
    pub(super) jobs: Option<mpsc::Sender<Job>>,
    pub(super) writer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Closes the database before the drop returns: the writer applies
    /// what was sent to it, commits (durably) and ends, so a reopen right
    /// after finds the file free.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Inner {
    /// Sends `write` to the writer; its answer comes on the receiver.
    pub(super) fn submit(
        &self,
        write: Write,
        op: Operation,
    ) -> Result<oneshot::Receiver<Result<Answer>>> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job { write, op, reply }).is_ok());
        if !sent {
            return Err(writer_gone(op).maybe_applied(false));
        }
        Ok(answer)
    }

    /// Runs `write` and waits for its answer.
    pub(super) async fn ask(&self, write: Write, op: Operation) -> Result<Answer> {
        let answer = self.submit(write, op)?;
        answer.await.unwrap_or_else(|_| Err(writer_gone(op)))
    }

    /// Runs `read` over a snapshot of the data table.
    fn read<R>(
        &self,
        op: Operation,
        read: impl FnOnce(&ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<R>,
    ) -> Result<R> {
        let txn = self.shared.db.begin_read().map_err(|e| redb_error(e, op))?;
        let table = txn.open_table(DATA).map_err(|e| redb_error(e, op))?;
        read(&table)
    }

    /// `found` of the live value of `key` (its stored bytes and header).
    pub(super) fn live<R>(
        &self,
        key: &[u8],
        op: Operation,
        found: impl FnOnce(&[u8], Header) -> R,
    ) -> Result<Option<R>> {
        self.limits.check_key(NAME, op, key)?;
        let now = self.shared.now();
        self.read(op, |table| {
            let Some(guard) = table.get(key).map_err(|e| redb_error(e, op))? else {
                return Ok(None);
            };
            let raw = guard.value();
            let header = decode_header(raw, NAME).map_err(|e| e.with_key(key).context(NAME, op))?;
            Ok(header.live_at(now).then(|| found(raw, header)))
        })
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.live(key, Operation::Get, payload)
    }

    /// The values of `keys`, from one snapshot.
    pub(super) fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Bytes>>> {
        let op = Operation::BatchGet;
        for key in keys {
            self.limits.check_key(NAME, op, key)?;
        }
        let now = self.shared.now();
        self.read(op, |table| {
            keys.iter()
                .map(|key| {
                    let Some(guard) = table.get(&key[..]).map_err(|e| redb_error(e, op))? else {
                        return Ok(None);
                    };
                    let raw = guard.value();
                    let header =
                        decode_header(raw, NAME).map_err(|e| e.with_key(key).context(NAME, op))?;
                    Ok(header.live_at(now).then(|| payload(raw, header)))
                })
                .collect()
        })
    }

    pub(super) fn ttl(&self, key: &[u8]) -> Result<KeyTtl> {
        let now = self.shared.now();
        Ok(self
            .live(key, Operation::Ttl, |_, header| {
                left(header.expires_at, now)
            })?
            .unwrap_or(KeyTtl::Missing))
    }

    pub(super) fn get_with_ttl(&self, key: &[u8]) -> Result<Option<(Bytes, KeyTtl)>> {
        let now = self.shared.now();
        self.live(key, Operation::GetWithTtl, |raw, header| {
            (payload(raw, header), left(header.expires_at, now))
        })
    }

    pub(super) fn list_page(
        &self,
        prefix: &[u8],
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyPage> {
        use std::ops::Bound;
        let op = Operation::ListKeys;
        self.limits.check_key(NAME, op, prefix)?;
        if limit == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a page limit must be at least 1",
            )
            .context(NAME, op));
        }
        let start = match cursor {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let end_key = prefix_end(prefix);
        let end = match &end_key {
            Some(end) => Bound::Excluded(&end[..]),
            None => Bound::Unbounded,
        };
        let now = self.shared.now();
        self.read(op, |table| {
            let mut keys = Vec::with_capacity(limit.min(1024));
            let mut next = None;
            for item in table.range((start, end)).map_err(|e| redb_error(e, op))? {
                let (key, raw) = item.map_err(|e| redb_error(e, op))?;
                let (key, raw) = (key.value(), raw.value());
                let header =
                    decode_header(raw, NAME).map_err(|e| e.with_key(key).context(NAME, op))?;
                if !header.live_at(now) {
                    continue;
                }
                if keys.len() == limit {
                    next = keys.last().cloned();
                    break;
                }
                keys.push(Bytes::copy_from_slice(key));
            }
            Ok(KeyPage { keys, next })
        })
    }

    pub(super) fn count(&self) -> Result<u64> {
        let op = Operation::Count;
        let now = self.shared.now();
        self.read(op, |table| {
            let mut count = 0u64;
            for item in table.iter().map_err(|e| redb_error(e, op))? {
                let (key, raw) = item.map_err(|e| redb_error(e, op))?;
                let header = decode_header(raw.value(), NAME)
                    .map_err(|e| e.with_key(key.value()).context(NAME, op))?;
                count += u64::from(header.live_at(now));
            }
            Ok(count)
        })
    }

    /// Whether the writer still commits, and a read transaction opens
    /// and finds the data table.
    pub(super) fn check(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "a redb commit failed: the backend takes no more writes until it is reopened",
            )
            .context(NAME, Operation::HealthCheck));
        }
        self.read(Operation::HealthCheck, |_| Ok(()))
    }

    /// Whether the expiry index has an entry due now (what the sweeper
    /// asks before it sends the writer a sweep).
    pub(super) fn anything_due(&self) -> Result<bool> {
        let op = Operation::Maintenance;
        let now = self.shared.now();
        let txn = self.shared.db.begin_read().map_err(|e| redb_error(e, op))?;
        let index = txn.open_table(EXPIRY).map_err(|e| redb_error(e, op))?;
        let first = index.first().map_err(|e| redb_error(e, op))?;
        Ok(first.is_some_and(|(entry, _)| {
            split_index_key(entry.value()).is_some_and(|(at, _)| at <= now)
        }))
    }

    /// Sweeps until nothing is due, a commit at a time (the background
    /// sweeper's call, on its own thread).
    pub(super) fn sweep_in_background(&self) {
        loop {
            match self.anything_due() {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(%err, backend = NAME, "TTL sweep failed");
                    return;
                }
            }
            let answer = match self.submit(Write::Sweep, Operation::Maintenance) {
                Ok(answer) => answer.blocking_recv(),
                Err(err) => {
                    tracing::warn!(%err, backend = NAME, "TTL sweep failed");
                    return;
                }
            };
            match answer {
                Ok(Ok(Answer::Swept { more: true, .. })) => {}
                Ok(Ok(_)) | Err(_) => return,
                Ok(Err(err)) => {
                    tracing::warn!(%err, backend = NAME, "TTL sweep failed");
                    return;
                }
            }
        }
    }

    /// The entries of the expiry index (one per value with a TTL, until
    /// the sweep removes what is due).
    pub(super) fn index_len(&self) -> Result<u64> {
        let op = Operation::Stats;
        let txn = self.shared.db.begin_read().map_err(|e| redb_error(e, op))?;
        let index = txn.open_table(EXPIRY).map_err(|e| redb_error(e, op))?;
        index.len().map_err(|e| redb_error(e, op))
    }

    /// Writes and commits since the database was opened.
    pub(super) fn commit_counts(&self) -> (u64, u64) {
        (
            self.shared.commits.load(Ordering::Relaxed),
            self.shared.writes.load(Ordering::Relaxed),
        )
    }
}

/// The payload of the stored value `raw`.
pub(super) fn payload(raw: &[u8], header: Header) -> Bytes {
    Bytes::copy_from_slice(&raw[header.len..])
}

/// The time a live value expiring at `expires_at` (0: never) has left at `now`.
fn left(expires_at: u64, now: u64) -> KeyTtl {
    match expires_at {
        0 => KeyTtl::Persistent,
        at => KeyTtl::ExpiresIn(Duration::from_millis(at.saturating_sub(now))),
    }
}

fn writer_gone(op: Operation) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the redb writer thread has stopped (the backend is closing, or the thread failed)",
    )
    .maybe_applied(true)
    .context(NAME, op)
}
