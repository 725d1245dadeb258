//! [`Switch`]: a test store that can be switched off (every call then
//! fails as an unreachable store does), made to yield on every call, or
//! slowed down, for the layer tests that need a failing or a slow member.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use statecraft::{
    BackendStats, Capabilities, CasOutcome, Error, ErrorKind, HealthReport, KeyPage, KeyTtl,
    MemoryBackend, PutOptions, StateBackend, StateFuture,
};

/// A memory backend that can be switched off, and made to yield before
/// every call as a remote store would.
#[derive(Debug, Clone)]
pub struct Switch {
    /// The store behind the switch (reach it directly to check state).
    pub inner: MemoryBackend,
    /// While set, every call fails as an unreachable store does.
    pub down: Arc<AtomicBool>,
    /// While nonzero, every call first sleeps this many milliseconds (on
    /// the Tokio clock; a call dropped meanwhile has not happened).
    pub latency_ms: Arc<AtomicU64>,
    yielding: bool,
}

impl Switch {
    /// A switch in front of a fresh memory backend, on; with `yielding`,
    /// every call yields to the runtime first, as a remote store would.
    pub fn new(yielding: bool) -> Self {
        Switch {
            inner: MemoryBackend::new(),
            down: Arc::default(),
            latency_ms: Arc::default(),
            yielding,
        }
    }

    fn check<'a, T: Send + 'a>(
        &'a self,
        up: impl FnOnce() -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            return StateFuture::new(async move {
                tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
                self.check_now(up).await
            });
        }
        if self.yielding {
            return StateFuture::new(async move {
                tokio::task::yield_now().await;
                self.check_now(up).await
            });
        }
        self.check_now(up)
    }

    fn check_now<'a, T: Send + 'a>(
        &self,
        up: impl FnOnce() -> StateFuture<'a, T>,
    ) -> StateFuture<'a, T> {
        if self.down.load(Ordering::SeqCst) {
            return StateFuture::ready(Err(
                Error::new(ErrorKind::Unavailable, "switched off").temporary(true)
            ));
        }
        up()
    }
}

impl StateBackend for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.check(move || self.inner.get(key))
    }
    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        self.check(move || self.inner.get_with_ttl(key))
    }
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.check(move || self.inner.put_with(key, value, options))
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.check(move || self.inner.delete(key))
    }
    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.check(move || self.inner.ttl(key))
    }
    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.check(move || self.inner.list_keys_page(prefix, cursor, limit))
    }
    fn clear(&self) -> StateFuture<'_, ()> {
        self.check(move || self.inner.clear())
    }
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        self.check(move || self.inner.compare_and_swap(key, expected, new, options))
    }
    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.check(move || self.inner.health_check())
    }
    fn stats(&self) -> StateFuture<'_, BackendStats> {
        self.inner.stats()
    }
}
