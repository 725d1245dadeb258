//! The [`StateBackend`] contract every store and every layer implements.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};

pub(crate) mod atomic;
pub(crate) mod capabilities;
pub mod checkpoint;
pub(crate) mod clock;
pub(crate) mod error;
pub(crate) mod future;
pub(crate) mod limits;
pub(crate) mod maintenance;
pub(crate) mod options;
pub(crate) mod pubsub;
pub(crate) mod stats;
pub(crate) mod transaction;
pub(crate) mod watch;

use self::atomic::AtomicUpdate;
use self::capabilities::Capabilities;
use self::error::{Error, Operation, Result};
use self::future::StateFuture;
use self::maintenance::MaintenanceTask;
use self::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use self::pubsub::Subscription;
use self::stats::BackendStats;
use self::transaction::Transaction;
use self::watch::KeyChanges;
use crate::raw::counter::apply_increment;

/// The asynchronous key-value contract shared by every store and layer.
///
/// Keys and values are bytes. Every backend implements the whole contract;
/// the provided methods are correct fallbacks built on the required ones, and
/// backends override them when they can do better (one round trip, native
/// atomicity). The trait is object safe: `Arc<dyn StateBackend>` is a backend.
///
/// Time-to-live is honoured by every backend: an expired key is never
/// returned, counted or listed, whether or not it has been physically removed.
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// A short, stable name for logs, errors and metrics (`"memory"`, `"sled"`).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// The value stored under `key`, if any.
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>>;

    /// Stores `value` under `key` with `options`, replacing any previous value
    /// and its TTL.
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()>;

    /// Removes `key`; returns whether it existed.
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool>;

    /// The remaining time to live of `key`.
    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl>;

    /// One page of the keys that start with `prefix`, at most `limit` long.
    ///
    /// Start with `cursor = None`; pass each page's `next` until it is `None`.
    /// Every key that matches for the whole listing is returned at least once.
    /// Backends with [`Capabilities::ordered_listing`] return ascending keys,
    /// each exactly once. A page may be shorter than `limit` (even empty)
    /// while `next` is still `Some`.
    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage>;

    /// Removes every key of this backend (only the keys it owns, for a
    /// namespaced or prefixed backend).
    fn clear(&self) -> StateFuture<'_, ()>;

    /// Atomically replaces the value of `key` if it is `expected`
    /// (`None`: the key is absent). `new = None` deletes the key. `options`
    /// apply to the new value as they do to [`put_with`](Self::put_with).
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome>;

    /// Checks that the backend answers; the error says why when it does not.
    fn health_check(&self) -> StateFuture<'_, HealthReport>;

    /// Operation counts, hits and misses, errors, sampled latencies, and
    /// backend-specific figures.
    fn stats(&self) -> StateFuture<'_, BackendStats>;

    /// Stores `value` under `key` with no TTL beyond the backend default.
    fn put<'a>(&'a self, key: &'a [u8], value: Bytes) -> StateFuture<'a, ()> {
        self.put_with(key, value, PutOptions::default())
    }

    /// Reads `key` with the time it has left: `None` when it is absent,
    /// otherwise its value and [`KeyTtl::Persistent`] or
    /// [`KeyTtl::ExpiresIn`] (never `Missing`). The built-in backends answer
    /// in one atomic step (a cache uses it to never outlive the store's TTL);
    /// the default reads the value, then its TTL, and a concurrent write can
    /// fall between the two.
    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        StateFuture::new(async move {
            let Some(value) = self.get(key).await? else {
                return Ok(None);
            };
            Ok(match self.ttl(key).await? {
                KeyTtl::Missing => None,
                ttl => Some((value, ttl)),
            })
        })
    }

    /// Stores `value` under `key` for `ttl`.
    fn put_with_ttl<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        ttl: Duration,
    ) -> StateFuture<'a, ()> {
        self.put_with(key, value, PutOptions::new().ttl(ttl))
    }

    /// Whether `key` holds a value.
    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::new(async move { Ok(self.get(key).await?.is_some()) })
    }

    /// Every key that starts with `prefix`, ascending, each once.
    fn list_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, Vec<Bytes>> {
        StateFuture::new(async move {
            let mut keys = Vec::new();
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .list_keys_page(prefix, cursor.as_deref(), LIST_PAGE)
                    .await?;
                keys.extend(page.keys);
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            if !self.capabilities().ordered_listing {
                keys.sort_unstable();
                keys.dedup();
            }
            Ok(keys)
        })
    }

    /// The number of live keys.
    fn count(&self) -> StateFuture<'_, u64> {
        StateFuture::new(async move { Ok(self.list_keys(b"").await?.len() as u64) })
    }

    /// The values of `keys`, in the same order (`None` for missing keys).
    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        StateFuture::new(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        })
    }

    /// Stores every `(key, value)` pair with the same options.
    ///
    /// With [`Capabilities::atomic_batch`] the pairs are written all or none.
    /// Otherwise an error stops the batch and the pairs before it may stay
    /// written (the default writes them one by one; the built-in backends
    /// check every pair's size before writing any).
    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        StateFuture::new(async move {
            for (key, value) in entries {
                self.put_with(&key, value, options).await?;
            }
            Ok(())
        })
    }

    /// Removes `keys`; returns how many existed.
    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        StateFuture::new(async move {
            let mut removed = 0;
            for key in keys {
                removed += u64::from(self.delete(key).await?);
            }
            Ok(removed)
        })
    }

    /// Stores `value` only if `key` is absent, with `options` as
    /// [`put_with`](Self::put_with) applies them; returns whether it did.
    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        StateFuture::new(async move {
            Ok(self
                .compare_and_swap(key, None, Some(value), options)
                .await?
                .is_swapped())
        })
    }

    /// Removes `key` and returns the value it held, atomically.
    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::new(async move {
            let mut current = self.get(key).await?;
            loop {
                let Some(value) = current else {
                    return Ok(None);
                };
                match self
                    .compare_and_swap(key, Some(&value), None, PutOptions::new())
                    .await?
                {
                    CasOutcome::Swapped => return Ok(Some(value)),
                    CasOutcome::Conflict(now) => current = now,
                }
            }
        })
    }

    /// Adds `delta` to the integer stored under `key` and returns the result.
    ///
    /// Values are decimal ASCII (`b"42"`, as Redis stores them). A missing key
    /// counts as 0 and is created with `options` (as
    /// [`put_with`](Self::put_with) applies them); an existing key keeps its
    /// TTL, or stays persistent.
    /// A value that is not an integer is an [`ErrorKind::NotAnInteger`](crate::ErrorKind::NotAnInteger) error
    /// and an overflow is [`ErrorKind::Overflow`](crate::ErrorKind::Overflow); neither writes anything.
    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        StateFuture::new(async move {
            let mut current = self.get(key).await?;
            loop {
                let (next, write_options) = match &current {
                    None => (delta, options),
                    Some(raw) => {
                        let kept = match self.ttl(key).await? {
                            KeyTtl::ExpiresIn(left) => PutOptions::new().ttl(left),
                            KeyTtl::Persistent => PutOptions::new().no_expiry(),
                            // Gone since the read: the swap below conflicts.
                            KeyTtl::Missing => options,
                        };
                        (apply_increment(raw, delta)?, kept)
                    }
                };
                let encoded = Bytes::from(next.to_string());
                match self
                    .compare_and_swap(key, current.as_deref(), Some(encoded), write_options)
                    .await?
                {
                    CasOutcome::Swapped => return Ok(next),
                    CasOutcome::Conflict(now) => current = now,
                }
            }
        })
    }

    /// Applies `update` to `key` atomically with `input` and returns its
    /// output (see [`AtomicUpdate`]): natively where the store can (under
    /// the key's lock in memory; the update's Lua copy on Redis and its
    /// PL/pgSQL copy on PostgreSQL, at the server's clock), otherwise by
    /// this compare-and-swap loop, at this process's wall clock (after two
    /// conflicts in a row it waits a random while between tries, on
    /// tokio's timer: it then needs a tokio runtime with time enabled).
    /// Not idempotent: a retry after an unknown outcome could apply it
    /// twice.
    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        StateFuture::new(self::atomic::by_compare_and_swap(self, key, update, input))
    }

    /// Publishes `payload` on `channel` to the subscribers that are listening
    /// now, in every process connected to the same store (at most once: a
    /// subscriber that is not connected misses it).
    ///
    /// Backends without [`Capabilities::pubsub`] return an
    /// [`Unsupported`](self::error::ErrorKind::Unsupported) error.
    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        let _ = (channel, payload);
        StateFuture::ready(Err(Error::unsupported(self.name(), Operation::Publish)))
    }

    /// Subscribes to `channel`; once the future resolves, every message
    /// published on the channel is delivered, in publish order, until the
    /// subscription ends (with an error item if its connection was lost).
    ///
    /// Backends without [`Capabilities::pubsub`] return an
    /// [`Unsupported`](self::error::ErrorKind::Unsupported) error.
    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        let _ = channel;
        StateFuture::ready(Err(Error::unsupported(self.name(), Operation::Subscribe)))
    }

    /// Reports changes to the keys that start with `prefix` made by any
    /// client of the store (writes, deletes, expiry, eviction, a flush),
    /// pushed by the store itself; once the future resolves, every change
    /// is reported until the watch ends with an error (its connection lost
    /// or silent). At most once, like pub/sub: after an error, treat
    /// everything as changed.
    ///
    /// Backends without [`Capabilities::key_tracking`] return an
    /// [`Unsupported`](self::error::ErrorKind::Unsupported) error.
    fn watch_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, KeyChanges> {
        let _ = prefix;
        StateFuture::ready(Err(Error::unsupported(self.name(), Operation::WatchKeys)))
    }

    /// Applies `transaction` atomically: if every check holds, every write;
    /// otherwise nothing, and the result is `false`.
    ///
    /// Backends without [`Capabilities::transactions`] return an
    /// [`Unsupported`](self::error::ErrorKind::Unsupported) error.
    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let _ = transaction;
        StateFuture::ready(Err(Error::unsupported(self.name(), Operation::Transaction)))
    }

    /// Runs a maintenance task now and returns how many items it affected
    /// (see [`MaintenanceTask`]). A task the backend has no use for returns
    /// an [`Unsupported`](self::error::ErrorKind::Unsupported) error.
    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        let _ = task;
        StateFuture::ready(Err(Error::unsupported(self.name(), Operation::Maintenance)))
    }
}

