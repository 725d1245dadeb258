//! The one error type of the crate: a kind, whether a retry can help, and the
//! context (backend, operation, key) a person needs to act on it.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The key is empty or longer than the backend's configured limit.
    KeyTooLarge,
    /// The value is longer than the backend's configured limit.
    ValueTooLarge,
    /// The key is not acceptable to this backend (for example empty).
    InvalidKey,
    /// `increment` found a value that is not a decimal 64-bit integer.
    NotAnInteger,
    /// `increment` would overflow a signed 64-bit integer.
    Overflow,
    /// A value could not be encoded or decoded by a codec.
    Codec,
    /// The configuration is invalid.
    Config,
    /// An argument is out of range (for example a page size of zero).
    InvalidArgument,
    /// The backend cannot be reached or refused the operation for now.
    Unavailable,
    /// The operation did not finish within its deadline.
    Timeout,
    /// A local I/O error (disk, file system).
    Io,
    /// Stored data is not in the format this crate writes.
    Corrupt,
    /// The operation is not supported by this backend.
    Unsupported,
    /// Any other failure reported by the backend.
    Backend,
    /// A lock's lease (or a leadership) is no longer held: it ran out, or
    /// another holder took it.
    Lost,
}

impl ErrorKind {
    /// Every kind, in declaration order (so that `ALL[kind.index()] == kind`).
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::KeyTooLarge,
        ErrorKind::ValueTooLarge,
        ErrorKind::InvalidKey,
        ErrorKind::NotAnInteger,
        ErrorKind::Overflow,
        ErrorKind::Codec,
        ErrorKind::Config,
        ErrorKind::InvalidArgument,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Unsupported,
        ErrorKind::Backend,
        ErrorKind::Lost,
    ];

    /// The position of this kind in [`ALL`](Self::ALL).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short, stable, lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::KeyTooLarge => "key_too_large",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::NotAnInteger => "not_an_integer",
            ErrorKind::Overflow => "overflow",
            ErrorKind::Codec => "codec",
            ErrorKind::Config => "config",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Backend => "backend",
            ErrorKind::Lost => "lost",
        }
    }

    /// Whether errors of this kind are temporary by default.
    fn default_temporary(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Operation {
    Get,
    Put,
    Delete,
    Contains,
    Ttl,
    ListKeys,
    Count,
    Clear,
    BatchGet,
    BatchPut,
    BatchDelete,
    SetIfNotExists,
    GetAndDelete,
    CompareAndSwap,
    Increment,
    HealthCheck,
    Stats,
    Transaction,
    Flush,
    Open,
    Encode,
    Decode,
    Checkpoint,
    Restore,
    Publish,
    Subscribe,
    Migrate,
    Maintenance,
    Connect,
    GetWithTtl,
    WatchKeys,
    UpdateAtomic,
    /// An atomic update's read-only form (a breaker's peek).
    ReadAtomic,
}

impl Operation {
    /// A short, stable, lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Put => "put",
            Operation::Delete => "delete",
            Operation::Contains => "contains",
            Operation::Ttl => "ttl",
            Operation::ListKeys => "list_keys",
            Operation::Count => "count",
            Operation::Clear => "clear",
            Operation::BatchGet => "batch_get",
            Operation::BatchPut => "batch_put",
            Operation::BatchDelete => "batch_delete",
            Operation::SetIfNotExists => "set_if_not_exists",
            Operation::GetAndDelete => "get_and_delete",
            Operation::CompareAndSwap => "compare_and_swap",
            Operation::Increment => "increment",
            Operation::HealthCheck => "health_check",
            Operation::Stats => "stats",
            Operation::Transaction => "transaction",
            Operation::Flush => "flush",
            Operation::Open => "open",
            Operation::Encode => "encode",
            Operation::Decode => "decode",
            Operation::Checkpoint => "checkpoint",
            Operation::Restore => "restore",
            Operation::Publish => "publish",
            Operation::Subscribe => "subscribe",
            Operation::Migrate => "migrate",
            Operation::Maintenance => "maintenance",
            Operation::Connect => "connect",
            Operation::GetWithTtl => "get_with_ttl",
            Operation::WatchKeys => "watch_keys",
            Operation::UpdateAtomic => "update_atomic",
            Operation::ReadAtomic => "read_atomic",
        }
    }
}

