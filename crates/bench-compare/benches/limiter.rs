//! The limiters and counters against their peers, in one run.
//!
//! - `local`: one GCRA check on one thread, statecraft's `LocalLimiter`
//!   against governor's direct `RateLimiter` (both at their default
//!   clock, quanta's), with a quota that admits every check (a million a
//!   second, a burst of 2^31: the compare-and-swap path) and with one
//!   that denies nearly all (1,000 a second, a burst of 10): 11
//!   interleaved rounds of 2,000,000 checks, the median time per check
//!   and the median per-round ratio to governor.
//! - `keyed`: 100,000 keys drawn from a Zipf distribution (s = 1),
//!   `KeyedLimiter<u64>` against governor's keyed limiter (its default
//!   DashMap store), admitting every check, on one thread and on two: 7
//!   interleaved rounds of 2,000,000 checks per thread, the median
//!   checks per second and the ratio to governor.
//! - `counter`: two threads adding to one `ShardedCounter` against two
//!   threads adding to one shared `AtomicI64`: 7 interleaved rounds of
//!   2 × 10,000,000 adds, the median adds per second and the ratio.
//! - `redis`: on a loopback Redis (test support), one decision of the
//!   `DistributedLimiter` (GCRA, the step as a Redis Function) against a
//!   plain `INCR` on one raw redis-crate connection, against the
//!   backend's own `increment`, and against the same function called by
//!   a raw `FCALL` (the server's share of the gap apart from the
//!   client's): 11 interleaved rounds of 2,000 each, the median time per
//!   call and the ratios.
//!
//! `cargo bench -p bench-compare --bench limiter` (`LIMITER_BENCH_PART` =
//! `local`, `keyed`, `counter` or `redis` runs one part).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use statecraft::counter::ShardedCounter;
use statecraft::limiter::{Algorithm, DistributedLimiter, KeyedLimiter, LocalLimiter, Quota};
use statecraft::{PutOptions, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

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

fn part(name: &str) -> bool {
    std::env::var("LIMITER_BENCH_PART").map_or(true, |part| part == name)
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("not zero")
}

fn main() {
    if part("local") {
        local();
    }
    if part("keyed") {
        keyed();
    }
    if part("counter") {
        counter();
    }
    if part("redis") {
        redis();
    }
}

/// Runs `cases` in `rounds` interleaved rounds (a different one first
/// each round), each round's times as given by `time`.
fn interleaved(cases: usize, rounds: usize, mut time: impl FnMut(usize) -> f64) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::new(); cases];
    for round in 0..rounds {
        for k in 0..cases {
            let which = (k + round) % cases;
            times[which].push(time(which));
        }
    }
    times
}

fn ratios(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

fn local() {
    let checks = scale(2_000_000);
    for (label, count, burst) in [("admitting", 1_000_000, 1u32 << 31), ("denying", 1_000, 10)] {
        let ours = LocalLimiter::new(
            Quota::per_second(u64::from(count))
                .burst(u64::from(burst))
                .build()
                .expect("quota"),
        );
        let governor = governor::RateLimiter::direct(
            governor::Quota::per_second(nonzero(count)).allow_burst(nonzero(burst)),
        );
        let times = interleaved(2, 11, |which| {
            let started = Instant::now();
            let mut allowed = 0u64;
            if which == 0 {
                // What a caller reads: whether it passed (the rest of a
                // decision, unread, is left out of both).
                for _ in 0..checks {
                    allowed += u64::from(black_box(ours.check().is_allowed()));
                }
            } else {
                for _ in 0..checks {
                    allowed += u64::from(black_box(governor.check().is_ok()));
                }
            }
            black_box(allowed);
            started.elapsed().as_nanos() as f64 / checks as f64
        });
        println!("one GCRA check, {label} ({checks} checks × 11 rounds):");
        println!(
            "  statecraft LocalLimiter   {:>7.2} ns",
            median(times[0].clone())
        );
        println!(
            "  governor RateLimiter      {:>7.2} ns",
            median(times[1].clone())
        );
        println!(
            "  statecraft × governor     {:>7.3}",
            ratios(&times[0], &times[1])
        );
    }
}

fn keyed() {
    let checks = scale(2_000_000);
    let keys = zipf_keys(100_000, 1 << 21, 0x2545_f491_4f6c_dd1d);
    let ours = KeyedLimiter::<u64>::new(
        Quota::per_second(1_000_000)
            .burst(1 << 31)
            .build()
            .expect("quota"),
    );
    let governor = governor::RateLimiter::keyed(
        governor::Quota::per_second(nonzero(1_000_000)).allow_burst(nonzero(1 << 31)),
    );
    for threads in [1, 2] {
        let rates = interleaved(2, 7, |which| {
            let started = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..threads {
                    let (keys, ours, governor) = (&keys, &ours, &governor);
                    scope.spawn(move || {
                        let offset = t * 7_919;
                        for i in 0..checks {
                            let key = keys[(offset + i) & (keys.len() - 1)];
                            let allowed = if which == 0 {
                                ours.check(&key).is_allowed()
                            } else {
                                governor.check_key(&key).is_ok()
                            };
                            assert!(allowed, "the quota admits every check");
                        }
                    });
                }
            });
            (threads * checks) as f64 / started.elapsed().as_secs_f64()
        });
        println!(
            "keyed GCRA, 100,000 Zipf keys, {threads} thread(s) ({checks} checks each × 7 rounds):"
        );
        println!(
            "  statecraft KeyedLimiter   {:>7.2} M checks/s",
            median(rates[0].clone()) / 1e6
        );
        println!(
            "  governor keyed            {:>7.2} M checks/s",
            median(rates[1].clone()) / 1e6
        );
        println!(
            "  statecraft × governor     {:>7.3}",
            ratios(&rates[0], &rates[1])
        );
    }
    println!(
        "  keys held: statecraft {}, governor {}",
        ours.len(),
        governor.len()
    );
}

