//! [`NullBackend`]: stores nothing. Every write succeeds, every read misses.

use std::time::Instant;

use bytes::Bytes;

use crate::backend::capabilities::Capabilities;
use crate::backend::future::StateFuture;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::stats::BackendStats;
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

const NAME: &str = "null";

/// A backend that stores nothing: every write succeeds and is forgotten,
/// every read misses, listings are empty.
///
/// It is the fail-open end of a fallback chain — when every real store is
/// down, calls still answer, as if the state were empty — and a baseline for
/// benchmarks. Atomic operations answer as they would on an empty store that
/// forgets at once: `set_if_not_exists` succeeds, `increment` returns
/// `delta`, `compare_and_swap` succeeds only when it expected absence.
///
/// ```
/// # async fn demo() -> statecraft::Result<()> {
/// use statecraft::{NullBackend, StateBackend};
/// let null = NullBackend::new();
/// null.put(b"k", "v".into()).await?;
/// assert_eq!(null.get(b"k").await?, None);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct NullBackend {
    stats: StatsRecorder,
}

impl NullBackend {
    /// A null backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn read<T>(&self, value: T) -> StateFuture<'_, T> {
        let timer = self.stats.start();
        self.stats
            .finish(timer, crate::raw::recorder::Outcome::Miss);
        StateFuture::ready(Ok(value))
    }

    fn write<T>(&self, value: T) -> StateFuture<'_, T> {
        let timer = self.stats.start();
        StateFuture::ready(self.stats.write(timer, Ok(value)))
    }
}

impl StateBackend for NullBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_ordered_listing(true)
    }

    fn get<'a>(&'a self, _key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.read(None)
    }

    fn put_with<'a>(
        &'a self,
        _key: &'a [u8],
        _value: Bytes,
        _options: PutOptions,
    ) -> StateFuture<'a, ()> {
        self.write(())
    }

    fn delete<'a>(&'a self, _key: &'a [u8]) -> StateFuture<'a, bool> {
        self.write(false)
    }

    fn ttl<'a>(&'a self, _key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.read(KeyTtl::Missing)
    }

    fn contains<'a>(&'a self, _key: &'a [u8]) -> StateFuture<'a, bool> {
        self.read(false)
    }

    fn list_keys_page<'a>(
        &'a self,
        _prefix: &'a [u8],
        _cursor: Option<&'a [u8]>,
        _limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.read(KeyPage::default())
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        self.write(())
    }

    fn compare_and_swap<'a>(
        &'a self,
        _key: &'a [u8],
        expected: Option<&'a [u8]>,
        _new: Option<Bytes>,
        _options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        self.write(match expected {
            None => CasOutcome::Swapped,
            Some(_) => CasOutcome::Conflict(None),
        })
    }

    fn set_if_not_exists<'a>(
        &'a self,
        _key: &'a [u8],
        _value: Bytes,
        _options: PutOptions,
    ) -> StateFuture<'a, bool> {
        self.write(true)
    }

    fn get_and_delete<'a>(&'a self, _key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.write(None)
    }

    fn increment<'a>(
        &'a self,
        _key: &'a [u8],
        delta: i64,
        _options: PutOptions,
    ) -> StateFuture<'a, i64> {
        self.write(delta)
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let started = Instant::now();
        StateFuture::ready(Ok(HealthReport::new(NAME, started.elapsed())))
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        StateFuture::ready(Ok(self.stats.snapshot(NAME)))
    }
}
