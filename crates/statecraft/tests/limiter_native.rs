//! The limiter's Lua copy (`src/limiter/limit.lua`) and PL/pgSQL copy
//! (`src/limiter/limit.sql`) against the Rust algorithms, on a real Redis
//! (single node and Cluster) and a real PostgreSQL started by the test
//! support: random quotas, stored states (those a run of requests leaves,
//! and damaged ones), costs and times. Each step is set up on its own —
//! the stored state written first, with a long TTL — so the store's own
//! expiry never races the test's clock; the answer, the state written and
//! its TTL must be what the Rust step decides.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use statecraft::limiter::{
    decide, encode_state, refund, refund_input, step_input, Algorithm, DistributedLimiter,
    LimitState, LimitStep, Quota, Verdict,
};
use statecraft::{
    AtomicUpdate, AtomicWrite, ErrorKind, Namespaced, PostgresBackend, PostgresConfig,
    RedisBackend, RedisConfig, StateBackend,
};
use statecraft_testkit::{PostgresServer, RedisCluster, RedisServer};
use tokio_postgres::NoTls;

fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Around now in µs, so windows and TTLs look like the real ones.
const EPOCH: u64 = 1_764_000_000_000_000;

fn any_quota() -> impl Strategy<Value = Quota> {
    (
        prop::sample::select(Algorithm::ALL.to_vec()),
        1u64..30,
        prop::sample::select(vec![1_000u64, 7_919, 1_000_000, 60_000_000, 3_600_000_000]),
        1u64..15,
    )
        .prop_map(|(algorithm, count, period, burst)| {
            let builder =
                Quota::with_period(count, Duration::from_micros(period)).algorithm(algorithm);
            match algorithm {
                Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(burst),
                _ => builder,
            }
            .build()
            .expect("a valid quota")
        })
}

/// One step to check: the stored text (if any), the cost (negative: a
/// refund of that many permits) and the time.
type Case = (Option<String>, i64, u64);

fn input(quota: &Quota, cost: i64, now: u64) -> String {
    if cost < 0 {
        refund_input(quota, cost.unsigned_abs(), now)
    } else {
        step_input(quota, cost as u64, now)
    }
}

/// The steps of a run of requests (gaps scaled to the period), each with
/// the state the run had left, and now and then a damaged state.
fn cases() -> impl Strategy<Value = (Quota, Vec<Case>)> {
    (
        any_quota(),
        prop::collection::vec((0u64..2_000, 0u64..8, 0u8..20), 1..40),
        0u64..1_000_000_000,
    )
        .prop_map(|(quota, requests, start)| {
            let period = quota.period().as_micros() as u64;
            let mut now = EPOCH + start;
            let mut state: Option<LimitState> = None;
            let mut cases = Vec::new();
            let mut last: Option<statecraft::limiter::Decision> = None;
            for (gap, cost, pick) in requests {
                // Gaps up to two periods, most of them small; some land
                // exactly on the last decision's retry or reset time.
                now += match (pick, last) {
                    (5, Some(d)) => d.retry_after_us,
                    (6, Some(d)) => d.reset_after_us,
                    (7, Some(d)) => d.reset_after_us.saturating_sub(1),
                    (8, Some(d)) => d.retry_after_us.saturating_sub(1),
                    _ => (gap * gap) * 2 * period / 4_000_000,
                };
                let stored = match pick {
                    0 => Some("g x".to_string()),
                    1 => Some("t 5 6".to_string()),
                    2 => Some(format!("q {now}")),
                    3 => Some(String::new()),
                    4 => Some("s  1 2".to_string()),
                    // Counts above a lowered limit, in this window.
                    10 => Some(format!("s {} 999 999", now - now % period)),
                    11 => Some(format!("f {} 999", now - now % period)),
                    _ => state.map(|s| encode_state(&s, &quota)),
                };
                // Now and then a lease's rest given back.
                let cost = if pick == 9 {
                    -(cost as i64)
                } else {
                    cost as i64
                };
                cases.push((stored, cost, now));
                let decided = if cost < 0 {
                    refund(&quota, state, cost.unsigned_abs(), now)
                } else {
                    decide(&quota, state, cost as u64, now)
                };
                if let Some(write) = decided.write {
                    state = Some(write);
                }
                last = Some(decided.decision);
            }
            (quota, cases)
        })
}

