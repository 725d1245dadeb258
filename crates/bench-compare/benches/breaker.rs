//! The local breaker's CLOSED path against its peers, in one run: the
//! `recloser` crate (a ring-buffer breaker, lock-free) and the `failsafe`
//! crate (a state machine behind a lock), each wrapping the same trivial
//! call that succeeds.
//!
//! Per-call time: 11 interleaved rounds of 2,000,000 calls per case on one
//! thread (median per case and median per-round ratio to recloser), with
//! the hybrid breaker (over a memory store, its flush task running) as a
//! fourth case, also as a ratio to the local breaker; then the hybrid's
//! async forms, and the local and hybrid `call` (a ready closure, polled
//! once), as a ratio to each other. Then
//! throughput with 2 threads contending on one breaker: 7 interleaved
//! rounds of 2 × 1,000,000 calls (median calls per second and ratio to
//! failsafe).
//!
//! Then the distributed breaker on a loopback Redis (test support): one
//! protected call (ask + record success, two round trips), with the step
//! loaded as a Redis Function and with it run by EVALSHA, against two plain
//! GETs on one raw redis-crate connection, in 11 interleaved rounds of
//! 2,000 each.
//!
//! Then the same on a loopback PostgreSQL (test support): the protected
//! call (a read of the row, then one call of the breaker's PL/pgSQL step)
//! against two prepared
//! `SELECT 1` on one raw tokio-postgres connection (the floor: two round
//! trips), and against resilient-circuit 0.8.6's way, done with the raw
//! client: a fresh connection per call, then a transaction with one
//! guarded upsert of the breaker's row (11 interleaved rounds: 1,000
//! protected calls and floors, 100 of the fresh-connection calls). With
//! `RESILIENT_CIRCUIT_PYTHON` set to a Python that has resilient-circuit
//! and psycopg 3, the library itself is then measured on the same server
//! (`peers/resilient_circuit_bench.py`, 5 rounds of 100 calls).
//!
//! `cargo bench -p bench-compare --bench breaker` (`BREAKER_BENCH_PART` =
//! `local`, `redis` or `postgres` runs one part).

use std::hint::black_box;
use std::time::{Duration, Instant};

