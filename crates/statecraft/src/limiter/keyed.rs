//! [`KeyedLimiter`]: a limit per key (user, IP, API key) in this process,
//! with per-key quotas and idle keys reclaimed.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::algorithm::{is_idle, Decision};
use super::cell::{QuotaCell, StateCell};
use super::local::{same_algorithm, starts_afresh, until_ready};
use super::quota::Quota;
use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::Result;

/// The fewest keys at which a sweep for idle ones starts.
const SWEEP_FLOOR: usize = 4096;

/// How long a key stays after its limit is whole again, by default.
const IDLE_GRACE: Duration = Duration::from_secs(10);

/// One key's limit.
#[derive(Debug)]
struct Entry {
    cell: StateCell,
    /// The key's own quota; `None`: the limiter's default (boxed: few
    /// keys have one, and entries stay three words).
    quota: Option<Box<Quota>>,
}

/// A limit per key, each decided as a [`LocalLimiter`](super::LocalLimiter)
/// decides (one compare-and-swap on the key's cell, found in a sharded
/// map), with a default quota and per-key ones.
///
/// Memory stays bounded under a flood of distinct keys: when the map has
/// doubled since the last sweep (and holds at least 4,096 keys), the next
/// new key sweeps it and drops every key whose limit has been whole again
/// (nothing taken that still counts) for the
/// [`reclaim_after`](Self::reclaim_after) grace (10 s). So it holds at
/// most twice the keys used within one reset time (a period, or for a
/// bucket the time it takes to refill) plus the grace, plus the keys with
/// their own quota (kept until [`remove_quota_for`](Self::remove_quota_for)).
/// [`reclaim`](Self::reclaim) sweeps at once.
///
/// ```
/// use statecraft::limiter::{KeyedLimiter, Quota};
///
/// let limiter = KeyedLimiter::new(Quota::per_minute(2).build()?);
/// limiter.set_quota_for("admin", Quota::per_minute(100).build()?)?;
/// assert!(limiter.check(&"alice").is_allowed());
/// assert!(limiter.check(&"alice").is_allowed());
/// assert!(!limiter.check(&"alice").is_allowed());
/// assert!(limiter.check(&"bob").is_allowed());
/// assert!((0..100).all(|_| limiter.check(&"admin").is_allowed()));
/// # Ok::<(), statecraft::Error>(())
/// ```
pub struct KeyedLimiter<K, C: Clock = MonotonicClock> {
    default: QuotaCell,
    entries: DashMap<K, Entry, foldhash::fast::RandomState>,
    clock: C,
    /// The number of keys after the last sweep.
    swept: AtomicUsize,
    /// How long a whole limit is kept before a sweep drops it (µs).
    grace_us: u64,
}

