//! Atomic multi-key transactions.

use sled::transaction::{
    abort, ConflictableTransactionError, TransactionError, Transactional as _, TransactionalTree,
};

use crate::backend::error::{Error, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::transaction::{Transaction, TransactionWrite};

use super::backend::SledBackend;
use super::errors::sled_error;
use super::format::{decode_header, encode_value, index_key};
use super::store::Inner;
use super::NAME;

impl Inner {
    /// Applies `transaction`.
    pub(super) fn apply(&self, transaction: &Transaction, op: Operation) -> Result<bool> {
        self.limits.check_transaction(NAME, op, transaction)?;
        let mut writes = Vec::with_capacity(transaction.writes().len());
        for write in transaction.writes() {
            match write {
                TransactionWrite::Put {
                    key,
                    value,
                    options,
                } => {
                    let expires_at = self.expiry(*options);
                    writes.push((key, Some(encode_value(value, expires_at)), expires_at));
                }
                TransactionWrite::Delete { key } => writes.push((key, None, 0)),
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
}

impl SledBackend {
    pub(super) fn apply_transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let timer = self.inner.stats.start();
        let result = self.inner.apply(&transaction, Operation::Transaction);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }
}
