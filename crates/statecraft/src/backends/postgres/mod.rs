//! [`PostgresBackend`]: durable shared state in a PostgreSQL table.
//!
//! One table per backend, `(key bytea PRIMARY KEY, value bytea NOT NULL,
//! expires_at timestamptz)`, created and upgraded by versioned migrations
//! under an advisory lock, so any number of instances may start at once.
//! Expiry uses the server's clock (`now()`), never the client's: an expired
//! row is filtered out of every read and purged in the background. Prefix
//! listing is a range scan on the primary key, never `LIKE`; batches are one
//! statement over `unnest` arrays.

mod advisory;
mod backend;
mod config;
mod errors;
mod maintenance;
mod migrations;
mod native;
mod pipeline;
mod pool;
mod pubsub;
mod sql;
mod transaction;

pub use advisory::{AdvisoryConfig, AdvisoryGuard, AdvisoryLocks};
pub use backend::PostgresBackend;
pub use config::{PostgresConfig, PostgresConfigBuilder};
pub use pool::PoolStatus;
pub use transaction::PgTransaction;

const NAME: &str = "postgres";
