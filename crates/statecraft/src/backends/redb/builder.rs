//! [`RedbBackendBuilder`]: configuring and opening a database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::ReadableTable as _;

use crate::backend::clock::{Clock, SystemClock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;
use crate::raw::recorder::StatsRecorder;

use super::backend::RedbBackend;
use super::errors::redb_error;
use super::store::{Inner, Shared};
use super::writer::{self, Durable};
use super::{DATA, EXPIRY, META, NAME};

const FORMAT_KEY: &str = "format";
const FORMAT_VERSION: &[u8] = b"1";

/// How long an open waits for a database this process is closing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Configures a [`RedbBackend`].
#[derive(Debug, Clone)]
pub struct RedbBackendBuilder {
    path: Option<PathBuf>,
    temporary: bool,
    cache_size: usize,
    durable_commits: bool,
    flush_every: Option<Duration>,
    default_ttl: Option<Duration>,
    sweep_interval: Option<Duration>,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

impl Default for RedbBackendBuilder {
    fn default() -> Self {
        RedbBackendBuilder {
            path: None,
            temporary: false,
            cache_size: 256 << 20,
            durable_commits: true,
            flush_every: Some(Duration::from_millis(500)),
            default_ttl: None,
            sweep_interval: Some(Duration::from_secs(1)),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
        }
    }
}

impl RedbBackendBuilder {
    /// The database file (created if missing; its directory must exist).
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Deletes the database file when the backend is dropped; without a
    /// [`path`](Self::path), the file is a new one in the system's
    /// temporary directory.
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// The size of redb's page cache in bytes (256 MiB by default).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Whether every write is on disk before it is acknowledged (the
    /// default: each commit waits for `fsync`, and the writes queued
    /// together share it). `false` acknowledges writes once applied in
    /// memory and makes them durable every [`flush_every`](Self::flush_every),
    /// on [`RedbBackend::flush`] and on drop; a crash loses the writes
    /// since the last of those, and so does a failed commit (redb then
    /// takes no more writes until the backend is reopened).
    pub fn durable_commits(mut self, durable: bool) -> Self {
        self.durable_commits = durable;
        self
    }

    /// With [`durable_commits(false)`](Self::durable_commits), how long a
    /// write may wait to become durable (500 ms by default); `None`: only
    /// on [`RedbBackend::flush`] and on drop.
    pub fn flush_every(mut self, every: Option<Duration>) -> Self {
        self.flush_every = every;
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often expired keys are removed in the background (when any are
    /// due: an idle database commits nothing), up to 10,000 a commit until
    /// none is due; `None` disables it (they are still never returned).
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

    /// Opens (or creates) the database. One this process is closing is
    /// waited for, up to 2 s; one another process keeps open fails with
    /// an [`Io`](ErrorKind::Io) error after that wait.
    pub fn open(self) -> Result<RedbBackend> {
        let op = Operation::Open;
        let path = match (&self.path, self.temporary) {
            (Some(path), _) => path.clone(),
            (None, true) => temporary_path(),
            (None, false) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "a redb backend needs a path unless it is temporary",
                )
                .context(NAME, op))
            }
        };
        let mut builder = redb::Database::builder();
        builder.set_cache_size(self.cache_size);
        let db = create_waiting(&builder, &path).map_err(|e| redb_error(e, op))?;
        prepare(&db)?;
        let shared = Arc::new(Shared {
            db,
            path,
            temporary: self.temporary,
            default_ttl: self.default_ttl,
            clock: self.clock,
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        });
        let durable = Durable {
            always: self.durable_commits,
            every: self.flush_every,
        };
        let (jobs, writer) = writer::spawn(Arc::clone(&shared), durable).map_err(|e| {
            Error::new(ErrorKind::Io, "cannot start the redb writer thread")
                .with_source(e)
                .context(NAME, op)
        })?;
        let inner = Arc::new(Inner {
            shared,
            limits: self.limits,
            stats: StatsRecorder::new(),
            jobs: Some(jobs),
            writer: Some(writer),
        });
        let sweeper = self.sweep_interval.and_then(|interval| {
            crate::backends::sweeper::spawn(
                NAME,
                Arc::downgrade(&inner),
                interval,
                Inner::sweep_in_background,
            )
        });
        Ok(RedbBackend {
            inner,
            _sweeper: sweeper,
        })
    }
}

/// Opens `path`, waiting up to [`LOCK_WAIT`] while its lock is taken (a
/// handle of this process may be closing on another thread).
fn create_waiting(
    builder: &redb::Builder,
    path: &Path,
) -> std::result::Result<redb::Database, redb::DatabaseError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        match builder.create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            opened => return opened,
        }
    }
}

/// Creates the tables and checks (or writes) the format version.
fn prepare(db: &redb::Database) -> Result<()> {
    let op = Operation::Open;
    let txn = db.begin_write().map_err(|e| redb_error(e, op))?;
    {
        txn.open_table(DATA).map_err(|e| redb_error(e, op))?;
        txn.open_table(EXPIRY).map_err(|e| redb_error(e, op))?;
        let mut meta = txn.open_table(META).map_err(|e| redb_error(e, op))?;
        let existing = meta
            .get(FORMAT_KEY)
            .map_err(|e| redb_error(e, op))?
            .map(|v| v.value().to_vec());
        match existing {
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| redb_error(e, op))?;
            }
            Some(version) if version == FORMAT_VERSION => {}
            Some(version) => {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "database format {:?} is not the supported {:?}",
                        String::from_utf8_lossy(&version),
                        String::from_utf8_lossy(FORMAT_VERSION)
                    ),
                )
                .context(NAME, op))
            }
        }
    }
    txn.commit().map_err(|e| redb_error(e, op))
}

/// A fresh file name in the system's temporary directory.
fn temporary_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut salt = [0u8; 8];
    let _ = getrandom::fill(&mut salt);
    std::env::temp_dir().join(format!(
        "statecraft-redb-{}-{n}-{:016x}.redb",
        std::process::id(),
        u64::from_le_bytes(salt)
    ))
}
