//! Point reads pipelined over a few shared connections ("lanes").
//!
//! A tokio-postgres client sends each statement as soon as it is called and
//! matches the answers in order, so any number of tasks can share one
//! connection: their statements travel back to back and the server answers
//! them without a round trip each. That is how one raw client outruns a pool
//! whose every statement waits for a connection of its own. The backend's
//! point reads (`get`, `get_with_ttl`, `ttl`) go over
//! [`PostgresConfig::read_connections`](super::PostgresConfig) such lanes,
//! each with its statements prepared once: to the first lane with fewer
//! than [`DEPTH`] reads in flight, else to the one with the fewest. (A few
//! callers thus share one warm connection, as they would a raw client,
//! whose server process answers their statements in one wake-up; a crowd
//! spreads over all of them, so that more than one server process works.)
//!
//! Only reads: a write can wait for a row lock a transaction holds, and on a
//! shared connection every statement behind it would wait too. Writes,
//! scans and transactions keep the pool. What reads still share is their
//! lane's order: a read waits for the answers sent before its own (a
//! table locked exclusively, a huge value, a caller that stops polling a
//! read whose answer is half read).
//!
//! Faults:
//! - A lane whose connection is lost is reopened by the next read that
//!   picks it; a read whose connection is lost under it (closed, ended by
//!   the server, or its prepared statement gone stale) runs once more on
//!   the reopened one (reads change nothing, so running twice is harmless).
//!   While a reopen has just failed, reads fail at once instead of each
//!   trying again.
//! - A read given up early (dropped by its caller) leaves the lane as it
//!   is: the client skips the answer nobody waits for.
//! - A read that waited half its operation timeout or more and saw no
//!   answer at all come back on its connection in that time takes the
//!   connection off the lane: a peer that vanished without closing the
//!   socket would otherwise hold the lane until TCP gives up. (The sockets'
//!   `tcp_user_timeout` is the operation timeout, so that the abandoned
//!   connection ends too.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::errors::{connect_error, pg_error};
use super::sql::Sql;

/// The `application_name` of the read connections (the pool's are
/// `statecraft`), so that an operator can tell them apart.
pub(super) const APPLICATION_NAME: &str = "statecraft-reads";

/// How many reads in flight fill a lane before the next one gets any.
const DEPTH: usize = 8;

/// How long after a failed reopen the lane's reads fail at once.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// Which prepared read a lane runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Read {
    Get,
    GetWithTtl,
    Ttl,
}

/// What a lane opens its connections with.
pub(super) struct LaneConfig<'a> {
    pub(super) pg_config: &'a tokio_postgres::Config,
    pub(super) sql: &'a Sql,
    pub(super) operation_timeout: Duration,
}

/// The shared connections for point reads.
pub(super) struct Lanes {
    lanes: Box<[Lane]>,
    /// A read that waited this long on a silent connection drops it.
    stale_after: Duration,
    /// Connections opened again after one was lost.
    reopened: AtomicU64,
}

struct Lane {
    open: Mutex<Option<Arc<Connected>>>,
    /// Reads sent on this lane and not yet answered (or given up).
    in_flight: AtomicUsize,
    /// Held while the lane is being reopened, so that one read reopens it
    /// and the others wait for that connection.
    reopening: tokio::sync::Mutex<()>,
    /// When the last reopen failed.
    failed_at: Mutex<Option<Instant>>,
}

struct Connected {
    client: Client,
    /// Answers (rows or errors) that came back on this connection.
    answers: AtomicU64,
    get: Statement,
    get_with_ttl: Statement,
    ttl: Statement,
}

impl Connected {
    async fn open(config: &LaneConfig<'_>) -> Result<Connected> {
        let mut pg_config = config.pg_config.clone();
        pg_config
            .application_name(APPLICATION_NAME)
            .tcp_user_timeout(config.operation_timeout);
        let (client, connection) = pg_config.connect(NoTls).await.map_err(connect_error)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "a PostgreSQL read connection closed");
            }
        });
        let sql = config.sql;
        let (get, get_with_ttl, ttl) = futures_util::future::try_join3(
            client.prepare(&sql.get),
            client.prepare(&sql.get_with_ttl),
            client.prepare(&sql.ttl),
        )
        .await
        .map_err(|err| pg_error(err).with_operation(Operation::Connect))?;
        Ok(Connected {
            client,
            answers: AtomicU64::new(0),
            get,
            get_with_ttl,
            ttl,
        })
    }

    fn statement(&self, read: Read) -> &Statement {
        match read {
            Read::Get => &self.get,
            Read::GetWithTtl => &self.get_with_ttl,
            Read::Ttl => &self.ttl,
        }
    }
}

impl Lanes {
    /// `count` lanes, opened now (so that a wrong address or a missing
    /// table fails the backend's opening, not its first read).
    pub(super) async fn open(count: usize, config: &LaneConfig<'_>) -> Result<Lanes> {
        let opened =
            futures_util::future::try_join_all((0..count).map(|_| Connected::open(config))).await?;
        let lanes = opened
            .into_iter()
            .map(|connected| Lane {
                open: Mutex::new(Some(Arc::new(connected))),
                in_flight: AtomicUsize::new(0),
                reopening: tokio::sync::Mutex::new(()),
                failed_at: Mutex::new(None),
            })
            .collect();
        Ok(Lanes {
            lanes,
            stale_after: config.operation_timeout / 2,
            reopened: AtomicU64::new(0),
        })
    }

