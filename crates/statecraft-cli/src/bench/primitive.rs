//! `statecraft bench --primitive breaker|limiter|counter|lock`: the
//! coordination primitives, in rows with the same fields as the backends'
//! rows. Local rows run on `memory` (they touch no store); the others run
//! once per `--backend`.
//!
//! `breaker`: a protected call (ask, a trivial call that succeeds,
//! record) through each kind of breaker: `breaker_local_call`,
//! `breaker_hybrid_call`, `breaker_distributed_call`.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use statecraft::breaker::{
    BreakerConfig, DistributedBreaker, HybridBreaker, HybridConfig, LocalBreaker, Window,
};

use super::{new_histogram, open_target, BenchArgs, BenchRow, Target, TaskResult};

/// A coordination primitive `statecraft bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Primitive {
    /// Circuit breakers: `breaker_local_call`, `breaker_hybrid_call`,
    /// `breaker_distributed_call`.
    Breaker,
    /// Rate limiters: `limiter_<algorithm>_local` for each algorithm,
    /// `limiter_gcra_keyed_local`, `limiter_<algorithm>_distributed`,
    /// `limiter_gcra_hybrid`.
    Limiter,
    /// Counters: `counter_sharded_local`, `counter_hybrid`,
    /// `counter_distributed`.
    Counter,
    /// Locks and semaphores: `lock_acquire_release`, `lock_handover`,
    /// `semaphore_acquire_release`.
    Lock,
}

/// The breakers' configuration: open at half the last 100 calls failing
/// (the calls measured all succeed, so it stays closed).
fn config() -> Result<BreakerConfig, String> {
    BreakerConfig::builder()
        .failure_rate(1, 2)
        .window(Window::Count(100))
        .min_calls(100)
        .build()
        .map_err(|e| e.to_string())
}

/// Local calls are timed in blocks of this many (a clock read costs more
/// than the call); each block's mean is one latency sample.
pub(super) const LOCAL_BLOCK: u64 = 256;

pub(super) async fn run(
    primitive: Primitive,
    args: &BenchArgs,
    specs: &[String],
    levels: &[usize],
) -> Result<Vec<BenchRow>, String> {
    match primitive {
        Primitive::Breaker => breakers(args, specs, levels).await,
        Primitive::Limiter => super::limiter::limiters(args, specs, levels).await,
        Primitive::Counter => super::limiter::counters(args, specs, levels).await,
        Primitive::Lock => super::lock::locks(args, specs, levels).await,
    }
}

async fn breakers(
    args: &BenchArgs,
    specs: &[String],
    levels: &[usize],
) -> Result<Vec<BenchRow>, String> {
    let mut rows = Vec::new();
    let local = LocalBreaker::new("bench", config()?);
    for &concurrency in levels {
        let block = || {
            for i in 0..LOCAL_BLOCK {
                let permit = local
                    .acquire()
                    .map_err(|e| format!("breaker_local_call: {e}"))?;
                std::hint::black_box(i);
                permit.success();
            }
            Ok(())
        };
        rows.push(threads_row(
            "breaker_local_call",
            concurrency,
            args,
            &block,
        )?);
    }
    for spec in specs {
        let target = open_target(spec, args.concurrency).await?;
        let name = format!("bench-{}", std::process::id());
        let breaker = DistributedBreaker::new(target.backend.clone(), name.as_str(), config()?);
        // Untimed: a store's first step may set things up (PostgreSQL's
        // table and function).
        breaker
            .state()
            .await
            .map_err(|e| format!("breaker on {spec}: {e}"))?;
        let hybrid = HybridBreaker::start(
            target.backend.clone(),
            format!("{name}-hybrid"),
            config()?,
            HybridConfig::default(),
        )
        .await;
        for &concurrency in levels {
            // Timed in blocks, as local calls are: the closed path makes
            // no round trip.
            let calls = |deadline| {
                let hybrid = hybrid.clone();
                async move { hybrid_calls(&hybrid, deadline).await }
            };
            rows.push(tasks_row(&target, "breaker_hybrid_call", concurrency, args, calls).await?);
        }
        hybrid
            .reset()
            .await
            .map_err(|e| format!("breaker on {spec}: {e}"))?;
        for &concurrency in levels {
            let calls = |deadline| {
                let breaker = breaker.clone();
                async move { distributed_calls(&breaker, deadline).await }
            };
            let operation = "breaker_distributed_call";
            rows.push(tasks_row(&target, operation, concurrency, args, calls).await?);
        }
        breaker
            .reset()
            .await
            .map_err(|e| format!("breaker on {spec}: {e}"))?;
        target.backend.clear().await.map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

fn row(
    backend: String,
    operation: &'static str,
    concurrency: usize,
    results: Vec<TaskResult>,
    elapsed: Duration,
    (persistent, distributed): (bool, bool),
) -> Result<BenchRow, String> {
    let mut histogram = new_histogram()?;
    let mut calls = 0;
    for result in results {
        histogram
            .add(&result.histogram)
            .map_err(|e| e.to_string())?;
        calls += result.calls;
    }
    Ok(BenchRow {
        backend,
        operation,
        concurrency,
        ops_per_sec: calls as f64 / elapsed.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50) as f64 / 1_000.0,
        p99_us: histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        batch_size: 1,
        calls,
        persistent,
        distributed,
        l1_hits: None,
        l1_misses: None,
        ratio: None,
    })
}

/// `concurrency` OS threads each running `block` (a block of
/// [`LOCAL_BLOCK`] calls) until the run's end: one row of `operation` on
/// `memory`.
pub(super) fn threads_row(
    operation: &'static str,
    concurrency: usize,
    args: &BenchArgs,
    block: &(dyn Fn() -> Result<(), String> + Sync),
) -> Result<BenchRow, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(args.duration_ms);
    let results = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..concurrency)
            .map(|_| scope.spawn(|| blocks(block, deadline)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| "a benchmark thread panicked".to_string())?
            })
            .collect::<Result<Vec<_>, String>>()
    })?;
    let elapsed = started.elapsed();
    row(
        "memory".into(),
        operation,
        concurrency,
        results,
        elapsed,
        (false, false),
    )
}

