//! `Cached` beyond the conformance suite: two instances over one store
//! never serve a value older than the invalidation bound allows (over
//! memory, Redis and PostgreSQL), a lost or silent subscription suspends
//! L1, entries never outlive the store's TTL, and the size bound holds.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use statecraft::{
    BackendStats, Bytes, Cached, Capabilities, CasOutcome, ErrorKind, HealthReport, Heartbeat,
    Invalidation, KeyPage, KeyTtl, ManualClock, MemoryBackend, PostgresBackend, PostgresConfig,
    PutOptions, RedisBackend, RedisConfig, StateBackend, StateFuture, Subscription,
};
use statecraft_testkit::{Fault, FaultProxy, PostgresServer, RedisServer};
use tokio::sync::Mutex;

const KEYS: usize = 20;
const WRITES_PER_INSTANCE: usize = 5_000;
/// How long after a write's acknowledgement another instance may still
/// serve the value it replaced. Invalidation takes well under a
/// millisecond on loopback; the margin is for a loaded CI machine.
const BOUND: Duration = Duration::from_millis(100);

/// Every write of one key, in store order (writes to a key are serialized
/// by its lock), with the time each was acknowledged.
#[derive(Default)]
struct History {
    /// Value, acknowledgement, writing instance.
    writes: Vec<(Bytes, Option<Instant>, usize)>,
}

impl History {
    /// The position of `value` (-1: absent, never written yet).
    fn position(&self, value: Option<&Bytes>) -> isize {
        match value {
            None => -1,
            Some(value) => self
                .writes
                .iter()
                .position(|(v, _, _)| v == value)
                .map(|p| p as isize)
                .unwrap_or_else(|| panic!("read a value never written: {value:?}")),
        }
    }