/// What the Rust step decides for a case: the output, and the value and
/// TTL (ms) written, if any.
fn expected(quota: &Quota, (stored, cost, now): &Case) -> (String, Option<(String, u64)>) {
    let input = input(quota, *cost, *now);
    let step = LimitStep
        .apply(stored.as_deref().map(str::as_bytes), input.as_bytes(), 1)
        .expect("a valid input");
    let written = match step.write {
        AtomicWrite::Put { value, options } => Some((
            String::from_utf8(value.to_vec()).expect("text"),
            options.ttl.expect("every write has a TTL").as_millis() as u64,
        )),
        AtomicWrite::Keep => None,
        other => panic!("the step wrote {other:?}"),
    };
    (
        String::from_utf8(step.output.to_vec()).expect("text"),
        written,
    )
}

/// A store that can have a state put under a key before a step, and be
/// read back after it (with the TTL left, in ms).
trait Probe {
    fn backend(&self) -> &dyn StateBackend;
    async fn put_state(&self, key: &str, state: Option<&str>);
    async fn read_state(&self, key: &str) -> Option<(String, u64)>;
}

struct OnRedis {
    backend: RedisBackend,
    client: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Probe for OnRedis {
    fn backend(&self) -> &dyn StateBackend {
        &self.backend
    }

    async fn put_state(&self, key: &str, state: Option<&str>) {
        let full = format!("{}{key}", self.prefix);
        let mut client = self.client.clone();
        let mut command = match state {
            Some(_) => redis::cmd("SET"),
            None => redis::cmd("DEL"),
        };
        command.arg(&full);
        if let Some(state) = state {
            command.arg(state).arg("PX").arg(3_600_000);
        }
        let _: () = command
            .query_async(&mut client)
            .await
            .expect("set up the state");
    }

    async fn read_state(&self, key: &str) -> Option<(String, u64)> {
        let full = format!("{}{key}", self.prefix);
        let mut client = self.client.clone();
        let (value, ttl): (Option<String>, i64) = redis::pipe()
            .get(&full)
            .pttl(&full)
            .query_async(&mut client)
            .await
            .expect("read the state");
        // -1: no TTL; 0: under a millisecond left; -2: expired since.
        assert!(
            value.is_none() || ttl != -1,
            "{key} holds {value:?} without a TTL"
        );
        value.map(|v| (v, ttl.max(0) as u64))
    }
}

/// Runs every case through `probe` and compares with the Rust step.
async fn check<P: Probe>(
    probe: &P,
    quota: &Quota,
    cases: &[Case],
    key: &str,
) -> Result<(), TestCaseError> {
    for case in cases {
        let (want_output, want_write) = expected(quota, case);
        let before = case.0.as_deref().filter(|s| !s.is_empty());
        probe.put_state(key, before).await;
        let input = input(quota, case.1, case.2);
        let sent = std::time::Instant::now();
        let output = probe
            .backend()
            .update_atomic(key.as_bytes(), &LimitStep, input.as_bytes())
            .await
            .map_err(|err| TestCaseError::fail(format!("{input}: {err}")))?;
        prop_assert_eq!(
            std::str::from_utf8(&output).expect("text"),
            want_output.as_str(),
            "{} on {:?}",
            input,
            before
        );
        let after = probe.read_state(key).await;
        match (&want_write, &after) {
            (Some((value, ttl)), Some((stored, left))) => {
                prop_assert_eq!(stored, value, "{} on {:?}", input, before);
                prop_assert!(
                    *left <= *ttl && *left + 2 + sent.elapsed().as_millis() as u64 >= *ttl,
                    "{input}: TTL {left} ms, not {ttl}"
                );
            }
            (None, _) => {
                let kept = before.map(|s| s.to_string());
                prop_assert_eq!(after.map(|a| a.0), kept, "{} wrote on {:?}", input, before);
            }
            // A state that matters for a millisecond or so may be gone
            // by the time it is read.
            (Some((_, ttl)), None) => prop_assert!(
                u128::from(*ttl) <= sent.elapsed().as_millis() + 1,
                "{input} on {before:?} wrote nothing"
            ),
        }
    }
    Ok(())
}

/// One runtime for the cases of every test (whose connections live on),
/// with workers of its own so that they run while any test waits.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

async fn on_redis(url: &str, functions: bool) -> OnRedis {
    let prefix = unique("limit_diff") + ":";
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(prefix.clone())
        .server_functions(functions)
        .build()
        .expect("config");
    let backend = RedisBackend::new(config).await.expect("redis");
    let client = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    OnRedis {
        backend,
        client,
        prefix,
    }
}

fn redis_probe(functions: bool) -> &'static OnRedis {
    static WITH: OnceLock<OnRedis> = OnceLock::new();
    static WITHOUT: OnceLock<OnRedis> = OnceLock::new();
    let cell = if functions { &WITH } else { &WITHOUT };
    cell.get_or_init(|| runtime().block_on(on_redis(&RedisServer::shared().url(), functions)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_lua_step_decides_as_the_rust_step((quota, cases) in cases()) {
        let probe = redis_probe(true);
        runtime().block_on(check(probe, &quota, &cases, &unique("k")))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(60))]

    /// The step run per call by EVALSHA, as on a server without functions.
    #[test]
    fn the_lua_step_by_evalsha_decides_as_the_rust_step((quota, cases) in cases()) {
        let probe = redis_probe(false);
        runtime().block_on(check(probe, &quota, &cases, &unique("k")))?;
    }
}

struct OnPostgres {
    backend: Namespaced<Arc<dyn StateBackend>>,
    operator: tokio_postgres::Client,
    table: String,
    prefix: String,
}

impl Probe for OnPostgres {
    fn backend(&self) -> &dyn StateBackend {
        &self.backend
    }

