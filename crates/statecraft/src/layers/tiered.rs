//! [`Tiered`]: L1/L2/…/Ln over any backends, the last one authoritative.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::capabilities::Capabilities;
use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::{Transaction, TransactionWrite};
use crate::backend::StateBackend;
use crate::layers::stripes::{Mark, Stripes};
use crate::raw::recorder::{Found, StatsRecorder};

const WRITE_LOCKS: usize = 1024;

struct Tier {
    backend: Arc<dyn StateBackend>,
    /// The longest an entry lives here (`None`: the last tier, as written).
    ttl: Option<Duration>,
    /// Reads skip this tier until then (clock ms): a write to it failed, so
    /// it may hold an older value for up to its TTL.
    suspect_until: AtomicU64,
    hits: AtomicU64,
    errors: AtomicU64,
}

/// Tiers of backends, itself a [`StateBackend`]: reads go down the tiers
/// and a hit in a lower tier is copied into the tiers above it, each with
/// its own TTL (never past the time the value has left below: cascading
/// TTLs); writes go to the last tier first, then through to every tier
/// above; deletes and the atomic operations go to the last tier and drop
/// the key from the tiers above.
///
/// # Consistency
///
/// The last tier decides. An upper tier holds a copy for at most its TTL;
/// a copy read before a write through this `Tiered` is never kept after
/// that write (fills check the key's invalidation counter, as `Cached`
/// does). Writes that bypass this instance (another process writing the
/// last tier) are seen once the upper copies expire: give the upper tiers
/// short TTLs, or put a [`Cached`](crate::Cached) with cross-instance
/// invalidation on top.
///
/// A tier that fails a read is skipped for that read and counted
/// (`tier{i}_errors`); one that fails a write or an invalidation may hold
/// an older value, so reads skip it for its TTL. A failing last tier is an
/// error: nothing above it answers in its place.
///
/// Writes to one key through one `Tiered` take turns (a lock per key
/// slot), so that the upper tiers end up as the last tier did.
///
/// `get_with_ttl` and `ttl` read the last tier (the TTL there is the real
/// one); listing, counting, pub/sub, transactions and maintenance go to it.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use std::time::Duration;
/// use statecraft::{MemoryBackend, StateBackend, Tiered};
///
/// let l1 = MemoryBackend::new();
/// let l3 = MemoryBackend::new();
/// let tiers = Tiered::builder()
///     .tier(l1.clone(), Duration::from_secs(10))
///     .last(l3.clone())
///     .build()?;
/// l3.put(b"k", "v".into()).await?;
/// assert_eq!(tiers.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// assert_eq!(l1.get(b"k").await?.as_deref(), Some(&b"v"[..]), "promoted");
/// # Ok(()) }
/// ```
pub struct Tiered {
    tiers: Vec<Tier>,
    stripes: Stripes,
    /// Writes to the same key through this instance take turns, so that
    /// the upper tiers see them in the order the last tier did.
    locks: Box<[tokio::sync::Mutex<()>]>,
    /// Bumped by `clear`: fills that started before it are not kept.
    generation: AtomicU64,
    clock: Arc<dyn Clock>,
    stats: StatsRecorder,
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers: Vec<&str> = self.tiers.iter().map(|t| t.backend.name()).collect();
        f.debug_struct("Tiered")
            .field("tiers", &tiers)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Tiered`]; see [`Tiered::builder`].
#[derive(Default)]
pub struct TieredBuilder {
    upper: Vec<(Arc<dyn StateBackend>, Duration)>,
    last: Option<Arc<dyn StateBackend>>,
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for TieredBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredBuilder")
            .field("upper", &self.upper.len())
            .field("last", &self.last.as_ref().map(|b| b.name()))
            .finish()
    }
}

impl TieredBuilder {
    /// Adds an upper tier (nearest first) whose copies live at most `ttl`.
    pub fn tier(self, backend: impl StateBackend + 'static, ttl: Duration) -> Self {
        self.shared_tier(Arc::new(backend), ttl)
    }

    /// Adds a shared upper tier whose copies live at most `ttl`.
    pub fn shared_tier(mut self, backend: Arc<dyn StateBackend>, ttl: Duration) -> Self {
        self.upper.push((backend, ttl));
        self
    }

    /// Sets the last, authoritative tier.
    pub fn last(self, backend: impl StateBackend + 'static) -> Self {
        self.shared_last(Arc::new(backend))
    }

    /// Sets a shared last tier.
    pub fn shared_last(mut self, backend: Arc<dyn StateBackend>) -> Self {
        self.last = Some(backend);
        self
    }

    /// The clock that times how long a tier that missed a write is skipped
    /// (default [`MonotonicClock`]); tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The tiers.
    pub fn build(self) -> Result<Tiered> {
        let invalid =
            |what: &str| Error::new(ErrorKind::InvalidArgument, format!("Tiered: {what}"));
        let Some(last) = self.last else {
            return Err(invalid("a last tier is needed"));
        };
        if self.upper.iter().any(|(_, ttl)| ttl.is_zero()) {
            return Err(invalid("an upper tier's TTL must be positive"));
        }
        let tier = |backend: Arc<dyn StateBackend>, ttl: Option<Duration>| Tier {
            backend,
            ttl,
            suspect_until: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        };
        let mut tiers: Vec<Tier> = self
            .upper
            .into_iter()
            .map(|(backend, ttl)| tier(backend, Some(ttl)))
            .collect();
        tiers.push(tier(last, None));
        Ok(Tiered {
            tiers,
            stripes: Stripes::new(),
            locks: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            generation: AtomicU64::new(0),
            clock: self
                .clock
                .unwrap_or_else(|| Arc::new(MonotonicClock::new())),
            stats: StatsRecorder::new(),
        })
    }
}

/// A write whose future was dropped after it may have reached the last
/// tier: its keys' fills are invalidated and every upper tier, which may
/// now hold an older copy, is skipped for its TTL.
struct Unsettled<'t, 'k> {
    tiers: &'t Tiered,
    keys: &'k [&'k [u8]],
    armed: bool,
}

impl Drop for Unsettled<'_, '_> {
    fn drop(&mut self) {
        if self.armed {
            for key in self.keys {
                self.tiers.stripes.bump(key);
            }
            for tier in self.tiers.upper() {
                self.tiers.suspect(tier);
            }
        }
    }
}

/// A promotion dropped while storing its copy: the copy was never checked
/// against invalidations, so the tier is skipped for its TTL.
struct UncheckedCopy<'t> {
    tiers: &'t Tiered,
    tier: &'t Tier,
    armed: bool,
}

impl Drop for UncheckedCopy<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.tiers.suspect(self.tier);
        }
    }
}

/// Where a fill stood when it started.
#[derive(Clone, Copy)]
struct Token {
    generation: u64,
    mark: Mark,
}

impl Tiered {
    /// Starts building tiers.
    pub fn builder() -> TieredBuilder {
        TieredBuilder::default()
    }

    fn last(&self) -> &dyn StateBackend {
        // `build` always pushes the last tier.
        &*self.tiers[self.tiers.len() - 1].backend
    }

    fn upper(&self) -> &[Tier] {
        &self.tiers[..self.tiers.len() - 1]
    }

    /// Takes the write turns of `keys` (in slot order: no deadlock).
    async fn turns(&self, keys: &[&[u8]]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut slots: Vec<usize> = keys
            .iter()
            .map(|key| self.stripes.slot(key, WRITE_LOCKS))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let mut guards = Vec::with_capacity(slots.len());
        for slot in slots {
            guards.push(self.locks[slot].lock().await);
        }
        guards
    }

    /// Runs `work` on the last tier with the write turns of `keys`, then
    /// drops the keys from the upper tiers (or, with `copy`, writes the
    /// value through when `work` succeeded and its TTL is known here: a
    /// put that leaves the TTL to the last tier's default is dropped from
    /// the upper tiers instead).
    async fn written<T, F>(
        &self,
        keys: &[&[u8]],
        copy: Option<(&Bytes, PutOptions)>,
        work: impl FnOnce() -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let _turns = self.turns(keys).await;
        let mut unsettled = Unsettled {
            tiers: self,
            keys,
            armed: true,
        };
        let result = work().await;
        let copy = copy
            .filter(|(_, options)| result.is_ok() && (options.ttl.is_some() || options.no_expiry));
        self.through(keys, copy).await;
        unsettled.armed = false;
        result
    }

    fn token(&self, key: &[u8]) -> Token {
        Token {
            generation: self.generation.load(Ordering::SeqCst),
            mark: self.stripes.mark(key),
        }
    }

    fn unchanged(&self, token: Token) -> bool {
        self.generation.load(Ordering::SeqCst) == token.generation
            && self.stripes.unchanged(token.mark)
    }

    fn suspect(&self, tier: &Tier) {
        tier.errors.fetch_add(1, Ordering::Relaxed);
        let ttl = tier
            .ttl
            .map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let until = self.clock.now_millis().saturating_add(ttl);
        tier.suspect_until.fetch_max(until, Ordering::SeqCst);
        tracing::warn!(
            backend = tier.backend.name(),
            "tier failed a write; reads skip it until its copies have expired"
        );
    }

    fn readable(&self, tier: &Tier) -> bool {
        tier.suspect_until.load(Ordering::SeqCst) <= self.clock.now_millis()
    }

    /// The options a copy in `tier` gets for a value with `left` to live.
    fn copy_options(tier: &Tier, left: Option<Duration>) -> Option<PutOptions> {
        let cap = tier.ttl?;
        let ttl = left.map_or(cap, |left| left.min(cap));
        (!ttl.is_zero()).then(|| PutOptions::new().ttl(ttl))
    }

    /// Copies `value` into the tiers above `found_at`, unless an
    /// invalidation raced the read that found it.
    async fn promote(&self, key: &[u8], value: &Bytes, ttl: KeyTtl, found_at: usize, token: Token) {
        let left = match ttl {
            KeyTtl::ExpiresIn(left) => Some(left),
            KeyTtl::Persistent => None,
            KeyTtl::Missing => return,
        };
        for tier in &self.tiers[..found_at] {
            if !self.unchanged(token) {
                return;
            }
            let Some(options) = Self::copy_options(tier, left) else {
                continue;
            };
            let mut unchecked = UncheckedCopy {
                tiers: self,
                tier,
                armed: true,
            };
            let stored = tier.backend.put_with(key, value.clone(), options).await;
            unchecked.armed = false;
            if stored.is_err() {
                self.suspect(tier);
                continue;
            }
            if !self.unchanged(token) && tier.backend.delete(key).await.is_err() {
                self.suspect(tier);
            }
        }
    }

    /// The value of `key`, read down the tiers.
    async fn read(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let token = self.token(key);
        for (index, tier) in self.upper().iter().enumerate() {
            if !self.readable(tier) {
                continue;
            }
            match tier.backend.get_with_ttl(key).await {
                Ok(Some((value, ttl))) => {
                    tier.hits.fetch_add(1, Ordering::Relaxed);
                    self.promote(key, &value, ttl, index, token).await;
                    return Ok(Some(value));
                }
                Ok(None) => {}
                Err(err)
                    if err.kind() == ErrorKind::KeyTooLarge
                        || err.kind() == ErrorKind::InvalidKey =>
                {
                    // The last tier judges the key.
                }
                Err(err) => {
                    tier.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(backend = tier.backend.name(), error = %err, "tier skipped on a read");
                }
            }
        }
        let last = self.tiers.len() - 1;
        let found = self.last().get_with_ttl(key).await?;
        self.tiers[last]
            .hits
            .fetch_add(u64::from(found.is_some()), Ordering::Relaxed);
        Ok(match found {
            Some((value, ttl)) => {
                self.promote(key, &value, ttl, last, token).await;
                Some(value)
            }
            None => None,
        })
    }

    /// After a write of `keys` to the last tier (whatever its outcome):
    /// `copy` (for a successful put) writes the value through to the upper
    /// tiers, otherwise the keys are dropped from them.
    ///
    /// Tiers are updated from the one nearest the last upwards, and every
    /// fill that started before a tier's update is invalidated just before
    /// it, so that a read that found the older value in a tier not yet
    /// updated cannot keep it in a tier above.
    async fn through(&self, keys: &[&[u8]], copy: Option<(&Bytes, PutOptions)>) {
        for tier in self.upper().iter().rev() {
            for key in keys {
                self.stripes.bump(key);
            }
            for key in keys {
                let done = match copy {
                    Some((value, options)) => match Self::copy_options(tier, options.ttl) {
                        Some(options) => tier.backend.put_with(key, value.clone(), options).await,
                        None => tier.backend.delete(key).await.map(drop),
                    },
                    None => tier.backend.delete(key).await.map(drop),
                };
                if done.is_err() {
                    self.suspect(tier);
                }
            }
        }
    }

    fn counted<'a, T: Send + 'a>(
        &'a self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'a,
        count: fn(&StatsRecorder, crate::raw::recorder::Timer, Result<T>) -> Result<T>,
    ) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move { count(&self.stats, timer, work.await) })
    }

    fn write<'a, T: Send + 'a>(
        &'a self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'a,
    ) -> StateFuture<'a, T> {
        self.counted(work, StatsRecorder::write)
    }

    fn read_counted<'a, T: Found + Send + 'a>(
        &'a self,
        work: impl std::future::Future<Output = Result<T>> + Send + 'a,
    ) -> StateFuture<'a, T> {
        self.counted(work, StatsRecorder::read)
    }
}

impl StateBackend for Tiered {
    fn name(&self) -> &'static str {
        "tiered"
    }

    fn capabilities(&self) -> Capabilities {
        // A change the last tier reports may still be served by an upper
        // tier: no watch through the stack.
        self.last().capabilities().with_key_tracking(false)
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.read_counted(self.read(key))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.read_counted(async move { Ok(self.read(key).await?.is_some()) })
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        self.read_counted(self.last().get_with_ttl(key))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.read_counted(self.last().ttl(key))
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        self.read_counted(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.read(key).await?);
            }
            Ok(values)
        })
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.write(async move {
            let work = || self.last().put_with(key, value.clone(), options);
            self.written(&[key], Some((&value, options)), work).await
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.write(async move { self.written(&[key], None, || self.last().delete(key)).await })
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.write(async move {
            let keys: Vec<Bytes> = entries.iter().map(|(key, _)| key.clone()).collect();
            let keys: Vec<&[u8]> = keys.iter().map(|key| &key[..]).collect();
            self.written(&keys, None, || self.last().batch_put(entries, options))
                .await
        })
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        self.write(async move {
            let names: Vec<&[u8]> = keys.iter().map(|key| &key[..]).collect();
            self.written(&names, None, || self.last().batch_delete(keys))
                .await
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        let work = move || self.last().set_if_not_exists(key, value, options);
        self.write(async move { self.written(&[key], None, work).await })
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.read_counted(async move {
            self.written(&[key], None, || self.last().get_and_delete(key))
                .await
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let work = move || self.last().compare_and_swap(key, expected, new, options);
        self.write(async move { self.written(&[key], None, work).await })
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        self.write(async move {
            self.written(&[key], None, || self.last().increment(key, delta, options))
                .await
        })
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        if update.reads_only(input) {
            // The last tier holds the truth and the upper tiers nothing of it.
            return self.last().update_atomic(key, update, input);
        }
        self.write(async move {
            self.written(&[key], None, || {
                self.last().update_atomic(key, update, input)
            })
            .await
        })
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        self.write(async move {
            let keys: Vec<Bytes> = transaction
                .writes()
                .iter()
                .map(|write| match write {
                    TransactionWrite::Put { key, .. } | TransactionWrite::Delete { key } => {
                        key.clone()
                    }
                })
                .collect();
            let keys: Vec<&[u8]> = keys.iter().map(|key| &key[..]).collect();
            self.written(&keys, None, || self.last().transaction(transaction))
                .await
        })
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        self.write(async move {
            // Every write turn, in order: no write goes through meanwhile.
            let mut turns = Vec::with_capacity(self.locks.len());
            for lock in self.locks.iter() {
                turns.push(lock.lock().await);
            }
            let result = self.last().clear().await;
            for tier in self.upper().iter().rev() {
                self.generation.fetch_add(1, Ordering::SeqCst);
                if tier.backend.clear().await.is_err() {
                    self.suspect(tier);
                }
            }
            result
        })
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.counted(
            self.last().list_keys_page(prefix, cursor, limit),
            StatsRecorder::scan,
        )
    }

    fn count(&self) -> StateFuture<'_, u64> {
        self.counted(self.last().count(), StatsRecorder::scan)
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.last().health_check()
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        StateFuture::new(async move {
            let mut stats = self.stats.snapshot("tiered");
            let now = self.clock.now_millis();
            for (index, tier) in self.tiers.iter().enumerate() {
                let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
                stats
                    .details
                    .insert(format!("tier{index}_hits"), load(&tier.hits));
                stats
                    .details
                    .insert(format!("tier{index}_errors"), load(&tier.errors));
                let suspect = tier.suspect_until.load(Ordering::SeqCst) > now;
                stats
                    .details
                    .insert(format!("tier{index}_skipped"), u64::from(suspect));
            }
            Ok(stats)
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.last().publish(channel, payload)
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        self.last().subscribe(channel)
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        self.last().maintain(task)
    }
}
