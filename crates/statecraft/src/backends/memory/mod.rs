//! [`MemoryBackend`]: a concurrent in-process map with TTL.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::capabilities::Capabilities;
use crate::backend::clock::{expiry_after, Clock, SystemClock};
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::limits::Limits;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::StateBackend;
use crate::raw::counter::apply_increment;
use crate::raw::recorder::StatsRecorder;

mod atomic;
mod pubsub;

use self::pubsub::Hub;

const NAME: &str = "memory";
const DEFAULT_PUBSUB_CAPACITY: usize = 4096;

/// The hasher of the map: fast on short keys and randomly seeded per map.
pub type MemoryHasher = foldhash::fast::RandomState;

/// The concurrent map the memory backend wraps, exposed for benchmarks that
/// compare against it.
pub type RawMemoryMap = DashMap<Box<[u8]>, Entry, MemoryHasher>;

/// A stored value and its absolute expiry (milliseconds since the Unix epoch,
/// `0` for never).
#[derive(Debug, Clone)]
pub struct Entry {
    value: Bytes,
    expires_at: u64,
}

impl Entry {
    #[inline]
    fn is_live(&self, clock: &dyn Clock) -> bool {
        self.expires_at == 0 || clock.now_millis() < self.expires_at
    }

    /// The stored value.
    pub fn value(&self) -> &Bytes {
        &self.value
    }
}

/// An in-process backend: a sharded concurrent hash map (DashMap) with lazy
/// expiry on read and an optional background sweeper.
///
/// Operations never wait, so they complete without allocating a future.
/// Dropping the backend stops its sweeper.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{MemoryBackend, StateBackend};
/// let backend = MemoryBackend::new();
/// backend.put(b"greeting", "hello".into()).await?;
/// assert_eq!(backend.get(b"greeting").await?.as_deref(), Some(&b"hello"[..]));
/// # Ok(()) }
/// ```
///
/// Clones share the same entries and the same in-process pub/sub: a message
/// published through one clone reaches the subscribers of every clone.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
    _sweeper: Option<Arc<crate::backends::sweeper::Sweeper>>,
}

#[derive(Debug)]
struct Inner {
    map: RawMemoryMap,
    default_ttl: Option<Duration>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    stats: StatsRecorder,
    hub: Hub,
}

/// Configures a [`MemoryBackend`].
#[derive(Debug, Clone)]
pub struct MemoryBackendBuilder {
    capacity: usize,
    shards: usize,
    default_ttl: Option<Duration>,
    sweep_interval: Option<Duration>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    pubsub_capacity: usize,
}

impl Default for MemoryBackendBuilder {
    fn default() -> Self {
        MemoryBackendBuilder {
            capacity: 0,
            shards: 64,
            default_ttl: None,
            sweep_interval: Some(Duration::from_secs(1)),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            pubsub_capacity: DEFAULT_PUBSUB_CAPACITY,
        }
    }
}

impl MemoryBackendBuilder {
    /// Preallocates room for `capacity` entries.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The number of lock shards (rounded up to a power of two, at least 2).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(2).next_power_of_two();
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often the background sweeper removes expired entries; `None`
    /// disables it (expired entries are then only dropped when read or by
    /// [`MemoryBackend::sweep_expired`]).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// The clock used for TTLs (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How many published messages a subscription may hold undelivered
    /// (default 4,096). A subscriber that falls further behind has its
    /// subscription ended with an error item, as a lost connection would.
    pub fn pubsub_capacity(mut self, capacity: usize) -> Self {
        self.pubsub_capacity = capacity;
        self
    }

    /// Builds the backend and starts its sweeper thread, if any.
    pub fn build(self) -> MemoryBackend {
        let map = DashMap::with_capacity_and_hasher_and_shard_amount(
            self.capacity,
            MemoryHasher::default(),
            self.shards,
        );
        let inner = Arc::new(Inner {
            map,
            default_ttl: self.default_ttl,
            clock: self.clock,
            limits: self.limits,
            stats: StatsRecorder::new(),
            hub: Hub::new(self.pubsub_capacity),
        });
        let sweeper = self.sweep_interval.and_then(|interval| {
            crate::backends::sweeper::spawn(
                NAME,
                Arc::downgrade(&inner),
                interval,
                |inner: &Inner| {
                    inner.sweep();
                },
            )
        });
        MemoryBackend {
            inner,
            _sweeper: sweeper.map(Arc::new),
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend with default settings: no default TTL, sweeping every second.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A backend with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::builder().capacity(capacity).build()
    }

    /// A builder for a configured backend.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder::default()
    }

    /// Removes every expired entry now; returns how many it removed.
    pub fn sweep_expired(&self) -> usize {
        self.inner.sweep()
    }

    /// The number of entries held, expired ones not yet swept included.
    pub fn raw_len(&self) -> usize {
        self.inner.map.len()
    }
}

impl Inner {
    fn sweep(&self) -> usize {
        let now = self.clock.now_millis();
        let before = self.map.len();
        self.map
            .retain(|_, entry| entry.expires_at == 0 || now < entry.expires_at);
        before.saturating_sub(self.map.len())
    }

