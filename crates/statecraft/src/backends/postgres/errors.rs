//! PostgreSQL and pool errors, mapped onto the contract's [`Error`]s.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::backend::error::{Error, ErrorKind, Operation};

/// A PostgreSQL error, classified: lost connections, shutdowns and
/// serialization failures are temporary.
pub(super) fn pg_error(err: tokio_postgres::Error) -> Error {
    let code = err.code().cloned();
    let (kind, temporary) = match &code {
        _ if err.is_closed() => (ErrorKind::Unavailable, true),
        Some(code) if *code == SqlState::QUERY_CANCELED => (ErrorKind::Timeout, true),
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            (ErrorKind::Backend, true)
        }
        Some(code)
            if code.code().starts_with("08")
                || code.code().starts_with("57P")
                || *code == SqlState::TOO_MANY_CONNECTIONS =>
        {
            (ErrorKind::Unavailable, true)
        }
        Some(_) => (ErrorKind::Backend, false),
        // No SQLSTATE: the socket failed or the protocol broke.
        None => (ErrorKind::Unavailable, true),
    };
    let message = match (&code, err.as_db_error()) {
        (Some(code), Some(db)) => format!("PostgreSQL error {}: {}", code.code(), db.message()),
        (Some(code), None) => format!("PostgreSQL error {}", code.code()),
        (None, _) => "PostgreSQL connection failed".to_string(),
    };
    Error::new(kind, message)
        .temporary(temporary)
        .with_source(err)
}

/// A failure to get a connection: the statement was never sent, which the
/// operation `Connect` records (so it is not marked as maybe applied).
pub(super) fn pool_error(err: PoolError) -> Error {
    let error = match err {
        PoolError::Timeout(_) => Error::new(
            ErrorKind::Timeout,
            "no pooled PostgreSQL connection became free in time",
        ),
        PoolError::Backend(err) => return connect_error(err),
        other => {
            Error::new(ErrorKind::Unavailable, "the connection pool failed").with_source(other)
        }
    };
    error.with_operation(Operation::Connect)
}

/// A failure to open a connection (the statement was never sent): a
/// refusal by the server (a wrong password, a missing database) is not
/// temporary.
pub(super) fn connect_error(err: tokio_postgres::Error) -> Error {
    let mut error = pg_error(err);
    if error.kind() == ErrorKind::Backend {
        error = Error::new(ErrorKind::Unavailable, "PostgreSQL refused the connection")
            .temporary(false)
            .with_source(error);
    }
    error.with_operation(Operation::Connect)
}

pub(super) fn corrupt(err: tokio_postgres::Error) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        "a row is not in the shape this backend writes",
    )
    .with_source(err)
}

/// `increment`'s SQLSTATEs mean the contract's errors.
pub(super) fn increment_error(err: tokio_postgres::Error) -> Error {
    match err.code() {
        Some(code)
            if *code == SqlState::NOT_NULL_VIOLATION
                || *code == SqlState::INVALID_TEXT_REPRESENTATION =>
        {
            Error::new(
                ErrorKind::NotAnInteger,
                "the stored value is not a decimal 64-bit integer",
            )
        }
        Some(code) if *code == SqlState::NUMERIC_VALUE_OUT_OF_RANGE => {
            Error::new(ErrorKind::Overflow, "the sum overflows a 64-bit integer")
        }
        _ => pg_error(err),
    }
}