/// Keys drawn from a Zipf distribution (s = 1) over `n` keys.
fn zipf_keys(n: usize, draws: usize, seed: u64) -> Vec<u64> {
    let total: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    let mut cumulative = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / k as f64 / total;
        cumulative.push(sum);
    }
    let mut x = seed | 1;
    (0..draws)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            cumulative.partition_point(|c| *c < u).min(n - 1) as u64
        })
        .collect()
}

fn counter() {
    let adds = scale(10_000_000);
    let sharded = ShardedCounter::new();
    let single = AtomicI64::new(0);
    let rates = interleaved(2, 7, |which| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for i in 0..adds {
                        let delta = black_box(i as i64 & 1) | 1;
                        if which == 0 {
                            sharded.add(delta);
                        } else {
                            single.fetch_add(delta, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        (2 * adds) as f64 / started.elapsed().as_secs_f64()
    });
    assert_eq!(
        sharded.sum(),
        single.load(Ordering::Relaxed),
        "both counted every add"
    );
    println!(
        "two threads adding to one counter ({} adds × 7 rounds):",
        2 * adds
    );
    println!(
        "  statecraft ShardedCounter {:>8.1} M adds/s",
        median(rates[0].clone()) / 1e6
    );
    println!(
        "  one shared AtomicI64      {:>8.1} M adds/s",
        median(rates[1].clone()) / 1e6
    );
    println!(
        "  sharded × AtomicI64       {:>8.2}",
        ratios(&rates[0], &rates[1])
    );
}

fn redis() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let config = RedisConfig::builder()
            .url(server.url())
            .key_prefix("bench:")
            .build()
            .expect("config");
        let backend: Arc<dyn StateBackend> =
            Arc::new(RedisBackend::new(config).await.expect("redis"));
        let quota = Quota::per_second(1_000_000)
            .burst(1 << 31)
            .algorithm(Algorithm::Gcra)
            .build()
            .expect("quota");
        let limiter = DistributedLimiter::new(backend.clone(), "bench", quota);
        let mut raw = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        // Untimed: the first call loads the function.
        assert!(limiter.check().await.expect("decision").is_allowed());
        let calls = scale(2_000);
        let function: String = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async::<redis::Value>(&mut raw)
            .await
            .map(|v| format!("{v:?}"))
            .expect("list");
        let function = function
            .split('"')
            .find(|s| s.starts_with("statecraft_limit"))
            .expect("the function")
            .to_string();
        let input = "g 1000000 1000000 2147483648 1 0";
        let mut times = vec![Vec::new(); 4];
        for round in 0..11 {
            for k in 0..4 {
                let which = (k + round) % 4;
                let started = Instant::now();
                for _ in 0..calls {
                    match which {
                        0 => assert!(limiter.check().await.expect("decision").is_allowed()),
                        1 => {
                            let _: i64 = redis::cmd("INCR")
                                .arg("raw:counter")
                                .query_async(&mut raw)
                                .await
                                .expect("incr");
                        }
                        3 => {
                            let _: Vec<u8> = redis::cmd("FCALL")
                                .arg(&function)
                                .arg(1)
                                .arg("raw:limit")
                                .arg(input)
                                .arg(0)
                                .query_async(&mut raw)
                                .await
                                .expect("fcall");
                        }
                        _ => {
                            backend
                                .increment(b"counter", 1, PutOptions::new())
                                .await
                                .expect("increment");
                        }
                    }
                }
                times[which].push(started.elapsed().as_secs_f64() * 1e6 / calls as f64);
            }
        }
        println!("one decision on a loopback Redis ({calls} calls × 11 rounds):");
        println!(
            "  DistributedLimiter (GCRA, FCALL) {:>7.1} µs",
            median(times[0].clone())
        );
        println!(
            "  raw INCR                         {:>7.1} µs",
            median(times[1].clone())
        );
        println!(
            "  backend increment                {:>7.1} µs",
            median(times[2].clone())
        );
        println!(
            "  raw FCALL of the same function   {:>7.1} µs",
            median(times[3].clone())
        );
        println!(
            "  limiter × raw INCR               {:>7.3}",
            ratios(&times[0], &times[1])
        );
        println!(
            "  limiter × backend increment      {:>7.3}",
            ratios(&times[0], &times[2])
        );
    });
}
