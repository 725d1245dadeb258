//! [`Transaction`]: multi-key writes that apply together or not at all, through
//! [`StateBackend::transaction`](crate::StateBackend::transaction).

use std::time::Duration;

use bytes::Bytes;

/// One write of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionWrite {
    /// Store `value` under `key` (with `ttl`, or the backend default).
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The time to live.
        ttl: Option<Duration>,
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
    pub fn put(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.writes.push(TransactionWrite::Put {
            key: key.into(),
            value: value.into(),
            ttl: None,
        });
        self
    }

    /// Stores `value` under `key` for `ttl`.
    pub fn put_with_ttl(
        mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Self {
        self.writes.push(TransactionWrite::Put {
            key: key.into(),
            value: value.into(),
            ttl: Some(ttl),
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
                TransactionWrite::Put { key, value, ttl } => TransactionWrite::Put {
                    key: map(key),
                    value,
                    ttl,
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
