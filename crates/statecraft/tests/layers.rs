//! The contract's capability methods, the `Null` backend, in-process pub/sub,
//! and the `Retry`, `Timeout` and `Metrics` layers (with paused Tokio time).

use std::future::pending;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use statecraft::{
    BackendStats, Capabilities, CasOutcome, Error, ErrorKind, HealthReport, KeyPage, KeyTtl,
    Limits, MaintenanceTask, MemoryBackend, Metrics, Namespaced, NullBackend, Operation,
    PutOptions, Retry, RetryPolicy, StateBackend, StateFuture, Timeout, Transaction,
};

/// A backend over memory whose `get`, `put_with` and `increment` fail with
/// `error` the first `failures` times, counting every call.
#[derive(Debug)]
struct Flaky {
    inner: MemoryBackend,
    failures: u32,
    calls: AtomicU32,
    error: fn(Operation) -> Error,
    hang: bool,
}

impl Flaky {
    fn new(failures: u32, error: fn(Operation) -> Error) -> Self {
        Flaky {
            inner: MemoryBackend::new(),
            failures,
            calls: AtomicU32::new(0),
            error,
            hang: false,
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Fails (asynchronously, as a remote store would) while failures
    /// remain; only a call that does not fail reaches the inner store.
    fn gate<'a, T: Send + 'a>(
        &'a self,
        op: Operation,
        then: impl FnOnce() -> StateFuture<'a, T> + Send + 'a,
    ) -> StateFuture<'a, T> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.failures;
        let hang = self.hang;
        StateFuture::new(async move {
            tokio::task::yield_now().await;
            if hang {
                pending::<()>().await;
            }
            if fail {
                return Err((self.error)(op));
            }
            then().await
        })
    }
}

impl StateBackend for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.gate(Operation::Get, move || self.inner.get(key))
    }
    fn put_with<'a>(&'a self, key: &'a [u8], value: Bytes, o: PutOptions) -> StateFuture<'a, ()> {
        self.gate(Operation::Put, move || self.inner.put_with(key, value, o))
    }
    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        self.inner.delete(key)
    }
    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        self.inner.ttl(key)
    }
    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        self.inner.list_keys_page(prefix, cursor, limit)
    }
    fn clear(&self) -> StateFuture<'_, ()> {
        self.inner.clear()
    }
    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        ttl: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        self.inner.compare_and_swap(key, expected, new, ttl)
    }
    fn increment<'a>(&'a self, key: &'a [u8], delta: i64, ttl: PutOptions) -> StateFuture<'a, i64> {
        self.gate(Operation::Increment, move || {
            self.inner.increment(key, delta, ttl)
        })
    }
    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.inner.health_check()
    }
    fn stats(&self) -> StateFuture<'_, BackendStats> {
        self.inner.stats()
    }
}

fn refused(op: Operation) -> Error {
    Error::new(ErrorKind::Unavailable, "connection refused").with_operation(op)
}

fn reply_lost(op: Operation) -> Error {
    Error::new(ErrorKind::Timeout, "reply lost")
        .with_operation(op)
        .maybe_applied(true)
}

fn invalid(op: Operation) -> Error {
    Error::new(ErrorKind::InvalidArgument, "bad").with_operation(op)
}

fn policy() -> RetryPolicy {
    RetryPolicy::new()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(1))
        .max_elapsed(Duration::from_secs(10))
}

