//! The L1 of [`Cached`](super::Cached): a quick_cache S3-FIFO cache of
//! values (and, optionally, of absences) with per-entry expiry, and the
//! generation counters that keep a fill racing an invalidation from
//! leaving a stale entry behind.
//!
//! Every fill takes a [`Token`] before it reads the store, inserts, then
//! checks the token again and removes what it inserted if the token moved.
//! Every invalidation first moves the token (a per-key stripe counter, or
//! the global generation for "everything"), then removes. Whichever order
//! the two interleave in, no entry read before an invalidation survives it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use crate::backend::clock::Clock;
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::KeyTtl;
use crate::layers::stripes::{Mark, Stripes};
use crate::raw::recorder::{Outcome, StatsRecorder};

/// What an entry weighs on top of its key and value bytes when the cache is
/// bounded by bytes (the slot, the index and the allocator's rounding).
const ENTRY_OVERHEAD: u64 = 64;

/// One cached key: its value (`None`: known absent) and when it stops
/// being served.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) value: Option<Bytes>,
    /// When L1 stops serving it, in clock milliseconds.
    expires_at: u64,
    /// When the store expires it (0: never), for `get_with_ttl`.
    store_expires_at: u64,
    /// Last use, for time-to-idle.
    touched: Option<Arc<AtomicU64>>,
}

impl Slot {
    /// What `get_with_ttl` reports for this entry at `now`.
    pub(super) fn ttl_at(&self, now: u64) -> KeyTtl {
        match self.store_expires_at {
            0 => KeyTtl::Persistent,
            at => KeyTtl::ExpiresIn(Duration::from_millis(at.saturating_sub(now))),
        }
    }
}

#[derive(Clone)]
struct Weigh {
    by_bytes: bool,
}

impl Weighter<Bytes, Slot> for Weigh {
    #[inline]
    fn weight(&self, key: &Bytes, slot: &Slot) -> u64 {
        if self.by_bytes {
            let value = slot.value.as_ref().map_or(0, Bytes::len);
            (key.len() + value) as u64 + ENTRY_OVERHEAD
        } else {
            1
        }
    }
}

/// Counts evictions (entries pushed out for room, not removed by us).
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Bytes, Slot> for Evictions {
    type RequestState = ();

    #[inline]
    fn begin_request(&self) {}

    #[inline]
    fn on_evict(&self, _state: &mut (), _key: Bytes, _slot: Slot) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The size bound and lifetimes of an L1.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) max_entries: u64,
    pub(super) max_bytes: Option<u64>,
    pub(super) ttl: Duration,
    pub(super) time_to_idle: Option<Duration>,
    pub(super) cache_misses: bool,
}

/// Where a fill stood when it started; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Token {
    generation: u64,
    mark: Mark,
    /// The clock before the read: a store TTL counts from here.
    started: u64,
}

