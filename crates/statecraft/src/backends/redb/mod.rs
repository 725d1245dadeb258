//! [`RedbBackend`]: embedded, persistent storage with TTL in one redb file.
//!
//! Values carry the header the embedded stores share
//! ([`stored`](crate::backends::stored)), and a second table indexes
//! expiring keys by `expiry ++ key`, written in the same transaction as
//! the value, so the index is exact and the sweeper finds what is due with
//! one range scan.
//!
//! redb runs one write transaction at a time, and a durable commit waits
//! for the disk (`fsync`). Every write therefore goes to one writer thread
//! of the backend's own, which applies the writes waiting for it in order
//! in one transaction and commits them together (a group commit): no
//! commit runs on an async worker thread, and concurrent writers share
//! one `fsync`. Reads run where they are called, on a snapshot (a read
//! transaction), and never wait for the writer (a read of a page not in
//! redb's cache reads the disk there, as with sled).

mod apply;
mod backend;
mod builder;
mod errors;
mod store;
mod writer;

pub use backend::RedbBackend;
pub use builder::RedbBackendBuilder;

const NAME: &str = "redb";

/// The values, under their keys.
const DATA: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("statecraft/data");
/// The expiry index: `expiry ++ key`, no value.
const EXPIRY: redb::TableDefinition<'static, &'static [u8], ()> =
    redb::TableDefinition::new("statecraft/expiry");
/// The database's format version.
const META: redb::TableDefinition<'static, &'static str, &'static [u8]> =
    redb::TableDefinition::new("statecraft/meta");