impl<K: Hash + Eq + fmt::Debug, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("default", &self.default.load())
            .field("keys", &self.entries.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter whose keys have `quota` unless given their own, at the
    /// process's monotonic clock.
    pub fn new(quota: Quota) -> KeyedLimiter<K> {
        Self::with_clock(quota, MonotonicClock::new())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// The same, reading `clock`.
    pub fn with_clock(quota: Quota, clock: C) -> KeyedLimiter<K, C> {
        KeyedLimiter {
            default: QuotaCell::new(quota),
            entries: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            clock,
            swept: AtomicUsize::new(0),
            grace_us: IDLE_GRACE.as_micros() as u64,
        }
    }

    /// How long a key whose limit is whole again is kept before a sweep
    /// drops it (default 10 s): a key in steady use is then not dropped
    /// and added again between its requests.
    pub fn reclaim_after(mut self, grace: Duration) -> Self {
        self.grace_us = u64::try_from(grace.as_micros()).unwrap_or(u64::MAX);
        self
    }

    /// Decides one permit for `key`.
    #[inline]
    pub fn check(&self, key: &K) -> Decision {
        self.check_n(key, 1)
    }

    /// Decides `cost` permits for `key`: all or none (0 only asks).
    pub fn check_n(&self, key: &K, cost: u64) -> Decision {
        let now = self.clock.now_micros();
        if let Some(entry) = self.entries.get(key) {
            return self.decide(&entry, cost, now);
        }
        self.sweep_if_grown();
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            cell: StateCell::new(self.default.load().algorithm()),
            quota: None,
        });
        self.decide(&entry, cost, now)
    }

    /// Decides on `entry`'s cell by its own quota or the default.
    #[inline]
    fn decide(&self, entry: &Entry, cost: u64, now: u64) -> Decision {
        match entry.quota.as_deref() {
            Some(quota) => entry.cell.decide(quota, cost, now),
            None => entry.cell.decide_by(&self.default, cost, now),
        }
    }

    /// Waits until `cost` permits pass for `key`, for at most `max_wait`
    /// (as [`LocalLimiter::until_ready`](super::LocalLimiter::until_ready)).
    pub async fn until_ready(&self, key: &K, cost: u64, max_wait: Duration) -> Decision {
        until_ready(|| self.check_n(key, cost), max_wait).await
    }

    /// The default quota.
    pub fn quota(&self) -> Quota {
        self.default.load()
    }

    /// The quota `key` is decided by.
    pub fn quota_for(&self, key: &K) -> Quota {
        self.entries
            .get(key)
            .and_then(|entry| entry.quota.as_deref().copied())
            .unwrap_or_else(|| self.default.load())
    }

    /// Replaces the default quota; every key without its own uses it
    /// from its next decision. The algorithm cannot change.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let old = self.default.load();
        same_algorithm(&old, &quota)?;
        self.default.store(quota);
        if starts_afresh(&old, &quota) {
            for entry in self.entries.iter().filter(|entry| entry.quota.is_none()) {
                entry.cell.clear();
            }
        }
        Ok(())
    }

    /// Gives `key` its own quota (of the same algorithm), from its next
    /// decision on, on the state it has.
    pub fn set_quota_for(&self, key: K, quota: Quota) -> Result<()> {
        let default = self.default.load();
        same_algorithm(&default, &quota)?;
        let mut entry = self.entries.entry(key).or_insert_with(|| Entry {
            cell: StateCell::new(default.algorithm()),
            quota: None,
        });
        if starts_afresh(&entry.quota.as_deref().copied().unwrap_or(default), &quota) {
            entry.cell.clear();
        }
        entry.quota = Some(Box::new(quota));
        Ok(())
    }

    /// Puts `key` back on the default quota.
    pub fn remove_quota_for(&self, key: &K) {
        if let Some(mut entry) = self.entries.get_mut(key) {
            if let Some(own) = entry.quota.take() {
                if starts_afresh(&own, &self.default.load()) {
                    entry.cell.clear();
                }
            }
        }
    }

    /// Forgets what `key` has taken.
    pub fn reset(&self, key: &K) {
        if let Some(entry) = self.entries.get(key) {
            entry.cell.clear();
        }
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every key whose limit is whole again and that has no quota of
    /// its own; returns how many keys are left.
    pub fn reclaim(&self) -> usize {
        // Whatever happens, sweeps go on afterwards.
        let _swept = Swept(self);
        let default = self.default.load();
        self.entries.retain(|_, entry| {
            // The time is read under the shard's lock: no decision on
            // this key can be newer than it.
            // Whole since `grace` ago: whole then, nothing taken since.
            let then = self.clock.now_micros().saturating_sub(self.grace_us);
            entry.quota.is_some() || !is_idle(&default, entry.cell.state(default.algorithm()), then)
        });
        self.entries.len()
    }

    fn sweep_if_grown(&self) {
        let len = self.entries.len();
        let swept = self.swept.load(Ordering::Relaxed);
        if len >= SWEEP_FLOOR && len >= swept.saturating_mul(2) {
            // One sweeper at a time: the others go on.
            if self
                .swept
                .compare_exchange(swept, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.reclaim();
            }
        }
    }
}

/// Records the number of keys when a sweep ends, even by a panic (in a
/// key's `Hash` or `Eq`), so that sweeping goes on.
struct Swept<'a, K: Hash + Eq, C: Clock>(&'a KeyedLimiter<K, C>);

impl<K: Hash + Eq, C: Clock> Drop for Swept<'_, K, C> {
    fn drop(&mut self) {
        self.0.swept.store(self.0.entries.len(), Ordering::Relaxed);
    }
}