use failsafe::CircuitBreaker as _;
use statecraft::breaker::{
    BreakerConfig, BreakerStep, DistributedBreaker, HybridBreaker, HybridConfig, LocalBreaker,
    Outcome, Window, PEEK,
};
use statecraft::{PostgresBackend, PostgresConfig, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{PostgresServer, RedisServer};

/// Under `cargo test` (no `--bench` argument) the bench runs as a quick
/// smoke test.
fn scale(n: usize) -> usize {
    if std::env::args().any(|arg| arg == "--bench") {
        n
    } else {
        (n / 1_000).max(10)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// failsafe's default breaker: a success rate over a time window, or
/// consecutive failures, with a jittered back-off.
type Failsafe = failsafe::StateMachine<
    failsafe::failure_policy::OrElse<
        failsafe::failure_policy::SuccessRateOverTimeWindow<failsafe::backoff::EqualJittered>,
        failsafe::failure_policy::ConsecutiveFailures<failsafe::backoff::EqualJittered>,
    >,
    (),
>;

/// One breaker of each kind, set alike where they can be: open at a 50 %
/// failure rate over the last 100 calls.
struct Cases {
    statecraft: LocalBreaker,
    recloser: recloser::Recloser,
    failsafe: Failsafe,
    /// Over a memory store, its tasks on `_runtime`.
    hybrid: HybridBreaker,
    _runtime: tokio::runtime::Runtime,
}

fn cases() -> Cases {
    let config = BreakerConfig::builder()
        .failure_rate(1, 2)
        .window(Window::Count(100))
        .min_calls(100)
        .open_for(Duration::from_secs(30))
        .build()
        .expect("config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let hybrid = runtime.block_on(HybridBreaker::start(
        std::sync::Arc::new(statecraft::MemoryBackend::new()),
        "bench",
        config.clone(),
        HybridConfig::default(),
    ));
    Cases {
        hybrid,
        _runtime: runtime,
        statecraft: LocalBreaker::new("bench", config),
        recloser: recloser::Recloser::custom()
            .error_rate(0.5)
            .closed_len(100)
            .open_wait(Duration::from_secs(30))
            .build(),
        // failsafe's own default (it has no count window).
        failsafe: failsafe::Config::new().build(),
    }
}

const NAMES: [&str; 7] = [
    "statecraft LocalBreaker",
    "recloser",
    "failsafe",
    "statecraft HybridBreaker",
    "HybridBreaker, async",
    "LocalBreaker, call",
    "HybridBreaker, call",
];

/// One case's calls (each case a function of its own, so that one's code
/// layout does not move another's).
fn run(cases: &Cases, which: usize, calls: usize) {
    match which {
        0 => run_local(&cases.statecraft, calls),
        1 => run_recloser(&cases.recloser, calls),
        2 => run_failsafe(&cases.failsafe, calls),
        3 => run_hybrid(&cases.hybrid, calls),
        4 => run_hybrid_async(&cases.hybrid, calls),
        5 => run_local_call(&cases.statecraft, calls),
        _ => run_hybrid_call(&cases.hybrid, calls),
    }
}

#[inline(never)]
fn run_local(breaker: &LocalBreaker, calls: usize) {
    for i in 0..calls {
        let permit = breaker.acquire().expect("closed");
        black_box(i);
        permit.success();
    }
}

#[inline(never)]
fn run_recloser(breaker: &recloser::Recloser, calls: usize) {
    for i in 0..calls {
        let _ = black_box(breaker.call(|| Ok::<_, ()>(black_box(i))));
    }
}

#[inline(never)]
fn run_failsafe(breaker: &Failsafe, calls: usize) {
    for i in 0..calls {
        let _ = black_box(breaker.call(|| Ok::<_, ()>(black_box(i))));
    }
}

#[inline(never)]
fn run_hybrid(breaker: &HybridBreaker, calls: usize) {
    // The closed path never waits: its synchronous form.
    for i in 0..calls {
        let permit = breaker
            .try_acquire()
            .expect("decided here")
            .expect("closed");
        black_box(i);
        assert!(permit.try_record(Outcome::Success).is_ok(), "not a probe");
    }
}

/// The async forms (`acquire`, `success`), each polled once: the closed
/// path never waits.
#[inline(never)]
fn run_hybrid_async(breaker: &HybridBreaker, calls: usize) {
    use futures_util::FutureExt;
    for i in 0..calls {
        let permit = breaker
            .acquire()
            .now_or_never()
            .expect("decided here")
            .expect("closed");
        black_box(i);
        permit.success().now_or_never().expect("not a probe");
    }
}

/// `call` with a closure whose future is ready, polled once (the local
/// breaker's async form, the peer of the hybrid's).
#[inline(never)]
fn run_local_call(breaker: &LocalBreaker, calls: usize) {
    use futures_util::FutureExt;
    for i in 0..calls {
        let done = breaker
            .call(|| async move { Ok::<_, ()>(black_box(i)) })
            .now_or_never()
            .expect("ready");
        assert!(done.is_ok(), "closed");
    }
}

/// The hybrid's `call`, the same way.
#[inline(never)]
fn run_hybrid_call(breaker: &HybridBreaker, calls: usize) {
    use futures_util::FutureExt;
    for i in 0..calls {
        let done = breaker
            .call(|| async move { Ok::<_, ()>(black_box(i)) })
            .now_or_never()
            .expect("ready");
        assert!(done.is_ok(), "closed");
    }
}

/// Which parts to run: `BREAKER_BENCH_PART` = `local`, `redis` or
/// `postgres` (unset: all; `BREAKER_BENCH_LOCAL_ONLY` set: `local`).
fn part(name: &str) -> bool {
    match std::env::var("BREAKER_BENCH_PART") {
        Ok(part) => part == name,
        Err(_) => std::env::var_os("BREAKER_BENCH_LOCAL_ONLY").is_none() || name == "local",
    }
}

fn main() {
    if part("local") {
        local();
    }
    if part("redis") {
        distributed();
    }
    if part("postgres") {
        distributed_postgres();
    }
}

fn local() {
    let cases = cases();
    let calls = scale(2_000_000);
    let cases_n = NAMES.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases_n];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); cases_n];
    let (mut over_local, mut async_over_local, mut call_over_local) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 0..11 {
        let mut this = vec![0f64; cases_n];
        for k in 0..cases_n {
            let which = (k + round) % cases_n;
            let started = Instant::now();
            run(&cases, which, calls);
            this[which] = started.elapsed().as_nanos() as f64 / calls as f64;
        }
        for which in 0..cases_n {
            times[which].push(this[which]);
            ratios[which].push(this[which] / this[1]);
        }
        over_local.push(this[3] / this[0]);
        async_over_local.push(this[4] / this[0]);
        call_over_local.push(this[6] / this[5]);
    }
    println!("one thread, CLOSED, a call that succeeds ({calls} calls × 11 rounds):");
    for which in 0..cases_n {
        println!(
            "  {:<24} {:>8.1} ns/call   × recloser {:.3}",
            NAMES[which],
            median(times[which].clone()),
            median(ratios[which].clone()),
        );
    }
    println!(
        "  HybridBreaker × LocalBreaker     {:.3} (async: {:.3}; call × call: {:.3})",
        median(over_local),
        median(async_over_local),
        median(call_over_local)
    );
    let calls = scale(1_000_000);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut over_failsafe: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..7 {
        let mut this = [0f64; 3];
        for k in 0..3 {
            let which = (k + round) % 3;
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| run(&cases, which, calls));
                }
            });
            this[which] = (2 * calls) as f64 / started.elapsed().as_secs_f64();
        }
        for which in 0..3 {
            rates[which].push(this[which]);
            over_failsafe[which].push(this[which] / this[2]);
        }
    }
    println!(
        "two threads on one breaker, CLOSED ({} calls × 7 rounds):",
        2 * calls
    );
    for which in 0..3 {
        println!(
            "  {:<24} {:>8.2} M calls/s   × failsafe {:.2}",
            NAMES[which],
            median(rates[which].clone()) / 1e6,
            median(over_failsafe[which].clone()),
        );
    }
    assert_eq!(
        cases.statecraft.figures(),
        (0, 0),
        "the breaker stayed closed"
    );
}

