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
//! use statecraft::{MemoryBackend, Namespaced, PutOptions, StateBackend};
//!
//! let shared: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
//! let sessions = Namespaced::new(shared.clone(), "sessions:");
//! sessions.put_with_ttl(b"alice", "token".into(), Duration::from_secs(60)).await?;
//! assert_eq!(shared.get(b"sessions:alice").await?.as_deref(), Some(&b"token"[..]));
//! assert_eq!(sessions.increment(b"logins", 1, PutOptions::new()).await?, 1);
//! # Ok(()) }
//! ```
//!
//! Features: `sled` (default) builds [`SledBackend`]; `sled-compression`
//! turns on sled's zstd page compression; `redb` builds [`RedbBackend`];
//! `redis` builds [`RedisBackend`]
//! (single node and Cluster), `redis-tls` adds `rediss://`; `postgres`
//! builds [`PostgresBackend`].
//!
//! ## Layout
//!
//! - the contract: [`StateBackend`] and its options, outcomes,
//!   [`Capabilities`], [`Error`], statistics, pub/sub [`Subscription`]s,
//!   [`Transaction`]s, [`AtomicUpdate`]s (how a primitive reaches a
//!   store's native path through any stack), [`KeyChanges`] and
//!   [`checkpoint`]s;
//! - the stores: [`MemoryBackend`], [`NullBackend`], [`SledBackend`],
//!   [`RedisBackend`], [`PostgresBackend`];
//! - the layers, each a backend over another: [`Namespaced`], [`Retry`],
//!   [`Timeout`], [`Metrics`], and the typed view [`Typed`];
//! - [`raw`]: building blocks for authors of backends and layers.
//!
//! The coordination primitives build on the contract and get a module
//! each: [`breaker`] (local, distributed and hybrid circuit breakers, a
//! tower layer, a registry) and [`limiter`] (rate limiters: GCRA, token
//! bucket, sliding and fixed windows) and [`counter`] (sharded, distributed
//! and hybrid counters); locks are next.

mod backend;
mod backends;
pub mod breaker;
pub mod connect;
pub mod counter;
mod jitter;
mod layers;
pub mod limiter;
pub mod lock;
pub mod raw;

pub use backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
pub use backend::capabilities::Capabilities;
pub use backend::checkpoint;
pub use backend::clock::{Clock, ManualClock, MonotonicClock, SystemClock};
pub use backend::error::{Error, ErrorKind, Operation, Result};
pub use backend::future::StateFuture;
pub use backend::limits::Limits;
pub use backend::maintenance::MaintenanceTask;
pub use backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
pub use backend::pubsub::{Message, Subscription};
pub use backend::stats::{BackendStats, LatencySummary};
pub use backend::transaction::{Transaction, TransactionWrite};
pub use backend::watch::{KeyChange, KeyChanges};
pub use backend::{StateBackend, StateBackendExt, LIST_PAGE};
pub use backends::memory::{MemoryBackend, MemoryBackendBuilder};
pub use backends::null::NullBackend;
#[cfg(feature = "postgres")]
pub use backends::postgres::{
    PgTransaction, PoolStatus, PostgresBackend, PostgresConfig, PostgresConfigBuilder,
};
#[cfg(feature = "redb")]
pub use backends::redb::{RedbBackend, RedbBackendBuilder};
#[cfg(feature = "redis")]
pub use backends::redis::{RedisBackend, RedisConfig, RedisConfigBuilder};
#[cfg(feature = "sled")]
pub use backends::sled::{SledBackend, SledBackendBuilder};
pub use bytes::Bytes;
pub use connect::{connect, connect_with, ConnectOptions};
pub use layers::cached::{Cached, CachedBuilder, Heartbeat, Invalidation};
pub use layers::fallback::{
    Fallback, FallbackBuilder, FallbackEvent, Health, HealthPolicy, Recovery,
};
pub use layers::metrics::Metrics;
pub use layers::namespaced::Namespaced;
pub use layers::retry::{Retry, RetryPolicy};
pub use layers::tiered::{Tiered, TieredBuilder};
pub use layers::timeout::Timeout;
pub use layers::typed;
pub use layers::typed::Typed;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
