//! # statecraft
//!
//! State that many instances of a service share: one asynchronous key-value
//! contract, [`StateBackend`], over in-process memory, embedded sled, Redis
//! (single node and Cluster) and PostgreSQL, with layers that wrap any backend.
//!
//! ```
//! # async fn demo() -> statecraft::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use statecraft::{MemoryBackend, Namespaced, StateBackend};
//!
//! let shared: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
//! let sessions = Namespaced::new(shared.clone(), "sessions:");
//! sessions.put_with_ttl(b"alice", "token".into(), Duration::from_secs(60)).await?;
//! assert_eq!(shared.get(b"sessions:alice").await?.as_deref(), Some(&b"token"[..]));
//! assert_eq!(sessions.increment(b"logins", 1, None).await?, 1);
//! # Ok(()) }
//! ```
//!
//! Features: `sled` (default) builds [`SledBackend`]; `sled-compression`
//! turns on sled's zstd page compression; `redis` builds [`RedisBackend`]
//! (single node and Cluster), `redis-tls` adds `rediss://`; `postgres`
//! builds [`PostgresBackend`].

#[cfg(any(feature = "redis", feature = "postgres"))]
mod anchor;
mod backend;
pub mod checkpoint;
mod clock;
mod error;
mod future;
mod limits;
mod memory;
mod namespaced;
#[cfg(feature = "postgres")]
mod postgres;
mod pubsub;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sled")]
mod sled;
mod stats;
mod sweeper;
mod transaction;
pub mod typed;

#[cfg(feature = "redis")]
pub use crate::redis::{RedisBackend, RedisConfig, RedisConfigBuilder};
#[cfg(feature = "sled")]
pub use crate::sled::{SledBackend, SledBackendBuilder};
pub use backend::{
    apply_increment, parse_counter, Capabilities, CasOutcome, HealthReport, KeyPage, KeyTtl,
    PutOptions, StateBackend, StateBackendExt, LIST_PAGE,
};
pub use bytes::Bytes;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorKind, Operation, Result};
pub use future::StateFuture;
pub use limits::Limits;
pub use memory::{
    Entry as MemoryEntry, MemoryBackend, MemoryBackendBuilder, MemoryHasher, RawMemoryMap,
};
pub use namespaced::Namespaced;
#[cfg(feature = "postgres")]
pub use postgres::{
    PgTransaction, PoolStatus, PostgresBackend, PostgresConfig, PostgresConfigBuilder,
};
pub use pubsub::{Message, PubSub, Subscription};
pub use stats::{BackendStats, LatencySummary, Outcome, StatsRecorder, Timer, SAMPLE_EVERY};
pub use transaction::{Transaction, TransactionWrite, Transactional};
pub use typed::Typed;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
