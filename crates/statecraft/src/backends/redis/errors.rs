//! Mapping Redis errors to the crate's, and what makes a retry safe.

use redis::{RedisError, ServerErrorKind};

use crate::backend::error::{Error, ErrorKind};

/// Whether a retry is safe after the request may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Idempotent {
    Yes,
    No,
}

pub(super) fn redis_error(err: RedisError) -> Error {
    let (kind, temporary, message) = if err.is_timeout() {
        (ErrorKind::Timeout, true, "Redis did not answer in time")
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        (
            ErrorKind::Unavailable,
            true,
            "the connection to Redis failed",
        )
    } else {
        match err.kind() {
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                // A replica now (after a failover): the next connection may
                // reach the new primary.
                | ServerErrorKind::ReadOnly
                // Redirections left over once the client's own retries are
                // spent: the slot's node is down or the slots are moving.
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            )
            | redis::ErrorKind::ClusterConnectionNotFound => {
                (ErrorKind::Unavailable, true, "Redis is not ready")
            }
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => (
                ErrorKind::Corrupt,
                false,
                "Redis answered with an unexpected reply",
            ),
            redis::ErrorKind::InvalidClientConfig => {
                (ErrorKind::Config, false, "the Redis client configuration is invalid")
            }
            _ if err.code() == Some("WRONGTYPE") => (
                ErrorKind::Backend,
                false,
                "the key holds a Redis type other than a string",
            ),
            _ => (ErrorKind::Backend, false, "Redis refused the command"),
        }
    };
    Error::new(kind, message)
        .temporary(temporary)
        .with_source(err)
}

/// Whether `err` proves the server did not run the command: the connection
/// was refused, or the server answered that it would not (loading, a slot
/// elsewhere, the cluster down, a read-only replica). Only then may an
/// operation that is not idempotent be sent again.
pub(super) fn not_executed(err: &RedisError) -> bool {
    err.is_connection_refusal()
        || matches!(
            err.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        )
}

pub(super) fn increment_error(err: RedisError) -> Error {
    let detail = err.detail().unwrap_or_default().to_string();
    if detail.contains("not an integer") {
        Error::new(
            ErrorKind::NotAnInteger,
            "the stored value is not a decimal 64-bit integer",
        )
    } else if detail.contains("overflow") {
        Error::new(ErrorKind::Overflow, "the sum overflows a 64-bit integer")
    } else {
        redis_error(err)
    }
}
