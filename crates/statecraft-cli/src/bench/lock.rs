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
//!   of one semaphore with as many permits as tasks;
//! - on PostgreSQL, `advisory_lock_acquire_release` and
//!   `advisory_lock_handover`: the same two for session-level advisory
//!   locks ([`AdvisoryLocks`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use statecraft::lock::{AdvisoryGuard, AdvisoryLocks, LockGuard, Locks, Semaphore};
use statecraft::{PostgresBackend, PostgresConfig};
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
        let prefix = format!("bench-{}", std::process::id());
        let mut kinds = vec![(
            Kind::Lease(Locks::new(target.backend.clone())),
            ["lock_acquire_release", "lock_handover"],
        )];
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let advisory = advisory(spec, levels).await?;
            kinds.push((
                Kind::Advisory(advisory),
                ["advisory_lock_acquire_release", "advisory_lock_handover"],
            ));
        }
        for (kind, [uncontended, handover]) in kinds {
            for &concurrency in levels {
                let next = Arc::new(AtomicUsize::new(0));
                let calls = |deadline| {
                    let kind = kind.clone();
                    let name = format!("{prefix}-own-{}", next.fetch_add(1, Ordering::Relaxed));
                    async move {
                        let call = || async {
                            kind.try_lock(&name)
                                .await
                                .map_err(|e| format!("{uncontended}: {e}"))?
                                .ok_or(format!("{uncontended}: an uncontended lock was held"))?
                                .unlock()
                                .await
                                .map_err(|e| format!("{uncontended}: {e}"))
                        };
                        timed_calls(call, deadline).await
                    }
                };
                rows.push(tasks_row(&target, uncontended, concurrency, args, calls).await?);
            }
            // Untimed first: a few handovers, which set up what waiting
            // takes (the store's subscription: on PostgreSQL a listening
            // connection).
            let warm = Turns::new(kind.clone(), format!("{prefix}-warm-{handover}"), handover);
            let until = Instant::now() + Duration::from_millis(200);
            let warming: Vec<_> = (0..2)
                .map(|_| {
                    let warm = warm.clone();
                    tokio::spawn(async move { warm.take(until).await })
                })
                .collect();
            for task in warming {
                task.await.map_err(|e| format!("{handover}: {e}"))??;
            }
            let mut contention: Vec<usize> = levels.iter().map(|&n| n.max(2)).collect();
            contention.dedup();
            for contenders in contention {
                let turns = Turns::new(
                    kind.clone(),
                    format!("{prefix}-shared-{handover}"),
                    handover,
                );
                let calls = |deadline| {
                    let turns = turns.clone();
                    async move { turns.take(deadline).await }
                };
                rows.push(tasks_row(&target, handover, contenders, args, calls).await?);
            }
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

/// Advisory locks on the server at `spec`, with a session for each task
/// of the most contended level.
async fn advisory(spec: &str, levels: &[usize]) -> Result<AdvisoryLocks, String> {
    let config = PostgresConfig::builder()
        .url(spec)
        .table(super::POSTGRES_TABLE)
        .build()
        .map_err(|e| format!("backend {spec:?}: {e}"))?;
    let backend = PostgresBackend::new(config)
        .await
        .map_err(|e| format!("backend {spec:?}: {e}"))?;
    let mut config = statecraft::lock::AdvisoryConfig::default();
    config.sessions = levels.iter().copied().max().unwrap_or(1).max(2) + 2;
    AdvisoryLocks::with_config(&backend, config)
        .await
        .map_err(|e| format!("advisory locks on {spec:?}: {e}"))
}

/// The lock measured: a lease lock of any store, or a PostgreSQL advisory
/// lock.
#[derive(Clone)]
enum Kind {
    Lease(Locks),
    Advisory(AdvisoryLocks),
}

/// A holding of either kind.
enum Held {
    Lease(LockGuard),
    Advisory(AdvisoryGuard),
}

impl Kind {
    async fn try_lock(&self, name: &str) -> statecraft::Result<Option<Held>> {
        Ok(match self {
            Kind::Lease(locks) => locks.try_lock(name, LEASE).await?.map(Held::Lease),
            Kind::Advisory(locks) => locks.try_lock(name).await?.map(Held::Advisory),
        })
    }

    async fn lock(&self, name: &str, wait: Duration) -> statecraft::Result<Held> {
        Ok(match self {
            Kind::Lease(locks) => Held::Lease(locks.lock(name, LEASE, wait).await?),
            Kind::Advisory(locks) => Held::Advisory(locks.lock(name, wait).await?),
        })
    }
}

impl Held {
    async fn unlock(self) -> statecraft::Result<()> {
        match self {
            Held::Lease(guard) => guard.unlock().await,
            Held::Advisory(guard) => guard.unlock().await,
        }
    }
}

/// Tasks taking turns on one lock.
#[derive(Clone)]
struct Turns {
    locks: Kind,
    /// The row's operation, naming its errors.
    operation: &'static str,
    name: Arc<str>,
    /// When the last holder started its release.
    released: Arc<Mutex<Option<Instant>>>,
    /// Entries so far.
    entries: Arc<watch::Sender<u64>>,
    /// Tasks waiting in `lock` now.
    waiting: Arc<watch::Sender<usize>>,
}

impl Turns {
    fn new(locks: Kind, name: String, operation: &'static str) -> Turns {
        Turns {
            locks,
            operation,
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
                .lock(&self.name, Duration::from_secs(10))
                .await
                .map_err(|e| format!("{}: {e}", self.operation));
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
                .map_err(|e| format!("{}: {e}", self.operation))?;
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
