//! `Cached` in one run against its peers: the L1 hit against the memory
//! backend's get and against an uncached Redis get (interleaved rounds,
//! medians and per-round ratios), then the cross-instance invalidation
//! delay over Redis (the layer's channel and `CLIENT TRACKING`, in
//! interleaved rounds) and over PostgreSQL: how long after instance A's
//! write returns instance B stops serving the old value (10,000 writes
//! each).
//!
//! `cargo bench -p bench-compare --bench cached`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use statecraft::{
    Cached, Invalidation, MemoryBackend, PostgresBackend, PostgresConfig, RedisBackend,
    RedisConfig, StateBackend,
};
use statecraft_testkit::{PostgresServer, RedisServer};

const KEYS: usize = 10_000;

/// Under `cargo test` (no `--bench` argument) the bench runs as a quick
/// smoke test: a hundredth of the work.
fn scale(n: usize) -> usize {
    if std::env::args().any(|arg| arg == "--bench") {
        n
    } else {
        (n / 100).max(1)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn redis(url: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix("cached-bench:")
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

async fn postgres(url: &str) -> PostgresBackend {
    let config = PostgresConfig::builder()
        .url(url)
        .table("cached_bench")
        .build()
        .expect("config");
    PostgresBackend::new(config).await.expect("postgres")
}

/// Reads every key twice, so that S3-FIFO keeps them all.
async fn warm(cached: &dyn StateBackend, keys: &[Bytes]) {
    for _ in 0..2 {
        for key in keys {
            cached.get(key).await.expect("warm");
        }
    }
}

fn hits(runtime: &tokio::runtime::Runtime, redis_url: &str) {
    let keys = keys(KEYS);
    let value = Bytes::from(vec![b'v'; 100]);
    let (memory, cached_memory, plain_redis, cached_redis) = runtime.block_on(async {
        let memory = MemoryBackend::builder().sweep_interval(None).build();
        let store = MemoryBackend::builder().sweep_interval(None).build();
        let remote = redis(redis_url).await;
        for key in &keys {
            memory.put(key, value.clone()).await.expect("put");
            store.put(key, value.clone()).await.expect("put");
            remote.put(key, value.clone()).await.expect("put");
        }
        let cached_memory = Cached::builder(store)
            .max_entries(2 * KEYS as u64)
            .build()
            .await
            .expect("cached");
        let cached_redis = Cached::builder(redis(redis_url).await)
            .max_entries(2 * KEYS as u64)
            .channel("cached-bench")
            .build()
            .await
            .expect("cached");
        warm(&cached_memory, &keys).await;
        warm(&cached_redis, &keys).await;
        (memory, cached_memory, remote, cached_redis)
    });
    let in_process: [(&str, &dyn StateBackend); 3] = [
        ("memory get", &memory),
        ("cached(memory) hit", &cached_memory),
        ("cached(redis) hit", &cached_redis),
    ];
    let (ops, remote_ops) = (scale(200_000), scale(2_000));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); in_process.len() + 1];
    let mut picker = Picker::new(5);
    for round in 0..scale(300).clamp(3, 15) {
        for step in 0..=in_process.len() {
            let index = (round + step) % (in_process.len() + 1);
            let started = Instant::now();
            if let Some((_, backend)) = in_process.get(index) {
                for _ in 0..ops {
                    black_box(now(backend.get(&keys[picker.next(KEYS)])).ok());
                }
                times[index].push(started.elapsed().as_nanos() as f64 / ops as f64);
            } else {
                runtime.block_on(async {
                    for _ in 0..remote_ops {
                        black_box(plain_redis.get(&keys[picker.next(KEYS)]).await.ok());
                    }
                });
                times[index].push(started.elapsed().as_nanos() as f64 / remote_ops as f64);
            }
        }
    }
    let names: Vec<&str> = in_process
        .iter()
        .map(|(name, _)| *name)
        .chain(["redis get (uncached)"])
        .collect();
    for (index, name) in names.iter().enumerate() {
        let to_memory = median(
            times[index]
                .iter()
                .zip(&times[0])
                .map(|(t, m)| t / m)
                .collect(),
        );
        let redis_over = median(
            times[3]
                .iter()
                .zip(&times[index])
                .map(|(r, t)| r / t)
                .collect(),
        );
        println!(
            "{name:<22} {:>10.1} ns/op   ×memory get {to_memory:>7.3}   redis get ÷ this {redis_over:>9.1}",
            median(times[index].clone())
        );
    }
    let stats = runtime.block_on(cached_redis.stats()).expect("stats");
    println!(
        "cached(redis): L1 hits {} misses {}",
        stats.details["l1_hits"], stats.details["l1_misses"]
    );
}

/// Delays from one instance's write to the other's L1 no longer serving
/// the old value.
#[derive(Default)]
struct Delays {
    after_ack: Vec<Duration>,
    after_start: Vec<Duration>,
}

/// `writes` times: A writes, B polls its L1 until it no longer serves the
/// old value.
async fn delay_round(
    a: &dyn StateBackend,
    b: &dyn StateBackend,
    writes: usize,
    delays: &mut Delays,
) {
    let key = b"invalidation-delay";
    for i in 0..writes {
        let old = Bytes::from(format!("old-{i}"));
        let new = Bytes::from(format!("new-{i}"));
        a.put(key, old.clone()).await.expect("put");
        loop {
            // Until B has read `old` into L1 (and serves it from there).
            if b.get(key).await.expect("get").as_ref() == Some(&old)
                && b.get(key).await.expect("get").as_ref() == Some(&old)
            {
                break;
            }
        }
        let started = Instant::now();
        a.put(key, new.clone()).await.expect("put");
        let acked = Instant::now();
        while b.get(key).await.expect("get").as_ref() != Some(&new) {}
        let seen = Instant::now();
        delays.after_ack.push(seen - acked);
        delays.after_start.push(seen - started);
    }
}

async fn cached_pair<B: StateBackend + 'static>(
    a: B,
    b: B,
    channel: &str,
    invalidation: Invalidation,
) -> (Cached<B>, Cached<B>) {
    let build = |inner: B| {
        Cached::builder(inner)
            .channel(channel.to_string())
            .invalidation(invalidation)
            .build()
    };
    (build(a).await.expect("a"), build(b).await.expect("b"))
}