/// The configuration both distributed cases protect their calls with.
fn shared_config() -> BreakerConfig {
    BreakerConfig::builder()
        .failure_rate(1, 2)
        .window(Window::Count(100))
        .min_calls(100)
        .build()
        .expect("config")
}

fn distributed() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (mut breakers, mut stores) = (Vec::new(), Vec::new());
        for functions in [true, false] {
            let config = RedisConfig::builder()
                .url(server.url())
                .key_prefix(format!("functions_{functions}:"))
                .server_functions(functions)
                .build()
                .expect("config");
            let store: std::sync::Arc<dyn StateBackend> =
                std::sync::Arc::new(RedisBackend::new(config).await.expect("redis"));
            stores.push(store.clone());
            breakers.push(DistributedBreaker::new(store, "bench", shared_config()));
        }
        let same = &stores[0];
        same.put(b"plain", bytes::Bytes::from_static(b"v"))
            .await
            .expect("put");
        let client = redis::Client::open(server.url()).expect("client");
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let _: () = redis::cmd("SET")
            .arg("bench:plain")
            .arg("v")
            .query_async(&mut raw)
            .await
            .expect("set");
        let calls = scale(2_000);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 4];
        for round in 0..11 {
            let mut this = [0f64; 4];
            for k in 0..4 {
                let which = (k + round) % 4;
                let started = Instant::now();
                for _ in 0..calls {
                    if let Some(breaker) = breakers.get(which) {
                        let permit = breaker.acquire().await.expect("closed");
                        permit.success().await.expect("record");
                    } else if which == 3 {
                        for _ in 0..2 {
                            black_box(same.get(b"plain").await.expect("get"));
                        }
                    } else {
                        for _ in 0..2 {
                            let _: Option<Vec<u8>> = redis::cmd("GET")
                                .arg("bench:plain")
                                .query_async(&mut raw)
                                .await
                                .expect("get");
                        }
                    }
                }
                this[which] = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
            }
            for which in 0..4 {
                times[which].push(this[which]);
            }
            // Against the raw client's GETs, and the functions' step
            // against the backend's own GETs on its connection.
            for which in 0..2 {
                ratios[which].push(this[which] / this[2]);
            }
            ratios[3].push(this[0] / this[3]);
        }
        let times: Vec<f64> = times.into_iter().map(median).collect();
        let ratios: Vec<f64> = ratios.into_iter().map(|r| if r.is_empty() { 0.0 } else { median(r) }).collect();
        println!("distributed breaker on loopback Redis ({calls} calls × 11 rounds):");
        println!(
            "  protected call, step by FCALL   {:>8.1} µs  (× raw GETs {:.3}, × backend GETs {:.3})",
            times[0], ratios[0], ratios[3]
        );
        println!(
            "  protected call, step by EVALSHA {:>8.1} µs  (× raw GETs {:.3})",
            times[1], ratios[1]
        );
        println!("  two plain GETs, raw client      {:>8.1} µs", times[2]);
        println!("  two GETs through the backend    {:>8.1} µs", times[3]);
    });
}

