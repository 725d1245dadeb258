//! Key and value size limits, checked before a backend does any work.

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::transaction::{Transaction, TransactionWrite};

/// Size limits every backend enforces with a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The longest key accepted, in bytes.
    pub max_key_len: usize,
    /// The longest value accepted, in bytes.
    pub max_value_len: usize,
}

impl Default for Limits {
    /// 1 KiB keys (PostgreSQL indexes cap keys near 2.7 KB) and 32 MiB values.
    fn default() -> Self {
        Limits {
            max_key_len: 1024,
            max_value_len: 32 << 20,
        }
    }
}

impl Limits {
    /// Limits with the given maximum key and value lengths.
    pub fn new(max_key_len: usize, max_value_len: usize) -> Self {
        Limits {
            max_key_len,
            max_value_len,
        }
    }

    /// Rejects a key longer than the limit.
    #[inline]
    pub fn check_key(&self, backend: &'static str, op: Operation, key: &[u8]) -> Result<()> {
        if key.len() > self.max_key_len {
            return Err(Error::new(
                ErrorKind::KeyTooLarge,
                format!(
                    "key is {} bytes, the limit is {}",
                    key.len(),
                    self.max_key_len
                ),
            )
            .with_key(key)
            .context(backend, op));
        }
        Ok(())
    }

    /// Rejects a key or value longer than the limits.
    #[inline]
    pub fn check_entry(
        &self,
        backend: &'static str,
        op: Operation,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.check_key(backend, op, key)?;
        if value.len() > self.max_value_len {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "value is {} bytes, the limit is {}",
                    value.len(),
                    self.max_value_len
                ),
            )
            .with_key(key)
            .context(backend, op));
        }
        Ok(())
    }

    /// Checks every key and value of `transaction` (its checks' expected
    /// values and its puts' values) against the limits.
    pub(crate) fn check_transaction(
        &self,
        backend: &'static str,
        op: Operation,
        transaction: &Transaction,
    ) -> Result<()> {
        for (key, expected) in transaction.checks() {
            match expected {
                Some(expected) => self.check_entry(backend, op, key, expected)?,
                None => self.check_key(backend, op, key)?,
            }
        }
        for write in transaction.writes() {
            match write {
                TransactionWrite::Put { key, value, .. } => {
                    self.check_entry(backend, op, key, value)?
                }
                TransactionWrite::Delete { key } => self.check_key(backend, op, key)?,
            }
        }
        Ok(())
    }
}
