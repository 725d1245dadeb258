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
//! scans and transactions keep the pool.
//!
//! A lane whose connection is lost is reopened by the next read that picks
//! it; a read whose connection is lost under it (closed, or ended by the
//! server) runs once more on the reopened one (reads change nothing, so running twice is harmless).
//! A read dropped mid-flight (its deadline passed) leaves the lane usable:
//! the client skips the answer nobody waits for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};

use crate::backend::error::{ErrorKind, Operation, Result};

use super::errors::{connect_error, pg_error};
use super::sql::Sql;

/// The `application_name` of the read connections (the pool's are
/// `statecraft`), so that an operator can tell them apart.
pub(super) const APPLICATION_NAME: &str = "statecraft-reads";

/// How many reads in flight fill a lane before the next one gets any.
const DEPTH: usize = 8;

/// Which prepared read a lane runs.
#[derive(Debug, Clone, Copy)]
pub(super) enum Read {
    Get,
    GetWithTtl,
    Ttl,
}

/// The shared connections for point reads.
pub(super) struct Lanes {
    lanes: Box<[Lane]>,
}

struct Lane {
    open: Mutex<Option<Arc<Connected>>>,
    /// Reads sent on this lane and not yet answered (or given up).
    in_flight: AtomicUsize,
    /// Held while the lane is being reopened, so that one read reopens it
    /// and the others wait for that connection.
    reopening: tokio::sync::Mutex<()>,
}

struct Connected {
    client: Client,
    get: Statement,
    get_with_ttl: Statement,
    ttl: Statement,
}

impl Connected {
    async fn open(pg_config: &tokio_postgres::Config, sql: &Sql) -> Result<Connected> {
        let mut pg_config = pg_config.clone();
        pg_config.application_name(APPLICATION_NAME);
        let (client, connection) = pg_config.connect(NoTls).await.map_err(connect_error)?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "a PostgreSQL read connection closed");
            }
        });
        let (get, get_with_ttl, ttl) = futures_util::future::try_join3(
            client.prepare(&sql.get),
            client.prepare(&sql.get_with_ttl),
            client.prepare(&sql.ttl),
        )
        .await
        .map_err(|err| pg_error(err).with_operation(Operation::Connect))?;
        Ok(Connected {
            client,
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
    pub(super) async fn open(
        count: usize,
        pg_config: &tokio_postgres::Config,
        sql: &Sql,
    ) -> Result<Lanes> {
        let opened =
            futures_util::future::try_join_all((0..count).map(|_| Connected::open(pg_config, sql)))
                .await?;
        let lanes = opened
            .into_iter()
            .map(|connected| Lane {
                open: Mutex::new(Some(Arc::new(connected))),
                in_flight: AtomicUsize::new(0),
                reopening: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(Lanes { lanes })
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

    /// Runs `read` with `params` on the next lane: at most one row.
    pub(super) async fn query_opt(
        &self,
        read: Read,
        params: &[&(dyn ToSql + Sync)],
        pg_config: &tokio_postgres::Config,
        sql: &Sql,
    ) -> Result<Option<Row>> {
        let lane = self.pick();
        lane.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&lane.in_flight);
        let mut retried = false;
        loop {
            let connected = lane.connected(pg_config, sql).await?;
            match connected
                .client
                .query_opt(connected.statement(read), params)
                .await
            {
                Ok(row) => return Ok(row),
                Err(err) => {
                    let error = pg_error(err);
                    // The connection is gone (closed, or ended by the
                    // server): the lane opens another for the next read.
                    let lost =
                        error.kind() == ErrorKind::Unavailable || connected.client.is_closed();
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
        }
    }
}

impl Lanes {
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
        pg_config: &tokio_postgres::Config,
        sql: &Sql,
    ) -> Result<Arc<Connected>> {
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        let _reopening = self.reopening.lock().await;
        if let Some(connected) = self.current() {
            return Ok(connected);
        }
        // Boxed: the connection handshake's state is kilobytes, and would
        // otherwise be part of every read's future.
        let connected = Arc::new(Box::pin(Connected::open(pg_config, sql)).await?);
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
    /// A point read of `key`: on a lane when there are any, else on a
    /// pooled connection.
    pub(super) async fn read_row(&self, read: Read, key: &[u8]) -> Result<Option<Row>> {
        if let Some(lanes) = self.lanes.get().filter(|lanes| lanes.len() > 0) {
            return lanes
                .query_opt(read, &[&key], &self.pg_config, &self.sql)
                .await;
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
