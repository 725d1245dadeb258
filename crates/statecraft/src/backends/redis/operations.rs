//! The [`StateBackend`] contract over Redis: one round trip per operation.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Pipeline, Value};

use crate::backend::atomic::{by_compare_and_swap, AtomicUpdate};
use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::watch::KeyChanges;
use crate::backend::StateBackend;

use super::backend::RedisBackend;
use super::connection::Conn;
use super::errors::{increment_error, redis_error, Idempotent};

impl StateBackend for RedisBackend {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            distributed: true,
            native_ttl: true,
            transactions: false,
            pubsub: true,
            ordered_listing: false,
            atomic_batch: false,
            key_tracking: !self.inner.config.is_cluster(),
        }
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::Get, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Get,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        redis::cmd("GET")
                            .arg(full.as_slice())
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                            .map(|value| value.map(Bytes::from))
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_entry(Operation::Put, key, &value)?;
            let ttl = inner.ttl_of(options);
            let (full, value) = (&full, &value);
            inner
                .run(
                    Operation::Put,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(full.as_slice()).arg(value.as_ref());
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.exec_async(&mut conn).await.map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_key(Operation::Delete, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Delete,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("DEL")
                            .arg(full.as_slice())
                            .query_async::<u64>(&mut conn)
                            .await
                            .map(|n| n > 0)
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::GetWithTtl, key)?;
            let mut invocation = inner.get_with_ttl.prepare_invoke();
            invocation.key(full.as_slice());
            let invocation = &invocation;
            inner
                .run(
                    Operation::GetWithTtl,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        let reply: Option<(Vec<u8>, i64)> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        Ok(reply.and_then(|(value, ms)| {
                            let ttl = match ms {
                                -2 => return None,
                                -1 => KeyTtl::Persistent,
                                ms => KeyTtl::ExpiresIn(Duration::from_millis(
                                    u64::try_from(ms).unwrap_or(0),
                                )),
                            };
                            Some((Bytes::from(value), ttl))
                        }))
                    },
                )
                .await
        }))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::Ttl, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Ttl,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        let ms = redis::cmd("PTTL")
                            .arg(full.as_slice())
                            .query_async::<i64>(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        Ok(match ms {
                            -2 => KeyTtl::Missing,
                            -1 => KeyTtl::Persistent,
                            ms => KeyTtl::ExpiresIn(Duration::from_millis(
                                u64::try_from(ms).unwrap_or(0),
                            )),
                        })
                    },
                )
                .await
        }))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_scan(self.page(prefix, cursor, limit)))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_scan(async move {
            let mut seen = std::collections::HashSet::new();
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .page(b"", cursor.as_deref(), crate::backend::LIST_PAGE)
                    .await
                    .map_err(|err| err.with_operation(Operation::Count))?;
                seen.extend(page.keys);
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(seen.len() as u64),
                }
            }
        }))
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .page(b"", cursor.as_deref(), crate::backend::LIST_PAGE)
                    .await
                    .map_err(|err| err.with_operation(Operation::Clear))?;
                if !page.keys.is_empty() {
                    self.remove_keys(&page.keys)
                        .await
                        .map_err(|err| err.with_operation(Operation::Clear))?;
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        }))
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = match &new {
                Some(value) => self.check_entry(Operation::CompareAndSwap, key, value)?,
                None => self.check_key(Operation::CompareAndSwap, key)?,
            };
            let ttl = inner.ttl_of(options).unwrap_or(0);
            let mut invocation = inner.cas.prepare_invoke();
            invocation
                .key(full.as_slice())
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.as_deref().unwrap_or_default())
                .arg(ttl);
            let invocation = &invocation;
            inner
                .run(
                    Operation::CompareAndSwap,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let reply: Vec<Value> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        let mut reply = reply.into_iter();
                        let swapped: i64 = reply
                            .next()
                            .map(redis::from_redis_value)
                            .transpose()
                            .map_err(|err| redis_error(err.into()))?
                            .unwrap_or(0);
                        if swapped == 1 {
                            return Ok(CasOutcome::Swapped);
                        }
                        let current: Option<Vec<u8>> = reply
                            .next()
                            .map(redis::from_redis_value)
                            .transpose()
                            .map_err(|err| redis_error(err.into()))?;
                        Ok(CasOutcome::Conflict(current.map(Bytes::from)))
                    },
                )
                .await
        }))
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(
                    Operation::HealthCheck,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        let started = Instant::now();
                        match conn {
                            Conn::Single(mut single) => {
                                redis::cmd("PING")
                                    .exec_async(&mut single)
                                    .await
                                    .map_err(redis_error)?;
                            }
                            Conn::Cluster(mut cluster) => {
                                let reply = cluster
                                    .route_command(
                                        redis::cmd("PING"),
                                        RoutingInfo::MultiNode((
                                            MultipleNodeRoutingInfo::AllMasters,
                                            None,
                                        )),
                                    )
                                    .await
                                    .map_err(redis_error)?;
                                if let Value::Map(entries) = reply {
                                    for (_, value) in entries {
                                        value.extract_error().map_err(redis_error)?;
                                    }
                                }
                            }
                        }
                        Ok(HealthReport::new(inner.name, started.elapsed()))
                    },
                )
                .await
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.publish_message(channel, payload)
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        self.subscribe_channel(channel)
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        StateFuture::new(async move {
            match self.run_update(key, update, input).await {
                Some(result) => result,
                None => by_compare_and_swap(self, key, update, input).await,
            }
        })
    }

    fn watch_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, KeyChanges> {
        self.watch_prefix(prefix)
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let mut stats = inner.stats.snapshot(inner.name);
            for (name, value) in self.server_figures().await? {
                stats.details.insert(name, value);
            }
            stats
                .details
                .insert("pool_connections".into(), inner.conns.len() as u64);
            stats
                .details
                .insert("retries".into(), inner.retries.load(Ordering::Relaxed));
            stats
                .details
                .insert("timeouts".into(), inner.timeouts.load(Ordering::Relaxed));
            Ok(stats)
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full: Vec<Vec<u8>> = keys
                .iter()
                .map(|key| self.check_key(Operation::BatchGet, key))
                .collect::<Result<_>>()?;
            if full.is_empty() {
                return Ok(Vec::new());
            }
            let groups = self.groups(&full);
            let (full, groups) = (&full, &groups);
            let fetched = inner
                .run(
                    Operation::BatchGet,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        try_join_all(groups.iter().map(|group| {
                            let mut conn = conn.clone();
                            async move {
                                let mut cmd = redis::cmd("MGET");
                                for &index in group {
                                    cmd.arg(full[index].as_slice());
                                }
                                cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                                    .await
                                    .map_err(redis_error)
                            }
                        }))
                        .await
                    },
                )
                .await?;
            let mut values = vec![None; full.len()];
            for (group, found) in groups.iter().zip(fetched) {
                for (&index, value) in group.iter().zip(found) {
                    values[index] = value.map(Bytes::from);
                }
            }
            Ok(values)
        }))
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full: Vec<Vec<u8>> = entries
                .iter()
                .map(|(key, value)| self.check_entry(Operation::BatchPut, key, value))
                .collect::<Result<_>>()?;
            if full.is_empty() {
                return Ok(());
            }
            let ttl = inner.ttl_of(options);
            let groups = self.groups(&full);
            // Within a group the pipeline keeps the caller's order, so the
            // last write of a repeated key wins, as it would one by one.
            let pipelines: Vec<Pipeline> = groups
                .iter()
                .map(|group| {
                    let mut pipe = redis::pipe();
                    for &index in group {
                        let cmd = pipe
                            .cmd("SET")
                            .arg(full[index].as_slice())
                            .arg(entries[index].1.as_ref());
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.ignore();
                    }
                    pipe
                })
                .collect();
            let pipelines = &pipelines;
            inner
                .run(
                    Operation::BatchPut,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        try_join_all(pipelines.iter().map(|pipe| {
                            let mut conn = conn.clone();
                            async move { pipe.exec_async(&mut conn).await.map_err(redis_error) }
                        }))
                        .await
                        .map(drop)
                    },
                )
                .await
        }))
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(self.remove_keys(keys)))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_entry(Operation::SetIfNotExists, key, &value)?;
            let ttl = inner.ttl_of(options);
            let (full, value) = (&full, &value);
            inner
                .run(
                    Operation::SetIfNotExists,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(full.as_slice()).arg(value.as_ref()).arg("NX");
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.query_async::<Option<String>>(&mut conn)
                            .await
                            .map(|reply| reply.is_some())
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::GetAndDelete, key)?;
            let full = &full;
            inner
                .run(
                    Operation::GetAndDelete,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("GETDEL")
                            .arg(full.as_slice())
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                            .map(|value| value.map(Bytes::from))
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_key(Operation::Increment, key)?;
            let ttl = inner.ttl_of(options).unwrap_or(0);
            let mut invocation = inner.increment.prepare_invoke();
            invocation.key(full.as_slice()).arg(delta).arg(ttl);
            let invocation = &invocation;
            inner
                .run(
                    Operation::Increment,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let raw: Vec<u8> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(increment_error)?;
                        crate::raw::counter::parse_counter(&raw)
                    },
                )
                .await
        }))
    }
}

