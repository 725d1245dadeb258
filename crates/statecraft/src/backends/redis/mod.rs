//! [`RedisBackend`]: fast shared state in Redis, single node or Cluster.
//!
//! Every contract operation is one round trip: `SET … NX PX`, `GETDEL`,
//! `PTTL`, `MGET`, pipelined `SET … PX`, and server-side scripts (called by
//! SHA, loaded again on `NOSCRIPT`) for compare-and-swap and increment-with-
//! TTL. Scripts get keys only through `KEYS[]` and values only through
//! `ARGV`, and touch one key each, so they run unchanged on a Cluster.
//! Listing, counting and clearing walk `SCAN` with the key prefix's glob
//! metacharacters escaped; `KEYS`, `FLUSHDB` and `FLUSHALL` are never sent,
//! and nothing outside the prefix is touched.
//!
//! A backend holds `pool_size` multiplexed connections (each pipelines any
//! number of concurrent requests) and reconnects on its own after the server
//! comes back. Every round trip has a deadline; temporary failures are
//! retried with exponential backoff and full jitter — always for reads and
//! idempotent writes, and for the rest only when the request certainly never
//! reached the server.

mod atomic;
mod backend;
mod cluster;
mod config;
mod connection;
mod errors;
mod inner;
mod maintenance;
mod operations;
mod pubsub;
mod scripts;
mod tracking;

pub use backend::RedisBackend;
pub use config::{RedisConfig, RedisConfigBuilder};

const NAME: &str = "redis";
const CLUSTER_NAME: &str = "redis_cluster";
