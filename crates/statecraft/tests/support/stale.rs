//! What the `Cached` tests share: a checker that two instances over one
//! store never serve a value older than the invalidation bound allows, and
//! the stores it runs over.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statecraft::{
    BackendStats, Bytes, Cached, Invalidation, PostgresBackend, PostgresConfig, RedisBackend,
    RedisConfig, StateBackend,
};
use statecraft_testkit::{Fault, FaultProxy, PostgresServer, RedisServer};
use tokio::sync::Mutex;

pub(crate) const KEYS: usize = 20;
pub(crate) const WRITES_PER_INSTANCE: usize = 5_000;
/// How long after a write's acknowledgement another instance may still
/// serve the value it replaced. Invalidation takes well under a
/// millisecond on loopback; the margin is for a loaded CI machine.
pub(crate) const BOUND: Duration = Duration::from_millis(100);

/// Every write of one key, in the order its instances sent them (serialized
/// by the key's lock), with the time each was acknowledged. Acknowledged
/// writes reach the store in this order; a write that failed (its
/// connection cut) may still land later, after writes sent after it: its
/// statement can reach the server before the reset and run when the
/// server's process gets to it.
#[derive(Default)]
pub(crate) struct History {
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

    /// Whether the write at `position` failed (so it may have landed late).
    fn failed(&self, position: isize) -> bool {
        usize::try_from(position).is_ok_and(|p| self.writes[p].1.is_none())
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

pub(crate) struct Rng(u64);

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
pub(crate) struct Report {
    reads: u64,
    failed_reads: u64,
    failed_writes: u64,
    stale_within_bound: u64,
    checked_reads: u64,
    late_deliveries: u64,
}

/// Two instances write random keys (10,000 writes in all) while both read
/// random keys; every read must return the last value acknowledged more
/// than [`BOUND`] before the read started, or a later one, except that an
/// invalidation may arrive late under load (a stale entry that is gone
/// within a second while nothing writes the key; at most one read in a
/// thousand: a lost invalidation stays, and fails). A write that
/// fails may or may not have applied: it stays in the history without an
/// acknowledgement (a read may return it, none has to).
pub(crate) async fn never_stale(
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
    let late_deliveries = Arc::new(AtomicU64::new(0));
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
        let late_deliveries = late_deliveries.clone();
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
                // A failed write that landed late is the store's value.
                let late = history.failed(position);
                // Past the bound: an invalidation that is only late arrives
                // now (no write of key i runs while its history is held);
                // a lost one, or a stale fill kept, stays.
                let mut settled = position;
                if settled < required && !history.failed(settled) {
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while settled < required
                        && !history.failed(settled)
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if let Ok(again) = instance.get(&key(i)).await {
                            settled = history.position(again.as_ref());
                        }
                    }
                    late_deliveries.fetch_add(1, Ordering::Relaxed);
                }
                assert!(
                    settled >= required || history.failed(settled),
                    "instance {n} read {got:?} (write #{position}) of key {i}, but write #{required} \
                     was acknowledged more than {BOUND:?} before the read, and a second later, with \
                     no write of the key meanwhile, it read write #{settled}"
                );
                // Its own writes, this instance never serves stale at all.
                let own = history.acked_before(started, Some(n));
                assert!(
                    position >= own || late,
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
            // A cut may still be on (the cutter stops after this check):
            // a failed read is allowed, a stale one is not.
            let started = Instant::now();
            let got = loop {
                match instance.get(&key(i)).await {
                    Ok(got) => break got,
                    Err(_) if started.elapsed() < Duration::from_secs(10) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(err) => panic!("final read of key {i} by instance {n}: {err}"),
                }
            };
            let position = history.position(got.as_ref());
            assert!(
                position >= last || history.failed(position),
                "instance {n} ends with write #{position} of key {i}, not #{last}"
            );
        }
    }
    // The cut may still be on here too: stats that need the store are
    // asked again, for a while.
    let hits = |stats: BackendStats| stats.details.get("l1_hits").copied().unwrap_or(0);
    let stats_of = |instance: Arc<dyn StateBackend>| async move {
        let started = Instant::now();
        loop {
            match instance.stats().await {
                Ok(stats) => break stats,
                Err(err) if err.is_temporary() && started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("stats: {err}"),
            }
        }
    };
    let [first, second] = instances.clone();
    let (hits_a, hits_b) = (hits(stats_of(first).await), hits(stats_of(second).await));
    let report = Report {
        reads: reads.load(Ordering::Relaxed),
        failed_reads: failed_reads.load(Ordering::Relaxed),
        failed_writes,
        stale_within_bound: stale_within_bound.load(Ordering::Relaxed),
        checked_reads: checked_reads.load(Ordering::Relaxed),
        late_deliveries: late_deliveries.load(Ordering::Relaxed),
    };
    println!(
        "{} reads ({} failed), {} writes failed, {} reads older than the latest acknowledged \
         write but within the bound, {} invalidations late past it, L1 hits {hits_a} + {hits_b}",
        report.reads,
        report.failed_reads,
        report.failed_writes,
        report.stale_within_bound,
        report.late_deliveries
    );
    assert!(
        report.late_deliveries * 1_000 <= report.checked_reads,
        "invalidations late past {BOUND:?} in more than one read in a thousand: {report:?}"
    );
    assert!(
        report.reads > 1_000 && report.checked_reads > 1_000,
        "the readers kept up, and past the bound: {report:?}"
    );
    assert!(hits_a > 0 && hits_b > 0, "the reads went through L1");
    report
}