#[tokio::test(start_paused = true)]
async fn retry_retries_temporary_errors_until_success() {
    let store = Retry::new(Flaky::new(2, refused), policy()).with_jitter_seed(1);
    store.put(b"k", "v".into()).await.expect("third attempt");
    assert_eq!(store.get_ref().calls(), 3);
    assert_eq!(
        store.get_ref().inner.get(b"k").await.ok().flatten(),
        Some(Bytes::from("v"))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts_with_the_last_error() {
    let store = Retry::new(Flaky::new(100, refused), policy());
    let err = store.get(b"k").await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Unavailable));
    assert_eq!(store.get_ref().calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_never_resends_a_write_that_may_have_been_applied_unless_idempotent() {
    let store = Retry::new(Flaky::new(1, reply_lost), policy());
    let err = store.increment(b"n", 1, PutOptions::new()).await.err();
    assert!(err.as_ref().is_some_and(Error::may_have_applied), "{err:?}");
    assert_eq!(store.get_ref().calls(), 1, "an increment is not sent twice");

    let store = Retry::new(Flaky::new(1, reply_lost), policy());
    store
        .put(b"k", "v".into())
        .await
        .expect("a put is idempotent");
    assert_eq!(store.get_ref().calls(), 2);

    // Refused before it ran: retried, and applied exactly once.
    let store = Retry::new(Flaky::new(2, refused), policy());
    assert_eq!(
        store.increment(b"n", 1, PutOptions::new()).await.ok(),
        Some(1)
    );
    assert_eq!(store.get_ref().calls(), 3);
    assert_eq!(
        store.get_ref().inner.get(b"n").await.ok().flatten(),
        Some(Bytes::from("1"))
    );
}

#[tokio::test(start_paused = true)]
async fn retry_does_not_retry_permanent_errors() {
    let store = Retry::new(Flaky::new(1, invalid), policy());
    assert!(store.get(b"k").await.is_err());
    assert_eq!(store.get_ref().calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_stops_at_max_elapsed() {
    let policy = RetryPolicy::new()
        .max_attempts(1_000)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(100))
        .max_elapsed(Duration::from_secs(1));
    let store = Retry::new(Flaky::new(u32::MAX, refused), policy);
    let started = tokio::time::Instant::now();
    assert!(store.get(b"k").await.is_err());
    assert!(
        started.elapsed() <= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let calls = store.get_ref().calls();
    assert!(calls > 5 && calls < 1_000, "{calls} attempts in 1 s");
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_a_hung_operation_and_says_writes_may_have_applied() {
    let mut flaky = Flaky::new(0, refused);
    flaky.hang = true;
    let store =
        Timeout::new(flaky, Duration::from_millis(50)).write_timeout(Duration::from_millis(80));
    let started = tokio::time::Instant::now();
    let err = store.get(b"k").await.expect_err("a timeout");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_temporary() && !err.may_have_applied());
    assert_eq!(started.elapsed(), Duration::from_millis(50));

    let started = tokio::time::Instant::now();
    let err = store
        .increment(b"n", 1, PutOptions::new())
        .await
        .expect_err("a timeout");
    assert_eq!(started.elapsed(), Duration::from_millis(80));
    assert!(err.may_have_applied() && !err.is_retryable(), "{err}");
    assert_eq!(err.operation(), Some(Operation::Increment));
}

#[tokio::test(start_paused = true)]
async fn retry_over_timeout_gives_each_attempt_a_deadline() {
    let mut flaky = Flaky::new(0, refused);
    flaky.hang = true;
    let store = Retry::new(Timeout::new(flaky, Duration::from_millis(50)), policy());
    assert!(store.get(b"k").await.is_err());
    assert_eq!(
        store.get_ref().get_ref().calls(),
        4,
        "reads are retried after a timeout"
    );
    let err = store.increment(b"n", 1, PutOptions::new()).await.err();
    assert!(err.is_some_and(|e| e.may_have_applied()));
    assert_eq!(store.get_ref().get_ref().calls(), 5, "increments are not");
}

#[tokio::test]
async fn metrics_count_operations_and_errors_by_label() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = metrics::with_local_recorder(&recorder, || {
        Metrics::new(
            MemoryBackend::builder().limits(Limits::new(16, 4)).build(),
            "l1",
        )
    });
    for _ in 0..3 {
        store.put(b"k", "v".into()).await.expect("put");
    }
    store.get(b"k").await.expect("get");
    store
        .put(b"k", "too large".into())
        .await
        .expect_err("the value is over the limit");
    let mut puts_ok = 0;
    let mut puts_err = 0;
    let mut kinds = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let has = |k: &str, v: &str| labels.iter().any(|(lk, lv)| lk == k && lv == v);
        assert!(has("backend", "memory") && has("layer", "l1"), "{labels:?}");
        if let DebugValue::Counter(n) = value {
            match key.key().name() {
                "statecraft_operations_total"
                    if has("operation", "put") && has("outcome", "ok") =>
                {
                    puts_ok = n
                }
                "statecraft_operations_total"
                    if has("operation", "put") && has("outcome", "error") =>
                {
                    puts_err = n
                }
                "statecraft_errors_total" if n > 0 => kinds.push(labels),
                _ => {}
            }
        }
    }
    assert_eq!((puts_ok, puts_err), (3, 1));
    assert_eq!(kinds.len(), 1);
    assert!(
        kinds[0]
            .iter()
            .any(|(k, v)| k == "kind" && v == "value_too_large"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn capabilities_are_reachable_through_a_dyn_backend() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    assert!(memory.capabilities().pubsub);
    let mut sub = memory.subscribe("news").await.expect("subscribe");
    memory
        .publish("news", "hello".into())
        .await
        .expect("publish");
    let message = sub.next().await.and_then(|m| m.ok()).expect("a message");
    assert_eq!(
        (message.channel.as_str(), &message.payload[..]),
        ("news", &b"hello"[..])
    );
    assert_eq!(
        memory.maintain(MaintenanceTask::PurgeExpired).await.ok(),
        Some(0)
    );

    let err = memory
        .transaction(Transaction::new().put("a", "1"))
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unsupported));
    assert!(!memory.capabilities().transactions);
    let err = memory.maintain(MaintenanceTask::Vacuum).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unsupported));
}

