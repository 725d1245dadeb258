//! [`Cached`]: an in-process L1 in front of any backend, kept coherent
//! across instances through the backend's pub/sub.

mod invalidation;
mod l1;
mod ops;
mod tracking;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

use self::invalidation::{encode_all, encode_keys};
use self::l1::{Bounds, L1};

/// Whether a [`Cached`] keeps other instances' L1s coherent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Invalidation {
    /// Through the backend's pub/sub when it has it
    /// ([`Capabilities::pubsub`](crate::Capabilities::pubsub)), otherwise
    /// off (an embedded store that one process owns needs none).
    #[default]
    Auto,
    /// Through the backend's pub/sub; building fails without it.
    PubSub,
    /// Through the store's own change tracking
    /// ([`Capabilities::key_tracking`](crate::Capabilities::key_tracking):
    /// Redis `CLIENT TRACKING` in `BCAST` mode over RESP3, single server).
    /// Every change to a key under the backend's prefix invalidates it —
    /// made through any `Cached` or not, expiry and eviction included — and
    /// writes publish nothing. Building fails without it.
    Tracking,
    /// Off: only this instance's own writes invalidate its L1. Safe only
    /// when no other process writes the same keys.
    Off,
}

/// How an instance checks that its invalidation subscription still
/// delivers: it publishes a heartbeat to itself every `interval` and treats
/// the subscription as lost when one has not come back within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often a heartbeat is sent.
    pub interval: Duration,
    /// How long a heartbeat may take to come back.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    heartbeat: Option<Heartbeat>,
    resubscribe_backoff: Duration,
    max_resubscribe_backoff: Duration,
    subscribe_timeout: Duration,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    suspensions: AtomicU64,
}

/// What the layer and its invalidation task share.
struct Shared<B> {
    inner: B,
    l1: L1,
    stats: StatsRecorder,
    channel: String,
    instance: u64,
    announce: bool,
    config: Config,
    counters: Counters,
}

impl<B: StateBackend> Shared<B> {
    /// After a write to `keys`: drop them here and, unless the write is
    /// known to have changed nothing, tell the other instances. An error
    /// says the invalidation may not have reached them.
    async fn written<K: AsRef<[u8]> + Sync>(&self, keys: &[K], changed: bool) -> Result<()> {
        for key in keys {
            self.l1.invalidate(key.as_ref());
        }
        if self.announce && changed && !keys.is_empty() {
            for message in encode_keys(self.instance, keys.iter().map(AsRef::as_ref)) {
                self.send(message).await?;
            }
        }
        Ok(())
    }

    /// After a clear: drop everything here and everywhere.
    async fn cleared(&self) -> Result<()> {
        self.l1.invalidate_all();
        if self.announce {
            self.send(encode_all(self.instance)).await?;
        }
        Ok(())
    }

    async fn send(&self, message: bytes::Bytes) -> Result<()> {
        match self.inner.publish(&self.channel, message).await {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    backend = self.inner.name(),
                    channel = %self.channel,
                    error = %err,
                    "cache invalidation not published; other instances may serve the old value until their L1 TTL"
                );
                Err(Error::new(
                    err.kind(),
                    format!(
                        "the write reached the store, but its cache invalidation was not published \
                         (other instances may serve the old value until their L1 TTL): {err}"
                    ),
                )
                .with_backend(self.inner.name())
                .maybe_applied(true))
            }
        }
    }
}

