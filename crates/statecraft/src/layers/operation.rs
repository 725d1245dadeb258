//! The shape shared by the layers that treat every operation alike
//! ([`Retry`](super::retry::Retry), [`Timeout`](super::timeout::Timeout),
//! [`Metrics`](super::metrics::Metrics)): each says how it runs one call of
//! the inner backend, and [`operation_layer!`] forwards every method of the
//! contract through it, so that none is forgotten and none loses the inner
//! backend's native implementation.

use crate::backend::error::Operation;
use crate::backend::future::StateFuture;
use crate::backend::StateBackend;

/// How a layer runs one operation of its inner backend.
pub(crate) trait OperationLayer: Send + Sync {
    /// The wrapped backend.
    type Inner: StateBackend;

    /// The wrapped backend.
    fn inner(&self) -> &Self::Inner;

    /// Runs `call` (which sends the operation to the inner backend) as the
    /// layer does: at most once for most layers, again on a retryable error
    /// for [`Retry`](super::retry::Retry).
    fn run<'a, T, F>(&'a self, operation: Operation, call: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: FnMut() -> StateFuture<'a, T> + Send + 'a;
}

/// Implements [`StateBackend`] for `$layer<B>` by sending every operation
/// through [`OperationLayer::run`].
macro_rules! operation_layer {
    ($layer:ident) => {
        impl<B: $crate::backend::StateBackend> $crate::backend::StateBackend for $layer<B> {
            fn name(&self) -> &'static str {
                self.inner().name()
            }
            fn capabilities(&self) -> $crate::backend::capabilities::Capabilities {
                self.inner().capabilities()
            }
            fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
                self.run(Operation::Get, move || self.inner().get(key))
            }
            fn put_with<'a>(
                &'a self,
                key: &'a [u8],
                value: Bytes,
                options: PutOptions,
            ) -> StateFuture<'a, ()> {
                self.run(Operation::Put, move || {
                    self.inner().put_with(key, value.clone(), options)
                })
            }
            fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
                self.run(Operation::Delete, move || self.inner().delete(key))
            }
            fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
                self.run(Operation::Ttl, move || self.inner().ttl(key))
            }
            fn list_keys_page<'a>(
                &'a self,
                prefix: &'a [u8],
                cursor: Option<&'a [u8]>,
                limit: usize,
            ) -> StateFuture<'a, KeyPage> {
                self.run(Operation::ListKeys, move || {
                    self.inner().list_keys_page(prefix, cursor, limit)
                })
            }
            fn clear(&self) -> StateFuture<'_, ()> {
                self.run(Operation::Clear, move || self.inner().clear())
            }
            fn compare_and_swap<'a>(
                &'a self,
                key: &'a [u8],
                expected: Option<&'a [u8]>,
                new: Option<Bytes>,
                options: PutOptions,
            ) -> StateFuture<'a, CasOutcome> {
                self.run(Operation::CompareAndSwap, move || {
                    self.inner()
                        .compare_and_swap(key, expected, new.clone(), options)
                })
            }
            fn health_check(&self) -> StateFuture<'_, HealthReport> {
                self.run(Operation::HealthCheck, move || self.inner().health_check())
            }
            fn stats(&self) -> StateFuture<'_, BackendStats> {
                self.run(Operation::Stats, move || self.inner().stats())
            }
            fn get_with_ttl<'a>(
                &'a self,
                key: &'a [u8],
            ) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
                self.run(Operation::GetWithTtl, move || {
                    self.inner().get_with_ttl(key)
                })
            }
            fn put<'a>(&'a self, key: &'a [u8], value: Bytes) -> StateFuture<'a, ()> {
                self.run(Operation::Put, move || self.inner().put(key, value.clone()))
            }
            fn put_with_ttl<'a>(
                &'a self,
                key: &'a [u8],
                value: Bytes,
                ttl: Duration,
            ) -> StateFuture<'a, ()> {
                self.run(Operation::Put, move || {
                    self.inner().put_with_ttl(key, value.clone(), ttl)
                })
            }
            fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
                self.run(Operation::Contains, move || self.inner().contains(key))
            }
            fn list_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, Vec<Bytes>> {
                self.run(Operation::ListKeys, move || self.inner().list_keys(prefix))
            }
            fn count(&self) -> StateFuture<'_, u64> {
                self.run(Operation::Count, move || self.inner().count())
            }
            fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
                self.run(Operation::BatchGet, move || self.inner().batch_get(keys))
            }
            fn batch_put<'a>(
                &'a self,
                entries: Vec<(Bytes, Bytes)>,
                options: PutOptions,
            ) -> StateFuture<'a, ()> {
                self.run(Operation::BatchPut, move || {
                    self.inner().batch_put(entries.clone(), options)
                })
            }
            fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
                self.run(Operation::BatchDelete, move || {
                    self.inner().batch_delete(keys)
                })
            }
            fn set_if_not_exists<'a>(
                &'a self,
                key: &'a [u8],
                value: Bytes,
                options: PutOptions,
            ) -> StateFuture<'a, bool> {
                self.run(Operation::SetIfNotExists, move || {
                    self.inner().set_if_not_exists(key, value.clone(), options)
                })
            }
            fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
                self.run(Operation::GetAndDelete, move || {
                    self.inner().get_and_delete(key)
                })
            }
            fn increment<'a>(
                &'a self,
                key: &'a [u8],
                delta: i64,
                options: PutOptions,
            ) -> StateFuture<'a, i64> {
                self.run(Operation::Increment, move || {
                    self.inner().increment(key, delta, options)
                })
            }
            fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
                self.run(Operation::Publish, move || {
                    self.inner().publish(channel, payload.clone())
                })
            }
            fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
                self.run(Operation::Subscribe, move || {
                    self.inner().subscribe(channel)
                })
            }
            fn update_atomic<'a>(
                &'a self,
                key: &'a [u8],
                update: &'a dyn $crate::backend::atomic::AtomicUpdate,
                input: &'a [u8],
            ) -> StateFuture<'a, Bytes> {
                let op = match update.reads_only(input) {
                    true => Operation::ReadAtomic,
                    false => Operation::UpdateAtomic,
                };
                self.run(op, move || self.inner().update_atomic(key, update, input))
            }
            fn watch_keys<'a>(
                &'a self,
                prefix: &'a [u8],
            ) -> StateFuture<'a, $crate::backend::watch::KeyChanges> {
                self.run(Operation::WatchKeys, move || {
                    self.inner().watch_keys(prefix)
                })
            }
            fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
                self.run(Operation::Transaction, move || {
                    self.inner().transaction(transaction.clone())
                })
            }
            fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
                self.run(Operation::Maintenance, move || self.inner().maintain(task))
            }
        }
    };
}

pub(crate) use operation_layer;