fn blocks(
    block: &(dyn Fn() -> Result<(), String> + Sync),
    deadline: Instant,
) -> Result<TaskResult, String> {
    let mut histogram = new_histogram()?;
    let mut calls = 0u64;
    while Instant::now() < deadline {
        let started = Instant::now();
        block()?;
        let mean = started.elapsed().as_nanos() / u128::from(LOCAL_BLOCK);
        histogram
            .record(u64::try_from(mean).unwrap_or(u64::MAX).max(1))
            .map_err(|e| e.to_string())?;
        calls += LOCAL_BLOCK;
    }
    Ok(TaskResult { histogram, calls })
}

/// Calls `call` until `deadline`, timing each: one task's share of a
/// [`tasks_row`].
pub(super) async fn timed_calls<F, Fut>(call: F, deadline: Instant) -> Result<TaskResult, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut histogram = new_histogram()?;
    let mut calls = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        call().await?;
        calls += 1;
        histogram
            .record(
                u64::try_from(now.elapsed().as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .map_err(|e| e.to_string())?;
        if calls.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    Ok(TaskResult { histogram, calls })
}

async fn hybrid_calls(breaker: &HybridBreaker, deadline: Instant) -> Result<TaskResult, String> {
    let call = || async {
        let permit = breaker
            .acquire()
            .await
            .map_err(|e| format!("breaker_hybrid_call: {e}"))?;
        permit.success().await;
        Ok(())
    };
    async_blocks(call, deadline).await
}

/// Calls `call` until `deadline` in blocks of [`LOCAL_BLOCK`] (most of
/// them make no round trip: a clock read would cost more), each block's
/// mean one latency sample; yields between blocks, for the tasks sharing
/// the runtime (a hybrid's flush).
pub(super) async fn async_blocks<F, Fut>(call: F, deadline: Instant) -> Result<TaskResult, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut histogram = new_histogram()?;
    let mut calls = 0u64;
    while Instant::now() < deadline {
        let block = Instant::now();
        for _ in 0..LOCAL_BLOCK {
            call().await?;
        }
        let mean = block.elapsed().as_nanos() / u128::from(LOCAL_BLOCK);
        histogram
            .record(u64::try_from(mean).unwrap_or(u64::MAX).max(1))
            .map_err(|e| e.to_string())?;
        calls += LOCAL_BLOCK;
        tokio::task::yield_now().await;
    }
    Ok(TaskResult { histogram, calls })
}

/// `concurrency` tasks running `calls(deadline)` against the target: one
/// row of `operation`.
pub(super) async fn tasks_row<F, Fut>(
    target: &Target,
    operation: &'static str,
    concurrency: usize,
    args: &BenchArgs,
    calls: F,
) -> Result<BenchRow, String>
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = Result<TaskResult, String>> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + Duration::from_millis(args.duration_ms);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(calls(deadline)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(
            task.await
                .map_err(|e| format!("benchmark task failed: {e}"))??,
        );
    }
    let elapsed = started.elapsed();
    let caps = target.backend.capabilities();
    row(
        target.label.clone(),
        operation,
        concurrency,
        results,
        elapsed,
        (caps.persistent, caps.distributed),
    )
}

async fn distributed_calls(
    breaker: &DistributedBreaker,
    deadline: Instant,
) -> Result<TaskResult, String> {
    let call = || async {
        let permit = breaker
            .acquire()
            .await
            .map_err(|e| format!("breaker_distributed_call: {e}"))?;
        if !permit.is_counted() {
            return Err("breaker_distributed_call: the store did not answer".into());
        }
        permit
            .success()
            .await
            .map_err(|e| format!("breaker_distributed_call: {e}"))
    };
    timed_calls(call, deadline).await
}