/// The L1 store.
pub(super) struct L1 {
    cache: quick_cache::sync::Cache<Bytes, Slot, Weigh, DefaultHashBuilder, Evictions>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    tti_ms: Option<u64>,
    cache_misses: bool,
    /// Odd while L1 is not serving (its subscription is down).
    generation: AtomicU64,
    stripes: Stripes,
    evictions: Evictions,
    /// Hits and misses, striped per thread (the hit path is shared).
    counts: StatsRecorder,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl L1 {
    /// An empty L1, serving unless `serving` is false.
    pub(super) fn new(bounds: Bounds, clock: Arc<dyn Clock>, serving: bool) -> Result<Self> {
        let invalid = |what: &str| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("Cached: {what} must be at least 1"),
            )
        };
        if bounds.max_entries == 0 {
            return Err(invalid("max_entries"));
        }
        if bounds.max_bytes == Some(0) {
            return Err(invalid("max_bytes"));
        }
        if bounds.ttl.is_zero() {
            return Err(invalid("the L1 TTL (in milliseconds)"));
        }
        // quick_cache sizes its table for the estimate up front.
        let items = usize::try_from(bounds.max_entries.min(1 << 20)).unwrap_or(1 << 20);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(bounds.max_bytes.unwrap_or(bounds.max_entries))
            .build()
            .map_err(|err| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("Cached: invalid cache size: {err:?}"),
                )
            })?;
        let evictions = Evictions::default();
        let weigh = Weigh {
            by_bytes: bounds.max_bytes.is_some(),
        };
        Ok(L1 {
            cache: quick_cache::sync::Cache::with_options(
                options,
                weigh,
                DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            clock,
            ttl_ms: millis(bounds.ttl).max(1),
            tti_ms: bounds.time_to_idle.map(|tti| millis(tti).max(1)),
            cache_misses: bounds.cache_misses,
            generation: AtomicU64::new(if serving { 0 } else { 1 }),
            stripes: Stripes::new(),
            evictions,
            counts: StatsRecorder::new(),
        })
    }

    /// The clock's time now.
    #[inline]
    pub(super) fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    /// The live entry for `key`, if L1 is serving and holds one.
    #[inline]
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Slot> {
        if self.generation.load(Ordering::Acquire) & 1 == 1 {
            return None;
        }
        let Some(slot) = self.cache.get(key) else {
            self.counts.count(Outcome::Miss);
            return None;
        };
        let now = self.now();
        let idle = slot.touched.as_ref().is_some_and(|touched| {
            let last = touched.load(Ordering::Relaxed);
            if last != now {
                touched.store(now, Ordering::Relaxed);
            }
            self.tti_ms
                .is_some_and(|tti| now.saturating_sub(last) >= tti)
        });
        if now >= slot.expires_at || idle {
            self.cache.remove(key);
            self.counts.count(Outcome::Miss);
            return None;
        }
        self.counts.count(Outcome::Hit);
        Some(slot)
    }

    /// Takes the token a fill of `key` checks before it keeps what it read.
    pub(super) fn token(&self, key: &[u8]) -> Token {
        Token {
            generation: self.generation.load(Ordering::SeqCst),
            mark: self.stripes.mark(key),
            started: self.now(),
        }
    }

    fn still(&self, token: Token) -> bool {
        self.generation.load(Ordering::SeqCst) == token.generation
            && self.stripes.unchanged(token.mark)
    }

    /// Keeps what a read that took `token` found for `key`: `found` is the
    /// value with the time the store gives it, `None` for an absent key.
    pub(super) fn fill(&self, key: &[u8], token: Token, found: Option<(Bytes, KeyTtl)>) {
        if token.generation & 1 == 1 || !self.still(token) {
            return;
        }
        let now = self.now();
        let mut expires_at = now.saturating_add(self.ttl_ms);
        let (value, store_expires_at) = match found {
            None if !self.cache_misses => return,
            None => (None, 0),
            Some((_, KeyTtl::Missing)) => return,
            Some((value, KeyTtl::Persistent)) => (Some(value), 0),
            Some((value, KeyTtl::ExpiresIn(left))) => {
                // From before the read: never later than the store's expiry.
                let at = token.started.saturating_add(millis(left));
                expires_at = expires_at.min(at);
                (Some(value), at)
            }
        };
        if expires_at <= now {
            return;
        }
        let slot = Slot {
            value,
            expires_at,
            store_expires_at,
            touched: self.tti_ms.map(|_| Arc::new(AtomicU64::new(now))),
        };
        self.cache.insert(Bytes::copy_from_slice(key), slot);
        if !self.still(token) {
            self.cache.remove(key);
        }
    }

    /// Drops `key`, and any fill of it that started before now.
    pub(super) fn invalidate(&self, key: &[u8]) {
        self.stripes.bump(key);
        self.cache.remove(key);
    }

    /// Drops everything, and every fill that started before now.
    pub(super) fn invalidate_all(&self) {
        self.generation.fetch_add(2, Ordering::SeqCst);
        self.cache.clear();
    }

    /// Stops serving and drops everything (the subscription is down).
    pub(super) fn suspend(&self) {
        if self.generation.load(Ordering::SeqCst) & 1 == 0 {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.clear();
    }

    /// Serves again (the subscription is back); fills that started while
    /// suspended are not kept.
    pub(super) fn resume(&self) {
        if self.generation.load(Ordering::SeqCst) & 1 == 1 {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Whether L1 serves hits now.
    pub(super) fn serving(&self) -> bool {
        self.generation.load(Ordering::Acquire) & 1 == 0
    }

    /// `(name, value)` figures for the statistics' details.
    pub(super) fn figures(&self) -> [(&'static str, u64); 5] {
        let counts = self.counts.snapshot("l1");
        [
            ("l1_hits", counts.hits),
            ("l1_misses", counts.misses),
            ("l1_evictions", self.evictions.0.load(Ordering::Relaxed)),
            ("l1_entries", self.cache.len() as u64),
            ("l1_weight", self.cache.weight()),
        ]
    }
}
