//! The Redis backend against real servers started by the test support: the
//! conformance suite on a single server and on a 3-master Cluster, prefix
//! isolation, checkpoints, pub/sub, stats, and faults (a killed, a frozen and
//! a restarted server).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statecraft::{
    Bytes, Cached, ErrorKind, KeyTtl, Limits, MemoryBackend, PutOptions, RedisBackend, RedisConfig,
    StateBackend,
};
use statecraft_testkit::{
    Fixture, FixtureFuture, RedisCluster, RedisServer, TimeControl, FIXTURE_MAX_KEY,
    FIXTURE_MAX_VALUE,
};

/// A key prefix no other test of this run uses.
fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn backend(url: &str, prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(prefix.to_string())
        .limits(Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE))
        .build()
        .expect("a valid Redis configuration");
    RedisBackend::new(config)
        .await
        .expect("the test server accepts connections")
}

/// A fixture on `url` whose prefix has a neighbour key just outside it
/// (same leading bytes), which the suite's `clear` must leave alone.
async fn fixture_on(url: String) -> Fixture {
    let prefix = unique_prefix("conf");
    let neighbour = backend(&url, &prefix[..prefix.len() - 1]).await;
    neighbour
        .put(b"-outside", "keep".into())
        .await
        .expect("seed the neighbour");
    let backend = backend(&url, &prefix).await;
    Fixture::new(
        Arc::new(backend),
        TimeControl::Real,
        FIXTURE_MAX_KEY,
        FIXTURE_MAX_VALUE,
    )
}

fn redis_fixture() -> FixtureFuture {
    Box::pin(async { fixture_on(RedisServer::shared().url()).await })
}

/// `Cached` over Redis, on a channel of its own.
async fn cached_fixture_on(url: String) -> Fixture {
    let prefix = unique_prefix("cached");
    let cached = Cached::builder(backend(&url, &prefix).await)
        .channel(format!("cached-conformance:{prefix}"))
        .build()
        .await
        .expect("cached");
    Fixture::new(
        Arc::new(cached),
        TimeControl::Real,
        FIXTURE_MAX_KEY,
        FIXTURE_MAX_VALUE,
    )
}

fn cached_redis_fixture() -> FixtureFuture {
    Box::pin(async { cached_fixture_on(RedisServer::shared().url()).await })
}

fn cached_redis_cluster_fixture() -> FixtureFuture {
    Box::pin(async { cached_fixture_on(RedisCluster::shared().url()).await })
}

/// Redis first, memory behind it.
fn fallback_redis_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let prefix = unique_prefix("fallback");
        let chain = statecraft::Fallback::builder()
            .member(
                backend(&RedisServer::shared().url(), &prefix).await,
                Duration::from_secs(5),
            )
            .member(
                MemoryBackend::builder()
                    .limits(Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE))
                    .build(),
                Duration::from_secs(1),
            )
            .build()
            .expect("chain");
        Fixture::new(
            Arc::new(chain),
            TimeControl::Real,
            FIXTURE_MAX_KEY,
            FIXTURE_MAX_VALUE,
        )
    })
}

fn redis_cluster_fixture() -> FixtureFuture {
    Box::pin(async { fixture_on(RedisCluster::shared().url()).await })
}

/// Every write takes the same options on a Redis backend with a default TTL.
#[tokio::test]
async fn write_options_on_a_default_ttl_backend() {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(unique_prefix("options"))
        .default_ttl(Duration::from_secs(60))
        .build()
        .expect("config");
    let backend = RedisBackend::new(config).await.expect("connect");
    statecraft_testkit::conformance::write_options_on_default_ttl(&backend).await;
}

mod conformance {
    mod redis {
        statecraft_testkit::conformance_tests!(super::super::redis_fixture);
    }
    mod redis_cluster {
        statecraft_testkit::conformance_tests!(super::super::redis_cluster_fixture);
    }
    mod fallback_redis_memory {
        statecraft_testkit::conformance_tests!(super::super::fallback_redis_memory_fixture);
    }
    mod cached_redis {
        statecraft_testkit::conformance_tests!(super::super::cached_redis_fixture);
    }
    mod cached_redis_cluster {
        statecraft_testkit::conformance_tests!(super::super::cached_redis_cluster_fixture);
    }
}

