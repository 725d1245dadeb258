//! The expiry index (`expiry ++ key`) and the sweep that removes what is due.

use sled::transaction::{ConflictableTransactionError, Transactional as _, TransactionalTree};
use sled::IVec;

use crate::backend::error::{Error, Operation, Result};

use super::errors::{sled_error, tx_result};
use super::format::{decode_header, index_key};
use super::store::Inner;
use crate::backends::stored::split_index_key;

impl Inner {
    /// After a plain (non-transactional) write replaced a value that expired
    /// at `old_expiry`, drops that index entry unless the value now stored
    /// still uses it. Transactions exclude plain writes (sled's concurrency
    /// control), so this cannot race with a transactional writer.
    pub(super) fn unindex_stale(
        &self,
        key: &[u8],
        old: Option<&IVec>,
        op: Operation,
    ) -> Result<()> {
        let Some(old_expiry) = old
            .and_then(|old| decode_header(old).ok())
            .map(|h| h.expires_at)
            .filter(|&at| at != 0)
        else {
            return Ok(());
        };
        let index = index_key(old_expiry, key);
        let outcome = (&self.data, &self.expiry).transaction(
            |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                let current = data
                    .get(key)?
                    .and_then(|raw| decode_header(&raw).ok())
                    .map_or(0, |h| h.expires_at);
                if current != old_expiry {
                    expiry.remove(&index[..])?;
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            },
        );
        tx_result(outcome, op)
    }

    /// Removes expired values whose index entries are due; returns how many.
    pub(super) fn sweep(&self) -> Result<usize> {
        let op = Operation::Delete;
        let now = self.now();
        let mut removed = 0;
        let due = self
            .expiry
            .range(..(now.saturating_add(1)).to_be_bytes().to_vec());
        for item in due {
            let (index, _) = item.map_err(|e| sled_error(e, op))?;
            let Some((indexed_expiry, key)) = split_index_key(&index) else {
                continue;
            };
            let outcome = (&self.data, &self.expiry).transaction(
                |(data, expiry): &(TransactionalTree, TransactionalTree)| {
                    let current = data
                        .get(key)?
                        .and_then(|raw| decode_header(&raw).ok())
                        .map(|h| h.expires_at);
                    let expired = current == Some(indexed_expiry) && indexed_expiry <= now;
                    if expired {
                        data.remove(key)?;
                    }
                    if expired || current != Some(indexed_expiry) {
                        expiry.remove(&index)?;
                    }
                    Ok::<_, ConflictableTransactionError<Error>>(expired)
                },
            );
            removed += usize::from(tx_result(outcome, op)?);
        }
        Ok(removed)
    }
}
