//! [`SledBackendBuilder`]: configuring and opening a database.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sled::Tree;

use crate::backend::clock::{Clock, SystemClock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;
use crate::raw::recorder::StatsRecorder;

use super::backend::SledBackend;
use super::errors::sled_error;
use super::store::Inner;
use super::NAME;

const EXPIRY_TREE: &[u8] = b"statecraft/expiry";
const FORMAT_KEY: &[u8] = b"statecraft/format";
const FORMAT_VERSION: &[u8] = b"1";

/// How long an open waits for a database this process has just closed.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens `config`'s database, waiting up to [`LOCK_WAIT`] while its file
/// lock is taken: sled 0.34 releases the lock of a database whose last
/// handle was dropped only when its flusher thread ends, a moment later
/// (sled issues #1234, #1289), so a reopen right after a close would fail
/// now and then. A lock another process keeps still fails, after the wait.
fn open_waiting(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match config.open() {
            Err(sled::Error::Io(err)) if is_lock_taken(&err) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            opened => return opened,
        }
    }
}

/// Whether sled failed to take its database's file lock (it wraps the
/// `flock` error's text in an error of its own).
fn is_lock_taken(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::WouldBlock || {
        let text = err.to_string();
        text.starts_with("could not acquire lock") && text.contains("WouldBlock")
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

    /// Opens (or creates) the database. A database this process has just
    /// closed is waited for, up to 2 s: sled releases its file lock a
    /// moment after the last handle is dropped. One another process keeps
    /// open fails with an [`Io`](ErrorKind::Io) error after that wait.
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
        let db = open_waiting(&config).map_err(|e| sled_error(e, Operation::Open))?;
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
