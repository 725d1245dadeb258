//! redb's errors, mapped onto the contract's [`Error`]s.

use crate::backend::error::{Error, ErrorKind, Operation};

use super::NAME;

/// The contract's error for any of redb's (they all convert into
/// [`redb::Error`]).
pub(super) fn redb_error(err: impl Into<redb::Error>, op: Operation) -> Error {
    let err = err.into();
    let (kind, message) = match &err {
        redb::Error::Io(_) | redb::Error::PreviousIo => (ErrorKind::Io, "redb failed"),
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => (
            ErrorKind::Io,
            "the redb database is open elsewhere (another process, or a handle of this one)",
        ),
        redb::Error::Corrupted(_) => (ErrorKind::Corrupt, "the redb database is corrupt"),
        redb::Error::UpgradeRequired(_) => (
            ErrorKind::Config,
            "the redb file is in an older format that must be upgraded first",
        ),
        redb::Error::ValueTooLarge(_) => (ErrorKind::ValueTooLarge, "too large for redb"),
        redb::Error::DatabaseClosed => (ErrorKind::Unavailable, "the redb database is closed"),
        _ => (ErrorKind::Backend, "redb failed"),
    };
    Error::new(kind, message).with_source(err).context(NAME, op)
}

/// The error of a write whose group could not commit, for each of its
/// writes (an error is not `Clone`: each gets its own, with the cause's
/// text). A failed commit may still have applied the group (redb applies
/// a commit whole or not at all, and one that failed may yet be durable):
/// `at_commit` says so.
///
/// redb takes no more writes from a handle once its file has failed it
/// or a commit has (it asks for a reopen): after that, `failed_before`,
/// the writes are [`Unavailable`](ErrorKind::Unavailable), not worth a
/// retry, and say so.
pub(super) fn group_error(
    err: &redb::Error,
    at_commit: bool,
    failed_before: bool,
    op: Operation,
) -> Error {
    if failed_before {
        return Error::new(
            ErrorKind::Unavailable,
            format!("an earlier redb commit failed: reopen the backend ({err})"),
        )
        .temporary(false)
        .maybe_applied(at_commit)
        .context(NAME, op);
    }
    let kind = match err {
        redb::Error::Io(_) | redb::Error::PreviousIo => ErrorKind::Io,
        redb::Error::Corrupted(_) => ErrorKind::Corrupt,
        redb::Error::ValueTooLarge(_) => ErrorKind::ValueTooLarge,
        redb::Error::DatabaseClosed => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("the redb commit failed: {err}"))
        .maybe_applied(at_commit)
        .context(NAME, op)
}
