//! [`DistributedCounter`]: a counter in a store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::Result;
use crate::backend::options::PutOptions;
use crate::backend::StateBackend;

/// A counter in a store, shared by every instance with the same store and
/// name: each add is one atomic round trip (the store's `increment`:
/// `INCRBY` in a script on Redis, one statement on PostgreSQL), and a
/// counter created with a [`ttl`](Self::ttl) gets it in that same step,
/// so no key is ever left without one. A key that exists keeps its TTL
/// (a window counter: "logins this minute").
#[derive(Clone)]
pub struct DistributedCounter {
    backend: Arc<dyn StateBackend>,
    key: Bytes,
    ttl: Option<Duration>,
}

impl fmt::Debug for DistributedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedCounter")
            .field("backend", &self.backend.name())
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl DistributedCounter {
    /// The counter `name` in `backend` (its key is `counter:<name>`),
    /// without a TTL.
    pub fn new(backend: Arc<dyn StateBackend>, name: &str) -> DistributedCounter {
        DistributedCounter {
            backend,
            key: Bytes::from(format!("counter:{name}")),
            ttl: None,
        }
    }

    /// The TTL the counter's key is created with.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The key it lives under.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn options(&self) -> PutOptions {
        match self.ttl {
            Some(ttl) => PutOptions::new().ttl(ttl),
            None => PutOptions::new(),
        }
    }

    /// Adds `delta` and returns the new total (one round trip).
    pub async fn add(&self, delta: i64) -> Result<i64> {
        self.backend
            .increment(&self.key, delta, self.options())
            .await
    }

    /// Adds one.
    pub async fn increment(&self) -> Result<i64> {
        self.add(1).await
    }

    /// The total (0 when the key is absent or expired); a read, writing
    /// nothing.
    pub async fn get(&self) -> Result<i64> {
        match self.backend.get(&self.key).await? {
            Some(raw) => crate::raw::counter::parse_counter(&raw),
            None => Ok(0),
        }
    }

    /// Forgets the counter.
    pub async fn reset(&self) -> Result<()> {
        self.backend.delete(&self.key).await.map(|_| ())
    }
}
