//! [`Namespaced`]: a backend seen through a key prefix.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::backend::atomic::AtomicUpdate;
use crate::backend::capabilities::Capabilities;
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::watch::{KeyChange, KeyChanges};
use crate::backend::{StateBackend, LIST_PAGE};

/// A backend whose keys all live under `prefix` in an inner backend.
///
/// Keys are given and listed without the prefix; `count` and `clear` touch
/// only the namespace. Several `Namespaced` views over one backend never see
/// each other's keys as long as no prefix is a prefix of another.
///
/// Everything else the inner backend can do is forwarded: transactions have
/// their keys prefixed, pub/sub channels are prefixed the same way (the
/// prefix as text, or `hex:` and its hex digits when it is not UTF-8), and
/// received messages carry the channel name without it.
#[derive(Debug, Clone)]
pub struct Namespaced<B> {
    inner: B,
    prefix: Bytes,
    channel_prefix: String,
}

impl<B: StateBackend> Namespaced<B> {
    /// A view of `inner` under `prefix` (for example `"sessions:"`).
    pub fn new(inner: B, prefix: impl Into<Bytes>) -> Self {
        let prefix: Bytes = prefix.into();
        let channel_prefix = match std::str::from_utf8(&prefix) {
            Ok(text) => text.to_owned(),
            Err(_) => {
                let hex: String = prefix.iter().map(|b| format!("{b:02x}")).collect();
                format!("hex:{hex}:")
            }
        };
        Namespaced {
            inner,
            prefix,
            channel_prefix,
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The inner backend.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner backend, consuming the view.
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn full_key(&self, key: &[u8]) -> Bytes {
        let mut full = BytesMut::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full.freeze()
    }

    fn full_channel(&self, channel: &str) -> String {
        format!("{}{channel}", self.channel_prefix)
    }

    fn strip(&self, key: Bytes) -> Bytes {
        if key.starts_with(&self.prefix) {
            key.slice(self.prefix.len()..)
        } else {
            key
        }
    }
}

impl<B: StateBackend> StateBackend for Namespaced<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::new(async move { self.inner.get(&self.full_key(key)).await })
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        StateFuture::new(async move {
            self.inner
                .put_with(&self.full_key(key), value, options)
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::new(async move { self.inner.delete(&self.full_key(key)).await })
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        StateFuture::new(async move { self.inner.ttl(&self.full_key(key)).await })
    }

    fn contains<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        StateFuture::new(async move { self.inner.contains(&self.full_key(key)).await })
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        StateFuture::new(async move {
            // Ordered backends' cursors are keys: translate them so that the
            // caller never sees the namespace. Others' cursors are opaque.
            let ordered = self.inner.capabilities().ordered_listing;
            let inner_cursor = match cursor {
                Some(c) if ordered => Some(self.full_key(c)),
                Some(c) => Some(Bytes::copy_from_slice(c)),
                None => None,
            };
            let page = self
                .inner
                .list_keys_page(&self.full_key(prefix), inner_cursor.as_deref(), limit)
                .await?;
            Ok(KeyPage {
                keys: page.keys.into_iter().map(|k| self.strip(k)).collect(),
                next: if ordered {
                    page.next.map(|n| self.strip(n))
                } else {
                    page.next
                },
            })
        })
    }

    fn list_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, Vec<Bytes>> {
        StateFuture::new(async move {
            let keys = self.inner.list_keys(&self.full_key(prefix)).await?;
            Ok(keys.into_iter().map(|k| self.strip(k)).collect())
        })
    }

    fn count(&self) -> StateFuture<'_, u64> {
        StateFuture::new(async move {
            if !self.inner.capabilities().ordered_listing {
                // Unordered listings may repeat keys; count distinct ones.
                return Ok(self.inner.list_keys(&self.prefix).await?.len() as u64);
            }
            let mut count = 0u64;
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .inner
                    .list_keys_page(&self.prefix, cursor.as_deref(), LIST_PAGE)
                    .await?;
                count += page.keys.len() as u64;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(count),
                }
            }
        })
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        StateFuture::new(async move {
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .inner
                    .list_keys_page(&self.prefix, cursor.as_deref(), LIST_PAGE)
                    .await?;
                if !page.keys.is_empty() {
                    self.inner.batch_delete(&page.keys).await?;
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        StateFuture::new(async move {
            let full: Vec<Bytes> = keys.iter().map(|k| self.full_key(k)).collect();
            self.inner.batch_get(&full).await
        })
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let full = entries
            .into_iter()
            .map(|(k, v)| (self.full_key(&k), v))
            .collect();
        self.inner.batch_put(full, options)
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        StateFuture::new(async move {
            let full: Vec<Bytes> = keys.iter().map(|k| self.full_key(k)).collect();
            self.inner.batch_delete(&full).await
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, bool> {
        StateFuture::new(async move {
            self.inner
                .set_if_not_exists(&self.full_key(key), value, options)
                .await
        })
    }

    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        StateFuture::new(async move { self.inner.get_with_ttl(&self.full_key(key)).await })
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        StateFuture::new(async move { self.inner.get_and_delete(&self.full_key(key)).await })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        StateFuture::new(async move {
            self.inner
                .compare_and_swap(&self.full_key(key), expected, new, options)
                .await
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        options: PutOptions,
    ) -> StateFuture<'a, i64> {
        StateFuture::new(async move {
            self.inner
                .increment(&self.full_key(key), delta, options)
                .await
        })
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.inner.health_check()
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        self.inner.stats()
    }

    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        StateFuture::new(async move {
            self.inner
                .publish(&self.full_channel(channel), payload)
                .await
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        StateFuture::new(async move {
            let subscription = self.inner.subscribe(&self.full_channel(channel)).await?;
            let prefix = self.channel_prefix.clone();
            Ok(Subscription::new(subscription.map(move |message| {
                message.map(|mut message| {
                    if let Some(bare) = message.channel.strip_prefix(&prefix) {
                        message.channel = bare.to_owned();
                    }
                    message
                })
            })))
        })
    }

    fn update_atomic<'a>(
        &'a self,
        key: &'a [u8],
        update: &'a dyn AtomicUpdate,
        input: &'a [u8],
    ) -> StateFuture<'a, Bytes> {
        StateFuture::new(async move {
            self.inner
                .update_atomic(&self.full_key(key), update, input)
                .await
        })
    }

    fn watch_keys<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, KeyChanges> {
        StateFuture::new(async move {
            let changes = self.inner.watch_keys(&self.full_key(prefix)).await?;
            let namespace = self.prefix.clone();
            Ok(KeyChanges::new(changes.map(move |change| {
                change.map(|change| match change {
                    KeyChange::Keys(keys) => KeyChange::Keys(
                        keys.into_iter()
                            .filter(|key| key.starts_with(&namespace))
                            .map(|key| key.slice(namespace.len()..))
                            .collect(),
                    ),
                    other => other,
                })
            })))
        })
    }

    fn transaction(&self, transaction: Transaction) -> StateFuture<'_, bool> {
        let transaction = transaction.map_keys(|key| self.full_key(&key));
        self.inner.transaction(transaction)
    }

    fn maintain(&self, task: MaintenanceTask) -> StateFuture<'_, u64> {
        self.inner.maintain(task)
    }
}
