//! `Cached` beyond the conformance suite: two instances over one store
//! never serve a value older than the invalidation bound allows (over
//! memory, Redis and PostgreSQL), a lost or silent subscription suspends
//! L1, entries never outlive the store's TTL, and the size bound holds.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use statecraft::{
    BackendStats, Bytes, Cached, Capabilities, CasOutcome, ErrorKind, HealthReport, Heartbeat,
    Invalidation, KeyPage, KeyTtl, ManualClock, MemoryBackend, PostgresBackend, PostgresConfig,
    PutOptions, StateBackend, StateFuture, Subscription,
};
use statecraft_testkit::{FaultProxy, PostgresServer, RedisServer};

#[path = "support/stale.rs"]
mod stale;

use stale::{
    cut_suspends_l1_until_back, fault_free, never_stale, never_stale_with_cuts, pair, postgres,
    redis, redis_at, socket_of, unique, until_serving,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_memory_never_serve_stale() {
    let store = MemoryBackend::new();
    let (a, b) = pair(store.clone(), store, "stale-memory", Invalidation::PubSub).await;
    fault_free(never_stale(a, b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_redis_never_serve_stale() {
    let prefix = unique("stale") + ":";
    let (a, b) = pair(
        redis(&prefix).await,
        redis(&prefix).await,
        &prefix,
        Invalidation::PubSub,
    )
    .await;
    fault_free(never_stale(a, b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_postgres_never_serve_stale() {
    let table = unique("stale");
    let (a, b) = pair(
        postgres(&table).await,
        postgres(&table).await,
        &table,
        Invalidation::PubSub,
    )
    .await;
    fault_free(never_stale(a, b).await);
}

/// The same 10,000 writes with instance B's Redis connections (its
/// subscription included) going through a proxy that cuts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_redis_with_cut_connections_never_serve_stale() {
    let server = RedisServer::shared();
    let proxy = Arc::new(FaultProxy::start(socket_of(&server.url())));
    let prefix = unique("cut") + ":";
    let through_proxy = format!("redis://{}", proxy.addr());
    let (a, b) = pair(
        redis_at(&server.url(), &prefix).await,
        redis_at(&through_proxy, &prefix).await,
        &prefix,
        Invalidation::PubSub,
    )
    .await;
    never_stale_with_cuts(a, b, proxy).await;
}

/// The same over PostgreSQL: B's pool and its LISTEN connection go
/// through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_postgres_with_cut_connections_never_serve_stale() {
    let url = PostgresServer::shared().url();
    let upstream = socket_of(&url);
    let proxy = Arc::new(FaultProxy::start(upstream));
    let through_proxy = url.replace(&upstream.to_string(), &proxy.addr().to_string());
    assert_ne!(through_proxy, url, "the URL names the server's address");
    let table = unique("cut");
    let direct = postgres(&table).await;
    let config = PostgresConfig::builder()
        .url(through_proxy)
        .table(table.clone())
        .build()
        .expect("config");
    let cut = PostgresBackend::new(config)
        .await
        .expect("postgres through the proxy");
    let (a, b) = pair(direct, cut, &table, Invalidation::PubSub).await;
    never_stale_with_cuts(a, b, proxy).await;
}

/// A killed subscription connection is noticed: L1 is suspended (and
/// cleared), resubscribes, and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_subscription_is_noticed_and_resubscribed() {
    let prefix = unique("killed") + ":";
    let (a, b) = pair(
        redis(&prefix).await,
        redis(&prefix).await,
        &prefix,
        Invalidation::PubSub,
    )
    .await;
    a.put(b"k", "v1".into()).await.expect("put");
    // A's invalidation of `k` may reach B after B's first read has filled
    // L1 (and drop that entry): wait for it before counting.
    let started = Instant::now();
    while b.stats().await.expect("stats").details["l1_invalidations_received"] == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "A's invalidation never came"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    let before = b.get_ref().stats().await.expect("stats");
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    let after = b.get_ref().stats().await.expect("stats");
    assert_eq!(after.hits, before.hits, "the second read was an L1 hit");
    let suspensions = |stats: BackendStats| stats.details["l1_suspensions"];
    assert_eq!(suspensions(b.stats().await.expect("stats")), 0);

    let killed = RedisServer::shared().cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(!killed.trim().starts_with('0'), "killed: {killed}");
    let started = Instant::now();
    while suspensions(b.stats().await.expect("stats")) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until_serving(&b, true).await;
    a.put(b"k", "v2".into()).await.expect("put");
    let started = Instant::now();
    while b.get(b"k").await.expect("get").as_deref() != Some(&b"v2"[..]) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "v2 not seen after resubscribing"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// With its connections reset (through the proxy), an instance stops
/// serving L1 and stays stopped while it cannot resubscribe; a write made
/// meanwhile is not served stale once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_subscription_suspends_l1_until_resubscribed() {
    cut_suspends_l1_until_back(Invalidation::PubSub, "cut-one").await;
}

/// A memory backend whose subscriptions can be silenced: they stay open
/// and deliver nothing, as over a blackholed connection.
#[derive(Debug, Clone)]
struct Muted {
    inner: MemoryBackend,
    muted: Arc<AtomicBool>,
    /// Puts apply, then never return.
    hang_puts: Arc<AtomicBool>,
}

struct MutedStream {
    inner: Subscription,
    muted: Arc<AtomicBool>,
}

impl Stream for MutedStream {
    type Item = statecraft::Result<statecraft::Message>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(_)) if self.muted.load(Ordering::SeqCst) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }
}

impl StateBackend for Muted {
    fn name(&self) -> &'static str {
        "muted"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        self.inner.get(key)
    }
    fn get_with_ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<(Bytes, KeyTtl)>> {
        self.inner.get_with_ttl(key)
    }
    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        StateFuture::new(async move {
            self.inner.put_with(key, value, options).await?;
            if self.hang_puts.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
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
        options: PutOptions,
    ) -> StateFuture<'a, CasOutcome> {
        self.inner.compare_and_swap(key, expected, new, options)
    }
    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        self.inner.health_check()
    }
    fn stats(&self) -> StateFuture<'_, BackendStats> {
        self.inner.stats()
    }
    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        self.inner.publish(channel, payload)
    }
    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        StateFuture::new(async move {
            let inner = self.inner.subscribe(channel).await?;
            let muted = self.muted.clone();
            Ok(Subscription::new(MutedStream { inner, muted }))
        })
    }
}

