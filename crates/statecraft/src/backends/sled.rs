//! [`SledBackend`]: embedded, persistent, crash-safe storage with TTL.
//!
//! Each stored value carries a small header: one tag byte, then (for values
//! with a TTL) the absolute expiry as 8 big-endian bytes of Unix milliseconds.
//! A second tree indexes expiring keys by `expiry ++ key`, so the sweeper
//! finds what is due with one range scan. The index is written before the
//! value, so every expiring value is indexed; a stale index entry (its value
//! since rewritten) is harmless because the sweeper checks the value's own
//! header before removing anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sled::transaction::{
    abort, ConflictableTransactionError, TransactionError, Transactional as _, TransactionalTree,
};
use sled::{IVec, Tree};

use crate::backend::capabilities::Capabilities;
use crate::backend::clock::{expiry_after, Clock, SystemClock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::limits::Limits;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::stats::BackendStats;
use crate::backend::transaction::{Transaction, TransactionWrite, Transactional};
use crate::backend::StateBackend;
use crate::raw::counter::apply_increment;
use crate::raw::recorder::StatsRecorder;

const NAME: &str = "sled";
const TAG_PLAIN: u8 = 0;
const TAG_EXPIRING: u8 = 1;
const EXPIRY_TREE: &[u8] = b"statecraft/expiry";
const FORMAT_KEY: &[u8] = b"statecraft/format";
const FORMAT_VERSION: &[u8] = b"1";

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
    inner: Arc<Inner>,
    _sweeper: Option<mpsc::Sender<()>>,
}

struct Inner {
    db: sled::Db,
    data: Tree,
    expiry: Tree,
    path: PathBuf,
    default_ttl: Option<Duration>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    stats: StatsRecorder,
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

/// Configures a [`SledBackend`].
#[derive(Debug, Clone)]
pub struct SledBackendBuilder {
    path: Option<PathBuf>,
    temporary: bool,
    cache_capacity: u64,
    flush_every: Option<Duration>,
    compression: bool,
    default_ttl: Option<Duration>,
    sweep_interval: Option<Duration>,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

impl Default for SledBackendBuilder {
    fn default() -> Self {
        SledBackendBuilder {
            path: None,
            temporary: false,
            cache_capacity: 256 << 20,
            flush_every: Some(Duration::from_millis(500)),
            compression: false,
            default_ttl: None,
            sweep_interval: Some(Duration::from_secs(1)),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
        }
    }
}

impl SledBackendBuilder {
    /// The database directory (created if missing).
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Deletes the database when the backend is dropped (and needs no path).
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// The size of sled's page cache in bytes.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// How often sled flushes to disk in the background; `None` flushes only
    /// on [`SledBackend::flush`] (and on drop).
    pub fn flush_every(mut self, every: Option<Duration>) -> Self {
        self.flush_every = every;
        self
    }

    /// Compresses pages with zstd. A database must always be opened with
    /// the setting it was created with.
    #[cfg(feature = "sled-compression")]
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often expired keys are removed in the background; `None`
    /// disables it (they are still never returned).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// The clock used for TTLs.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens (or creates) the database.
    pub fn open(self) -> Result<SledBackend> {
        let mut config = sled::Config::new()
            .cache_capacity(self.cache_capacity)
            .flush_every_ms(self.flush_every.map(|d| d.as_millis().max(1) as u64))
            .use_compression(self.compression)
            .temporary(self.temporary);
        let path = match (&self.path, self.temporary) {
            (Some(path), _) => path.clone(),
            (None, true) => PathBuf::new(),
            (None, false) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "a sled backend needs a path unless it is temporary",
                )
                .context(NAME, Operation::Open))
            }
        };
        if self.path.is_some() {
            config = config.path(&path);
        }
        let db = config.open().map_err(|e| sled_error(e, Operation::Open))?;
        let expiry = db
            .open_tree(EXPIRY_TREE)
            .map_err(|e| sled_error(e, Operation::Open))?;
        let meta = db
            .open_tree(b"statecraft/meta")
            .map_err(|e| sled_error(e, Operation::Open))?;
        match meta
            .compare_and_swap(FORMAT_KEY, None as Option<&[u8]>, Some(FORMAT_VERSION))
            .map_err(|e| sled_error(e, Operation::Open))?
        {
            Ok(()) => {}
            Err(existing) if existing.current.as_deref() == Some(FORMAT_VERSION) => {}
            Err(existing) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "database format {:?} is not the supported {:?}",
                        existing.current, FORMAT_VERSION
                    ),
                )
                .context(NAME, Operation::Open))
            }
        }
        let data: Tree = (*db).clone();
        let inner = Arc::new(Inner {
            db,
            data,
            expiry,
            path,
            default_ttl: self.default_ttl,
            clock: self.clock,
            limits: self.limits,
            stats: StatsRecorder::new(),
        });
        let sweeper = self.sweep_interval.and_then(|interval| {
            crate::backends::sweeper::spawn(
                NAME,
                Arc::downgrade(&inner),
                interval,
                |inner: &Inner| {
                    if let Err(err) = inner.sweep() {
                        tracing::warn!(%err, "sled backend: TTL sweep failed");
                    }
                },
            )
        });
        Ok(SledBackend {
            inner,
            _sweeper: sweeper,
        })
    }
}