/// An in-process L1 cache in front of any backend, itself a
/// [`StateBackend`].
///
/// Reads are served from L1 when it holds the key (values and, by default,
/// absences) and otherwise read through with
/// [`get_with_ttl`](StateBackend::get_with_ttl), so that an entry never
/// outlives the store's own TTL. Writes go through to the store and then
/// drop the key from L1 (the next read fills it) — in this instance and,
/// through a pub/sub channel of the layer's own, in every other instance
/// over the same store.
///
/// L1 is a [quick_cache](https://docs.rs/quick_cache) S3-FIFO cache bounded
/// by entries or bytes, with a TTL and an optional time-to-idle. quick_cache
/// was chosen over moka by measurement: its hit costs about a tenth of
/// moka's here (see BENCHMARKS.md).
///
/// # What it guarantees
///
/// - A value read from the store before a write that went through any
///   `Cached` instance on the same store and channel is not served by an
///   instance whose subscription is up once the write's invalidation has
///   reached it (on loopback Redis, well under a millisecond), and never by
///   this instance after the write returned. A fill racing an invalidation
///   never keeps the older value.
/// - An instance whose subscription fails, ends, or goes silent (a
///   heartbeat not back within its timeout; heartbeats go out every
///   interval, so silence is noticed within interval + timeout) clears L1
///   and serves nothing from it until a new subscription has delivered a
///   heartbeat: nothing stale after a reconnect. The same holds when the
///   task applying invalidations stops (its runtime shut down, say).
/// - A write whose future is dropped before it finished (a timeout, say)
///   is treated as applied: the key is dropped here at once and the
///   invalidation is published from a task of its own.
/// - An entry never outlives the store's TTL (give or take the read's round
///   trip) nor the L1 TTL, whichever is sooner.
///
/// # What it does not
///
/// - With the layer's channel, writes that bypass `Cached` (another
///   client, a script, expiry in the store) are seen only when the L1
///   entry expires: the L1 TTL bounds their staleness
///   ([`Invalidation::Tracking`] sees them).
/// - Pub/sub is at most once. A write whose invalidation could not be
///   published returns an error that says it may have applied (it did:
///   the store has it); other instances may serve the old value until
///   their L1 TTL. Such writes are counted in `l1_publish_errors`.
///   `get_and_delete` is the exception: it returns the value it took
///   (which would otherwise be lost) and only counts and logs.
/// - `batch_get` serves what L1 holds and reads the rest without filling
///   L1 (a batch read does not return TTLs).
///
/// # Server-assisted invalidation
///
/// With [`Invalidation::Tracking`] (a single Redis server) the store itself
/// reports every change under the backend's key prefix to each instance
/// (`CLIENT TRACKING ON BCAST` on a RESP3 connection of the instance's own),
/// so writes that bypass `Cached` — another client, a script, expiry,
/// eviction — invalidate too, and writes publish nothing. Redis queues the
/// report before it answers the write, so it reaches every instance about
/// as soon as the writer's reply. A tracking connection that is reset ends
/// the watch at once; one that goes silent is noticed by a ping within a
/// second plus the backend's response timeout — until then L1 may serve
/// values changed in the store, as with a silent channel before its
/// heartbeat times out; either way L1 is then suspended as above and
/// serves again once tracking is back in place. Every instance receives
/// every change under the prefix, cached or not. Over a stack that cannot
/// report every change it serves (`Tiered`, `Fallback`, another `Cached`)
/// tracking is refused at build time.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use std::time::Duration;
/// use statecraft::{Cached, MemoryBackend, StateBackend};
///
/// let store = MemoryBackend::new();
/// let a = Cached::builder(store.clone()).max_entries(10_000).ttl(Duration::from_secs(30)).build().await?;
/// let b = Cached::builder(store).build().await?;
/// a.put(b"k", "v1".into()).await?;
/// assert_eq!(b.get(b"k").await?.as_deref(), Some(&b"v1"[..])); // now in b's L1
/// a.put(b"k", "v2".into()).await?; // invalidates b's entry
/// # tokio::time::sleep(Duration::from_millis(50)).await;
/// assert_eq!(b.get(b"k").await?.as_deref(), Some(&b"v2"[..]));
/// # Ok(()) }
/// ```
pub struct Cached<B> {
    shared: Arc<Shared<B>>,
    task: Option<tokio::task::AbortHandle>,
}

impl<B> Drop for Cached<B> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<B: StateBackend> std::fmt::Debug for Cached<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("inner", &self.shared.inner.name())
            .field("channel", &self.shared.channel)
            .field("invalidation", &self.shared.announce)
            .field("serving", &self.shared.l1.serving())
            .finish_non_exhaustive()
    }
}

impl<B: StateBackend + 'static> Cached<B> {
    /// Starts building a cache in front of `inner`.
    pub fn builder(inner: B) -> CachedBuilder<B> {
        CachedBuilder {
            inner,
            bounds: Bounds {
                max_entries: 10_000,
                max_bytes: None,
                ttl: Duration::from_secs(60),
                time_to_idle: None,
                cache_misses: true,
            },
            clock: Arc::new(MonotonicClock::new()),
            channel: "statecraft:cached".into(),
            invalidation: Invalidation::Auto,
            config: Config {
                heartbeat: Some(Heartbeat {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(3),
                }),
                resubscribe_backoff: Duration::from_millis(50),
                max_resubscribe_backoff: Duration::from_secs(2),
                subscribe_timeout: Duration::from_secs(5),
            },
        }
    }

    /// The backend under the cache.
    pub fn get_ref(&self) -> &B {
        &self.shared.inner
    }

    /// Whether L1 serves hits now (false while its invalidation
    /// subscription is down).
    pub fn is_serving(&self) -> bool {
        self.shared.l1.serving()
    }
}

/// Builds a [`Cached`]; see [`Cached::builder`].
pub struct CachedBuilder<B> {
    inner: B,
    bounds: Bounds,
    clock: Arc<dyn Clock>,
    channel: String,
    invalidation: Invalidation,
    config: Config,
}

