//! `statecraft bench --primitive limiter` and `--primitive counter`.
//!
//! `limiter`: one decision of one permit, by a quota that admits every
//! request the run makes (a million a second with a burst of 2^31), so
//! that each is the whole allowing path (the compare-and-swap, the
//! store's write): `limiter_<algorithm>_local` (threads on one limiter),
//! `limiter_gcra_keyed_local` (100,000 keys, Zipf-distributed) and, per
//! `--backend`, `limiter_<algorithm>_distributed` (tasks, one round trip
//! each) and `limiter_gcra_hybrid` (tasks spending leases, timed in
//! blocks of 256). `counter`: `counter_sharded_local` (threads adding to one
//! sharded counter), and per `--backend` `counter_hybrid` (local adds,
//! flushed every 10 ms) and `counter_distributed` (one round trip each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use statecraft::counter::{DistributedCounter, HybridCounter, ShardedCounter};
use statecraft::limiter::{
    Algorithm, DistributedLimiter, HybridLimiter, HybridLimiterConfig, KeyedLimiter, LocalLimiter,
    Quota,
};

use super::primitive::{async_blocks, tasks_row, threads_row, timed_calls, LOCAL_BLOCK};
use super::{open_target, BenchArgs, BenchRow, TaskResult};

/// A quota that admits everything a run asks of it.
fn roomy(algorithm: Algorithm) -> Result<Quota, String> {
    let builder = Quota::per_second(1_000_000).algorithm(algorithm);
    match algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(1 << 31),
        _ => Quota::with_period(1 << 31, Duration::from_secs(1)).algorithm(algorithm),
    }
    .build()
    .map_err(|e| e.to_string())
}

fn local_operation(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => "limiter_gcra_local",
        Algorithm::TokenBucket => "limiter_token_bucket_local",
        Algorithm::SlidingWindow => "limiter_sliding_window_local",
        _ => "limiter_fixed_window_local",
    }
}

fn distributed_operation(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => "limiter_gcra_distributed",
        Algorithm::TokenBucket => "limiter_token_bucket_distributed",
        Algorithm::SlidingWindow => "limiter_sliding_window_distributed",
        _ => "limiter_fixed_window_distributed",
    }
}

