//! sled's errors, mapped onto the contract's [`Error`]s.

use sled::transaction::TransactionError;

use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::NAME;

pub(super) fn sled_error(err: sled::Error, op: Operation) -> Error {
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

pub(super) fn tx_result<R>(
    outcome: sled::transaction::TransactionResult<R, Error>,
    op: Operation,
) -> Result<R> {
    match outcome {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(err)) => Err(err),
        Err(TransactionError::Storage(err)) => Err(sled_error(err, op)),
    }
}