    #[inline]
    fn expiry(&self, options: PutOptions) -> u64 {
        match options.resolve_ttl(self.default_ttl) {
            Some(ttl) => expiry_after(self.clock.now_millis(), ttl),
            None => 0,
        }
    }

    #[inline]
    fn live_value(&self, key: &[u8]) -> Option<Bytes> {
        let entry = self.map.get(key)?;
        if entry.is_live(&*self.clock) {
            return Some(entry.value.clone());
        }
        drop(entry);
        self.remove_if_expired(key);
        None
    }

    fn remove_if_expired(&self, key: &[u8]) {
        let clock = &*self.clock;
        self.map.remove_if(key, |_, entry| !entry.is_live(clock));
    }

    fn put(&self, key: &[u8], value: Bytes, options: PutOptions) -> Result<()> {
        self.limits.check_entry(NAME, Operation::Put, key, &value)?;
        let entry = Entry {
            value,
            expires_at: self.expiry(options),
        };
        match self.map.get_mut(key) {
            Some(mut slot) => *slot = entry,
            None => {
                self.map.insert(key.into(), entry);
            }
        }
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        self.limits.check_key(NAME, Operation::Delete, key)?;
        Ok(self
            .map
            .remove(key)
            .is_some_and(|(_, entry)| entry.is_live(&*self.clock)))
    }

    fn ttl(&self, key: &[u8]) -> Result<KeyTtl> {
        self.limits.check_key(NAME, Operation::Ttl, key)?;
        Ok(match self.map.get(key) {
            Some(entry) => self.left(&entry),
            None => KeyTtl::Missing,
        })
    }

    fn get_with_ttl(&self, key: &[u8]) -> Result<Option<(Bytes, KeyTtl)>> {
        self.limits.check_key(NAME, Operation::GetWithTtl, key)?;
        let Some(entry) = self.map.get(key) else {
            return Ok(None);
        };
        Ok(match self.left(&entry) {
            KeyTtl::Missing => None,
            ttl => Some((entry.value.clone(), ttl)),
        })
    }

    /// The time `entry` has left.
    fn left(&self, entry: &Entry) -> KeyTtl {
        if entry.expires_at == 0 {
            return KeyTtl::Persistent;
        }
        let now = self.clock.now_millis();
        if now < entry.expires_at {
            KeyTtl::ExpiresIn(Duration::from_millis(entry.expires_at - now))
        } else {
            KeyTtl::Missing
        }
    }

    fn list_page(&self, prefix: &[u8], cursor: Option<&[u8]>, limit: usize) -> Result<KeyPage> {
        self.limits.check_key(NAME, Operation::ListKeys, prefix)?;
        if limit == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a page limit must be at least 1",
            )
            .context(NAME, Operation::ListKeys));
        }
        let now = self.clock.now_millis();
        // Keep the `limit` smallest matching keys after the cursor (a max-heap
        // whose top is the largest kept key).
        let mut smallest: BinaryHeap<Box<[u8]>> = BinaryHeap::with_capacity(limit.min(1024));
        let mut more = false;
        for item in self.map.iter() {
            let key = item.key();
            let live = item.expires_at == 0 || now < item.expires_at;
            if !live || !key.starts_with(prefix) || cursor.is_some_and(|c| &key[..] <= c) {
                continue;
            }
            if smallest.len() < limit {
                smallest.push(key.clone());
            } else if smallest.peek().is_some_and(|top| key < top) {
                smallest.pop();
                smallest.push(key.clone());
                more = true;
            } else {
                more = true;
            }
        }
        let keys: Vec<Bytes> = smallest
            .into_sorted_vec()
            .into_iter()
            .map(Bytes::from)
            .collect();
        let next = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, next })
    }

    fn count(&self) -> u64 {
        let now = self.clock.now_millis();
        self.map
            .iter()
            .filter(|item| item.expires_at == 0 || now < item.expires_at)
            .count() as u64
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> Result<CasOutcome> {
        match &new {
            Some(value) => self
                .limits
                .check_entry(NAME, Operation::CompareAndSwap, key, value)?,
            None => self
                .limits
                .check_key(NAME, Operation::CompareAndSwap, key)?,
        }
        let clock = &*self.clock;
        let expires_at = self.expiry(options);
        match self.map.entry(key.into()) {
            dashmap::Entry::Occupied(mut slot) => {
                let current = slot.get().is_live(clock).then(|| slot.get().value.clone());
                if current.as_deref() != expected {
                    if current.is_none() {
                        slot.remove();
                    }
                    return Ok(CasOutcome::Conflict(current));
                }
                match new {
                    Some(value) => {
                        slot.insert(Entry { value, expires_at });
                    }
                    None => {
                        slot.remove();
                    }
                }
                Ok(CasOutcome::Swapped)
            }
            dashmap::Entry::Vacant(slot) => {
                if expected.is_some() {
                    return Ok(CasOutcome::Conflict(None));
                }
                if let Some(value) = new {
                    slot.insert(Entry { value, expires_at });
                }
                Ok(CasOutcome::Swapped)
            }
        }
    }

    fn increment(&self, key: &[u8], delta: i64, options: PutOptions) -> Result<i64> {
        self.limits.check_key(NAME, Operation::Increment, key)?;
        let clock = &*self.clock;
        let context = |err: Error| err.with_key(key).context(NAME, Operation::Increment);
        if let Some(mut slot) = self.map.get_mut(key) {
            if slot.is_live(clock) {
                let next = apply_increment(&slot.value, delta).map_err(context)?;
                slot.value = Bytes::from(next.to_string());
                return Ok(next);
            }
        }
        let expires_at = self.expiry(options);
        let mut slot = self.map.entry(key.into()).or_insert_with(|| Entry {
            value: Bytes::from_static(b"0"),
            expires_at,
        });
        if !slot.is_live(clock) {
            *slot = Entry {
                value: Bytes::from_static(b"0"),
                expires_at,
            };
        }
        let next = apply_increment(&slot.value, delta).map_err(context)?;
        slot.value = Bytes::from(next.to_string());
        Ok(next)
    }
}

