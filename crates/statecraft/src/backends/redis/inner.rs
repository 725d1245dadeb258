//! The shared state behind a [`RedisBackend`](super::RedisBackend): the
//! connection pool, statistics, and the retrying round-trip loop.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::{RedisError, Script};

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::options::PutOptions;
use crate::raw::recorder::{Found, StatsRecorder};

use super::config::RedisConfig;
use super::connection::{Conn, Pooled, SingleConn};
use super::errors::{not_executed, Idempotent};

/// The TTL argument of a write, in whole milliseconds rounded up (never 0,
/// which would mean "no TTL").
pub(super) fn ttl_millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| {
        u64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1))
            .unwrap_or(MAX_TTL_MS)
            .min(MAX_TTL_MS)
    })
}

/// The longest TTL written: 100 years (Redis rejects an expiry that
/// overflows its millisecond clock); longer ones are cut to it.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

pub(super) struct Inner {
    pub(super) name: &'static str,
    pub(super) conns: Vec<Pooled>,
    pub(super) next_conn: AtomicUsize,
    /// A client for dedicated pub/sub connections.
    /// Clients for dedicated pub/sub connections: the server, or each
    /// Cluster seed node in turn.
    pub(super) pubsub_clients: Vec<redis::Client>,
    pub(super) config: RedisConfig,
    pub(super) stats: StatsRecorder,
    pub(super) retries: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) cas: Script,
    pub(super) increment: Script,
    pub(super) get_with_ttl: Script,
    /// The Lua copies of the atomic updates run so far.
    pub(super) scripts: super::atomic::Scripts,
    pub(super) jitter: std::collections::hash_map::RandomState,
    pub(super) jitter_seq: AtomicU64,
}

impl Inner {
    fn conn(&self) -> (Conn, Option<&Arc<SingleConn>>) {
        let at = match self.conns.len() {
            1 => 0,
            n => self.next_conn.fetch_add(1, Ordering::Relaxed) % n,
        };
        match &self.conns[at] {
            Pooled::Single(single) => (Conn::Single(single.get()), Some(single)),
            Pooled::Cluster(cluster) => (Conn::Cluster(cluster.clone()), None),
        }
    }

    /// Counts `work` in the statistics as a write.
    pub(super) async fn counted_write<T>(
        &self,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = work.await;
        self.stats.write(timer, result)
    }

    /// Counts `work` in the statistics as hits and misses.
    pub(super) async fn counted_read<T: Found>(
        &self,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timer = self.stats.start();
        let result = work.await;
        self.stats.read(timer, result)
    }

    /// Counts `work` in the statistics as a scan.
    pub(super) async fn counted_scan<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let timer = self.stats.start();
        let result = work.await;
        self.stats.scan(timer, result)
    }

    pub(super) fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.config.key_prefix.len() + key.len());
        full.extend_from_slice(&self.config.key_prefix);
        full.extend_from_slice(key);
        full
    }

    /// The TTL in milliseconds `options` give a value written now (`None`: never expires).
    pub(super) fn ttl_of(&self, options: PutOptions) -> Option<u64> {
        ttl_millis(options.resolve_ttl(self.config.default_ttl))
    }

    /// A random backoff for retry `attempt` (0-based): up to
    /// `min(max, base × 2^attempt)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .retry_base
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.config.retry_max);
        let mut hasher = self.jitter.build_hasher();
        hasher.write_u64(self.jitter_seq.fetch_add(1, Ordering::Relaxed));
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(fraction)
    }

    /// Runs `attempt` with the round-trip deadline, retrying temporary
    /// failures as [`Idempotent`] allows, and adds the error context.
    pub(super) async fn run<T, F, Fut>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        idempotent: Idempotent,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = std::result::Result<T, Error>>,
    {
        let mut tries = 0u32;
        loop {
            let (conn, single) = self.conn();
            // A single server's connection enforces the response timeout on
            // every request itself (and never waits for a reconnect), so a
            // second timer is only needed for the Cluster client, whose
            // internal retries and slot refreshes could run longer.
            let deadline = single
                .is_none()
                .then(|| Box::pin(tokio::time::sleep(self.config.response_timeout)));
            let outcome = Bounded {
                work: attempt(conn),
                deadline,
                after: self.config.response_timeout,
            }
            .await;
            if outcome
                .as_ref()
                .is_err_and(|err| err.kind() == ErrorKind::Timeout)
            {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let cause = std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<RedisError>());
            if let (Some(single), Some(cause)) = (single, cause) {
                single.on_error(cause);
            }
            let never_sent =
                err.kind() == ErrorKind::Unavailable && cause.is_some_and(not_executed);
            let retry = err.is_temporary()
                && tries < self.config.max_retries
                && (idempotent == Idempotent::Yes || never_sent);
            if !retry {
                // A write whose request may have reached the server says so,
                // so that no layer above sends it again unless idempotent.
                let maybe_applied = err.is_temporary() && !never_sent && !op.is_read();
                let err = err.context(self.name, op).maybe_applied(maybe_applied);
                return Err(match key {
                    Some(key) => err.with_key(key),
                    None => err,
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            // Boxed: a timer is large, and only a retry needs one.
            Box::pin(tokio::time::sleep(self.backoff(tries))).await;
            tries += 1;
        }
    }
}

pin_project_lite::pin_project! {
    /// `work`, failed with a timeout once `deadline` (if any) passes. One
    /// future for both kinds of connection, so that a request's future
    /// holds its work once and the timer only when there is one.
    struct Bounded<F> {
        #[pin]
        work: F,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        after: Duration,
    }
}

impl<T, F: Future<Output = Result<T>>> Future for Bounded<F> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.work.poll(cx) {
            return Poll::Ready(outcome);
        }
        let expired = match this.deadline {
            Some(deadline) => deadline.as_mut().poll(cx).is_ready(),
            None => false,
        };
        match expired {
            true => Poll::Ready(Err(Error::new(
                ErrorKind::Timeout,
                format!("no answer within the response timeout of {:?}", this.after),
            ))),
            false => Poll::Pending,
        }
    }
}