impl<B: StateBackend> std::fmt::Debug for CachedBuilder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedBuilder")
            .field("inner", &self.inner.name())
            .field("bounds", &self.bounds)
            .field("channel", &self.channel)
            .field("invalidation", &self.invalidation)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: StateBackend + 'static> CachedBuilder<B> {
    /// Keeps at most `n` entries (default 10,000; with
    /// [`max_bytes`](Self::max_bytes), the expected number of entries).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.bounds.max_entries = n;
        self
    }

    /// Bounds L1 by the bytes of its keys and values (plus a small
    /// per-entry overhead) instead of by entries.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.bounds.max_bytes = Some(bytes);
        self
    }

    /// How long an entry is served at most (default 60 s), and so how
    /// stale a write that bypassed `Cached` can be read.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.bounds.ttl = ttl;
        self
    }

    /// Drops entries not read for `idle`.
    pub fn time_to_idle(mut self, idle: Duration) -> Self {
        self.bounds.time_to_idle = Some(idle);
        self
    }

    /// Whether absent keys are cached too (default true).
    pub fn cache_misses(mut self, cache: bool) -> Self {
        self.bounds.cache_misses = cache;
        self
    }

    /// The pub/sub channel of the invalidations (default
    /// `statecraft:cached`); instances share L1 coherence only on the same
    /// channel of the same store.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// Whether invalidations reach other instances (default
    /// [`Invalidation::Auto`]).
    pub fn invalidation(mut self, invalidation: Invalidation) -> Self {
        self.invalidation = invalidation;
        self
    }

    /// How the subscription is checked (default: every second, lost after
    /// 3 s without an answer); `None` trusts it until it fails. (A
    /// [`Invalidation::Tracking`] watch is checked by the backend itself.)
    pub fn heartbeat(mut self, heartbeat: Option<Heartbeat>) -> Self {
        self.config.heartbeat = heartbeat;
        self
    }

    /// The first and the longest wait between attempts to subscribe again
    /// (default 50 ms, doubling up to 2 s).
    pub fn resubscribe_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.config.resubscribe_backoff = first;
        self.config.max_resubscribe_backoff = max.max(first);
        self
    }

    /// The clock entries expire by (default [`MonotonicClock`]); tests pass
    /// the [`ManualClock`](crate::ManualClock) their store uses. It must not
    /// go backwards (a wall clock stepped back would keep entries longer).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Subscribes to the invalidation channel (when invalidation is on) and
    /// returns the cache, serving. Must run inside a tokio runtime when
    /// invalidation is on: a task applies the invalidations.
    pub async fn build(self) -> Result<Cached<B>> {
        let capabilities = self.inner.capabilities();
        let (announce, tracking) = match self.invalidation {
            Invalidation::Off => (false, false),
            Invalidation::Auto => (capabilities.pubsub, false),
            Invalidation::PubSub if capabilities.pubsub => (true, false),
            Invalidation::PubSub => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "Cached: invalidation through pub/sub needs a backend with pub/sub",
                )
                .context(self.inner.name(), crate::Operation::Subscribe))
            }
            Invalidation::Tracking if capabilities.key_tracking => (false, true),
            Invalidation::Tracking => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "Cached: invalidation through change tracking needs a backend that tracks \
                     keys (a single Redis server)",
                )
                .context(self.inner.name(), crate::Operation::WatchKeys))
            }
        };
        if self.config.resubscribe_backoff.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "Cached: the first resubscribe back-off must be positive",
            ));
        }
        if let Some(heartbeat) = self.config.heartbeat {
            if heartbeat.interval.is_zero() || heartbeat.timeout < heartbeat.interval {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "Cached: a heartbeat's interval must be positive and its timeout at least the interval",
                ));
            }
        }
        let runtime = if announce || tracking {
            Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::new(
                    ErrorKind::Unsupported,
                    "Cached: invalidation needs a tokio runtime (build it inside one)",
                )
            })?)
        } else {
            None
        };
        let source = if announce {
            Some(Source::Channel(self.inner.subscribe(&self.channel).await?))
        } else if tracking {
            Some(Source::Tracking(self.inner.watch_keys(b"").await?))
        } else {
            None
        };
        let shared = Arc::new(Shared {
            l1: L1::new(self.bounds, self.clock, true)?,
            inner: self.inner,
            stats: StatsRecorder::new(),
            channel: self.channel,
            instance: instance_id(),
            announce,
            config: self.config,
            counters: Counters::default(),
        });
        let task = match (runtime, source) {
            (Some(runtime), Some(Source::Channel(sub))) => Some(
                runtime
                    .spawn(invalidation::run(shared.clone(), sub))
                    .abort_handle(),
            ),
            (Some(runtime), Some(Source::Tracking(changes))) => Some(
                runtime
                    .spawn(tracking::run(shared.clone(), changes))
                    .abort_handle(),
            ),
            _ => None,
        };
        Ok(Cached { shared, task })
    }
}

/// Where invalidations come from.
enum Source {
    Channel(crate::backend::pubsub::Subscription),
    Tracking(crate::backend::watch::KeyChanges),
}

/// A random identity for this instance's messages.
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}