    /// The last write (by `writer`, or by anyone) acknowledged before `limit`.
    fn acked_before(&self, limit: Instant, writer: Option<usize>) -> isize {
        self.writes
            .iter()
            .rposition(|(_, ack, by)| {
                ack.is_some_and(|at| at < limit) && writer.map_or(true, |w| w == *by)
            })
            .map_or(-1, |p| p as isize)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What [`never_stale`] saw.
#[derive(Debug, Default)]
struct Report {
    reads: u64,
    failed_reads: u64,
    failed_writes: u64,
    stale_within_bound: u64,
    checked_reads: u64,
}

/// Two instances write random keys (10,000 writes in all) while both read
/// random keys; every read must return the last value acknowledged more
/// than [`BOUND`] before the read started, or a later one. A write that
/// fails may or may not have applied: it stays in the history without an
/// acknowledgement (a read may return it, none has to).
async fn never_stale(
    a: Arc<Cached<impl StateBackend + 'static>>,
    b: Arc<Cached<impl StateBackend + 'static>>,
) -> Report {
    let histories: Arc<Vec<Mutex<History>>> =
        Arc::new((0..KEYS).map(|_| Mutex::new(History::default())).collect());
    let key = |i: usize| format!("k{i:02}").into_bytes();
    let done = Arc::new(AtomicBool::new(false));
    let stale_within_bound = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let failed_reads = Arc::new(AtomicU64::new(0));
    let checked_reads = Arc::new(AtomicU64::new(0));
    let instances: [Arc<dyn StateBackend>; 2] = [a.clone(), b.clone()];
    let mut writers = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        let (instance, histories) = (instance.clone(), histories.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9 + n as u64);
            let mut failed = 0u64;
            for seq in 0..WRITES_PER_INSTANCE {
                if seq % 1_000 == 999 {
                    // Quiet spells, so that an entry left stale would be
                    // read past the bound before another write fixes it.
                    tokio::time::sleep(BOUND * 5 / 2).await;
                }
                let i = (rng.next() % KEYS as u64) as usize;
                let value = Bytes::from(format!("w{n}-{seq}"));
                let mut history = histories[i].lock().await;
                history.writes.push((value.clone(), None, n));
                let slot = history.writes.len() - 1;
                match instance.put(&key(i), value).await {
                    Ok(()) => history.writes[slot].1 = Some(Instant::now()),
                    Err(_) => failed += 1,
                }
            }
            failed
        }));
    }
    let mut readers = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        let (instance, histories, done) = (instance.clone(), histories.clone(), done.clone());
        let (stale_within_bound, reads) = (stale_within_bound.clone(), reads.clone());
        let (failed_reads, checked_reads) = (failed_reads.clone(), checked_reads.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(0x51ed_2701 + n as u64);
            while !done.load(Ordering::Relaxed) {
                let i = (rng.next() % KEYS as u64) as usize;
                let started = Instant::now();
                let Ok(got) = instance.get(&key(i)).await else {
                    failed_reads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                reads.fetch_add(1, Ordering::Relaxed);
                let history = histories[i].lock().await;
                let position = history.position(got.as_ref());
                let required = started
                    .checked_sub(BOUND)
                    .map_or(-1, |limit| history.acked_before(limit, None));
                assert!(
                    position >= required,
                    "instance {n} read {got:?} (write #{position}) of key {i}, but write #{required} \
                     was acknowledged more than {BOUND:?} before the read"
                );
                // Its own writes, this instance never serves stale at all.
                let own = history.acked_before(started, Some(n));
                assert!(
                    position >= own,
                    "instance {n} read {got:?} (write #{position}) of key {i} after its own write #{own}"
                );
                if required >= 0 {
                    checked_reads.fetch_add(1, Ordering::Relaxed);
                }
                if position < history.acked_before(started, None) {
                    stale_within_bound.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut failed_writes = 0;
    for writer in writers {
        failed_writes += writer.await.expect("writer");
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader");
    }
    // Quiet now: once the bound has passed, both serve the last write.
    tokio::time::sleep(BOUND).await;
    for i in 0..KEYS {
        let history = histories[i].lock().await;
        let last = history.acked_before(Instant::now(), None);
        for (n, instance) in instances.iter().enumerate() {
            let got = instance.get(&key(i)).await.expect("final read");
            let position = history.position(got.as_ref());
            assert!(
                position >= last,
                "instance {n} ends with write #{position} of key {i}, not #{last}"
            );
        }
    }
    let hits = |stats: BackendStats| stats.details.get("l1_hits").copied().unwrap_or(0);
    let (hits_a, hits_b) = (
        hits(a.stats().await.expect("stats")),
        hits(b.stats().await.expect("stats")),
    );
    let report = Report {
        reads: reads.load(Ordering::Relaxed),
        failed_reads: failed_reads.load(Ordering::Relaxed),
        failed_writes,
        stale_within_bound: stale_within_bound.load(Ordering::Relaxed),
        checked_reads: checked_reads.load(Ordering::Relaxed),
    };
    println!(
        "{} reads ({} failed), {} writes failed, {} reads older than the latest acknowledged \
         write but within the bound, L1 hits {hits_a} + {hits_b}",
        report.reads, report.failed_reads, report.failed_writes, report.stale_within_bound
    );
    assert!(
        report.reads > 1_000 && report.checked_reads > 1_000,
        "the readers kept up, and past the bound: {report:?}"
    );
    assert!(hits_a > 0 && hits_b > 0, "the reads went through L1");
    report
}

fn fault_free(report: Report) {
    assert_eq!(
        (report.failed_reads, report.failed_writes),
        (0, 0),
        "{report:?}"
    );
}

async fn pair<B: StateBackend + 'static>(
    a: B,
    b: B,
    channel: &str,
) -> (Arc<Cached<B>>, Arc<Cached<B>>) {
    let build = |inner: B| {
        Cached::builder(inner)
            .channel(channel.to_string())
            .invalidation(Invalidation::PubSub)
            .build()
    };
    let a = Arc::new(build(a).await.expect("cached a"));
    let b = Arc::new(build(b).await.expect("cached b"));
    (a, b)
}

fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn redis(prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(prefix.to_string())
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

async fn postgres(table: &str) -> PostgresBackend {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table(table)
        .build()
        .expect("config");
    PostgresBackend::new(config).await.expect("postgres")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_memory_never_serve_stale() {
    let store = MemoryBackend::new();
    let (a, b) = pair(store.clone(), store, "stale-memory").await;
    fault_free(never_stale(a, b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_redis_never_serve_stale() {
    let prefix = unique("stale") + ":";
    let (a, b) = pair(redis(&prefix).await, redis(&prefix).await, &prefix).await;
    fault_free(never_stale(a, b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_postgres_never_serve_stale() {
    let table = unique("stale");
    let (a, b) = pair(postgres(&table).await, postgres(&table).await, &table).await;
    fault_free(never_stale(a, b).await);
}

fn socket_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).expect("a URL with a scheme");
    let host_port = rest
        .rsplit('@')
        .next()
        .expect("host")
        .split('/')
        .next()
        .expect("host");
    host_port.parse().expect("a loopback host:port")
}

async fn redis_at(url: &str, prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(prefix.to_string())
        .response_timeout(Duration::from_millis(500))
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

/// Runs [`never_stale`] while a task resets every connection through
/// `proxy` (instance B's) for 50 ms every 300 ms; B's failed reads and
/// writes are allowed, stale reads are not.
async fn never_stale_with_cuts<B: StateBackend + 'static>(
    a: Arc<Cached<B>>,
    b: Arc<Cached<B>>,
    proxy: Arc<FaultProxy>,
) {
    let done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (done, proxy) = (done.clone(), proxy.clone());
        tokio::spawn(async move {
            let mut cuts = 0u32;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.set(Fault::Reset);
                tokio::time::sleep(Duration::from_millis(50)).await;
                proxy.heal();
                cuts += 1;
            }
            cuts
        })
    };
    let report = never_stale(a, b.clone()).await;
    done.store(true, Ordering::Relaxed);
    let cuts = cutter.await.expect("cutter");
    let suspensions = b.stats().await.expect("stats").details["l1_suspensions"];
    println!("{cuts} cuts, {suspensions} suspensions, {report:?}");
    assert!(cuts >= 1 && suspensions >= 1, "the connections were cut");
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
    let (a, b) = pair(direct, cut, &table).await;
    never_stale_with_cuts(a, b, proxy).await;
}

/// Waits (up to 10 s) until `cached` serves or not, as asked.
async fn until_serving(cached: &Cached<impl StateBackend + 'static>, serving: bool) -> Duration {
    let started = Instant::now();
    while cached.is_serving() != serving {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "L1 still serving={} after 10 s",
            !serving
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A killed subscription connection is noticed: L1 is suspended (and
/// cleared), resubscribes, and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_subscription_is_noticed_and_resubscribed() {
    let prefix = unique("killed") + ":";
    let (a, b) = pair(redis(&prefix).await, redis(&prefix).await, &prefix).await;
    a.put(b"k", "v1".into()).await.expect("put");
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
    let server = RedisServer::shared();
    let proxy = FaultProxy::start(socket_of(&server.url()));
    let prefix = unique("cut-one") + ":";
    let (a, b) = pair(
        redis_at(&server.url(), &prefix).await,
        redis_at(&format!("redis://{}", proxy.addr()), &prefix).await,
        &prefix,
    )
    .await;
    a.put(b"k", "v1".into()).await.expect("put");
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    proxy.set(Fault::Reset);
    until_serving(&b, false).await;
    a.put(b"k", "v2".into())
        .await
        .expect("put while b is cut off");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_serving(), "no L1 while it cannot resubscribe");
    proxy.heal();
    until_serving(&b, true).await;
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v2"[..]));
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
    let (a, b) = pair(store.clone(), store, "cancelled").await;
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
