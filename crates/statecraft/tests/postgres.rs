//! The PostgreSQL backend against real servers started by the test support:
//! the conformance suite, migrations racing, transactions, purge,
//! maintenance, LISTEN/NOTIFY, checkpoints, and faults (a killed server, and
//! `pg_ctl stop -m immediate` during 10,000 acknowledged writes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statecraft::{
    Bytes, ErrorKind, Limits, MemoryBackend, PostgresBackend, PostgresConfig, PutOptions,
    StateBackend, Transaction,
};
use statecraft_testkit::{
    Fault, FaultProxy, Fixture, FixtureFuture, PostgresServer, TimeControl, FIXTURE_MAX_KEY,
    FIXTURE_MAX_VALUE,
};

/// A table name no other test of this run uses.
fn unique_table(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(url: &str, table: &str) -> PostgresConfig {
    PostgresConfig::builder()
        .url(url)
        .table(table)
        .pool_size(8)
        .limits(Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE))
        .build()
        .expect("a valid PostgreSQL configuration")
}

async fn backend(url: &str, table: &str) -> PostgresBackend {
    PostgresBackend::new(config(url, table))
        .await
        .expect("the test server accepts connections")
}

fn postgres_fixture() -> FixtureFuture {
    Box::pin(async {
        let backend = backend(&PostgresServer::shared().url(), &unique_table("conf")).await;
        Fixture::new(
            Arc::new(backend),
            TimeControl::Real,
            FIXTURE_MAX_KEY,
            FIXTURE_MAX_VALUE,
        )
    })
}

/// Every write takes the same options on a PostgreSQL backend with a
/// default TTL, transactions included.
#[tokio::test]
async fn write_options_on_a_default_ttl_backend() {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table(unique_table("options"))
        .default_ttl(Duration::from_secs(60))
        .build()
        .expect("config");
    let backend = PostgresBackend::new(config).await.expect("connect");
    statecraft_testkit::conformance::write_options_on_default_ttl(&backend).await;
}

fn cached_postgres_fixture() -> FixtureFuture {
    Box::pin(async {
        let table = unique_table("cached");
        let backend = backend(&PostgresServer::shared().url(), &table).await;
        let cached = statecraft::Cached::builder(backend)
            .channel(format!("cached_{table}"))
            .build()
            .await
            .expect("cached");
        Fixture::new(
            Arc::new(cached),
            TimeControl::Real,
            FIXTURE_MAX_KEY,
            FIXTURE_MAX_VALUE,
        )
    })
}

/// Memory over Redis over PostgreSQL, the last one authoritative.
fn tiered_memory_redis_postgres_fixture() -> FixtureFuture {
    Box::pin(async {
        let table = unique_table("tiered");
        let redis = statecraft::RedisBackend::new(
            statecraft::RedisConfig::builder()
                .url(statecraft_testkit::RedisServer::shared().url())
                .key_prefix(format!("{table}:"))
                .limits(Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE))
                .build()
                .expect("config"),
        )
        .await
        .expect("redis");
        let tiers = statecraft::Tiered::builder()
            .tier(
                MemoryBackend::builder()
                    .limits(Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE))
                    .build(),
                Duration::from_secs(10),
            )
            .tier(redis, Duration::from_secs(60))
            .last(backend(&PostgresServer::shared().url(), &table).await)
            .build()
            .expect("tiers");
        Fixture::new(
            Arc::new(tiers),
            TimeControl::Real,
            FIXTURE_MAX_KEY,
            FIXTURE_MAX_VALUE,
        )
    })
}

mod conformance {
    mod tiered_memory_redis_postgres {
        statecraft_testkit::conformance_tests!(super::super::tiered_memory_redis_postgres_fixture);
    }
    mod postgres {
        statecraft_testkit::conformance_tests!(super::super::postgres_fixture);
    }
    mod cached_postgres {
        statecraft_testkit::conformance_tests!(super::super::cached_postgres_fixture);
    }
}