/// Conveniences over any [`StateBackend`].
pub trait StateBackendExt: StateBackend {
    /// Streams the keys that start with `prefix`, fetching `page_size` at a
    /// time, so that large key spaces never sit in memory at once. Keys come
    /// in the backend's listing order (see [`StateBackend::list_keys_page`]).
    fn key_stream<'a>(
        &'a self,
        prefix: &'a [u8],
        page_size: usize,
    ) -> BoxStream<'a, Result<Bytes>> {
        enum State {
            Next(Option<Bytes>),
            Done,
        }
        let pages = stream::unfold(State::Next(None), move |state| async move {
            let cursor = match state {
                State::Next(cursor) => cursor,
                State::Done => return None,
            };
            match self
                .list_keys_page(prefix, cursor.as_deref(), page_size)
                .await
            {
                Ok(page) => {
                    let next = match page.next {
                        Some(next) => State::Next(Some(next)),
                        None => State::Done,
                    };
                    Some((Ok(page.keys), next))
                }
                Err(err) => Some((Err(err), State::Done)),
            }
        });
        pages
            .map(|page| match page {
                Ok(keys) => stream::iter(keys.into_iter().map(Ok)).left_stream(),
                Err(err) => stream::iter(std::iter::once(Err(err))).right_stream(),
            })
            .flatten()
            .boxed()
    }
}

