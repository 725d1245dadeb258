//! [`ProvidedDefaults`]: a wrapper that implements only the required methods
//! of [`StateBackend`], so that the conformance suite exercises the trait's
//! provided implementations (the generic compare-and-swap paths a new
//! backend inherits).

use bytes::Bytes;
use statecraft::{
    BackendStats, Capabilities, CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions,
    StateBackend, StateFuture,
};

/// Forwards the required methods of [`StateBackend`] to `B` and leaves every
/// other method to the trait's default. It reports no pub/sub and no
/// transactions, which the defaults do not provide.
#[derive(Debug)]
pub struct ProvidedDefaults<B>(pub B);

impl<B: StateBackend> StateBackend for ProvidedDefaults<B> {
    fn name(&self) -> &'static str {
        "provided-defaults"
    }

    fn capabilities(&self) -> Capabilities {
        self.0
            .capabilities()
            .with_pubsub(false)
            .with_transactions(false)
            .with_atomic_batch(false)
            .with_key_tracking(false)
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.0.get(key)
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.0.put_with(key, value, options)
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.0.delete(key)
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.0.ttl(key)
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.0.list_keys_page(prefix, cursor, limit)
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        self.0.clear()
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        self.0.compare_and_swap(key, expected, new, options)
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.0.health_check()
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        self.0.stats()
    }
}