/// Keys drawn from a Zipf distribution (s = 1) over `n` keys: what a
/// flood of users with a few heavy ones looks like.
fn zipf_keys(n: usize, draws: usize, seed: u64) -> Vec<u64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(n);
    let mut sum = 0.0;
    for w in &weights {
        sum += w / total;
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

pub(super) async fn limiters(
    args: &BenchArgs,
    specs: &[String],
    levels: &[usize],
) -> Result<Vec<BenchRow>, String> {
    let mut rows = Vec::new();
    for algorithm in Algorithm::ALL {
        let limiter = LocalLimiter::new(roomy(algorithm)?);
        for &concurrency in levels {
            let block = || {
                for _ in 0..LOCAL_BLOCK {
                    if !std::hint::black_box(limiter.check()).is_allowed() {
                        return Err(format!("{}: a denial", local_operation(algorithm)));
                    }
                }
                Ok(())
            };
            rows.push(threads_row(
                local_operation(algorithm),
                concurrency,
                args,
                &block,
            )?);
        }
    }
    let keyed = KeyedLimiter::new(roomy(Algorithm::Gcra)?);
    let keys = zipf_keys(100_000, 1 << 20, 0x2545_f491_4f6c_dd1d);
    for &concurrency in levels {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let block = || {
            let at = next.fetch_add(LOCAL_BLOCK as usize, std::sync::atomic::Ordering::Relaxed);
            for i in 0..LOCAL_BLOCK as usize {
                let key = keys[(at + i) & (keys.len() - 1)];
                if !std::hint::black_box(keyed.check(&key)).is_allowed() {
                    return Err("limiter_gcra_keyed_local: a denial".into());
                }
            }
            Ok(())
        };
        rows.push(threads_row(
            "limiter_gcra_keyed_local",
            concurrency,
            args,
            &block,
        )?);
    }
    for spec in specs {
        let target = open_target(spec, args.concurrency).await?;
        for algorithm in Algorithm::ALL {
            let name = format!("bench-{}-{algorithm}", std::process::id());
            let limiter = Arc::new(DistributedLimiter::new(
                target.backend.clone(),
                name,
                roomy(algorithm)?,
            ));
            // Untimed: a store's first step may set things up.
            limiter
                .check_n(0)
                .await
                .map_err(|e| format!("limiter on {spec}: {e}"))?;
            let operation = distributed_operation(algorithm);
            for &concurrency in levels {
                let calls = |deadline| {
                    let limiter = limiter.clone();
                    async move {
                        let call = || async {
                            match limiter.check().await {
                                Ok(decision) if decision.is_allowed() => Ok(()),
                                Ok(decision) => Err(format!("{operation}: {decision:?}")),
                                Err(e) => Err(format!("{operation}: {e}")),
                            }
                        };
                        timed_calls(call, deadline).await
                    }
                };
                rows.push(tasks_row(&target, operation, concurrency, args, calls).await?);
            }
        }
        let hybrid = Arc::new(HybridLimiter::new(
            target.backend.clone(),
            format!("bench-{}-hybrid", std::process::id()),
            roomy(Algorithm::Gcra)?,
            HybridLimiterConfig::default(),
        ));
        for &concurrency in levels {
            let calls = |deadline| {
                let hybrid = hybrid.clone();
                async move { hybrid_checks(&hybrid, deadline).await }
            };
            rows.push(tasks_row(&target, "limiter_gcra_hybrid", concurrency, args, calls).await?);
        }
        hybrid
            .close()
            .await
            .map_err(|e| format!("limiter on {spec}: {e}"))?;
        target.backend.clear().await.map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

/// Hybrid checks, timed in blocks as local calls are: most make no round
/// trip.
async fn hybrid_checks(hybrid: &HybridLimiter, deadline: Instant) -> Result<TaskResult, String> {
    let call = || async {
        match hybrid.check().await {
            Ok(decision) if decision.is_allowed() => Ok(()),
            Ok(decision) => Err(format!("limiter_gcra_hybrid: {decision:?}")),
            Err(e) => Err(format!("limiter_gcra_hybrid: {e}")),
        }
    };
    async_blocks(call, deadline).await
}

pub(super) async fn counters(
    args: &BenchArgs,
    specs: &[String],
    levels: &[usize],
) -> Result<Vec<BenchRow>, String> {
    let mut rows = Vec::new();
    let sharded = ShardedCounter::new();
    for &concurrency in levels {
        let block = || {
            for i in 0..LOCAL_BLOCK {
                sharded.add(std::hint::black_box(i as i64 & 1));
            }
            Ok(())
        };
        rows.push(threads_row(
            "counter_sharded_local",
            concurrency,
            args,
            &block,
        )?);
    }
    for spec in specs {
        let target = open_target(spec, args.concurrency).await?;
        let name = format!("bench-{}", std::process::id());
        let hybrid = HybridCounter::start(
            target.backend.clone(),
            &format!("{name}-hybrid"),
            Duration::from_millis(10),
        );
        for &concurrency in levels {
            let block = || {
                for _ in 0..LOCAL_BLOCK {
                    hybrid.increment();
                }
                Ok(())
            };
            let mut row = threads_row("counter_hybrid", concurrency, args, &block)?;
            let caps = target.backend.capabilities();
            row.backend = target.label.clone();
            (row.persistent, row.distributed) = (caps.persistent, caps.distributed);
            rows.push(row);
        }
        hybrid
            .close()
            .await
            .map_err(|e| format!("counter on {spec}: {e}"))?;
        let counter = Arc::new(
            DistributedCounter::new(target.backend.clone(), &name).ttl(Duration::from_secs(600)),
        );
        for &concurrency in levels {
            let calls = |deadline| {
                let counter = counter.clone();
                async move {
                    let call = || async {
                        counter
                            .increment()
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("counter_distributed: {e}"))
                    };
                    timed_calls(call, deadline).await
                }
            };
            rows.push(tasks_row(&target, "counter_distributed", concurrency, args, calls).await?);
        }
        target.backend.clear().await.map_err(|e| e.to_string())?;
    }
    Ok(rows)
}
