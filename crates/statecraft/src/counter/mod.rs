//! Counters: [`ShardedCounter`] in this process (one cache line per shard,
//! so that threads on different cores never share one), [`DistributedCounter`]
//! in a store (an increment and its TTL in one atomic round trip) and
//! [`HybridCounter`] (local increments, flushed to the store in batches,
//! with a stated staleness bound).
//!
//! ```
//! # #[tokio::main] async fn main() -> statecraft::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use statecraft::counter::{DistributedCounter, HybridCounter, ShardedCounter};
//! use statecraft::MemoryBackend;
//!
//! let hits = ShardedCounter::new();
//! hits.add(3);
//! hits.increment();
//! assert_eq!(hits.sum(), 4);
//!
//! let store = Arc::new(MemoryBackend::new());
//! let shared = DistributedCounter::new(store.clone(), "logins").ttl(Duration::from_secs(60));
//! assert_eq!(shared.add(2).await?, 2);
//!
//! let batched = HybridCounter::start(store, "logins", Duration::from_millis(10));
//! batched.add(5);
//! batched.flush().await?;
//! assert_eq!(shared.get().await?, 7);
//! # Ok(()) }
//! ```

mod distributed;
mod hybrid;
mod sharded;

pub use distributed::DistributedCounter;
pub use hybrid::{HybridCounter, HybridCounterStats};
pub use sharded::ShardedCounter;