    /// How many lanes there are (0: reads use the pool).
    pub(super) fn len(&self) -> usize {
        self.lanes.len()
    }

    /// How many lanes have an open connection now.
    pub(super) fn open_count(&self) -> usize {
        self.lanes
            .iter()
            .filter(|lane| lane.current().is_some())
            .count()
    }

    /// How many connections were opened again after one was lost.
    pub(super) fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }

    /// Runs `read` with `params` on the next lane: at most one row.
    pub(super) async fn query_opt(
        &self,
        read: Read,
        params: &[&(dyn ToSql + Sync)],
        config: &LaneConfig<'_>,
    ) -> Result<Option<Row>> {
        let lane = self.pick();
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&lane.in_flight);
        let mut retried = false;
        loop {
            let connected = lane.connected(config, &self.reopened).await?;
            let mut waiting = Waiting {
                lane,
                connected: &connected,
                answers: connected.answers.load(Ordering::Relaxed),
                sent: Instant::now(),
                stale_after: self.stale_after,
                answered: false,
            };
            let outcome = connected
                .client
                .query_opt(connected.statement(read), params)
                .await;
            waiting.answered = true;
            connected.answers.fetch_add(1, Ordering::Relaxed);
            let err = match outcome {
                Ok(row) => return Ok(row),
                Err(err) => err,
            };
            let stale = err.code().is_some_and(|code| {
                *code == SqlState::FEATURE_NOT_SUPPORTED
                    || *code == SqlState::INVALID_SQL_STATEMENT_NAME
            });
            let error = pg_error(err);
            // The connection is gone (closed, ended by the server), or its
            // prepared statements no longer fit the table: the lane opens
            // another for the next read.
            let lost =
                stale || error.kind() == ErrorKind::Unavailable || connected.client.is_closed();
            if lost {
                lane.forget(&connected);
            }
            if lost && !retried {
                retried = true;
                continue;
            }
            return Err(error);
        }
    }

    /// The first lane with room in its pipeline, else the least busy one.
    fn pick(&self) -> &Lane {
        let mut best = &self.lanes[0];
        let mut least = usize::MAX;
        for lane in &*self.lanes {
            let in_flight = lane.in_flight.load(Ordering::Relaxed);
            if in_flight < DEPTH {
                return lane;
            }
            if in_flight < least {
                least = in_flight;
                best = lane;
            }
        }
        best
    }
}

/// Takes a read off its lane's count when it ends, answered or dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A read sent and not yet answered: if it is dropped after waiting
/// `stale_after` with no answer at all on its connection, the connection
/// is taken off the lane.
struct Waiting<'a> {
    lane: &'a Lane,
    connected: &'a Arc<Connected>,
    answers: u64,
    sent: Instant,
    stale_after: Duration,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let silent = self.connected.answers.load(Ordering::Relaxed) == self.answers;
        if !self.answered && silent && self.sent.elapsed() >= self.stale_after {
            tracing::warn!(
                waited = ?self.sent.elapsed(),
                "a PostgreSQL read connection answered nothing: opening another"
            );
            self.lane.forget(self.connected);
        }
    }
}

impl Lane {
    fn current(&self) -> Option<Arc<Connected>> {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.as_ref()
            .filter(|connected| !connected.client.is_closed())
            .cloned()
    }

    /// The lane's connection, reopened first if it was lost.
    async fn connected(
        &self,
        config: &LaneConfig<'_>,
        reopened: &AtomicU64,
    ) -> Result<Arc<Connected>> {
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let _reopening = self.reopening.lock().await;
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let failed_at = *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = failed_at.filter(|at| at.elapsed() < REOPEN_PAUSE) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "reopening the read connection failed {:?} ago",
                    at.elapsed()
                ),
            )
            .temporary(true)
            .with_operation(Operation::Connect));
        }
        // Boxed: the connection handshake's state is kilobytes, and would
        // otherwise be part of every read's future.
        let opened = Box::pin(Connected::open(config)).await;
        *self
            .failed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = opened.is_err().then(Instant::now);
        let connected = Arc::new(opened?);
        reopened.fetch_add(1, Ordering::Relaxed);
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) = Some(connected.clone());
        Ok(connected)
    }

    /// Drops `lost` from the lane (unless it was replaced already).
    fn forget(&self, lost: &Arc<Connected>) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.as_ref().is_some_and(|now| Arc::ptr_eq(now, lost)) {
            *open = None;
        }
    }
}

impl super::pool::Inner {
    /// What the lanes open their connections with.
    pub(super) fn lane_config(&self) -> LaneConfig<'_> {
        LaneConfig {
            pg_config: &self.pg_config,
            sql: &self.sql,
            operation_timeout: self.config.operation_timeout,
        }
    }

    /// A point read of `key`: on a lane when there are any, else on a
    /// pooled connection.
    pub(super) async fn read_row(&self, read: Read, key: &[u8]) -> Result<Option<Row>> {
        if let Some(lanes) = self.lanes.get().filter(|lanes| lanes.len() > 0) {
            return lanes.query_opt(read, &[&key], &self.lane_config()).await;
        }
        let sql = match read {
            Read::Get => &self.sql.get,
            Read::GetWithTtl => &self.sql.get_with_ttl,
            Read::Ttl => &self.sql.ttl,
        };
        // Boxed, as the pool's checkout is large and this is not the
        // common path.
        Box::pin(async move {
            let mut client = self.client().await?;
            client.query_opt(sql, &[&key]).await.map_err(pg_error)
        })
        .await
    }
}