impl<B: StateBackend + ?Sized> StateBackendExt for B {}

/// The page size `list_keys`, `count` and `clear` fallbacks use.
pub const LIST_PAGE: usize = 1000;

macro_rules! forward_backend {
    ($($ty:ty),+) => {$(
        // Every method is forwarded, provided ones included, so that a wrapper
        // never silently drops an inner backend's native implementation.
        impl<T: StateBackend + ?Sized> StateBackend for $ty {
            fn name(&self) -> &'static str { (**self).name() }
            fn capabilities(&self) -> Capabilities { (**self).capabilities() }
            #[inline]
            fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
                (**self).get(key)
            }
            #[inline]
            fn put_with<'a>(&'a self, key: &'a [u8], value: Bytes, options: PutOptions) -> StateFuture<'a, ()> {
                (**self).put_with(key, value, options)
            }
            fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> { (**self).delete(key) }
            fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> { (**self).ttl(key) }
            fn list_keys_page<'a>(&'a self, prefix: &'a [u8], cursor: Option<&'a [u8]>, limit: usize) -> StateFuture<'a, KeyPage> {
                (**self).list_keys_page(prefix, cursor, limit)
            }
            fn clear(&self) -> StateFuture<'_, ()> { (**self).clear() }
            fn compare_and_swap<'a>(&'a self, key: &'a [u8], expected: Option<&'a [u8]>, new: Option<Bytes>, options: PutOptions) -> StateFuture<'a, CasOutcome> {
                (**self).compare_and_swap(key, expected, new, options)
            }
            fn health_check(&self) -> StateFuture<'_, HealthReport> { (**self).health_check() }
            fn stats(&self) -> StateFuture<'_, BackendStats> { (**self).stats() }
            fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
                (**self).get_with_ttl(key)
            }
            #[inline]
            fn put<'a>(&'a self, key: &'a [u8], value: Bytes) -> StateFuture<'a, ()> { (**self).put(key, value) }
            fn put_with_ttl<'a>(&'a self, key: &'a [u8], value: Bytes, ttl: Duration) -> StateFuture<'a, ()> {
                (**self).put_with_ttl(key, value, ttl)
            }
            fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> { (**self).contains(key) }
            fn list_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, Vec<Bytes>> { (**self).list_keys(prefix) }
            fn count(&self) -> StateFuture<'_, u64> { (**self).count() }
            fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> { (**self).batch_get(keys) }
            fn batch_put<'a>(&'a self, entries: Vec<(Bytes, Bytes)>, options: PutOptions) -> StateFuture<'a, ()> {
                (**self).batch_put(entries, options)
            }
            fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> { (**self).batch_delete(keys) }
            fn set_if_not_exists<'a>(&'a self, key: &'a [u8], value: Bytes, options: PutOptions) -> StateFuture<'a, bool> {
                (**self).set_if_not_exists(key, value, options)
            }
            fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> { (**self).get_and_delete(key) }
            fn increment<'a>(&'a self, key: &'a [u8], delta: i64, options: PutOptions) -> StateFuture<'a, i64> {
                (**self).increment(key, delta, options)
            }
            fn update_atomic<'a>(&'a self, key: &'a [u8], update: &'a dyn AtomicUpdate, input: &'a [u8]) -> StateFuture<'a, Bytes> {
                (**self).update_atomic(key, update, input)
            }
            fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> { (**self).publish(channel, payload) }
            fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> { (**self).subscribe(channel) }
            fn watch_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, KeyChanges> { (**self).watch_keys(prefix) }
            fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> { (**self).transaction(transaction) }
            fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> { (**self).maintain(task) }
        }
    )+};
}

forward_backend!(Arc<T>, Box<T>, &T);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_object_safe(_: &dyn StateBackend) {}

    #[test]
    fn dyn_backend_is_object_safe_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Arc<dyn StateBackend>>();
        send_sync::<Error>();
        let backend: Arc<dyn StateBackend> = Arc::new(crate::MemoryBackend::new());
        assert_object_safe(&backend);
        assert_eq!(backend.name(), "memory");
    }
}