impl StateBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_native_ttl(true)
            .with_ordered_listing(true)
            .with_pubsub(true)
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        let timer = inner.stats.start();
        let result = inner
            .limits
            .check_key(NAME, Operation::Get, key)
            .map(|()| inner.live_value(key));
        StateFuture::ready(inner.stats.read(timer, result))
    }

    #[inline]
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let timer = self.inner.stats.start();
        let result = self.inner.put(key, value, options);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.write(timer, self.inner.delete(key)))
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.get_with_ttl(key)))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.read(timer, self.inner.ttl(key)))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        let timer = inner.stats.start();
        let result = inner
            .limits
            .check_key(NAME, Operation::Contains, key)
            .map(|()| inner.live_value(key).map(|_| ()));
        StateFuture::ready(inner.stats.read(timer, result).map(|found| found.is_some()))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let timer = self.inner.stats.start();
        let result = self.inner.list_page(prefix, cursor, limit);
        StateFuture::ready(self.inner.stats.scan(timer, result))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        let timer = self.inner.stats.start();
        StateFuture::ready(self.inner.stats.scan(timer, Ok(self.inner.count())))
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        let timer = self.inner.stats.start();
        self.inner.map.clear();
        StateFuture::ready(self.inner.stats.write(timer, Ok(())))
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        let result = keys
            .iter()
            .map(|key| {
                let timer = inner.stats.start();
                let value = inner
                    .limits
                    .check_key(NAME, Operation::BatchGet, key)
                    .map(|()| inner.live_value(key));
                inner.stats.read(timer, value)
            })
            .collect();
        StateFuture::ready(result)
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        // Validate everything first so that a bad entry writes nothing.
        for (key, value) in &entries {
            if let Err(err) = inner
                .limits
                .check_entry(NAME, Operation::BatchPut, key, value)
            {
                return StateFuture::ready(Err(err));
            }
        }
        let timer = inner.stats.start();
        for (key, value) in entries {
            if let Err(err) = inner.put(&key, value, options) {
                return StateFuture::ready(inner.stats.write(timer, Err(err)));
            }
        }
        StateFuture::ready(inner.stats.write(timer, Ok(())))
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let timer = self.inner.stats.start();
        let result = keys.iter().try_fold(0u64, |removed, key| {
            Ok(removed + u64::from(self.inner.delete(key)?))
        });
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        let timer = self.inner.stats.start();
        let result = self
            .inner
            .compare_and_swap(key, None, Some(value), options)
            .map(|outcome| outcome.is_swapped());
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        let timer = inner.stats.start();
        let result = inner
            .limits
            .check_key(NAME, Operation::GetAndDelete, key)
            .map(|()| {
                inner
                    .map
                    .remove(key)
                    .filter(|(_, entry)| entry.is_live(&*inner.clock))
                    .map(|(_, entry)| entry.value)
            });
        StateFuture::ready(inner.stats.read(timer, result))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let timer = self.inner.stats.start();
        let result = self.inner.compare_and_swap(key, expected, new, options);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        let timer = self.inner.stats.start();
        let result = self.inner.update_atomic(key, update, input);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        let timer = self.inner.stats.start();
        let result = self.inner.increment(key, delta, options);
        StateFuture::ready(self.inner.stats.write(timer, result))
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let started = Instant::now();
        let _ = self.inner.map.get(&b""[..]).is_some();
        StateFuture::ready(Ok(HealthReport::new(NAME, started.elapsed())))
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let mut stats = self.inner.stats.snapshot(NAME);
        stats
            .details
            .insert("entries".into(), self.inner.map.len() as u64);
        StateFuture::ready(Ok(stats))
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        StateFuture::ready(self.inner.hub.publish(channel, payload).map(drop))
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        StateFuture::ready(self.inner.hub.subscribe(channel))
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        StateFuture::ready(match task {
            MaintenanceTask::PurgeExpired => Ok(self.inner.sweep() as u64),
            _ => Err(Error::unsupported(NAME, Operation::Maintenance)),
        })
    }
}