/// Rows physically in `table`, expired ones included.
async fn raw_rows(url: &str, table: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(connection);
    let row = client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .expect("count rows");
    row.get(0)
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_starting_at_once_migrate_once() {
        let url = PostgresServer::shared().url();
        let table = unique_table("race");
        let starts = (0..8).map(|_| {
            let (url, table) = (url.clone(), table.clone());
            tokio::spawn(async move { PostgresBackend::new(config(&url, &table)).await })
        });
        for start in futures_util::future::join_all(starts).await {
            start.expect("task").expect("every instance starts");
        }
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("raw connection");
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*) FROM statecraft_migrations WHERE table_name = $1",
                &[&table],
            )
            .await
            .expect("migrations");
        assert_eq!(row.get::<_, i64>(0), 1, "the migration ran exactly once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn table_names_must_be_identifiers() {
        for bad in ["state; DROP TABLE x", "State", "a-b", "1x", ""] {
            let err = PostgresConfig::builder()
                .url("postgres://u@127.0.0.1/db")
                .table(bad)
                .build()
                .err()
                .map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::Config), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interactive_transactions_commit_roll_back_and_drop() {
        let backend = backend(&PostgresServer::shared().url(), &unique_table("tx")).await;
        let tx = backend.begin().await.expect("begin");
        tx.put(b"a", "1".into(), PutOptions::new())
            .await
            .expect("put");
        assert_eq!(
            tx.get(b"a").await.expect("own write").as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            backend.get(b"a").await.expect("get"),
            None,
            "not yet visible"
        );
        tx.commit().await.expect("commit");
        assert_eq!(
            backend.get(b"a").await.expect("get").as_deref(),
            Some(&b"1"[..])
        );

        let tx = backend.begin().await.expect("begin");
        assert!(tx.delete(b"a").await.expect("delete"));
        tx.rollback().await.expect("rollback");
        assert!(backend.contains(b"a").await.expect("contains"));

        let tx = backend.begin().await.expect("begin");
        tx.put(b"b", "dropped".into(), PutOptions::new())
            .await
            .expect("put");
        let locked = tx.get_for_update(b"a").await.expect("lock");
        assert_eq!(locked.as_deref(), Some(&b"1"[..]));
        drop(tx);
        assert_eq!(
            backend.get(b"b").await.expect("get"),
            None,
            "rolled back on drop"
        );
        // The lock died with the connection: a write goes through.
        backend.put(b"a", "2".into()).await.expect("put after drop");
    }

    /// A statement that times out inside a transaction (a lock wait) makes
    /// `commit` fail instead of reporting a write PostgreSQL discarded, and
    /// leaves no connection stuck in the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_statement_makes_commit_fail() {
        let config = PostgresConfig::builder()
            .url(PostgresServer::shared().url())
            .table(unique_table("txfail"))
            .pool_size(2)
            .operation_timeout(Duration::from_millis(500))
            .build()
            .expect("config");
        let backend = PostgresBackend::new(config).await.expect("connect");
        backend.put(b"k", "0".into()).await.expect("put");
        let holder = backend.begin().await.expect("begin");
        holder.get_for_update(b"k").await.expect("lock");
        let waiter = backend.begin().await.expect("begin");
        waiter
            .put(b"other", "1".into(), PutOptions::new())
            .await
            .expect("put");
        let err = waiter
            .get_for_update(b"k")
            .await
            .expect_err("the row is locked");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        let err = waiter.commit().await.expect_err("nothing to commit");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err:?}");
        holder.rollback().await.expect("rollback");
        assert_eq!(backend.get(b"other").await.expect("get"), None);
        // Both pooled connections are usable again.
        for i in 0..4 {
            backend
                .put(format!("after{i}").as_bytes(), "v".into())
                .await
                .expect("put");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_check_then_write_atomically() {
        let backend = backend(&PostgresServer::shared().url(), &unique_table("txn")).await;
        backend.put(b"from", "10".into()).await.expect("put");
        let transfer = Transaction::new()
            .check("from", Some("10"))
            .check("to", None::<&str>)
            .put("from", "0")
            .put("to", "10");
        assert!(backend.transaction(transfer.clone()).await.expect("commit"));
        assert!(!backend.transaction(transfer).await.expect("checks fail"));
        assert_eq!(
            backend.get(b"to").await.expect("get").as_deref(),
            Some(&b"10"[..])
        );
        // 8 tasks race to create the same absent key: exactly one wins.
        let wins = Arc::new(AtomicUsize::new(0));
        let racers = (0..8).map(|i| {
            let (backend, wins) = (backend.clone(), wins.clone());
            tokio::spawn(async move {
                let claim = Transaction::new()
                    .check("owner", None::<&str>)
                    .put("owner", format!("task-{i}"));
                if backend.transaction(claim).await.expect("transaction") {
                    wins.fetch_add(1, Ordering::Relaxed);
                }
            })
        });
        futures_util::future::join_all(racers).await;
        assert_eq!(wins.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_rows_are_purged_and_maintenance_runs() {
        let url = PostgresServer::shared().url();
        let table = unique_table("purge");
        let backend = backend(&url, &table).await;
        for i in 0..20 {
            backend
                .put_with_ttl(
                    format!("t{i}").as_bytes(),
                    "v".into(),
                    Duration::from_millis(50),
                )
                .await
                .expect("put");
        }
        backend.put(b"keep", "v".into()).await.expect("put");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backend.count().await.expect("count"), 1);
        assert_eq!(
            raw_rows(&url, &table).await,
            21,
            "expired rows wait for the purge"
        );
        assert_eq!(backend.purge_expired().await.expect("purge"), 20);
        assert_eq!(raw_rows(&url, &table).await, 1);
        backend.vacuum().await.expect("vacuum");
        backend.analyze().await.expect("analyze");
        let stats = backend.stats().await.expect("stats");
        for figure in [
            "database_size_bytes",
            "table_size_bytes",
            "dead_tuples",
            "pool_max",
        ] {
            assert!(stats.details.contains_key(figure), "{figure} missing");
        }
        assert!(stats.details["table_size_bytes"] > 0);
        assert_eq!(stats.details["pool_max"], 8);
        let pool = backend.pool_status();
        assert!(pool.size >= 1 && pool.size <= 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listen_notify_delivers() {
        let backend = backend(&PostgresServer::shared().url(), &unique_table("ps")).await;
        let channel = unique_table("Channel");
        let mut subscription = backend.subscribe(&channel).await.expect("listen");
        for i in 0..3 {
            backend
                .publish(&channel, Bytes::from(format!("message {i} ✓")))
                .await
                .expect("notify");
        }
        for i in 0..3 {
            let message = tokio::time::timeout(Duration::from_secs(5), subscription.next_message())
                .await
                .expect("a message within 5 s")
                .expect("open")
                .expect("no error");
            assert_eq!(message.channel, channel);
            assert_eq!(message.payload, Bytes::from(format!("message {i} ✓")));
        }
        let err = backend
            .publish(&channel, Bytes::from_static(b"\xff"))
            .await
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        for (channel, payload) in [
            (&channel[..], &b"nul\0byte"[..]),
            (&"c".repeat(64)[..], b"x"),
        ] {
            let err = backend
                .publish(channel, Bytes::copy_from_slice(payload))
                .await
                .err();
            assert_eq!(
                err.map(|e| e.kind()),
                Some(ErrorKind::InvalidArgument),
                "{channel}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoint_moves_rows_to_memory() {
        let backend = backend(&PostgresServer::shared().url(), &unique_table("ckpt")).await;
        let entries: Vec<(Bytes, Bytes)> = (0..1500)
            .map(|i| {
                (
                    Bytes::from(format!("k{i:05}")),
                    Bytes::from(vec![i as u8; 10]),
                )
            })
            .collect();
        backend
            .batch_put(entries, Default::default())
            .await
            .expect("batch");
        let mut file = Vec::new();
        let n = statecraft::checkpoint::export(&backend, b"k", &mut file)
            .await
            .expect("export");
        assert_eq!(n, 1500);
        let memory = MemoryBackend::new();
        let restored = statecraft::checkpoint::restore(&memory, &mut file.as_slice())
            .await
            .expect("restore");
        assert_eq!(restored, 1500);
        assert_eq!(
            memory.get(b"k01234").await.expect("get"),
            Some(Bytes::from(vec![1234u32 as u8; 10]))
        );
    }

    /// How many connections with `application_name` `name` the server has.
    async fn connections_named(client: &tokio_postgres::Client, name: &str) -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    }

    /// Has the server end every read connection (waiting until each is
    /// gone): how many it ended.
    async fn end_read_connections(client: &tokio_postgres::Client) -> i64 {
        client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM pg_stat_activity WHERE application_name = 'statecraft-reads'",
                &[],
            )
            .await
            .expect("terminate")
            .get(0)
    }

    async fn raw_client(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("raw connection");
        tokio::spawn(connection);
        client
    }

    /// Point reads go over `read_connections` shared connections of their
    /// own; when the server ends them, the next reads reopen them and
    /// still answer (each read runs once more on the new connection).
    /// `read_connections(0)` keeps reads on the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn point_reads_share_connections_and_outlive_them() {
        let server = PostgresServer::start();
        let url = server.url();
        let raw = raw_client(&url).await;
        let config = PostgresConfig::builder()
            .url(&url)
            .table("lanes")
            .pool_size(4)
            .read_connections(3)
            .build()
            .expect("config");
        let backend = PostgresBackend::new(config).await.expect("connect");
        for i in 0..64 {
            backend
                .put_with_ttl(
                    format!("k{i}").as_bytes(),
                    format!("v{i}").into(),
                    Duration::from_secs(600),
                )
                .await
                .expect("put");
        }
        assert_eq!(connections_named(&raw, "statecraft-reads").await, 3);
        let check_all = |backend: PostgresBackend| async move {
            let reads = (0..64).map(|i| {
                let backend = backend.clone();
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    let value = backend.get(key.as_bytes()).await?;
                    let with_ttl = backend.get_with_ttl(key.as_bytes()).await?;
                    let ttl = backend.ttl(key.as_bytes()).await?;
                    Ok::<_, statecraft::Error>((i, value, with_ttl, ttl))
                })
            });
            for read in futures_util::future::join_all(reads).await {
                let (i, value, with_ttl, ttl) = read.expect("task").expect("read");
                let expected = format!("v{i}");
                assert_eq!(value.as_deref(), Some(expected.as_bytes()));
                let (with_value, left) = with_ttl.expect("present");
                assert_eq!(with_value.as_ref(), expected.as_bytes());
                assert!(
                    matches!(left, statecraft::KeyTtl::ExpiresIn(d) if d > Duration::from_secs(500))
                );
                assert!(
                    matches!(ttl, statecraft::KeyTtl::ExpiresIn(d) if d > Duration::from_secs(500))
                );
            }
        };
        check_all(backend.clone()).await;
        let ended = end_read_connections(&raw).await;
        assert_eq!(ended, 3);
        check_all(backend.clone()).await;
        let stats = backend.stats().await.expect("stats");
        assert_eq!(stats.details["read_connections"], 3);
        let open = stats.details["read_connections_open"];
        assert!((1..=3).contains(&open), "{open} open");
        assert_eq!(stats.details["read_connections_reopened"], open);
        assert_eq!(
            connections_named(&raw, "statecraft-reads").await,
            open as i64
        );

        let pooled = PostgresConfig::builder()
            .url(&url)
            .table("lanes")
            .read_connections(0)
            .build()
            .expect("config");
        let pooled = PostgresBackend::new(pooled).await.expect("connect");
        check_all(pooled.clone()).await;
        assert_eq!(
            pooled.stats().await.expect("stats").details["read_connections"],
            0
        );
        assert_eq!(connections_named(&raw, "statecraft-reads").await, 3);
        let err = PostgresConfig::builder()
            .url(&url)
            .read_connections(65)
            .build()
            .expect_err("too many");
        assert_eq!(err.kind(), ErrorKind::Config);
    }

    /// Reads in flight on shared connections that the server ends run
    /// once more on new ones: the statements are sent (polled once) into a
    /// black hole, the server ends the read connections, and only then does
    /// the network heal, so every read learns of the loss after it was sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn point_reads_in_flight_when_their_connection_ends_run_again() {
        let server = PostgresServer::start();
        let proxy = FaultProxy::start(
            format!("127.0.0.1:{}", server.port())
                .parse()
                .expect("an address"),
        );
        let raw = raw_client(&server.url()).await;
        let config = PostgresConfig::builder()
            .url(format!("postgres://postgres@{}/postgres", proxy.addr()))
            .table("ended")
            .read_connections(2)
            .build()
            .expect("config");
        let backend = PostgresBackend::new(config).await.expect("connect");
        for i in 0..16 {
            backend
                .put(format!("k{i}").as_bytes(), format!("v{i}").into())
                .await
                .expect("put");
        }
        proxy.set(Fault::Blackhole);
        let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
        let mut reads: Vec<_> = keys.iter().map(|key| backend.get(key.as_bytes())).collect();
        // One poll each sends them: into the black hole, unanswered.
        for read in &mut reads {
            let first = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(
                    std::pin::Pin::new(&mut *read),
                    cx,
                ))
            })
            .await;
            assert!(first.is_pending(), "answered through a black hole");
        }
        let ended = end_read_connections(&raw).await;
        assert_eq!(ended, 2);
        proxy.set(Fault::Pass);
        for (i, value) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let expected = format!("v{i}");
            assert_eq!(
                value.expect("run again on a new connection").as_deref(),
                Some(expected.as_bytes())
            );
        }
        assert_eq!(connections_named(&raw, "statecraft-reads").await, 2);
    }

    /// Reads given up while their statements wait on a shared connection
    /// (the table locked) leave it in step: the answers that come later go
    /// to nobody, and the next reads get their own, on the same connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_given_up_leave_their_shared_connection_in_step() {
        use futures_util::FutureExt;
        let url = PostgresServer::shared().url();
        let table = unique_table("instep");
        let config = PostgresConfig::builder()
            .url(&url)
            .table(&table)
            .read_connections(1)
            .build()
            .expect("config");
        let backend = PostgresBackend::new(config).await.expect("connect");
        backend.put(b"a", "1".into()).await.expect("put");
        backend.put(b"b", "2".into()).await.expect("put");
        let raw = raw_client(&url).await;
        raw.batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{table}\" IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .expect("lock");
        // Each is sent by its first poll, then dropped unanswered.
        assert!(backend.get(b"a").now_or_never().is_none());
        assert!(backend.get_with_ttl(b"b").now_or_never().is_none());
        assert!(backend.ttl(b"b").now_or_never().is_none());
        // Until the server has them, waiting for the lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = raw
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'statecraft-reads' \
                     AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
                    &[&table],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the reads never reached the server"
            );
            tokio::task::yield_now().await;
        }
        raw.batch_execute("COMMIT").await.expect("unlock");
        for _ in 0..3 {
            assert_eq!(
                backend.get(b"b").await.expect("get").as_deref(),
                Some(&b"2"[..])
            );
            assert_eq!(
                backend.ttl(b"a").await.expect("ttl"),
                statecraft::KeyTtl::Persistent
            );
            assert_eq!(
                backend.get(b"a").await.expect("get").as_deref(),
                Some(&b"1"[..])
            );
            assert_eq!(backend.get(b"none").await.expect("get"), None);
        }
        let stats = backend.stats().await.expect("stats");
        assert_eq!(stats.details["read_connections_reopened"], 0);
    }

    /// A read connection that answers nothing (its peer gone without
    /// closing the socket, here a black hole) is replaced once a read has
    /// waited on it for half the operation timeout: the next read, once the
    /// network is back, runs on a new connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_read_connection_is_replaced() {
        let server = PostgresServer::shared();
        let proxy = FaultProxy::start(
            format!("127.0.0.1:{}", server.port())
                .parse()
                .expect("an address"),
        );
        let config = PostgresConfig::builder()
            .url(format!("postgres://postgres@{}/postgres", proxy.addr()))
            .table(unique_table("silent"))
            .read_connections(1)
            .operation_timeout(Duration::from_millis(400))
            .build()
            .expect("config");
        let backend = PostgresBackend::new(config).await.expect("connect");
        backend.put(b"k", "v".into()).await.expect("put");
        assert_eq!(
            backend.get(b"k").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        proxy.set(Fault::Blackhole);
        let err = backend.get(b"k").await.expect_err("no answer");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        proxy.set(Fault::Pass);
        assert_eq!(
            backend.get(b"k").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
        let stats = backend.stats().await.expect("stats");
        assert_eq!(stats.details["read_connections_reopened"], 1);
        assert_eq!(stats.details["read_connections_open"], 1);
    }
}