    async fn put_state(&self, key: &str, state: Option<&str>) {
        let full = format!("{}{key}", self.prefix).into_bytes();
        let table = format!("{}_limits", self.table);
        let result = match state {
            Some(state) => {
                self.operator
                    .execute(
                        &format!(
                            "INSERT INTO {table} VALUES ($1, 'test', $2, clock_timestamp(), \
                             clock_timestamp() + interval '1 hour') ON CONFLICT (key) DO UPDATE \
                             SET state = $2, expires_at = clock_timestamp() + interval '1 hour'"
                        ),
                        &[&full, &state],
                    )
                    .await
            }
            None => {
                self.operator
                    .execute(&format!("DELETE FROM {table} WHERE key = $1"), &[&full])
                    .await
            }
        };
        result.expect("set up the state");
    }

    async fn read_state(&self, key: &str) -> Option<(String, u64)> {
        let full = format!("{}{key}", self.prefix).into_bytes();
        let row = self
            .operator
            .query_opt(
                &format!(
                    "SELECT state, ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::int8 \
                     FROM {}_limits WHERE key = $1",
                    self.table
                ),
                &[&full],
            )
            .await
            .expect("read the state")?;
        let left: i64 = row.get(1);
        Some((row.get(0), left.max(0) as u64))
    }
}

fn postgres_probe() -> &'static OnPostgres {
    static PROBE: OnceLock<OnPostgres> = OnceLock::new();
    PROBE.get_or_init(|| {
        runtime().block_on(async {
            let table = unique("limit_diff");
            let url = PostgresServer::shared().url();
            let config = PostgresConfig::builder()
                .url(url.clone())
                .table(table.clone())
                .build()
                .expect("config");
            let backend: Arc<dyn StateBackend> =
                Arc::new(PostgresBackend::new(config).await.expect("postgres"));
            let (operator, connection) =
                tokio_postgres::connect(&url, NoTls).await.expect("connect");
            tokio::spawn(connection);
            let prefix = "ns:".to_string();
            // The first step sets the table up.
            backend
                .update_atomic(b"warm", &LimitStep, b"g 1 1000 1 0 0")
                .await
                .expect("set up");
            OnPostgres {
                backend: Namespaced::new(backend, prefix.clone()),
                operator,
                table,
                prefix,
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Through `Namespaced`, so the native path is also taken through a
    /// layer.
    #[test]
    fn the_plpgsql_step_decides_as_the_rust_step((quota, cases) in cases()) {
        let probe = postgres_probe();
        runtime().block_on(check(probe, &quota, &cases, &unique("k")))?;
    }
}

/// On a Cluster, keys in many slots: each step runs on its key's node.
#[test]
fn the_lua_step_decides_as_the_rust_step_on_a_cluster() {
    let quota = Quota::per_second(3).burst(2).build().expect("quota");
    runtime().block_on(async {
        let config = RedisConfig::builder()
            .url(RedisCluster::shared().url())
            .key_prefix(unique("limit_cluster") + ":")
            .build()
            .expect("config");
        let backend = RedisBackend::new(config).await.expect("cluster");
        for n in 0..32u64 {
            let key = unique(&format!("slot{n}"));
            let now = EPOCH + n * 400_000;
            let mut state = None;
            for cost in [1, 1, 1, 0, 3, -2, 1] {
                let case = (state.clone(), cost, now);
                let (want, written) = expected(&quota, &case);
                let input = input(&quota, cost, now);
                let got = backend
                    .update_atomic(key.as_bytes(), &LimitStep, input.as_bytes())
                    .await
                    .expect("a step on the cluster");
                assert_eq!(std::str::from_utf8(&got).expect("text"), want, "{input}");
                if let Some((value, _)) = written {
                    state = Some(value);
                }
            }
        }
    });
}

#[tokio::test]
async fn bad_input_is_a_typed_error_on_every_path() {
    let redis = on_redis(&RedisServer::shared().url(), true).await;
    let postgres = postgres_probe_async().await;
    let memory = statecraft::MemoryBackend::new();
    let inputs: [&[u8]; 13] = [
        b"",
        b"nonsense",
        b"g 0 1000000 1 1 0",
        b"g 10 1000000 0 1 0",
        b"x 10 1000000 1 1 0",
        b"g 2000000 1000000 1 1 0",
        b"f 10 1000000 3 1 0",
        b"g 10 1000000 1 1 0 7",
        b"g 10 99999999999999999 1 1 0",
        b"g 10 1000000 1 - 0",
        b"g 10 1000000 1 --1 0",
        b"g 10 1000000 1 99999999999999999 0",
        b"g 10 1000000 1 1 99999999999999999",
    ];
    for input in inputs {
        for backend in [&redis.backend as &dyn StateBackend, &*postgres, &memory] {
            let err = backend
                .update_atomic(b"bad", &LimitStep, input)
                .await
                .expect_err("malformed input");
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidArgument,
                "{} on {:?}: {err}",
                backend.name(),
                String::from_utf8_lossy(input)
            );
        }
    }
}

async fn postgres_probe_async() -> Arc<dyn StateBackend> {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table(unique("limit_bad"))
        .build()
        .expect("config");
    Arc::new(PostgresBackend::new(config).await.expect("postgres"))
}

/// Through a real store at its own clock: a burst passes, the next is
/// denied with a retry-after, and the limit's key has a TTL.
#[tokio::test]
async fn a_distributed_limiter_decides_at_the_store_clock() {
    for store in [
        Arc::new(on_redis(&RedisServer::shared().url(), true).await.backend)
            as Arc<dyn StateBackend>,
        postgres_probe_async().await,
    ] {
        for algorithm in Algorithm::ALL {
            let quota = Quota::per_hour(3)
                .algorithm(algorithm)
                .build()
                .expect("quota");
            let limiter = DistributedLimiter::new(store.clone(), unique("api"), quota);
            for _ in 0..3 {
                assert!(
                    limiter.check().await.expect("decision").is_allowed(),
                    "{algorithm}"
                );
            }
            let denied = limiter.check().await.expect("decision");
            assert_eq!(
                denied.verdict,
                Verdict::Denied,
                "{algorithm} on {}",
                store.name()
            );
            let wait = denied.retry_after().expect("a retry-after");
            // A sliding window may wait into the next window.
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_secs(7_200),
                "{wait:?}"
            );
            let peek = limiter.check_n(0).await.expect("peek");
            assert_eq!((peek.verdict, peek.remaining), (Verdict::Allowed, 0));
            assert_eq!(
                limiter.check_n(4).await.expect("decision").verdict,
                Verdict::TooLarge
            );
            assert!(limiter
                .check_key(b"other", 1)
                .await
                .expect("decision")
                .is_allowed());
            assert_eq!(limiter.stats().decided_by_store, 7);
        }
    }
}

/// A decision that waited for the limit's row (locked by another
/// transaction) decides at the time its turn comes, not at the time it
/// asked: one a second, the second asked 0.7 s after the first and let
/// through 1.3 s after it is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_decision_that_waited_for_the_row_decides_at_its_turn() {
    let url = PostgresServer::shared().url();
    let table = unique("limit_turn");
    let config = PostgresConfig::builder()
        .url(url.clone())
        .table(table.clone())
        .build()
        .expect("config");
    let store: Arc<dyn StateBackend> =
        Arc::new(PostgresBackend::new(config).await.expect("postgres"));
    let (operator, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    let quota = Quota::per_second(1).burst(1).build().expect("quota");
    let limiter = Arc::new(
        DistributedLimiter::new(store, unique("turn"), quota).timeout(Duration::from_secs(5)),
    );
    assert!(limiter.check().await.expect("decision").is_allowed());
    let first = tokio::time::Instant::now();
    let row = operator
        .query_one(&format!("SELECT key FROM {table}_limits"), &[])
        .await
        .expect("the limit's row");
    let key: Vec<u8> = row.get(0);

    tokio::time::sleep_until(first + Duration::from_millis(700)).await;
    operator.batch_execute("BEGIN").await.expect("begin");
    operator
        .query(
            &format!("SELECT 1 FROM {table}_limits WHERE key = $1 FOR UPDATE"),
            &[&key],
        )
        .await
        .expect("lock the row");
    let asked = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.check().await }
    });
    tokio::time::sleep_until(first + Duration::from_millis(1_300)).await;
    assert!(
        !asked.is_finished(),
        "the decision did not wait for the row"
    );
    operator.batch_execute("COMMIT").await.expect("commit");
    let decision = asked.await.expect("task").expect("decision");
    assert!(
        decision.is_allowed(),
        "decided at the time it asked, not at its turn: {decision:?}"
    );
}