async fn prefix_isolation(url: String) {
    let prefix = unique_prefix("iso*[x]?");
    let inside = backend(&url, &prefix).await;
    // Neighbours that a glob built from the prefix without escaping would match.
    let lookalike = backend(&url, &prefix.replace("*[x]?", "abxz")).await;
    let shorter = backend(&url, &prefix[..prefix.len() - 1]).await;
    lookalike.put(b"k", "other".into()).await.expect("put");
    shorter.put(b"k", "other".into()).await.expect("put");
    for i in 0..50 {
        inside
            .put(format!("k{i}").as_bytes(), "v".into())
            .await
            .expect("put");
    }
    assert_eq!(inside.count().await.expect("count"), 50);
    inside.clear().await.expect("clear");
    assert_eq!(inside.count().await.expect("count"), 0);
    assert_eq!(
        lookalike.get(b"k").await.expect("get").as_deref(),
        Some(&b"other"[..])
    );
    assert_eq!(
        shorter.get(b"k").await.expect("get").as_deref(),
        Some(&b"other"[..])
    );
}

async fn checkpoint_moves_state(url: String) {
    let source = backend(&url, &unique_prefix("ckpt")).await;
    for i in 0..1200u32 {
        source
            .put(format!("user:{i}").as_bytes(), Bytes::from(i.to_string()))
            .await
            .expect("put");
    }
    source
        .put_with_ttl(b"user:session", "s".into(), Duration::from_secs(300))
        .await
        .expect("put");
    source
        .put(b"other:1", "not exported".into())
        .await
        .expect("put");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("users.ckpt");
    let written = source
        .checkpoint(b"user:", &file)
        .await
        .expect("checkpoint");
    assert_eq!(written, 1201);

    // Into another Redis prefix, and into the memory backend.
    let target = backend(&url, &unique_prefix("restored")).await;
    assert_eq!(target.restore(&file).await.expect("restore"), 1201);
    let memory = MemoryBackend::new();
    let mut reader = std::io::BufReader::new(std::fs::File::open(&file).expect("open"));
    let restored = statecraft::checkpoint::restore(&memory, &mut reader)
        .await
        .expect("restore into memory");
    assert_eq!(restored, 1201);
    for store in [&target as &dyn StateBackend, &memory] {
        assert_eq!(store.count().await.expect("count"), 1201);
        assert_eq!(
            store.get(b"user:777").await.expect("get").as_deref(),
            Some(&b"777"[..])
        );
        assert_eq!(store.get(b"other:1").await.expect("get"), None);
        match store.ttl(b"user:session").await.expect("ttl") {
            KeyTtl::ExpiresIn(left) => assert!(left <= Duration::from_secs(300)),
            other => panic!("the TTL was lost: {other:?}"),
        }
    }
    // A target with a default TTL keeps the entries that had none persistent.
    let expiring = RedisBackend::new(
        RedisConfig::builder()
            .url(&url)
            .key_prefix(unique_prefix("default-ttl"))
            .default_ttl(Duration::from_secs(60))
            .build()
            .expect("config"),
    )
    .await
    .expect("connect");
    assert_eq!(expiring.restore(&file).await.expect("restore"), 1201);
    assert_eq!(
        expiring.ttl(b"user:1").await.expect("ttl"),
        KeyTtl::Persistent
    );
    assert!(matches!(
        expiring.ttl(b"user:session").await.expect("ttl"),
        KeyTtl::ExpiresIn(_)
    ));
    expiring.put(b"fresh", "v".into()).await.expect("put");
    assert!(matches!(
        expiring.ttl(b"fresh").await.expect("ttl"),
        KeyTtl::ExpiresIn(_)
    ));
    // A damaged file is a typed error.
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = target.restore(&file).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Corrupt));
}

async fn pubsub_delivers(url: String) {
    let publisher = backend(&url, &unique_prefix("ps")).await;
    let channel = unique_prefix("channel");
    let mut subscription = publisher.subscribe(&channel).await.expect("subscribe");
    for i in 0..3 {
        publisher
            .publish(&channel, Bytes::from(format!("m{i}\0\u{ff}")))
            .await
            .expect("publish");
    }
    for i in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(5), subscription.next_message())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open")
            .expect("no error");
        assert_eq!(message.channel, channel);
        assert_eq!(message.payload, Bytes::from(format!("m{i}\0\u{ff}")));
    }
}

async fn stats_and_health(url: String) {
    let backend = backend(&url, &unique_prefix("stats")).await;
    backend.put(b"a", "1234".into()).await.expect("put");
    backend.get(b"a").await.expect("get");
    backend.get(b"missing").await.expect("get");
    let health = backend.health_check().await.expect("healthy");
    assert!(health.latency > Duration::ZERO);
    let stats = backend.stats().await.expect("stats");
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert!(stats.details["used_memory_bytes"] > 0);
    assert_eq!(stats.details["pool_connections"], 1);
    let usage = backend.memory_usage(b"a").await.expect("memory usage");
    assert!(usage.is_some_and(|bytes| bytes > 0));
    assert_eq!(backend.memory_usage(b"nope").await.expect("usage"), None);
}