fn sled_error(err: sled::Error, op: Operation) -> Error {
    let kind = match &err {
        sled::Error::Io(_) => ErrorKind::Io,
        sled::Error::Corruption { .. } => ErrorKind::Corrupt,
        sled::Error::Unsupported(_) => ErrorKind::Config,
        sled::Error::CollectionNotFound(_) | sled::Error::ReportableBug(_) => ErrorKind::Backend,
    };
    Error::new(kind, "sled failed")
        .with_source(err)
        .context(NAME, op)
}

/// A decoded stored value: its expiry (0 for never) and where the payload starts.
#[derive(Clone, Copy)]
struct Header {
    expires_at: u64,
    len: usize,
}

fn decode_header(raw: &[u8]) -> Result<Header> {
    match raw.first() {
        Some(&TAG_PLAIN) => Ok(Header {
            expires_at: 0,
            len: 1,
        }),
        Some(&TAG_EXPIRING) if raw.len() >= 9 => {
            let mut at = [0u8; 8];
            at.copy_from_slice(&raw[1..9]);
            Ok(Header {
                expires_at: u64::from_be_bytes(at),
                len: 9,
            })
        }
        _ => Err(Error::new(
            ErrorKind::Corrupt,
            "a stored value has no statecraft header (was the tree written by something else?)",
        )
        .with_backend(NAME)),
    }
}

fn encode_value(value: &[u8], expires_at: u64) -> Vec<u8> {
    let mut raw = Vec::with_capacity(value.len() + 9);
    if expires_at == 0 {
        raw.push(TAG_PLAIN);
    } else {
        raw.push(TAG_EXPIRING);
        raw.extend_from_slice(&expires_at.to_be_bytes());
    }
    raw.extend_from_slice(value);
    raw
}

fn index_key(expires_at: u64, key: &[u8]) -> Vec<u8> {
    let mut index = Vec::with_capacity(8 + key.len());
    index.extend_from_slice(&expires_at.to_be_bytes());
    index.extend_from_slice(key);
    index
}

