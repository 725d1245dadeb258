//! Locks on a loopback Redis (test support), against the raw client on
//! the same server, in one run.
//!
//! 1. Uncontended acquire + release (two round trips: the lock's step
//!    loaded as a Redis Function, and by EVALSHA) against one plain `SET`
//!    on one raw redis-crate connection, and the same two steps as raw
//!    `FCALL`s on it (the floor: the server's and the protocol's share),
//!    two `FCALL`s of a function that returns a constant (the floor of
//!    any scripted step) and of one that only runs a `TIME`, a `GET` and a
//!    `SET` (the floor of a step at the server's clock): 11 interleaved
//!    rounds of 2,000.
//! 2. Handover under contention: 4 tasks take turns on one lock, each
//!    holding it until another waits for it and, after its release,
//!    waiting until another has entered; the latency
//!    from a release's start to the entry of the next holder that was
//!    waiting when it started (p50, p99), with
//!    waiters woken by pub/sub (`Locks::lock`) against the hand-rolled
//!    peer: `SET NX PX` retried every 50 ms, released by a compare-and-DEL
//!    script (the usual polling lock), 5 interleaved rounds of 2 s each.
//!
//! 3. Redlock over 3 loopback Redis servers (requests to the three sent
//!    at once) against the same lock on one of them: acquire + release,
//!    11 interleaved rounds of 1,000.
//!
//! `cargo bench -p bench-compare --bench lock`; `LOCK_BENCH_PART=uncontended`
//! (or `handover`, `redlock`) runs one part.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use statecraft::lock::{Locks, Redlock};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;
use tokio::sync::watch;

/// Under `cargo test` (no `--bench` argument) the bench runs as a quick
/// smoke test.
fn bench() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