impl RedisBackend {
    /// One page of a listing, not counted in the statistics (so that
    /// `count` and `clear` count once).
    async fn page(&self, prefix: &[u8], cursor: Option<&[u8]>, limit: usize) -> Result<KeyPage> {
        let inner = &*self.inner;
        if limit == 0 {
            return Err(
                Error::new(ErrorKind::InvalidArgument, "a page holds at least one key")
                    .context(inner.name, Operation::ListKeys),
            );
        }
        inner
            .run(
                Operation::ListKeys,
                Some(prefix),
                Idempotent::Yes,
                |mut conn| async move { inner.list_page(&mut conn, prefix, cursor, limit).await },
            )
            .await
    }

    /// Deletes `keys`, not counted in the statistics.
    async fn remove_keys(&self, keys: &[Bytes]) -> Result<u64> {
        let inner = &*self.inner;
        let full: Vec<Vec<u8>> = keys
            .iter()
            .map(|key| self.check_key(Operation::BatchDelete, key))
            .collect::<Result<_>>()?;
        if full.is_empty() {
            return Ok(0);
        }
        let groups = self.groups(&full);
        let (full, groups) = (&full, &groups);
        inner
            .run(
                Operation::BatchDelete,
                None,
                Idempotent::No,
                |conn| async move {
                    let counts = try_join_all(groups.iter().map(|group| {
                        let mut conn = conn.clone();
                        async move {
                            let mut cmd = redis::cmd("DEL");
                            for &index in group {
                                cmd.arg(full[index].as_slice());
                            }
                            cmd.query_async::<u64>(&mut conn).await.map_err(redis_error)
                        }
                    }))
                    .await?;
                    Ok(counts.into_iter().sum())
                },
            )
            .await
    }
}