/// A subscription that stays open but delivers nothing (a blackholed
/// connection) is noticed by the heartbeat: L1 stops serving within the
/// heartbeat timeout and serves again once a new subscription delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_subscription_is_noticed_by_the_heartbeat() {
    let muted = Arc::new(AtomicBool::new(false));
    let store = Muted {
        inner: MemoryBackend::new(),
        muted: muted.clone(),
        hang_puts: Arc::default(),
    };
    let heartbeat = Heartbeat {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
    };
    let cached = Cached::builder(store)
        .heartbeat(Some(heartbeat))
        .resubscribe_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .await
        .expect("cached");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(cached.is_serving(), "heartbeats come back while not muted");
    muted.store(true, Ordering::SeqCst);
    let noticed = until_serving(&cached, false).await;
    assert!(
        noticed <= Duration::from_secs(2),
        "noticed after {noticed:?}"
    );
    muted.store(false, Ordering::SeqCst);
    until_serving(&cached, true).await;
}

/// A write whose future is dropped after the store applied it (a timeout)
/// still invalidates: here at once, elsewhere from a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_still_invalidates() {
    let hang_puts = Arc::new(AtomicBool::new(false));
    let store = Muted {
        inner: MemoryBackend::new(),
        muted: Arc::default(),
        hang_puts: hang_puts.clone(),
    };
    let (a, b) = pair(store.clone(), store, "cancelled", Invalidation::PubSub).await;
    a.put(b"k", "v1".into()).await.expect("put");
    for cached in [&a, &b] {
        assert_eq!(
            cached.get(b"k").await.expect("get").as_deref(),
            Some(&b"v1"[..])
        );
    }
    hang_puts.store(true, Ordering::SeqCst);
    let put = tokio::time::timeout(Duration::from_millis(50), a.put(b"k", "v2".into())).await;
    assert!(put.is_err(), "the put was cut short");
    assert_eq!(a.get(b"k").await.expect("get").as_deref(), Some(&b"v2"[..]));
    let started = Instant::now();
    while b.get(b"k").await.expect("get").as_deref() != Some(&b"v2"[..]) {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "b never heard of v2"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An entry never outlives the store's TTL, nor the L1 TTL, and an idle
/// entry is dropped after the time-to-idle.
#[tokio::test]
async fn entries_expire_with_the_store_ttl_the_l1_ttl_and_idleness() {
    let clock = ManualClock::starting_now();
    let store = MemoryBackend::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build();
    let cached = Cached::builder(store.clone())
        .clock(clock.clone())
        .ttl(Duration::from_secs(10))
        .time_to_idle(Duration::from_secs(4))
        .build()
        .await
        .expect("cached");
    let l1_hits = |stats: BackendStats| stats.details["l1_hits"];
    store
        .put_with_ttl(b"short", "v".into(), Duration::from_millis(500))
        .await
        .expect("put");
    assert!(cached.get(b"short").await.expect("get").is_some());
    assert!(cached.get(b"short").await.expect("get").is_some());
    assert_eq!(l1_hits(cached.stats().await.expect("stats")), 1);
    match cached.get_with_ttl(b"short").await.expect("get_with_ttl") {
        Some((_, KeyTtl::ExpiresIn(left))) => assert!(left <= Duration::from_millis(500)),
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_millis(600));
    assert_eq!(
        cached.get(b"short").await.expect("get"),
        None,
        "the store's TTL"
    );

    store.put(b"long", "v1".into()).await.expect("put");
    assert!(cached.get(b"long").await.expect("get").is_some());
    // Written behind the cache's back: served until the L1 TTL.
    store.put(b"long", "v2".into()).await.expect("put");
    for _ in 0..3 {
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            cached.get(b"long").await.expect("get").as_deref(),
            Some(&b"v1"[..])
        );
    }
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        cached.get(b"long").await.expect("get").as_deref(),
        Some(&b"v2"[..]),
        "the L1 TTL"
    );
    clock.advance(Duration::from_secs(5));
    store.put(b"long", "v3".into()).await.expect("put");
    assert_eq!(
        cached.get(b"long").await.expect("get").as_deref(),
        Some(&b"v3"[..]),
        "idle for longer than the time-to-idle"
    );
}