fn payload(raw: IVec, header: Header) -> Bytes {
    Bytes::from_owner(raw).slice(header.len..)
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    fn expiry(&self, ttl: Option<Duration>) -> u64 {
        match ttl.or(self.default_ttl) {
            Some(ttl) => expiry_after(self.now(), ttl),
            None => 0,
        }
    }

    /// The raw stored value of `key` if it is live, with its header.
    fn live_raw(&self, key: &[u8], op: Operation) -> Result<Option<(IVec, Header)>> {
        let Some(raw) = self.data.get(key).map_err(|e| sled_error(e, op))? else {
            return Ok(None);
        };
        let header = decode_header(&raw).map_err(|e| e.with_key(key).context(NAME, op))?;
        if header.expires_at != 0 && header.expires_at <= self.now() {
            // Expired: drop it unless someone rewrote it meanwhile.
            let _ = self
                .data
                .compare_and_swap(key, Some(&raw), None as Option<&[u8]>);
            return Ok(None);
        }
        Ok(Some((raw, header)))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(NAME, Operation::Get, key)?;
        Ok(self
            .live_raw(key, Operation::Get)?
            .map(|(raw, header)| payload(raw, header)))
    }

    /// After a plain (non-transactional) write replaced a value that expired
    /// at `old_expiry`, drops that index entry unless the value now stored
    /// still uses it. Transactions exclude plain writes (sled's concurrency
    /// control), so this cannot race with a transactional writer.
    fn unindex_stale(&self, key: &[u8], old: Option<&IVec>, op: Operation) -> Result<()> {
        let Some(old_expiry) = old
            .and_then(|old| decode_header(old).ok())
            .map(|h| h.expires_at)
            .filter(|&at| at != 0)
        else {
            return Ok(());
        };
        let index = index_key(old_expiry, key);
        let outcome = (&self.data, &self.expiry).transaction(
            |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                let current = data
                    .get(key)?
                    .and_then(|raw| decode_header(&raw).ok())
                    .map_or(0, |h| h.expires_at);
                if current != old_expiry {
                    expiry.remove(&index[..])?;
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            },
        );
        tx_result(outcome, op)
    }

    /// Reads the live value of `key`, lets `decide` choose what to store,
    /// and writes it together with its expiry index entry, all in one sled
    /// transaction so that the index always matches the stored values.
    fn update<R>(
        &self,
        key: &[u8],
        op: Operation,
        decide: impl Fn(Option<(&[u8], u64)>) -> Result<Decision<R>>,
    ) -> Result<R> {
        let now = self.now();
        let outcome = (&self.data, &self.expiry).transaction(
            |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                let raw = data.get(key)?;
                let header = match raw.as_deref().map(decode_header) {
                    None => None,
                    Some(Ok(header)) => Some(header),
                    Some(Err(err)) => return abort(err.with_key(key).context(NAME, op)),
                };
                let live = match (&raw, header) {
                    (Some(raw), Some(h)) if h.expires_at == 0 || now < h.expires_at => {
                        Some((&raw[h.len..], h.expires_at))
                    }
                    _ => None,
                };
                match decide(live) {
                    Err(err) => abort(err),
                    Ok(Decision::Keep(result)) => Ok(result),
                    Ok(Decision::Write {
                        value,
                        expires_at,
                        result,
                    }) => {
                        let old_expiry = header.map_or(0, |h| h.expires_at);
                        let new_expiry = if value.is_some() { expires_at } else { 0 };
                        match value {
                            Some(value) => {
                                data.insert(key, encode_value(&value, expires_at))?;
                                if expires_at != 0 {
                                    expiry.insert(index_key(expires_at, key), &[])?;
                                }
                            }
                            None => {
                                data.remove(key)?;
                            }
                        }
                        if old_expiry != 0 && old_expiry != new_expiry {
                            expiry.remove(index_key(old_expiry, key))?;
                        }
                        Ok(result)
                    }
                }
            },
        );
        tx_result(outcome, op)
    }

    fn put(&self, key: &[u8], value: &[u8], options: PutOptions) -> Result<()> {
        self.limits.check_entry(NAME, Operation::Put, key, value)?;
        let expires_at = match options.resolve_ttl(self.default_ttl) {
            Some(ttl) => expiry_after(self.now(), ttl),
            None => 0,
        };
        if expires_at != 0 {
            return self.update(key, Operation::Put, |_| {
                Ok(Decision::Write {
                    value: Some(value.to_vec()),
                    expires_at,
                    result: (),
                })
            });
        }
        // The hot path: one plain insert; the index only needs care if the
        // replaced value had a TTL.
        let old = self
            .data
            .insert(key, encode_value(value, 0))
            .map_err(|e| sled_error(e, Operation::Put))?;
        self.unindex_stale(key, old.as_ref(), Operation::Put)
    }

    /// Removes `key`; returns the live value it held.
    fn remove(&self, key: &[u8], op: Operation) -> Result<Option<Bytes>> {
        self.limits.check_key(NAME, op, key)?;
        let Some(old) = self.data.remove(key).map_err(|e| sled_error(e, op))? else {
            return Ok(None);
        };
        self.unindex_stale(key, Some(&old), op)?;
        let header = decode_header(&old).map_err(|e| e.with_key(key).context(NAME, op))?;
        let live = header.expires_at == 0 || self.now() < header.expires_at;
        Ok(live.then(|| payload(old, header)))
    }

    fn ttl(&self, key: &[u8]) -> Result<KeyTtl> {
        self.limits.check_key(NAME, Operation::Ttl, key)?;
        Ok(match self.live_raw(key, Operation::Ttl)? {
            None => KeyTtl::Missing,
            Some((_, header)) if header.expires_at == 0 => KeyTtl::Persistent,
            Some((_, header)) => KeyTtl::ExpiresIn(Duration::from_millis(
                header.expires_at.saturating_sub(self.now()),
            )),
        })
    }

    fn list_page(&self, prefix: &[u8], cursor: Option<&[u8]>, limit: usize) -> Result<KeyPage> {
        self.limits.check_key(NAME, Operation::ListKeys, prefix)?;
        if limit == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a page limit must be at least 1",
            )
            .context(NAME, Operation::ListKeys));
        }
        use std::ops::Bound;
        let start = match cursor {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let end = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let now = self.now();
        let mut keys = Vec::with_capacity(limit.min(1024));
        let mut next = None;
        for item in self.data.range::<Vec<u8>, _>((start, end)) {
            let (key, raw) = item.map_err(|e| sled_error(e, Operation::ListKeys))?;
            if !key.starts_with(prefix) {
                continue;
            }
            let header = decode_header(&raw)
                .map_err(|e| e.with_key(&key).context(NAME, Operation::ListKeys))?;
            if header.expires_at != 0 && header.expires_at <= now {
                continue;
            }
            if keys.len() == limit {
                next = keys.last().cloned();
                break;
            }
            keys.push(Bytes::from_owner(key));
        }
        Ok(KeyPage { keys, next })
    }

    fn count(&self) -> Result<u64> {
        let now = self.now();
        let mut count = 0u64;
        for item in self.data.iter() {
            let (key, raw) = item.map_err(|e| sled_error(e, Operation::Count))?;
            let header = decode_header(&raw)
                .map_err(|e| e.with_key(&key).context(NAME, Operation::Count))?;
            if header.expires_at == 0 || now < header.expires_at {
                count += 1;
            }
        }
        Ok(count)
    }

    fn clear(&self) -> Result<()> {
        self.data
            .clear()
            .map_err(|e| sled_error(e, Operation::Clear))?;
        self.expiry
            .clear()
            .map_err(|e| sled_error(e, Operation::Clear))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Option<Duration>,
        op: Operation,
    ) -> Result<CasOutcome> {
        match new {
            Some(value) => self.limits.check_entry(NAME, op, key, value)?,
            None => self.limits.check_key(NAME, op, key)?,
        }
        let expires_at = if new.is_some() { self.expiry(ttl) } else { 0 };
        self.update(key, op, |live| {
            let current = live.map(|(value, _)| value);
            Ok(if current == expected {
                Decision::Write {
                    value: new.map(<[u8]>::to_vec),
                    expires_at,
                    result: CasOutcome::Swapped,
                }
            } else {
                Decision::Keep(CasOutcome::Conflict(current.map(Bytes::copy_from_slice)))
            })
        })
    }

    fn increment(&self, key: &[u8], delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let op = Operation::Increment;
        self.limits.check_key(NAME, op, key)?;
        let created_expiry = self.expiry(ttl);
        self.update(key, op, |live| {
            let (next, expires_at) = match live {
                Some((value, expires_at)) => (
                    apply_increment(value, delta).map_err(|e| e.with_key(key).context(NAME, op))?,
                    expires_at,
                ),
                None => (delta, created_expiry),
            };
            Ok(Decision::Write {
                value: Some(next.to_string().into_bytes()),
                expires_at,
                result: next,
            })
        })
    }

    /// Applies `transaction`; with `no_expiry`, writes without a TTL skip
    /// the default TTL (see [`PutOptions::no_expiry`]).
    fn apply(&self, transaction: &Transaction, op: Operation, no_expiry: bool) -> Result<bool> {
        for (key, expected) in transaction.checks() {
            self.limits.check_key(NAME, op, key)?;
            if let Some(expected) = expected {
                self.limits.check_entry(NAME, op, key, expected)?;
            }
        }
        let mut writes = Vec::with_capacity(transaction.writes().len());
        for write in transaction.writes() {
            match write {
                TransactionWrite::Put { key, value, ttl } => {
                    self.limits.check_entry(NAME, op, key, value)?;
                    let expires_at = match (ttl, no_expiry) {
                        (None, true) => 0,
                        _ => self.expiry(*ttl),
                    };
                    writes.push((key, Some(encode_value(value, expires_at)), expires_at));
                }
                TransactionWrite::Delete { key } => {
                    self.limits.check_key(NAME, op, key)?;
                    writes.push((key, None, 0));
                }
            }
        }
        let now = self.now();
        let outcome = (&self.data, &self.expiry).transaction(
            |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                for (key, expected) in transaction.checks() {
                    let current = data.get(key)?;
                    let live = match &current {
                        None => None,
                        Some(raw) => match decode_header(raw) {
                            Ok(h) if h.expires_at == 0 || now < h.expires_at => Some(&raw[h.len..]),
                            Ok(_) => None,
                            Err(err) => return abort(err.with_key(key).context(NAME, op)),
                        },
                    };
                    if live != expected.as_deref() {
                        return Ok(false);
                    }
                }
                for (key, encoded, expires_at) in &writes {
                    if *expires_at != 0 {
                        expiry.insert(index_key(*expires_at, key), &[])?;
                    }
                    let old = match encoded {
                        Some(encoded) => data.insert(&key[..], &encoded[..])?,
                        None => data.remove(&key[..])?,
                    };
                    if let Some(Ok(header)) = old.as_ref().map(|old| decode_header(old)) {
                        if header.expires_at != 0 && header.expires_at != *expires_at {
                            expiry.remove(index_key(header.expires_at, key))?;
                        }
                    }
                }
                Ok::<_, ConflictableTransactionError<Error>>(true)
            },
        );
        match outcome {
            Ok(committed) => Ok(committed),
            Err(TransactionError::Abort(err)) => Err(err),
            Err(TransactionError::Storage(err)) => Err(sled_error(err, op)),
        }
    }

    /// Removes expired values whose index entries are due; returns how many.
    fn sweep(&self) -> Result<usize> {
        let op = Operation::Delete;
        let now = self.now();
        let mut removed = 0;
        let due = self
            .expiry
            .range(..(now.saturating_add(1)).to_be_bytes().to_vec());
        for item in due {
            let (index, _) = item.map_err(|e| sled_error(e, op))?;
            if index.len() < 8 {
                continue;
            }
            let mut at = [0u8; 8];
            at.copy_from_slice(&index[..8]);
            let indexed_expiry = u64::from_be_bytes(at);
            let key = &index[8..];
            let outcome = (&self.data, &self.expiry).transaction(
                |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                    let current = data
                        .get(key)?
                        .and_then(|raw| decode_header(&raw).ok())
                        .map(|h| h.expires_at);
                    let expired = current == Some(indexed_expiry) && indexed_expiry <= now;
                    if expired {
                        data.remove(key)?;
                    }
                    if expired || current != Some(indexed_expiry) {
                        expiry.remove(&index)?;
                    }
                    Ok::<_, ConflictableTransactionError<Error>>(expired)
                },
            );
            removed += usize::from(tx_result(outcome, op)?);
        }
        Ok(removed)
    }
}

