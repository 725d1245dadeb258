//! [`Transaction`]: multi-key writes that apply together or not at all, through
//! [`StateBackend::transaction`](crate::StateBackend::transaction).

use std::time::Duration;

use bytes::Bytes;

use crate::backend::options::PutOptions;

/// One write of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionWrite {
    /// Store `value` under `key`, with `options` as
    /// [`put_with`](crate::StateBackend::put_with) applies them.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The TTL options.
        options: PutOptions,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
}

/// A set of preconditions and writes, applied atomically: if every check
/// holds, every write is applied; otherwise nothing is.
///
/// ```
/// use statecraft::Transaction;
/// let transfer = Transaction::new()
///     .check("from", Some("10"))
///     .put("from", "0")
///     .put("to", "10");
/// assert_eq!(transfer.writes().len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    checks: Vec<(Bytes, Option<Bytes>)>,
    writes: Vec<TransactionWrite>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to hold `expected` (`None`: to be absent) at commit.
    pub fn check(mut self, key: impl Into<Bytes>, expected: Option<impl Into<Bytes>>) -> Self {
        self.checks.push((key.into(), expected.map(Into::into)));
        self
    }

    /// Stores `value` under `key`.
    pub fn put(self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.put_with(key, value, PutOptions::new())
    }

    /// Stores `value` under `key` for `ttl`.
    pub fn put_with_ttl(
        self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Self {
        self.put_with(key, value, PutOptions::new().ttl(ttl))
    }

    /// Stores `value` under `key` with `options`.
    pub fn put_with(
        mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Self {
        self.writes.push(TransactionWrite::Put {
            key: key.into(),
            value: value.into(),
            options,
        });
        self
    }

    /// Removes `key`.
    pub fn delete(mut self, key: impl Into<Bytes>) -> Self {
        self.writes
            .push(TransactionWrite::Delete { key: key.into() });
        self
    }

    /// The same transaction with every key passed through `map` (a layer
    /// that stores keys under a prefix, say).
    pub fn map_keys(self, mut map: impl FnMut(Bytes) -> Bytes) -> Self {
        let checks = self
            .checks
            .into_iter()
            .map(|(key, expected)| (map(key), expected))
            .collect();
        let writes = self
            .writes
            .into_iter()
            .map(|write| match write {
                TransactionWrite::Put {
                    key,
                    value,
                    options,
                } => TransactionWrite::Put {
                    key: map(key),
                    value,
                    options,
                },
                TransactionWrite::Delete { key } => TransactionWrite::Delete { key: map(key) },
            })
            .collect();
        Transaction { checks, writes }
    }

    /// The preconditions, in order.
    pub fn checks(&self) -> &[(Bytes, Option<Bytes>)] {
        &self.checks
    }

    /// The writes, in order; a later write to the same key wins.
    pub fn writes(&self) -> &[TransactionWrite] {
        &self.writes
    }
}