/// L1 holds at most about `max_entries`, evicting the rest; a hit does not
/// reach the store.
#[tokio::test]
async fn size_bound_holds_and_hits_skip_the_store() {
    let store = MemoryBackend::new();
    let cached = Cached::builder(store.clone())
        .max_entries(100)
        .build()
        .await
        .expect("cached");
    for i in 0..1_000 {
        let key = format!("k{i}");
        store.put(key.as_bytes(), "v".into()).await.expect("put");
        cached.get(key.as_bytes()).await.expect("get");
    }
    let stats = cached.stats().await.expect("stats");
    let entries = stats.details["l1_entries"];
    assert!((1..=130).contains(&entries), "{entries} entries");
    assert!(stats.details["l1_evictions"] >= 800, "{stats:?}");
    // S3-FIFO keeps what is read again (a one-pass scan does not stay):
    // read a few keys twice, then once more.
    let keys: Vec<String> = (0..20).map(|i| format!("hot{i}")).collect();
    for key in keys.iter().chain(&keys) {
        store.put(key.as_bytes(), "v".into()).await.expect("put");
        cached.get(key.as_bytes()).await.expect("get");
    }
    let store_reads = store.stats().await.expect("stats").hits;
    for key in &keys {
        assert!(cached.get(key.as_bytes()).await.expect("get").is_some());
    }
    let reached = store.stats().await.expect("stats").hits - store_reads;
    assert_eq!(
        reached,
        0,
        "{reached} of {} hits reached the store",
        keys.len()
    );
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let err = Cached::builder(MemoryBackend::new())
        .max_entries(0)
        .build()
        .await;
    assert_eq!(
        err.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgument)
    );
    let err = Cached::builder(MemoryBackend::new())
        .ttl(Duration::ZERO)
        .build()
        .await;
    assert_eq!(
        err.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgument)
    );
    let err = Cached::builder(MemoryBackend::new())
        .heartbeat(Some(Heartbeat {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        }))
        .build()
        .await;
    assert_eq!(
        err.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidArgument)
    );
    let dir = tempfile::tempdir().expect("dir");
    let sled = statecraft::SledBackend::builder()
        .path(dir.path())
        .open()
        .expect("sled");
    let err = Cached::builder(sled)
        .invalidation(Invalidation::PubSub)
        .build()
        .await;
    assert_eq!(err.err().map(|e| e.kind()), Some(ErrorKind::Unsupported));
}

/// An atomic update's read-only input (a breaker's peek) goes to the store
/// as the read it is: nothing dropped from L1, no invalidation published;
/// the same update's writing input drops the key and tells the others.
#[tokio::test]
async fn a_read_only_atomic_update_drops_and_publishes_nothing() {
    use statecraft::breaker::{step_input, BreakerConfig, BreakerStep, Event, PEEK};
    let store = MemoryBackend::new();
    let cached = Cached::builder(store.clone())
        .build()
        .await
        .expect("cached");
    let figure = |stats: &BackendStats, name: &str| stats.details.get(name).copied().unwrap_or(0);
    let key = b"breaker:payments";
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let fail = step_input(
        &config,
        "payments",
        Event::Record {
            outcome: statecraft::breaker::Outcome::Failure,
            slow: false,
            probe: None,
        },
        0,
        0,
    );
    cached
        .update_atomic(key, &BreakerStep, fail.as_bytes())
        .await
        .expect("step");
    let stored = cached.get(key).await.expect("get").expect("a state");
    let before = cached.stats().await.expect("stats");
    let peeked = cached
        .update_atomic(key, &BreakerStep, PEEK)
        .await
        .expect("peek");
    assert_eq!(peeked, stored, "the peek reads the store");
    assert_eq!(cached.get(key).await.expect("get"), Some(stored));
    let after = cached.stats().await.expect("stats");
    assert_eq!(
        figure(&after, "l1_hits"),
        figure(&before, "l1_hits") + 1,
        "the entry was kept"
    );
    assert_eq!(
        figure(&after, "l1_invalidations_published"),
        figure(&before, "l1_invalidations_published")
    );
    // The writing form drops it and says so.
    let reset = step_input(&config, "payments", Event::Reset, 0, 0);
    cached
        .update_atomic(key, &BreakerStep, reset.as_bytes())
        .await
        .expect("reset");
    assert_ne!(cached.get(key).await.expect("get"), Some(peeked));
    let last = cached.stats().await.expect("stats");
    assert_eq!(figure(&last, "l1_hits"), figure(&after, "l1_hits"));
    assert!(
        figure(&last, "l1_invalidations_published") > figure(&after, "l1_invalidations_published")
    );
}
