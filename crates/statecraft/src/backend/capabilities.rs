//! [`Capabilities`]: what a backend can do.

/// What a backend can do, for layers and tests to branch on (never on names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data survives a restart of the process.
    pub persistent: bool,
    /// Data is shared by every process that connects to the same store.
    pub distributed: bool,
    /// TTLs expire on their own, without a reader asking.
    pub native_ttl: bool,
    /// Multi-key atomic transactions (see [`Transactional`](crate::Transactional)).
    pub transactions: bool,
    /// Publish/subscribe messaging.
    pub pubsub: bool,
    /// `list_keys_page` returns keys in ascending byte order, each once.
    pub ordered_listing: bool,
    /// `batch_put` applies all of its writes or none.
    pub atomic_batch: bool,
}

impl Capabilities {
    /// No capabilities; set fields with struct update syntax inside the crate
    /// or with the builder-style setters outside it.
    pub const NONE: Capabilities = Capabilities {
        persistent: false,
        distributed: false,
        native_ttl: false,
        transactions: false,
        pubsub: false,
        ordered_listing: false,
        atomic_batch: false,
    };
}
