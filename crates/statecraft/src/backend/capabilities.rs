//! [`Capabilities`]: what a backend can do.

/// What a backend can do, for layers and tests to branch on (never on names).
///
/// Every capability is reachable through [`StateBackend`](crate::StateBackend)
/// itself: a backend without `pubsub` answers
/// [`publish`](crate::StateBackend::publish) with an
/// [`Unsupported`](crate::ErrorKind::Unsupported) error, and so on. Layers
/// report what they forward, no more.
///
/// Built outside the crate from [`Capabilities::NONE`] and the setters:
///
/// ```
/// use statecraft::Capabilities;
/// let caps = Capabilities::NONE.with_persistent(true).with_pubsub(true);
/// assert!(caps.persistent && caps.pubsub && !caps.transactions);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data survives a restart of the process.
    pub persistent: bool,
    /// Data is shared by every process that connects to the same store.
    pub distributed: bool,
    /// TTLs expire on their own, without a reader asking.
    pub native_ttl: bool,
    /// Multi-key atomic transactions
    /// ([`transaction`](crate::StateBackend::transaction)).
    pub transactions: bool,
    /// Publish/subscribe messaging ([`publish`](crate::StateBackend::publish),
    /// [`subscribe`](crate::StateBackend::subscribe)).
    pub pubsub: bool,
    /// `list_keys_page` returns keys in ascending byte order, each once.
    pub ordered_listing: bool,
    /// `batch_put` applies all of its writes or none.
    pub atomic_batch: bool,
    /// The store reports changes to keys by any client on its own
    /// ([`watch_keys`](crate::StateBackend::watch_keys)).
    pub key_tracking: bool,
}

macro_rules! setters {
    ($($field:ident => $setter:ident),+ $(,)?) => {$(
        #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
        pub const fn $setter(mut self, value: bool) -> Self {
            self.$field = value;
            self
        }
    )+};
}

impl Capabilities {
    /// No capabilities; add them with the `with_…` setters.
    pub const NONE: Capabilities = Capabilities {
        persistent: false,
        distributed: false,
        native_ttl: false,
        transactions: false,
        pubsub: false,
        ordered_listing: false,
        atomic_batch: false,
        key_tracking: false,
    };

    setters!(
        persistent => with_persistent,
        distributed => with_distributed,
        native_ttl => with_native_ttl,
        transactions => with_transactions,
        pubsub => with_pubsub,
        ordered_listing => with_ordered_listing,
        atomic_batch => with_atomic_batch,
        key_tracking => with_key_tracking,
    );
}