/// What [`Inner::update`] should do with a key.
enum Decision<R> {
    /// Store `value` (`None`: delete) expiring at `expires_at` (0: never).
    Write {
        value: Option<Vec<u8>>,
        expires_at: u64,
        result: R,
    },
    /// Leave the key as it is.
    Keep(R),
}

fn tx_result<R>(
    outcome: sled::transaction::TransactionResult<R, Error>,
    op: Operation,
) -> Result<R> {
    match outcome {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(err)) => Err(err),
        Err(TransactionError::Storage(err)) => Err(sled_error(err, op)),
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

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        StateFuture::ready(self.inner.ttl(key))
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
        StateFuture::ready(self.inner.list_page(prefix, cursor, limit))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        StateFuture::ready(self.inner.count())
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        StateFuture::ready(self.inner.clear())
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
            .fold(Transaction::new(), |txn, (key, value)| match options.ttl {
                Some(ttl) => txn.put_with_ttl(key, value, ttl),
                None => txn.put(key, value),
            });
        let result = self
            .inner
            .apply(&transaction, Operation::BatchPut, options.no_expiry)
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
        ttl: Option<Duration>,
    ) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .compare_and_swap(key, None, Some(&value), ttl, Operation::SetIfNotExists)
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
        ttl: Option<Duration>,
    ) -> StateFuture<'a, CasOutcome> {
        let timer = self.inner.stats.start();
        let result = self.inner.compare_and_swap(
            key,
            expected,
            new.as_deref(),
            ttl,
            Operation::CompareAndSwap,
        );
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, i64> {
        let timer = self.inner.stats.start();
        let result = self.inner.increment(key, delta, ttl);
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

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let mut stats = self.inner.stats.snapshot(NAME);
        match self.inner.db.size_on_disk() {
            Ok(size) => {
                stats.details.insert("size_on_disk_bytes".into(), size);
            }
            Err(err) => return StateFuture::ready(Err(sled_error(err, Operation::Stats))),
        }
        StateFuture::ready(Ok(stats))
    }
}

impl Transactional for SledBackend {
    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .apply(&transaction, Operation::Transaction, false);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }
}
