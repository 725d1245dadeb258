//! Shared helpers for the comparison benchmarks.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// `n` benchmark keys, `bench:00000000` upwards.
pub fn keys(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("bench:{i:08}")))
        .collect()
}

/// Polls a future that must already be complete (the in-process backends'
/// futures are), without a runtime, so that the benchmark measures the
/// backend and not an executor.
pub fn now<F: std::future::Future>(future: F) -> F::Output {
    futures_util::FutureExt::now_or_never(future)
        .expect("an in-process operation completed at once")
}

/// A xorshift key picker.
#[derive(Debug, Clone)]
pub struct Picker(u64);

impl Picker {
    /// A picker with a fixed seed.
    pub fn new(seed: u64) -> Self {
        Picker(seed | 1)
    }

    /// The next index below `n`.
    #[inline]
    pub fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Runs `tasks` Tokio tasks, each awaiting `per_task` operations made by
/// `op(key_index)` (key indexes below `keys`, a fixed sequence per task),
/// and returns how long the whole burst took.
pub async fn concurrent<F, Fut>(tasks: usize, per_task: usize, keys: usize, op: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let mut picker = Picker::new(t as u64 + 1);
            let ops: Vec<Fut> = (0..per_task).map(|_| op(picker.next(keys))).collect();
            tokio::spawn(async move {
                for op in ops {
                    op.await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a benchmark task panicked");
    }
    started.elapsed()
}
