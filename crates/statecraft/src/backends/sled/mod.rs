//! [`SledBackend`]: embedded, persistent, crash-safe storage with TTL.
//!
//! Each stored value carries a small header: one tag byte, then (for values
//! with a TTL) the absolute expiry as 8 big-endian bytes of Unix milliseconds.
//! A second tree indexes expiring keys by `expiry ++ key`, so the sweeper
//! finds what is due with one range scan. The index is written before the
//! value, so every expiring value is indexed; a stale index entry (its value
//! since rewritten) is harmless because the sweeper checks the value's own
//! header before removing anything.

mod backend;
mod builder;
mod errors;
mod expiry;
mod format;
mod store;
mod transaction;

pub use backend::SledBackend;
pub use builder::SledBackendBuilder;

const NAME: &str = "sled";
