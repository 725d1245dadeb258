//! [`SledBackend`]: embedded, persistent, crash-safe storage with TTL.
//!
//! Each stored value carries a small header: one tag byte, then (for values
//! with a TTL) the absolute expiry as 8 big-endian bytes of Unix milliseconds.
//! A second tree indexes expiring keys by `expiry ++ key`, so the sweeper
//! finds what is due with one range scan. A write that gives a key a new
//! expiry writes the value and its index entry in one sled transaction; a
//! plain put replaces the value, then drops the old entry unless the value
//! now stored uses it; a write that keeps the expiry (an increment, a swap
//! of a plain value) is one compare-and-swap of the value, which goes on
//! using the entry it had. Every expiring value is indexed; a stale index entry (its value
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