impl Operation {
    /// Every operation, in declaration order (so that `ALL[op.index()] == op`).
    pub const ALL: [Operation; 33] = [
        Operation::Get,
        Operation::Put,
        Operation::Delete,
        Operation::Contains,
        Operation::Ttl,
        Operation::ListKeys,
        Operation::Count,
        Operation::Clear,
        Operation::BatchGet,
        Operation::BatchPut,
        Operation::BatchDelete,
        Operation::SetIfNotExists,
        Operation::GetAndDelete,
        Operation::CompareAndSwap,
        Operation::Increment,
        Operation::HealthCheck,
        Operation::Stats,
        Operation::Transaction,
        Operation::Flush,
        Operation::Open,
        Operation::Encode,
        Operation::Decode,
        Operation::Checkpoint,
        Operation::Restore,
        Operation::Publish,
        Operation::Subscribe,
        Operation::Migrate,
        Operation::Maintenance,
        Operation::Connect,
        Operation::GetWithTtl,
        Operation::WatchKeys,
        Operation::UpdateAtomic,
        Operation::ReadAtomic,
    ];

    /// The position of this operation in [`ALL`](Self::ALL), for tables
    /// indexed by operation.
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether running the operation twice leaves the store as running it
    /// once and returns the same result, so that a retry after an unknown
    /// outcome is safe. Increment, compare-and-swap, set-if-absent,
    /// get-and-delete, delete (a second delete reports that nothing was
    /// there), transactions, publish and maintenance are not.
    pub fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Operation::Delete
                | Operation::BatchDelete
                | Operation::Maintenance
                | Operation::SetIfNotExists
                | Operation::GetAndDelete
                | Operation::CompareAndSwap
                | Operation::Increment
                | Operation::Transaction
                | Operation::Publish
                | Operation::UpdateAtomic
        )
    }

    /// Whether the operation only reads.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Operation::Get
                | Operation::GetWithTtl
                | Operation::Contains
                | Operation::Ttl
                | Operation::ListKeys
                | Operation::Count
                | Operation::BatchGet
                | Operation::HealthCheck
                | Operation::Stats
                | Operation::Subscribe
                | Operation::WatchKeys
                | Operation::ReadAtomic
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many bytes of a key an error keeps for context.
const KEY_CONTEXT_LEN: usize = 64;

/// An error from a statecraft backend, layer or codec.
///
/// It says what went wrong ([`kind`](Error::kind)), whether trying again can
/// help ([`is_temporary`](Error::is_temporary)), and where: the backend, the
/// operation and (truncated) the key.
///
/// The details sit behind one allocation so that `Result<T, Error>` stays as
/// small as `T` allows on the hot path, where errors are rare.
pub struct Error {
    inner: Box<ErrorInner>,
}