fn distributed_postgres() {
    let server = PostgresServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = server.url();
        let config = PostgresConfig::builder()
            .url(url.as_str())
            .build()
            .expect("config");
        let store: std::sync::Arc<dyn StateBackend> =
            std::sync::Arc::new(PostgresBackend::new(config).await.expect("postgres"));
        let breaker = DistributedBreaker::new(store.clone(), "bench", shared_config());
        let (raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("raw connection");
        tokio::spawn(connection);
        let select = raw.prepare("SELECT 1").await.expect("prepare");
        raw.batch_execute(
            "CREATE TABLE IF NOT EXISTS rc_like_breakers (
                resource_key text PRIMARY KEY, state text NOT NULL,
                failure_count int8 NOT NULL, open_until timestamptz,
                execution_log jsonb NOT NULL, updated_at timestamptz NOT NULL);",
        )
        .await
        .expect("a table like resilient-circuit's");
        let calls = scale(1_000);
        let fresh_calls = scale(100);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 5];
        for round in 0..11 {
            for k in 0..5 {
                let which = (k + round) % 5;
                let started = Instant::now();
                let n = if which == 2 { fresh_calls } else { calls };
                for _ in 0..n {
                    match which {
                        0 => {
                            let permit = breaker.acquire().await.expect("closed");
                            permit.success().await.expect("record");
                        }
                        1 => {
                            for _ in 0..2 {
                                black_box(raw.query_one(&select, &[]).await.expect("select"));
                            }
                        }
                        2 => fresh_connection_call(&url).await,
                        3 => {
                            for _ in 0..2 {
                                black_box(store.get(b"absent").await.expect("get"));
                            }
                        }
                        _ => {
                            for _ in 0..2 {
                                black_box(
                                    store
                                        .update_atomic(b"bench", &BreakerStep, PEEK)
                                        .await
                                        .expect("peek"),
                                );
                            }
                        }
                    }
                }
                times[which].push(started.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
        }
        let ratios = |of: usize, to: usize| {
            median(
                times[of]
                    .iter()
                    .zip(&times[to])
                    .map(|(a, b)| a / b)
                    .collect(),
            )
        };
        println!("distributed breaker on loopback PostgreSQL ({calls} calls × 11 rounds):");
        println!(
            "  protected call (ask + record)  {:>8.1} µs",
            median(times[0].clone())
        );
        println!(
            "  two prepared SELECT 1, raw     {:>8.1} µs   protected × {:.3}",
            median(times[1].clone()),
            ratios(0, 1)
        );
        println!(
            "  fresh connection + upsert      {:>8.1} µs   × protected {:.1}",
            median(times[2].clone()),
            ratios(2, 0)
        );
        println!(
            "  two backend gets               {:>8.1} µs   protected × {:.3}, × raw {:.3}",
            median(times[3].clone()),
            ratios(0, 3),
            ratios(3, 1)
        );
        println!(
            "  two breaker peeks              {:>8.1} µs   protected × {:.3}, × raw {:.3}",
            median(times[4].clone()),
            ratios(0, 4),
            ratios(4, 1)
        );
        if let Ok(python) = std::env::var("RESILIENT_CIRCUIT_PYTHON") {
            resilient_circuit(&python, &url, median(times[0].clone()));
        }
    });
}

/// resilient-circuit itself on the same server, by its bench script.
fn resilient_circuit(python: &str, url: &str, protected_us: f64) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/peers/resilient_circuit_bench.py"
    );
    let out = std::process::Command::new(python)
        .args([script, url, "100", "5"])
        .output()
        .expect("run the resilient-circuit bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("resilient-circuit protected call"))
        .expect("the script's result line");
    let us: f64 = line
        .split_whitespace()
        .nth(4)
        .and_then(|w| w.parse().ok())
        .expect("a median in µs");
    println!("  {line}");
    println!(
        "  resilient-circuit / protected call: {:.1}×",
        us / protected_us
    );
}

/// One call as resilient-circuit 0.8.6 makes it: a new connection, then in
/// a transaction one upsert of the breaker's row (its call log as JSON),
/// unless the row is open. (Its re-read of the row, at most once a second
/// on another connection, is left out.)
async fn fresh_connection_call(url: &str) {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(connection);
    let tx = client.transaction().await.expect("begin");
    let written = tx
        .execute(
            "INSERT INTO rc_like_breakers AS b
                 (resource_key, state, failure_count, open_until, execution_log, updated_at)
             VALUES ($1, 'CLOSED', 0, NULL, $2::text::jsonb, now())
             ON CONFLICT (resource_key) DO UPDATE SET
                 state = EXCLUDED.state, failure_count = EXCLUDED.failure_count,
                 execution_log = EXCLUDED.execution_log, updated_at = now()
             WHERE NOT (b.state = 'OPEN' AND b.open_until > now())",
            &[&"bench", &"[true, true, true, true, true]"],
        )
        .await
        .expect("upsert");
    black_box(written);
    tx.commit().await.expect("commit");
    drop(client);
    let _ = task.await;
}
