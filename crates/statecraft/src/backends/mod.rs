//! The stores: one module per backend.

#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) mod anchor;
pub(crate) mod memory;
pub(crate) mod null;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redb")]
pub(crate) mod redb;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "sled")]
pub(crate) mod sled;
#[cfg(any(feature = "sled", feature = "redb"))]
pub(crate) mod stored;
pub(crate) mod sweeper;