mod faults {
    use super::*;

    fn fault_config(url: &str, table: &str) -> PostgresConfig {
        PostgresConfig::builder()
            .url(url)
            .table(table)
            .pool_size(8)
            .operation_timeout(Duration::from_millis(1500))
            .acquire_timeout(Duration::from_millis(1000))
            .connect_timeout(Duration::from_millis(1000))
            .build()
            .expect("config")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_killed_server_fails_fast_then_recovers() {
        let mut server = PostgresServer::start();
        let backend = PostgresBackend::new(fault_config(&server.url(), "faults"))
            .await
            .expect("connect");
        backend.put(b"k", "before".into()).await.expect("put");
        server.kill();
        for _ in 0..5 {
            let started = Instant::now();
            let err = backend.get(b"k").await.expect_err("the server is dead");
            let took = started.elapsed();
            assert!(err.is_temporary(), "{err:?}");
            assert!(
                matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                "{err:?}"
            );
            assert!(took < Duration::from_millis(2500), "failing took {took:?}");
        }
        server.restart();
        let deadline = Instant::now() + Duration::from_secs(20);
        let value = loop {
            match backend.get(b"k").await {
                Ok(value) => break value,
                Err(err) if Instant::now() < deadline => {
                    assert!(err.is_temporary(), "{err:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("not recovered: {err:?}"),
            }
        };
        // Committed before the kill, so it survived it.
        assert_eq!(value.as_deref(), Some(&b"before"[..]));
    }

    /// Eight writers put distinct keys until 10,000 writes have been
    /// acknowledged; halfway, the server is stopped with
    /// `pg_ctl stop -m immediate` (no checkpoint) and restarted. Every
    /// acknowledged write must be there afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_immediate_stop_loses_no_acknowledged_write() {
        const TARGET: usize = 10_000;
        let mut server = PostgresServer::start();
        let backend = PostgresBackend::new(fault_config(&server.url(), "durable"))
            .await
            .expect("connect");
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (backend, acked, next, failures) = (
                    backend.clone(),
                    acked.clone(),
                    next.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    while acked.lock().expect("lock").len() < TARGET {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (key, value) = (format!("key-{i:06}"), format!("value-{i}"));
                        match backend.put(key.as_bytes(), value.clone().into()).await {
                            Ok(()) => {
                                acked.lock().expect("lock").insert(key, value);
                            }
                            Err(err) => {
                                assert!(err.is_temporary(), "{err:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        while acked.lock().expect("lock").len() < TARGET / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::block_in_place(|| {
            server.stop_immediate();
            server.restart();
        });
        for writer in writers {
            writer.await.expect("writer");
        }
        assert!(
            failures.load(Ordering::Relaxed) > 0,
            "the stop hit no write"
        );
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() >= TARGET);
        let keys: Vec<Bytes> = acked.keys().map(|k| Bytes::from(k.clone())).collect();
        let mut missing = 0;
        for (chunk_keys, chunk) in keys
            .chunks(1000)
            .zip(acked.values().collect::<Vec<_>>().chunks(1000))
        {
            let values = backend.batch_get(chunk_keys).await.expect("batch get");
            for (value, expected) in values.iter().zip(chunk) {
                if value.as_deref() != Some(expected.as_bytes()) {
                    missing += 1;
                }
            }
        }
        assert_eq!(missing, 0, "acknowledged writes lost");
    }
}