#[tokio::test]
async fn memory_pubsub_reaches_every_clone() {
    let a = MemoryBackend::new();
    let b = a.clone();
    let mut on_a = a.subscribe("c").await.expect("subscribe");
    let mut on_b = b.subscribe("c").await.expect("subscribe");
    b.put(b"shared", "1".into()).await.expect("put");
    assert_eq!(
        a.get(b"shared").await.ok().flatten(),
        Some(Bytes::from("1"))
    );
    a.publish("c", "x".into()).await.expect("publish");
    for sub in [&mut on_a, &mut on_b] {
        let got = sub.next().await.and_then(|m| m.ok()).map(|m| m.payload);
        assert_eq!(got, Some(Bytes::from("x")));
    }
    let other = MemoryBackend::new();
    let mut elsewhere = other.subscribe("c").await.expect("subscribe");
    a.publish("c", "y".into()).await.expect("publish");
    assert!(
        futures_util::FutureExt::now_or_never(elsewhere.next()).is_none(),
        "another backend is another bus"
    );
}

#[tokio::test]
async fn namespaced_forwards_pubsub_under_its_prefix() {
    let shared = Arc::new(MemoryBackend::new());
    let tenant_a = Namespaced::new(shared.clone(), "a:");
    let tenant_b = Namespaced::new(shared.clone(), "b:");
    assert_eq!(tenant_a.capabilities().pubsub, shared.capabilities().pubsub);
    let mut raw = shared.subscribe("a:inv").await.expect("subscribe");
    let mut on_b = tenant_b.subscribe("inv").await.expect("subscribe");
    let mut on_a = tenant_a.subscribe("inv").await.expect("subscribe");
    tenant_a.publish("inv", "k".into()).await.expect("publish");
    let got = on_a.next().await.and_then(|m| m.ok()).expect("a message");
    assert_eq!(
        got.channel, "inv",
        "the channel comes back without the prefix"
    );
    let got = raw.next().await.and_then(|m| m.ok()).expect("a message");
    assert_eq!(got.channel, "a:inv");
    assert!(futures_util::FutureExt::now_or_never(on_b.next()).is_none());
}

#[tokio::test]
async fn null_stores_nothing_and_always_succeeds() {
    let null: Arc<dyn StateBackend> = Arc::new(NullBackend::new());
    null.put(b"k", "v".into()).await.expect("put");
    assert_eq!(null.get(b"k").await.ok(), Some(None));
    assert_eq!(null.ttl(b"k").await.ok(), Some(KeyTtl::Missing));
    assert!(null
        .set_if_not_exists(b"k", "v".into(), PutOptions::new())
        .await
        .unwrap_or(false));
    assert_eq!(
        null.increment(b"n", 5, PutOptions::new()).await.ok(),
        Some(5)
    );
    assert_eq!(
        null.increment(b"n", 5, PutOptions::new()).await.ok(),
        Some(5),
        "nothing was kept"
    );
    assert_eq!(null.count().await.ok(), Some(0));
    let cas = null
        .compare_and_swap(b"k", Some(b"v"), None, PutOptions::new())
        .await
        .ok();
    assert_eq!(cas, Some(CasOutcome::Conflict(None)));
    let stats = null.stats().await.expect("stats");
    assert!(stats.misses >= 3 && stats.writes >= 4, "{stats:?}");
    let err = null.publish("c", Bytes::new()).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unsupported));
}
