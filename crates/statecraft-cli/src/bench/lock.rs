//! `statecraft bench --primitive lock`: locks and semaphores on each
//! `--backend`, in rows with the same fields as the backends' rows.
//!
//! - `lock_acquire_release`: uncontended — each task takes and releases
//!   its own lock (two round trips);
//! - `lock_handover`: contended — 2 (for concurrency 1) or `concurrency`
//!   tasks take turns
//!   on one lock, each waiting after its release until another has
//!   entered; the latency is from a release's start to the entry of the
//!   next holder that was waiting then (woken by the store's pub/sub);
//! - `semaphore_acquire_release`: each task takes and gives back a permit
//!   of one semaphore with as many permits as tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use statecraft::lock::{Locks, Semaphore};
use tokio::sync::watch;

use super::primitive::{tasks_row, timed_calls};
use super::{new_histogram, open_target, BenchArgs, BenchRow, TaskResult};

/// Each holding's lease: long enough never to run out in a run.
const LEASE: Duration = Duration::from_secs(30);

pub(super) async fn locks(
    args: &BenchArgs,
    specs: &[String],
    levels: &[usize],
) -> Result<Vec<BenchRow>, String> {
    let mut rows = Vec::new();
    for spec in specs {
        let target = open_target(spec, args.concurrency).await?;
        let locks = Locks::new(target.backend.clone());
        let prefix = format!("bench-{}", std::process::id());
        for &concurrency in levels {
            let next = Arc::new(AtomicUsize::new(0));
            let calls = |deadline| {
                let locks = locks.clone();
                let name = format!("{prefix}-own-{}", next.fetch_add(1, Ordering::Relaxed));
                async move {
                    let call = || async {
                        let guard = locks
                            .try_lock(&name, LEASE)
                            .await
                            .map_err(|e| format!("lock_acquire_release: {e}"))?
                            .ok_or("lock_acquire_release: an uncontended lock was held")?;
                        guard
                            .unlock()
                            .await
                            .map_err(|e| format!("lock_acquire_release: {e}"))
                    };
                    timed_calls(call, deadline).await
                }
            };
            rows.push(tasks_row(&target, "lock_acquire_release", concurrency, args, calls).await?);
        }
        // Untimed first: a few handovers, which set up what waiting takes
        // (the store's subscription: on PostgreSQL a listening connection).
        let warm = Turns::new(locks.clone(), format!("{prefix}-warm"));
        let until = Instant::now() + Duration::from_millis(200);
        let warming: Vec<_> = (0..2)
            .map(|_| {
                let warm = warm.clone();
                tokio::spawn(async move { warm.take(until).await })
            })
            .collect();
        for task in warming {
            task.await.map_err(|e| format!("lock_handover: {e}"))??;
        }
        let mut contention: Vec<usize> = levels.iter().map(|&n| n.max(2)).collect();
        contention.dedup();
        for contenders in contention {
            let turns = Turns::new(locks.clone(), format!("{prefix}-shared"));
            let calls = |deadline| {
                let turns = turns.clone();
                async move { turns.take(deadline).await }
            };
            rows.push(tasks_row(&target, "lock_handover", contenders, args, calls).await?);
        }
        for &concurrency in levels {
            let semaphore = Semaphore::new(
                target.backend.clone(),
                &format!("{prefix}-permits-{concurrency}"),
                concurrency as u64,
            )
            .map_err(|e| format!("semaphore_acquire_release: {e}"))?;
            let calls = |deadline| {
                let semaphore = semaphore.clone();
                async move {
                    let call = || async {
                        let permit = semaphore
                            .try_acquire(LEASE)
                            .await
                            .map_err(|e| format!("semaphore_acquire_release: {e}"))?
                            .ok_or("semaphore_acquire_release: no permit was free")?;
                        permit
                            .release()
                            .await
                            .map_err(|e| format!("semaphore_acquire_release: {e}"))
                    };
                    timed_calls(call, deadline).await
                }
            };
            let operation = "semaphore_acquire_release";
            rows.push(tasks_row(&target, operation, concurrency, args, calls).await?);
        }
        target.backend.clear().await.map_err(|e| e.to_string())?;
    }
    Ok(rows)
}

/// Tasks taking turns on one lock.
#[derive(Clone)]
struct Turns {
    locks: Locks,
    name: Arc<str>,
    /// When the last holder started its release.
    released: Arc<Mutex<Option<Instant>>>,
    /// Entries so far.
    entries: Arc<watch::Sender<u64>>,
    /// Tasks waiting in `lock` now.
    waiting: Arc<watch::Sender<usize>>,
}

impl Turns {
    fn new(locks: Locks, name: String) -> Turns {
        Turns {
            locks,
            name: name.into(),
            released: Arc::new(Mutex::new(None)),
            entries: Arc::new(watch::channel(0).0),
            waiting: Arc::new(watch::channel(0).0),
        }
    }

    /// One task's turns until `deadline`: each handover it enters by is
    /// one sample.
    async fn take(&self, deadline: Instant) -> Result<TaskResult, String> {
        let mut histogram = new_histogram()?;
        let mut calls = 0u64;
        let mut entered = self.entries.subscribe();
        let mut waiters = self.waiting.subscribe();
        loop {
            let asked = Instant::now();
            self.waiting.send_modify(|n| *n += 1);
            let guard = self
                .locks
                .lock(&self.name, LEASE, Duration::from_secs(10))
                .await
                .map_err(|e| format!("lock_handover: {e}"));
            self.waiting.send_modify(|n| *n -= 1);
            let guard = guard?;
            let now = Instant::now();
            let released = self
                .released
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            // A handover to a waiter: it asked before the release began.
            if let Some(released) = released.filter(|at| now < deadline && *at > asked) {
                let waited = u64::try_from((now - released).as_nanos()).unwrap_or(u64::MAX);
                histogram.record(waited.max(1)).map_err(|e| e.to_string())?;
                calls += 1;
            }
            // No other entry while this one holds the lock.
            self.entries.send_modify(|n| *n += 1);
            let mine = *self.entries.borrow();
            // Held until another waits for it (bounded: the others may all
            // have ended), so that each release has a waiter to hand over to.
            let _ = tokio::time::timeout(Duration::from_millis(100), waiters.wait_for(|n| *n > 0))
                .await;
            *self.released.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            guard
                .unlock()
                .await
                .map_err(|e| format!("lock_handover: {e}"))?;
            if Instant::now() >= deadline {
                return Ok(TaskResult { histogram, calls });
            }
            // Another's turn: wait for its entry (bounded: the others may
            // all have ended).
            let _ =
                tokio::time::timeout(Duration::from_secs(1), entered.wait_for(|n| *n > mine)).await;
        }
    }
}
