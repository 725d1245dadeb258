//! The writer thread: every write of a backend, applied in order and
//! committed in groups.
//!
//! The thread takes the first write waiting, then every other one already
//! queued (up to [`MOST_PER_COMMIT`]), applies them in that order in one
//! write transaction and commits once; then it answers each. A write's own
//! error (a value that is not an integer, say) writes nothing of that
//! write and does not touch the others; a failure of redb itself fails the
//! whole group, and every write in it gets the error.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::Durability;
use tokio::sync::oneshot;

use crate::backend::error::{Operation, Result};
use crate::backend::options::{CasOutcome, PutOptions};
use crate::backend::transaction::Transaction;

use super::apply::Tables;
use super::errors::group_error;
use super::store::Shared;
use super::NAME;

/// The most writes one commit carries (a bound on a write's wait behind
/// the others).
const MOST_PER_COMMIT: usize = 512;

/// A write, owned, for the writer thread.
pub(super) enum Write {
    /// Store a value ([`Answer::Done`]).
    Put {
        key: Bytes,
        value: Bytes,
        options: PutOptions,
    },
    /// Remove a key ([`Answer::Removed`]: the live value it held, if
    /// `value`; else an empty one in its place).
    Remove { key: Bytes, value: bool },
    /// Compare and swap ([`Answer::Swapped`]).
    Swap {
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
        options: PutOptions,
    },
    /// Add to a counter ([`Answer::Counted`]).
    Increment {
        key: Bytes,
        delta: i64,
        options: PutOptions,
    },
    /// Checks, then writes, all or nothing ([`Answer::Committed`]).
    Apply(Transaction),
    /// Remove keys ([`Answer::Many`]: how many were live).
    RemoveAll(Vec<Bytes>),
    /// Remove every key ([`Answer::Done`]).
    Clear,
    /// Remove what is due, a bounded part of it ([`Answer::Swept`]).
    Sweep,
    /// Commit durably, whatever the backend's setting ([`Answer::Done`]).
    Flush,
}

/// The writer's answer to a [`Write`].
#[derive(Debug)]
pub(super) enum Answer {
    Done,
    Removed(Option<Bytes>),
    Swapped(CasOutcome),
    Counted(i64),
    Committed(bool),
    Many(u64),
    Swept { removed: u64, more: bool },
}

/// A write and where its answer goes.
pub(super) struct Job {
    pub(super) write: Write,
    pub(super) op: Operation,
    pub(super) reply: oneshot::Sender<Result<Answer>>,
}

/// When the writer makes its commits durable.
#[derive(Debug, Clone, Copy)]
pub(super) struct Durable {
    /// Every commit (`fsync` before the answer).
    pub(super) always: bool,
    /// Otherwise, at the first commit this long after the last durable one
    /// (or on its own if no write comes), and on a flush.
    pub(super) every: Option<Duration>,
}

/// Starts the writer thread of `shared`'s database.
pub(super) fn spawn(
    shared: Arc<Shared>,
    durable: Durable,
) -> std::io::Result<(mpsc::Sender<Job>, JoinHandle<()>)> {
    let (jobs, queue) = mpsc::channel();
    let writer = std::thread::Builder::new()
        .name(format!("statecraft-{NAME}-writer"))
        .spawn(move || run(&shared, &queue, durable))?;
    Ok((jobs, writer))
}

fn run(shared: &Shared, queue: &mpsc::Receiver<Job>, durable: Durable) {
    // Since when commits have waited to become durable.
    let mut pending: Option<Instant> = None;
    loop {
        let due = pending
            .zip(durable.every)
            .and_then(|(since, every)| since.checked_add(every));
        let first = match due {
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(due) => match queue.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    // A failure is tried again a period later, not at once.
                    pending = match commit(shared, &mut Vec::new(), true) {
                        true => None,
                        false => Some(Instant::now()),
                    };
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MOST_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let make_durable = durable.always
            || due.is_some_and(|due| Instant::now() >= due)
            || group.iter().any(|job| matches!(job.write, Write::Flush));
        let committed = commit(shared, &mut group, make_durable);
        pending = match (committed, make_durable, pending) {
            (true, true, _) => None,
            (true, false, None) => Some(Instant::now()),
            (true, false, since) => since,
            // Nothing new to make durable; a failed durable commit is
            // tried again a period later, not at once; a failed buffered
            // one keeps the deadline of the writes before it.
            (false, _, None) => None,
            (false, true, Some(_)) => Some(Instant::now()),
            (false, false, since) => since,
        };
    }
    // The backend is closing: what was acknowledged reaches the disk.
    if pending.is_some() && !commit(shared, &mut Vec::new(), true) {
        tracing::warn!(backend = NAME, "the last commit before closing failed");
    }
}

/// Applies `group` in one transaction and answers each write; whether the
/// transaction committed.
fn commit(shared: &Shared, group: &mut Vec<Job>, durable: bool) -> bool {
    match apply_group(shared, group, durable) {
        Ok(answers) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .writes
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            for (job, answer) in group.drain(..).zip(answers) {
                let _ = job.reply.send(answer);
            }
            true
        }
        Err((err, at_commit)) => {
            tracing::warn!(%err, backend = NAME, writes = group.len(), "a commit failed");
            // What redb does not come back from: an I/O failure (it
            // latches them) or a failed commit. A write's own redb error
            // (a value too large for it) leaves the handle working.
            let fatal = at_commit || matches!(err, redb::Error::Io(_) | redb::Error::PreviousIo);
            let failed_before = match fatal {
                true => shared.failed.swap(true, Ordering::Relaxed),
                false => shared.failed.load(Ordering::Relaxed),
            };
            for job in group.drain(..) {
                let failure = group_error(&err, at_commit, failed_before, job.op);
                let _ = job.reply.send(Err(failure));
            }
            false
        }
    }
}

/// The answers of `group`, committed; or redb's error, and whether it
/// came from the commit itself (which may then have applied the group).
fn apply_group(
    shared: &Shared,
    group: &[Job],
    durable: bool,
) -> std::result::Result<Vec<Result<Answer>>, (redb::Error, bool)> {
    let before_commit = |err: redb::Error| (err, false);
    let mut txn = shared
        .db
        .begin_write()
        .map_err(|e| before_commit(e.into()))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| before_commit(e.into()))?;
    let now = shared.now();
    let answers = {
        let mut tables = Tables::open(&txn).map_err(|e| before_commit(e.into()))?;
        let mut answers = Vec::with_capacity(group.len());
        for job in group {
            answers.push(
                tables
                    .apply(shared, &job.write, job.op, now)
                    .map_err(|e| before_commit(e.into()))?,
            );
        }
        answers
    };
    txn.commit().map_err(|e| (e.into(), true))?;
    Ok(answers)
}
