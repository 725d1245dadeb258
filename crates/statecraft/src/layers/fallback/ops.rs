//! The [`StateBackend`] implementation of [`Fallback`]: every operation is
//! routed down the chain, counted in the chain's own statistics.

use bytes::Bytes;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::capabilities::Capabilities;
use crate::backend::error::Operation;
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::{Transaction, TransactionWrite};
use crate::backend::StateBackend;
use crate::raw::recorder::Found;

use super::{Fallback, Health, Mark, Written};

impl Fallback {
    fn read<'a, T: Found + Send + 'a>(&'a self, work: StateFuture<'a, T>) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move { self.stats.read(timer, work.await) })
    }

    fn write<'a, T: Send + 'a>(&'a self, work: StateFuture<'a, T>) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move { self.stats.write(timer, work.await) })
    }

    fn scan<'a, T: Send + 'a>(&'a self, work: StateFuture<'a, T>) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move { self.stats.scan(timer, work.await) })
    }

    /// Routes an operation that writes nothing.
    fn route_read<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        written: Written<'a>,
        call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        self.route(operation, written, always, call)
    }

    /// Routes a write of one key (borrowed: nothing is copied unless a
    /// fallback takes the write).
    fn write_key<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        key: &'a [u8],
        mark: Mark,
        applied: fn(&T) -> bool,
        call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move {
            let written = [(key, mark)];
            let result = self.dispatch(operation, &written, applied, call).await;
            self.stats.write(timer, result)
        })
    }

    /// Routes a write of the keys in `written`; `applied` says whether an
    /// answer changed anything (a compare-and-swap that conflicted did not).
    fn write_owned<'a, T: Send + 'a>(
        &'a self,
        operation: Operation,
        written: Vec<(Bytes, Mark)>,
        applied: fn(&T) -> bool,
        call: impl FnMut(&'a dyn StateBackend) -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        let timer = self.stats.start();
        StateFuture::new(async move {
            let keys: Vec<(&[u8], Mark)> = written.iter().map(|(k, m)| (&k[..], *m)).collect();
            let result = self.dispatch(operation, &keys, applied, call).await;
            self.stats.write(timer, result)
        })
    }
}

const NONE: &[(&[u8], Mark)] = &[];

fn always<T>(_: &T) -> bool {
    true
}

impl StateBackend for Fallback {
    fn name(&self) -> &'static str {
        "fallback"
    }

    fn capabilities(&self) -> Capabilities {
        // A watch on one member misses what the others take: none.
        self.members[0]
            .backend
            .capabilities()
            .with_key_tracking(false)
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.read(self.route_read(Operation::Get, NONE, move |b| b.get(key)))
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        self.read(self.route_read(Operation::GetWithTtl, NONE, move |b| b.get_with_ttl(key)))
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.read(self.route_read(Operation::Contains, NONE, move |b| b.contains(key)))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.read(self.route_read(Operation::Ttl, NONE, move |b| b.ttl(key)))
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        self.read(self.route_read(Operation::BatchGet, NONE, move |b| b.batch_get(keys)))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.scan(self.route_read(Operation::ListKeys, NONE, move |b| {
            b.list_keys_page(prefix, cursor, limit)
        }))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        self.scan(self.route_read(Operation::Count, NONE, |b| b.count()))
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.write_key(Operation::Put, key, Mark::Put, always, move |b| {
            b.put_with(key, value.clone(), options)
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.write_key(Operation::Delete, key, Mark::Delete, always, move |b| {
            b.delete(key)
        })
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let written = entries
            .iter()
            .map(|(k, _)| (k.clone(), Mark::Put))
            .collect();
        self.write_owned(Operation::BatchPut, written, always, move |b| {
            b.batch_put(entries.clone(), options)
        })
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let written = keys.iter().map(|k| (k.clone(), Mark::Delete)).collect();
        self.write_owned(Operation::BatchDelete, written, always, move |b| {
            b.batch_delete(keys)
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        self.write_key(
            Operation::SetIfNotExists,
            key,
            Mark::Put,
            |set: &bool| *set,
            move |b| b.set_if_not_exists(key, value.clone(), options),
        )
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let timer = self.stats.start();
        StateFuture::new(async move {
            let written: &[(&[u8], Mark)] = &[(key, Mark::Delete)];
            let taken: fn(&Option<Bytes>) -> bool = Option::is_some;
            let result = self
                .dispatch(Operation::GetAndDelete, written, taken, move |b| {
                    b.get_and_delete(key)
                })
                .await;
            self.stats.read(timer, result)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let mark = if new.is_none() {
            Mark::Delete
        } else {
            Mark::Put
        };
        self.write_key(
            Operation::CompareAndSwap,
            key,
            mark,
            CasOutcome::is_swapped,
            move |b| b.compare_and_swap(key, expected, new.clone(), options),
        )
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        self.write_key(Operation::Increment, key, Mark::Put, always, move |b| {
            b.increment(key, delta, options)
        })
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        if update.reads_only(input) {
            return self.route_read(Operation::ReadAtomic, NONE, move |b| {
                b.update_atomic(key, update, input)
            });
        }
        self.write_key(
            Operation::UpdateAtomic,
            key,
            Mark::Updated,
            always,
            move |b| b.update_atomic(key, update, input),
        )
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let written = transaction
            .writes()
            .iter()
            .map(|write| match write {
                TransactionWrite::Put { key, .. } => (key.clone(), Mark::Put),
                TransactionWrite::Delete { key } => (key.clone(), Mark::Delete),
            })
            .collect();
        self.write_owned(
            Operation::Transaction,
            written,
            |applied: &bool| *applied,
            move |b| b.transaction(transaction.clone()),
        )
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        self.write(self.route_read(Operation::Clear, NONE, |b| b.clear()))
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.route_read(Operation::HealthCheck, NONE, |b| b.health_check())
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        StateFuture::new(async move {
            let mut stats = self.stats.snapshot("fallback");
            for (index, member) in self.members.iter().enumerate() {
                let health = match member.breaker.health() {
                    Health::Healthy => 0,
                    Health::Unhealthy { .. } => 1,
                    Health::Probing => 2,
                };
                let load =
                    |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
                stats
                    .details
                    .insert(format!("member{index}_health"), health);
                stats
                    .details
                    .insert(format!("member{index}_served"), load(&member.served));
                stats
                    .details
                    .insert(format!("member{index}_failures"), load(&member.failures));
            }
            Ok(stats)
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.route_read(Operation::Publish, NONE, move |b| {
            b.publish(channel, payload.clone())
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        self.route_read(Operation::Subscribe, NONE, move |b| b.subscribe(channel))
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        self.route_read(Operation::Maintenance, NONE, move |b| b.maintain(task))
    }
}