pub(crate) fn fault_free(report: Report) {
    assert_eq!(
        (report.failed_reads, report.failed_writes),
        (0, 0),
        "{report:?}"
    );
}

pub(crate) async fn pair<B: StateBackend + 'static>(
    a: B,
    b: B,
    channel: &str,
    invalidation: Invalidation,
) -> (Arc<Cached<B>>, Arc<Cached<B>>) {
    let build = |inner: B| {
        Cached::builder(inner)
            .channel(channel.to_string())
            .invalidation(invalidation)
            .build()
    };
    let a = Arc::new(build(a).await.expect("cached a"));
    let b = Arc::new(build(b).await.expect("cached b"));
    (a, b)
}

pub(crate) fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) async fn redis(prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(prefix.to_string())
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

pub(crate) async fn postgres(table: &str) -> PostgresBackend {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table(table)
        .build()
        .expect("config");
    PostgresBackend::new(config).await.expect("postgres")
}

pub(crate) fn socket_of(url: &str) -> std::net::SocketAddr {
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

pub(crate) async fn redis_at(url: &str, prefix: &str) -> RedisBackend {
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
pub(crate) async fn never_stale_with_cuts<B: StateBackend + 'static>(
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

/// Waits (up to 10 s) until `cached` serves or not, as asked.
pub(crate) async fn until_serving(
    cached: &Cached<impl StateBackend + 'static>,
    serving: bool,
) -> Duration {
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

/// Instance B's connections (its invalidation source included) reset
/// through a proxy: B stops serving L1 and stays stopped while it cannot
/// subscribe or track again; a write made meanwhile is not served stale
/// once it is back.
pub(crate) async fn cut_suspends_l1_until_back(invalidation: Invalidation, tag: &str) {
    let server = RedisServer::shared();
    let proxy = FaultProxy::start(socket_of(&server.url()));
    let prefix = unique(tag) + ":";
    let (a, b) = pair(
        redis_at(&server.url(), &prefix).await,
        redis_at(&format!("redis://{}", proxy.addr()), &prefix).await,
        &prefix,
        invalidation,
    )
    .await;
    a.put(b"k", "v1".into()).await.expect("put");
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v1"[..]));
    proxy.set(Fault::Reset);
    until_serving(&b, false).await;
    a.put(b"k", "v2".into())
        .await
        .expect("put while b is cut off");
    // Real connections: the retries run on the wall clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b.is_serving(),
        "no L1 while it cannot resubscribe or track"
    );
    proxy.heal();
    until_serving(&b, true).await;
    assert_eq!(b.get(b"k").await.expect("get").as_deref(), Some(&b"v2"[..]));
}