struct ErrorInner {
    kind: ErrorKind,
    temporary: bool,
    maybe_applied: bool,
    backend: &'static str,
    operation: Option<Operation>,
    key: Option<String>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// A new error of `kind` with a message; temporary if the kind usually is.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(ErrorInner {
                kind,
                temporary: kind.default_temporary(),
                maybe_applied: false,
                backend: "",
                operation: None,
                key: None,
                message: message.into(),
                source: None,
            }),
        }
    }

    /// The error of an operation `backend` does not offer.
    pub fn unsupported(backend: &'static str, operation: Operation) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("{backend} does not support {operation}"),
        )
        .with_backend(backend)
        .with_operation(operation)
    }

    /// Marks whether a retry of the same operation can succeed.
    pub fn temporary(mut self, temporary: bool) -> Self {
        self.inner.temporary = temporary;
        self
    }

    /// Marks whether the write may have been applied although it failed: its
    /// request may have reached the store and only the reply was lost (a
    /// timeout, a connection cut mid-request). Re-sending such a write is
    /// safe only if the operation is idempotent
    /// ([`Operation::is_idempotent`]).
    pub fn maybe_applied(mut self, maybe_applied: bool) -> Self {
        self.inner.maybe_applied = maybe_applied;
        self
    }

    /// Names the backend (or layer) the error came from.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.inner.backend = backend;
        self
    }

    /// Names the operation the error happened in.
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.inner.operation = Some(operation);
        self
    }

    /// Records the key, escaped and truncated to a readable length.
    pub fn with_key(mut self, key: &[u8]) -> Self {
        let shown = &key[..key.len().min(KEY_CONTEXT_LEN)];
        let mut text = String::with_capacity(shown.len() + 8);
        for chunk in shown.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    text.extend(c.escape_default());
                } else {
                    text.push(c);
                }
            }
            for b in chunk.invalid() {
                text.push_str(&format!("\\x{b:02x}"));
            }
        }
        if key.len() > KEY_CONTEXT_LEN {
            text.push('…');
        }
        self.inner.key = Some(text);
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn is_temporary(&self) -> bool {
        self.inner.temporary
    }

    /// Whether the failed operation may still have taken effect in the store
    /// (its outcome is unknown). `false` means it certainly did not.
    pub fn may_have_applied(&self) -> bool {
        self.inner.maybe_applied
    }

    /// Whether re-sending the same operation can help and cannot apply it
    /// twice: the error is temporary and either the operation certainly did
    /// not run or running it again gives the same result. This is the rule
    /// the retry layer follows.
    pub fn is_retryable(&self) -> bool {
        self.inner.temporary
            && (!self.inner.maybe_applied
                || self.inner.operation.is_some_and(Operation::is_idempotent))
    }

    /// The backend or layer that reported the error (empty if unknown).
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// The operation the error happened in, if known.
    pub fn operation(&self) -> Option<Operation> {
        self.inner.operation
    }

    /// The key involved, escaped and truncated, if any.
    pub fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Fills in backend and operation where they are still unknown.
    pub(crate) fn context(mut self, backend: &'static str, operation: Operation) -> Self {
        if self.inner.backend.is_empty() {
            self.inner.backend = backend;
        }
        if self.inner.operation.is_none() {
            self.inner.operation = Some(operation);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.kind)?;
        if !self.inner.backend.is_empty() {
            write!(f, " in {}", self.inner.backend)?;
        }
        if let Some(op) = self.inner.operation {
            write!(f, " {op}")?;
        }
        if let Some(key) = &self.inner.key {
            write!(f, " (key {key:?})")?;
        }
        write!(f, ": {}", self.inner.message)?;
        if self.inner.temporary {
            f.write_str(" [temporary]")?;
        }
        if self.inner.maybe_applied {
            f.write_str(" [may have been applied]")?;
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("temporary", &self.inner.temporary)
            .field("maybe_applied", &self.inner.maybe_applied)
            .field("backend", &self.inner.backend)
            .field("operation", &self.inner.operation)
            .field("key", &self.inner.key)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_escaped_and_truncated() {
        let err = Error::new(ErrorKind::InvalidKey, "bad").with_key(b"a\nb\xff");
        assert_eq!(err.key(), Some("a\\nb\\xff"));
        let long = vec![b'k'; 200];
        let err = Error::new(ErrorKind::KeyTooLarge, "long").with_key(&long);
        assert_eq!(
            err.key().map(|k| k.chars().count()),
            Some(KEY_CONTEXT_LEN + 1)
        );
    }

    #[test]
    fn kinds_default_to_their_retryability() {
        assert!(Error::new(ErrorKind::Timeout, "t").is_temporary());
        assert!(Error::new(ErrorKind::Unavailable, "u").is_temporary());
        assert!(!Error::new(ErrorKind::NotAnInteger, "n").is_temporary());
        let shown = Error::new(ErrorKind::Timeout, "slow")
            .context("memory", Operation::Get)
            .to_string();
        assert_eq!(shown, "timeout in memory get: slow [temporary]");
    }

    #[test]
    fn every_operation_sits_at_its_index() {
        for (position, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), position, "{op}");
        }
        for (position, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position, "{kind}");
        }
        assert_eq!(
            Operation::ALL.last().map(|op| op.index()),
            Some(Operation::ReadAtomic.index())
        );
    }

    #[test]
    fn unknown_outcomes_are_retryable_only_for_idempotent_operations() {
        let lost = |op| {
            Error::new(ErrorKind::Timeout, "reply lost")
                .maybe_applied(true)
                .with_operation(op)
        };
        assert!(lost(Operation::Put).is_retryable());
        assert!(!lost(Operation::Increment).is_retryable());
        assert!(!lost(Operation::CompareAndSwap).is_retryable());
        let refused =
            Error::new(ErrorKind::Unavailable, "refused").with_operation(Operation::Increment);
        assert!(refused.is_retryable());
        assert!(!Error::new(ErrorKind::NotAnInteger, "n").is_retryable());
        assert!(lost(Operation::Increment)
            .to_string()
            .ends_with("[may have been applied]"));
    }
}