fn scale(n: usize) -> usize {
    if bench() {
        n
    } else {
        (n / 1_000).max(10)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q` quantile (NaN for no samples).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let at = (v.len().saturating_sub(1) as f64 * q).round() as usize;
    v.get(at).copied().unwrap_or(f64::NAN)
}

const LEASE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

async fn store(url: &str, functions: bool) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(format!("lockbench_{functions}:"))
        .server_functions(functions)
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

fn main() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // LOCK_BENCH_PART=uncontended|handover|redlock runs one part.
    let part = std::env::var("LOCK_BENCH_PART").unwrap_or_default();
    let runs = |name: &str| part.is_empty() || part == name;
    runtime.block_on(async {
        if runs("uncontended") {
            uncontended(&server.url()).await;
        }
        if runs("handover") {
            handover(&server.url()).await;
        }
        if runs("redlock") {
            redlock(&server).await;
        }
    });
}

async fn uncontended(url: &str) {
    let locks = [
        Locks::new(store(url, true).await),
        Locks::new(store(url, false).await),
    ];
    let client = redis::Client::open(url).expect("client");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    // The floor: the same two steps as raw FCALLs of the library the
    // first lock loaded (the server's share, and the protocol's).
    drop(
        locks[0]
            .try_lock("uncontended", LEASE)
            .await
            .expect("store"),
    );
    let listed: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut raw)
        .await
        .expect("list");
    let function = format!("{listed:?}")
        .split('"')
        .find(|s| s.starts_with("statecraft_lock"))
        .expect("the lock function")
        .to_string();
    // The floors of any scripted step: a function that only returns a
    // constant, and one that only runs the commands a step at the
    // server's clock needs (its time, a read and a write), called twice.
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(
            "#!lua name=lockbench_noop\n\
             redis.register_function('lockbench_noop', function() return 'R 1' end)\n\
             redis.register_function('lockbench_commands', function(keys)\n\
               local t = redis.call('TIME')\n\
               redis.call('GET', keys[1])\n\
               redis.call('SET', keys[1], t[1] .. t[2], 'PX', '3600000')\n\
               return 'R 1'\n\
             end)",
        )
        .query_async(&mut raw)
        .await
        .expect("function load");
    let owner = "0123456789abcdef0123456789abcdef";
    let acquire = format!("a {owner} 30000000 0");
    let calls = scale(2_000);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 6];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 5];
    for round in 0..11 {
        let mut this = [0f64; 6];
        for k in 0..6 {
            let which = (k + round) % 6;
            let started = Instant::now();
            for _ in 0..calls {
                if let Some(locks) = locks.get(which) {
                    let guard = locks
                        .try_lock("uncontended", LEASE)
                        .await
                        .expect("store")
                        .expect("free");
                    guard.unlock().await.expect("held");
                } else if which == 2 {
                    let fcall = |input: String| {
                        let mut cmd = redis::cmd("FCALL");
                        cmd.arg(&function).arg(1).arg("raw:lock").arg(input).arg(0);
                        cmd
                    };
                    let held: String = fcall(acquire.clone())
                        .query_async(&mut raw)
                        .await
                        .expect("fcall");
                    let token = held.split(' ').nth(1).expect("a token");
                    let _: String = fcall(format!("r {owner} {token} 0"))
                        .query_async(&mut raw)
                        .await
                        .expect("fcall");
                } else if which == 3 || which == 4 {
                    let function = ["lockbench_noop", "lockbench_commands"][which - 3];
                    for _ in 0..2 {
                        let _: String = redis::cmd("FCALL")
                            .arg(function)
                            .arg(1)
                            .arg("raw:floor")
                            .query_async(&mut raw)
                            .await
                            .expect("fcall");
                    }
                } else {
                    let _: () = redis::cmd("SET")
                        .arg("lockbench:plain")
                        .arg("v")
                        .query_async(&mut raw)
                        .await
                        .expect("set");
                }
            }
            this[which] = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        }
        for which in 0..6 {
            times[which].push(this[which]);
        }
        for which in 0..5 {
            ratios[which].push(this[which] / this[5]);
        }
    }
    let times: Vec<f64> = times.into_iter().map(median).collect();
    let ratios: Vec<f64> = ratios.into_iter().map(median).collect();
    println!("uncontended lock on loopback Redis ({calls} calls × 11 rounds):");
    println!(
        "  acquire + release, FCALL   {:>8.1} µs  (× raw SET {:.3})",
        times[0], ratios[0]
    );
    println!(
        "  acquire + release, EVALSHA {:>8.1} µs  (× raw SET {:.3})",
        times[1], ratios[1]
    );
    println!(
        "  two raw FCALLs, same steps {:>8.1} µs  (× raw SET {:.3})",
        times[2], ratios[2]
    );
    println!(
        "  two trivial FCALLs         {:>8.1} µs  (× raw SET {:.3})",
        times[3], ratios[3]
    );
    println!(
        "  two FCALLs of TIME+GET+SET {:>8.1} µs  (× raw SET {:.3})",
        times[4], ratios[4]
    );
    println!("  one plain SET, raw client  {:>8.1} µs", times[5]);
}

/// Gives a holding back.
type Unlock = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Release-to-entry latencies (µs) of 4 tasks taking turns for `run`,
/// each turn taken by `acquire`.
async fn turns<A>(run: Duration, acquire: A) -> Vec<f64>
where
    A: Fn() -> BoxFuture<'static, Unlock> + Clone + Send + 'static,
{
    let released: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let entries = Arc::new(watch::channel(0u64).0);
    let waiting = Arc::new(watch::channel(0usize).0);
    let deadline = Instant::now() + run;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let acquire = acquire.clone();
            let (released, samples, entries) = (released.clone(), samples.clone(), entries.clone());
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let mut entered = entries.subscribe();
                let mut waiters = waiting.subscribe();
                loop {
                    let asked = Instant::now();
                    waiting.send_modify(|n| *n += 1);
                    let unlock = acquire().await;
                    waiting.send_modify(|n| *n -= 1);
                    let now = Instant::now();
                    // A handover to a waiter: it asked before the release.
                    let last = released.lock().expect("released").take();
                    if let Some(at) = last.filter(|at| now < deadline && *at > asked) {
                        let waited = (now - at).as_secs_f64() * 1e6;
                        samples.lock().expect("samples").push(waited);
                    }
                    // No other entry while this one holds the lock.
                    entries.send_modify(|n| *n += 1);
                    let mine = *entries.borrow();
                    // Held until another waits for it, so that each release
                    // has a waiter to hand over to.
                    let another = waiters.wait_for(|n| *n > 0);
                    let _ = tokio::time::timeout(Duration::from_millis(100), another).await;
                    *released.lock().expect("released") = Some(Instant::now());
                    unlock().await;
                    if Instant::now() >= deadline {
                        return;
                    }
                    // Another's turn: wait for its entry.
                    let another = entered.wait_for(|n| *n > mine);
                    let _ = tokio::time::timeout(Duration::from_secs(1), another).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task");
    }
    let samples = samples.lock().expect("samples").clone();
    samples
}

/// Ours: woken by the release's publication.
fn by_pubsub(locks: Arc<Locks>) -> impl Fn() -> BoxFuture<'static, Unlock> + Clone + Send {
    move || {
        let locks = locks.clone();
        Box::pin(async move {
            let guard = locks
                .lock("handover", LEASE, Duration::from_secs(10))
                .await
                .expect("the lock");
            let unlock: Unlock =
                Box::new(move || Box::pin(async move { guard.unlock().await.expect("held") }));
            unlock
        })
    }
}

/// The hand-rolled peer: `SET NX PX` every [`POLL`], released by a
/// compare-and-DEL script.
fn by_polling(
    raw: redis::aio::MultiplexedConnection,
) -> impl Fn() -> BoxFuture<'static, Unlock> + Clone + Send {
    move || {
        let mut conn = raw.clone();
        Box::pin(async move {
            let me = format!("{:?}", Instant::now());
            loop {
                let taken: Option<String> = redis::cmd("SET")
                    .arg("lockbench:polled")
                    .arg(&me)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE.as_millis() as u64)
                    .query_async(&mut conn)
                    .await
                    .expect("set");
                if taken.is_some() {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            let unlock: Unlock = Box::new(move || {
                Box::pin(async move {
                    let script = redis::Script::new(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                         return redis.call('DEL', KEYS[1]) end return 0",
                    );
                    let _: i64 = script
                        .key("lockbench:polled")
                        .arg(&me)
                        .invoke_async(&mut conn)
                        .await
                        .expect("release");
                })
            });
            unlock
        })
    }
}

async fn handover(url: &str) {
    let locks = Arc::new(Locks::new(store(url, true).await));
    let client = redis::Client::open(url).expect("client");
    let raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let run = if bench() {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(200)
    };
    let (mut ours, mut polling) = (Vec::new(), Vec::new());
    for round in 0..5 {
        for k in 0..2 {
            if (k + round) % 2 == 0 {
                ours.extend(turns(run, by_pubsub(locks.clone())).await);
            } else {
                polling.extend(turns(run, by_polling(raw.clone())).await);
            }
        }
    }
    let (n_ours, n_polling) = (ours.len(), polling.len());
    println!("handover on loopback Redis, 4 tasks on one lock (5 rounds × {run:?} each way):");
    println!(
        "  woken by pub/sub:              p50 {:>8.1} µs  p99 {:>8.1} µs  ({n_ours} handovers)",
        quantile(&mut ours, 0.5),
        quantile(&mut ours, 0.99)
    );
    println!(
        "  SET NX PX polled every {POLL:?}: p50 {:>8.1} µs  p99 {:>8.1} µs  ({n_polling} handovers)",
        quantile(&mut polling, 0.5),
        quantile(&mut polling, 0.99)
    );
}

async fn redlock(first: &RedisServer) {
    let others = [RedisServer::start(), RedisServer::start()];
    let mut servers = vec![store(&first.url(), true).await];
    for server in &others {
        servers.push(store(&server.url(), true).await);
    }
    let single = Locks::new(servers[0].clone());
    let redlock = Redlock::new(servers).expect("redlock");
    let calls = scale(1_000);
    let (mut times, mut ratios): (Vec<Vec<f64>>, Vec<f64>) = (vec![Vec::new(); 2], Vec::new());
    for round in 0..11 {
        let mut this = [0f64; 2];
        for k in 0..2 {
            let which = (k + round) % 2;
            let started = Instant::now();
            for _ in 0..calls {
                let guard = if which == 0 {
                    redlock.try_lock("redlock", LEASE).await
                } else {
                    single.try_lock("single", LEASE).await
                };
                let guard = guard.expect("store").expect("free");
                guard.unlock().await.expect("held");
            }
            this[which] = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        }
        times[0].push(this[0]);
        times[1].push(this[1]);
        ratios.push(this[0] / this[1]);
    }
    println!("Redlock over 3 loopback Redis servers ({calls} calls × 11 rounds):");
    println!(
        "  acquire + release, Redlock of 3 {:>8.1} µs  (× one server {:.3})",
        median(times[0].clone()),
        median(ratios)
    );
    println!(
        "  acquire + release, one server   {:>8.1} µs",
        median(times[1].clone())
    );
}