mod redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_with_glob_characters_isolates() {
        prefix_isolation(RedisServer::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoint_restores_into_any_backend() {
        checkpoint_moves_state(RedisServer::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pubsub_delivers_binary_messages() {
        pubsub_delivers(RedisServer::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_health_and_memory_usage() {
        stats_and_health(RedisServer::shared().url()).await;
    }

    /// Scripts are called by SHA; after `SCRIPT FLUSH` the server answers
    /// NOSCRIPT and the backend loads them again, transparently. Nothing the
    /// backend does sends KEYS, FLUSHDB or FLUSHALL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_survive_script_flush_and_no_keys_or_flush() {
        let server = RedisServer::start();
        let backend = backend(&server.url(), "own:").await;
        server.cli(&["SET", "foreign", "x"]);
        assert_eq!(
            backend
                .increment(b"n", 1, PutOptions::new())
                .await
                .expect("incr"),
            1
        );
        assert!(server.cli(&["SCRIPT", "FLUSH"]).contains("OK"));
        assert_eq!(
            backend
                .increment(b"n", 1, PutOptions::new())
                .await
                .expect("incr"),
            2
        );
        let cas = backend
            .compare_and_swap(b"n", Some(b"2"), Some("10".into()), PutOptions::new())
            .await
            .expect("cas");
        assert!(cas.is_swapped());
        for i in 0..3000 {
            backend
                .put(format!("k{i}").as_bytes(), "v".into())
                .await
                .expect("put");
        }
        assert_eq!(backend.count().await.expect("count"), 3001);
        backend.list_keys(b"k1").await.expect("list");
        backend.clear().await.expect("clear");
        assert_eq!(backend.count().await.expect("count"), 0);
        assert_eq!(server.cli(&["GET", "foreign"]).trim(), "x");
        let stats = server.cli(&["INFO", "commandstats"]);
        assert!(stats.contains("cmdstat_scan:"), "{stats}");
        assert!(stats.contains("cmdstat_evalsha:"), "{stats}");
        for forbidden in ["cmdstat_keys:", "cmdstat_flushdb:", "cmdstat_flushall:"] {
            assert!(!stats.contains(forbidden), "{forbidden} was sent: {stats}");
        }
    }

    /// `rediss://` against a real TLS listener, trusting the test CA; the
    /// same URL without that CA is refused with a typed error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_connections_verify_the_server() {
        let server = RedisServer::start_tls();
        let config = RedisConfig::builder()
            .url(server.tls_url())
            .tls_root_certificate(server.ca_pem().to_vec())
            .key_prefix("tls:")
            .build()
            .expect("config");
        let backend = RedisBackend::new(config).await.expect("TLS connect");
        backend.put(b"k", "secret".into()).await.expect("put");
        assert_eq!(
            backend.get(b"k").await.expect("get").as_deref(),
            Some(&b"secret"[..])
        );
        assert_eq!(
            backend
                .increment(b"n", 2, PutOptions::new())
                .await
                .expect("incr"),
            2
        );
        let untrusted = RedisConfig::builder()
            .url(server.tls_url())
            .max_retries(0)
            .build()
            .expect("config");
        let err = RedisBackend::new(untrusted)
            .await
            .expect_err("an unknown CA is refused");
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_server_is_a_typed_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let config = RedisConfig::builder()
            .url(format!("redis://127.0.0.1:{port}"))
            .max_retries(1)
            .connect_timeout(Duration::from_millis(200))
            .build()
            .expect("config");
        let err = RedisBackend::new(config).await.err();
        let err = err.expect("nothing listens there");
        assert!(err.is_temporary(), "{err}");
        assert!(
            matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{err}"
        );
    }
}

mod redis_cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_with_glob_characters_isolates() {
        prefix_isolation(RedisCluster::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoint_restores_into_any_backend() {
        checkpoint_moves_state(RedisCluster::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pubsub_delivers_binary_messages() {
        pubsub_delivers(RedisCluster::shared().url()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_health_and_memory_usage() {
        stats_and_health(RedisCluster::shared().url()).await;
    }

    /// Keys land on every master, and batches spanning all of them work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_spread_over_every_master() {
        let cluster = RedisCluster::shared();
        let prefix = unique_prefix("spread");
        let backend = backend(&cluster.url(), &prefix).await;
        let entries: Vec<(Bytes, Bytes)> = (0..300)
            .map(|i| (Bytes::from(format!("k{i}")), Bytes::from(format!("v{i}"))))
            .collect();
        let keys: Vec<Bytes> = entries.iter().map(|(k, _)| k.clone()).collect();
        backend
            .batch_put(entries, Default::default())
            .await
            .expect("batch put");
        let values = backend.batch_get(&keys).await.expect("batch get");
        assert!(values
            .iter()
            .enumerate()
            .all(|(i, v)| v.as_deref() == Some(format!("v{i}").as_bytes())));
        let stats = backend.stats().await.expect("stats");
        assert_eq!(stats.details["nodes"], 3);
        assert_eq!(backend.batch_delete(&keys).await.expect("delete"), 300);
    }
}

/// Polls `op` until it succeeds or `within` passes.
async fn eventually<T, F, Fut>(within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = statecraft::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) if Instant::now() < deadline => {
                assert!(
                    err.is_temporary(),
                    "a permanent error while recovering: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("not recovered within {within:?}: {err}"),
        }
    }
}

mod faults {
    use super::*;

    fn fault_config(url: &str) -> RedisConfig {
        RedisConfig::builder()
            .url(url)
            .key_prefix("fault:")
            .response_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .max_retries(2)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
            .build()
            .expect("config")
    }

    /// The longest an operation may take with `fault_config`: every try
    /// times out, plus the backoffs, plus scheduling slack.
    const BOUND: Duration = Duration::from_millis(3 * 300 + 2 * 50 + 500);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_killed_server_fails_fast_then_recovers() {
        let mut server = RedisServer::start();
        let backend = RedisBackend::new(fault_config(&server.url()))
            .await
            .expect("connect");
        backend.put(b"k", "before".into()).await.expect("put");
        server.kill();
        for _ in 0..5 {
            let started = Instant::now();
            let err = backend.get(b"k").await.expect_err("the server is dead");
            let took = started.elapsed();
            assert!(err.is_temporary(), "{err}");
            assert!(
                matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                "{err}"
            );
            assert_eq!(err.backend(), "redis");
            assert!(took < BOUND, "failing took {took:?}");
        }
        server.restart();
        // Same client, no rebuild: it reconnects by itself.
        eventually(Duration::from_secs(10), || {
            backend.put(b"k", "after".into())
        })
        .await;
        assert_eq!(
            backend.get(b"k").await.expect("get").as_deref(),
            Some(&b"after"[..])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_frozen_server_times_out() {
        let server = RedisServer::start();
        let backend = RedisBackend::new(fault_config(&server.url()))
            .await
            .expect("connect");
        backend.put(b"k", "v".into()).await.expect("put");
        server.pause();
        let started = Instant::now();
        let err = backend.get(b"k").await.expect_err("no answer while frozen");
        let took = started.elapsed();
        // The increment reached the frozen server and runs when it resumes:
        // its error must say so, so that no retry layer sends it again.
        let lost = backend
            .increment(b"n", 1, PutOptions::new())
            .await
            .expect_err("no answer while frozen");
        server.resume();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.is_temporary() && !err.may_have_applied(), "{err}");
        assert!(lost.may_have_applied() && !lost.is_retryable(), "{lost}");
        assert!(took < BOUND, "timing out took {took:?}");
        assert!(
            took >= Duration::from_millis(300),
            "gave up early: {took:?}"
        );
        let value = eventually(Duration::from_secs(10), || backend.get(b"k")).await;
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cluster_killed_master_fails_fast_then_recovers() {
        let mut cluster = RedisCluster::start(3);
        let backend = RedisBackend::new(fault_config(&cluster.url()))
            .await
            .expect("connect");
        let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
        for key in &keys {
            backend.put(key.as_bytes(), "v".into()).await.expect("put");
        }
        cluster.nodes()[0].kill();
        let mut failed = 0;
        for key in &keys {
            let started = Instant::now();
            if let Err(err) = backend.get(key.as_bytes()).await {
                failed += 1;
                assert!(err.is_temporary(), "{err}");
                assert_eq!(err.backend(), "redis_cluster");
            }
            assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
        }
        assert!(failed > 0, "no key lived on the killed master");
        cluster.nodes()[0].restart();
        // The restarted master kept its cluster identity (nodes.conf); its
        // data is gone (no persistence), so writes must work again.
        for key in &keys {
            eventually(Duration::from_secs(20), || {
                backend.put(key.as_bytes(), "again".into())
            })
            .await;
        }
        assert_eq!(backend.count().await.expect("count"), keys.len() as u64);

        // A frozen master: its keys fail within the bound, and all answer
        // once it thaws.
        cluster.nodes()[1].pause();
        let mut timed_out = 0;
        for key in &keys {
            let started = Instant::now();
            if let Err(err) = backend.get(key.as_bytes()).await {
                timed_out += 1;
                // A timeout, or the cluster down once the others notice.
                assert!(err.is_temporary(), "{err}");
                assert!(
                    matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
                    "{err}"
                );
            }
            assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
        }
        cluster.nodes()[1].resume();
        assert!(timed_out > 0, "no key lived on the frozen master");
        for key in &keys {
            eventually(Duration::from_secs(20), || backend.get(key.as_bytes())).await;
        }
    }
}
