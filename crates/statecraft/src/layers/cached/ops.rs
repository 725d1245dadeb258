//! The [`StateBackend`] implementation of [`Cached`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::capabilities::Capabilities;
use crate::backend::error::Result;
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::{Transaction, TransactionWrite};
use crate::backend::StateBackend;
use crate::raw::recorder::Found;

use super::{Cached, Shared};

impl<B: StateBackend + 'static> Cached<B> {
    /// A read through the store that fills L1 with what it finds.
    fn read_through<'a>(
        &'a self,
        key: &'a [u8],
    ) -> impl Future<Output = Result<Option<(Bytes, KeyTtl)>>> + Send + 'a {
        let shared = &*self.shared;
        let token = shared.l1.token(key);
        async move {
            let found = shared.inner.get_with_ttl(key).await?;
            shared.l1.fill(key, token, found.clone());
            Ok(found)
        }
    }

    fn counted_read<'a, T: Found + Send + 'a>(
        &'a self,
        work: impl Future<Output = Result<T>> + Send + 'a,
    ) -> StateFuture<'a, T> {
        let stats = &self.shared.stats;
        let timer = stats.start();
        StateFuture::new(async move { stats.read(timer, work.await) })
    }

    /// A write of `keys`: through to the store, then invalidated here and,
    /// when `changed` says so, everywhere.
    fn write_keys<'a, T: Send + 'a, K: AsRef<[u8]> + Send + Sync + 'a>(
        &'a self,
        keys: Vec<K>,
        work: StateFuture<'a, T>,
        changed: impl FnOnce(&T) -> bool + Send + 'a,
    ) -> StateFuture<'a, T> {
        let shared = &*self.shared;
        let timer = shared.stats.start();
        StateFuture::new(async move {
            let unfinished = Unfinished::new(&self.shared, Some(keys));
            let result = work.await;
            // An error may hide an applied write: invalidate as if it did.
            let changed = result.as_ref().map_or(true, changed);
            let announced = shared.written(unfinished.keys(), changed).await;
            unfinished.finish();
            let result = result.and_then(|done| announced.map(|()| done));
            shared.stats.write(timer, result)
        })
    }

    fn write_key<'a, T: Send + 'a>(
        &'a self,
        key: &'a [u8],
        work: StateFuture<'a, T>,
        changed: impl FnOnce(&T) -> bool + Send + 'a,
    ) -> StateFuture<'a, T> {
        self.write_keys(vec![key], work, changed)
    }
}

/// A write in flight: if its future is dropped before it finished, the
/// write may have applied, so its keys (`None`: every key) are dropped here
/// at once and the invalidation is published from a task of its own.
struct Unfinished<'a, B: StateBackend + 'static, K: AsRef<[u8]>> {
    shared: &'a Arc<Shared<B>>,
    keys: Option<Vec<K>>,
    armed: bool,
}

impl<'a, B: StateBackend + 'static, K: AsRef<[u8]>> Unfinished<'a, B, K> {
    fn new(shared: &'a Arc<Shared<B>>, keys: Option<Vec<K>>) -> Self {
        Unfinished {
            shared,
            keys,
            armed: true,
        }
    }

    fn keys(&self) -> &[K] {
        self.keys.as_deref().unwrap_or_default()
    }

    fn finish(mut self) {
        self.armed = false;
    }
}

impl<B: StateBackend + 'static, K: AsRef<[u8]>> Drop for Unfinished<'_, B, K> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let keys: Option<Vec<Vec<u8>>> = self
            .keys
            .as_ref()
            .map(|keys| keys.iter().map(|key| key.as_ref().to_vec()).collect());
        match &keys {
            Some(keys) => keys.iter().for_each(|key| self.shared.l1.invalidate(key)),
            None => self.shared.l1.invalidate_all(),
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                let _ = match keys {
                    Some(keys) => shared.written(&keys, true).await,
                    None => shared.cleared().await,
                };
            });
        }
    }
}

fn always<T>(_: &T) -> bool {
    true
}