/// Measures each pair in `pairs` over the same number of writes (10,000),
/// in 5 interleaved rounds, and prints the distributions.
async fn invalidation_delays(pairs: &[(&str, &dyn StateBackend, &dyn StateBackend)]) {
    const ROUNDS: usize = 5;
    let writes = scale(10_000) / ROUNDS;
    let mut delays: Vec<Delays> = pairs.iter().map(|_| Delays::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, a, b), delays) in pairs.iter().zip(&mut delays) {
            delay_round(*a, *b, writes.max(1), delays).await;
        }
    }
    for ((what, _, b), delays) in pairs.iter().zip(&mut delays) {
        delays.after_ack.sort();
        delays.after_start.sort();
        let n = delays.after_ack.len();
        for (from, sorted) in [
            ("write returned", &delays.after_ack),
            ("write started", &delays.after_start),
        ] {
            println!(
                "{what:<16} invalidation, from {from:<14}: p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}  ({n} writes)",
                percentile(sorted, 0.50),
                percentile(sorted, 0.99),
                percentile(sorted, 1.0),
            );
        }
        let hits = b.stats().await.expect("stats").details["l1_hits"];
        println!("{what:<16} B's L1 hits while polling: {hits}");
    }
}

fn main() {
    let redis_server = RedisServer::start();
    let pg_server = PostgresServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    hits(&runtime, &redis_server.url());
    let (redis_url, pg_url) = (redis_server.url(), pg_server.url());
    runtime.block_on(async {
        let (channel_a, channel_b) = cached_pair(
            redis(&redis_url).await,
            redis(&redis_url).await,
            "delay",
            Invalidation::PubSub,
        )
        .await;
        let (tracking_a, tracking_b) = cached_pair(
            redis(&redis_url).await,
            redis(&redis_url).await,
            "delay-tracking",
            Invalidation::Tracking,
        )
        .await;
        invalidation_delays(&[
            ("redis channel", &channel_a, &channel_b),
            ("redis tracking", &tracking_a, &tracking_b),
        ])
        .await;
        let (pg_a, pg_b) = cached_pair(
            postgres(&pg_url).await,
            postgres(&pg_url).await,
            "delay",
            Invalidation::PubSub,
        )
        .await;
        invalidation_delays(&[("postgres channel", &pg_a, &pg_b)]).await;
    });
}