impl<B: StateBackend + 'static> StateBackend for Cached<B> {
    fn name(&self) -> &'static str {
        self.shared.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        // A change the store reports may still be served from this L1
        // (another Cached on top would refill from it): no watch through.
        self.shared.inner.capabilities().with_key_tracking(false)
    }

    #[inline]
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let stats = &self.shared.stats;
        if let Some(slot) = self.shared.l1.lookup(key) {
            let timer = stats.start();
            return StateFuture::ready(stats.read(timer, Ok(slot.value)));
        }
        self.counted_read(async move { Ok(self.read_through(key).await?.map(|(value, _)| value)) })
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        let stats = &self.shared.stats;
        if let Some(slot) = self.shared.l1.lookup(key) {
            let timer = stats.start();
            let now = self.shared.l1.now();
            let found = slot.value.clone().map(|value| (value, slot.ttl_at(now)));
            return StateFuture::ready(stats.read(timer, Ok(found)));
        }
        self.counted_read(self.read_through(key))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let stats = &self.shared.stats;
        if let Some(slot) = self.shared.l1.lookup(key) {
            let timer = stats.start();
            return StateFuture::ready(stats.read(timer, Ok(slot.value.is_some())));
        }
        self.counted_read(async move { Ok(self.read_through(key).await?.is_some()) })
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.counted_read(self.shared.inner.ttl(key))
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        self.counted_read(async move {
            let mut values: Vec<Option<Option<Bytes>>> = keys
                .iter()
                .map(|key| self.shared.l1.lookup(key).map(|slot| slot.value))
                .collect();
            let missing: Vec<Bytes> = keys
                .iter()
                .zip(&values)
                .filter(|(_, cached)| cached.is_none())
                .map(|(key, _)| key.clone())
                .collect();
            if !missing.is_empty() {
                let mut fetched = self.shared.inner.batch_get(&missing).await?.into_iter();
                for value in values.iter_mut().filter(|value| value.is_none()) {
                    *value = Some(fetched.next().flatten());
                }
            }
            Ok(values.into_iter().map(Option::flatten).collect())
        })
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.write_key(key, self.shared.inner.put_with(key, value, options), always)
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.write_key(key, self.shared.inner.delete(key), |existed| *existed)
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let keys: Vec<Bytes> = entries.iter().map(|(key, _)| key.clone()).collect();
        self.write_keys(keys, self.shared.inner.batch_put(entries, options), always)
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        self.write_keys(keys.to_vec(), self.shared.inner.batch_delete(keys), |n| {
            *n > 0
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        self.write_key(
            key,
            self.shared.inner.set_if_not_exists(key, value, options),
            |set| *set,
        )
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let shared = &*self.shared;
        let timer = shared.stats.start();
        StateFuture::new(async move {
            let unfinished = Unfinished::new(&self.shared, Some(vec![key]));
            let result = shared.inner.get_and_delete(key).await;
            unfinished.finish();
            let changed = result.as_ref().map_or(true, Option::is_some);
            // The value is gone from the store: hand it over even if the
            // invalidation failed (counted and logged), rather than lose it.
            let _ = shared.written(&[key], changed).await;
            shared.stats.read(timer, result)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let work = self
            .shared
            .inner
            .compare_and_swap(key, expected, new, options);
        self.write_key(key, work, CasOutcome::is_swapped)
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        self.write_key(
            key,
            self.shared.inner.increment(key, delta, options),
            always,
        )
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        if update.reads_only(input) {
            // A read of state L1 never holds: straight to the store.
            return self.shared.inner.update_atomic(key, update, input);
        }
        self.write_key(
            key,
            self.shared.inner.update_atomic(key, update, input),
            always,
        )
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let keys: Vec<Bytes> = transaction
            .writes()
            .iter()
            .map(|write| match write {
                TransactionWrite::Put { key, .. } | TransactionWrite::Delete { key } => key.clone(),
            })
            .collect();
        self.write_keys(
            keys,
            self.shared.inner.transaction(transaction),
            |applied| *applied,
        )
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        let shared = &*self.shared;
        let timer = shared.stats.start();
        StateFuture::new(async move {
            let unfinished = Unfinished::<B, &[u8]>::new(&self.shared, None);
            let result = shared.inner.clear().await;
            let announced = shared.cleared().await;
            unfinished.finish();
            let result = result.and(announced);
            shared.stats.write(timer, result)
        })
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let stats = &self.shared.stats;
        let timer = stats.start();
        let work = self.shared.inner.list_keys_page(prefix, cursor, limit);
        StateFuture::new(async move { stats.scan(timer, work.await) })
    }

    fn count(&self) -> StateFuture<'_, u64> {
        let stats = &self.shared.stats;
        let timer = stats.start();
        let work = self.shared.inner.count();
        StateFuture::new(async move { stats.scan(timer, work.await) })
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.shared.inner.health_check()
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let shared = &*self.shared;
        StateFuture::new(async move {
            let store = shared.inner.stats().await?;
            let mut stats = shared.stats.snapshot(shared.inner.name());
            stats.details = store.details;
            for (name, value) in shared.l1.figures() {
                stats.details.insert(name.into(), value);
            }
            let counters = &shared.counters;
            let load =
                |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
            for (name, value) in [
                ("l1_invalidations_published", load(&counters.published)),
                ("l1_publish_errors", load(&counters.publish_errors)),
                ("l1_invalidations_received", load(&counters.received)),
                ("l1_suspensions", load(&counters.suspensions)),
                ("l1_serving", u64::from(shared.l1.serving())),
            ] {
                stats.details.insert(name.into(), value);
            }
            Ok(stats)
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.shared.inner.publish(channel, payload)
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        self.shared.inner.subscribe(channel)
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        self.shared.inner.maintain(task)
    }
}
