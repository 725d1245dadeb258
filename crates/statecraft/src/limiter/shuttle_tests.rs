//! The local limiters under shuttle's scheduler: their atomics are
//! shuttle's (`--cfg shuttle`), and each test runs many random
//! interleavings of its threads, checking what must hold in every one.
//!
//! `RUSTFLAGS="--cfg shuttle" cargo test -p statecraft --lib shuttle`

use std::sync::Arc;
use std::time::Duration;

use shuttle::sync::atomic::{AtomicU64, Ordering};
use shuttle::thread;

use crate::backend::clock::ManualClock;

use super::{Algorithm, LocalLimiter, Quota};

/// Interleavings per test.
const RUNS: usize = 1_000;

fn quota(algorithm: Algorithm, count: u64) -> Quota {
    Quota::with_period(count, Duration::from_secs(1))
        .algorithm(algorithm)
        .build()
        .expect("quota")
}

#[test]
fn threads_racing_for_permits_take_each_once() {
    for algorithm in Algorithm::ALL {
        shuttle::check_random(
            move || {
                let limiter = Arc::new(LocalLimiter::with_clock(
                    quota(algorithm, 3),
                    ManualClock::new(1_000),
                ));
                let admitted = Arc::new(AtomicU64::new(0));
                let threads: Vec<_> = (0..3)
                    .map(|_| {
                        let (limiter, admitted) = (limiter.clone(), admitted.clone());
                        thread::spawn(move || {
                            for cost in [1, 1] {
                                if limiter.check_n(cost).is_allowed() {
                                    admitted.fetch_add(cost, Ordering::SeqCst);
                                }
                            }
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().expect("no panic");
                }
                assert_eq!(admitted.load(Ordering::SeqCst), 3, "{algorithm}");
                assert_eq!(limiter.check_n(0).remaining, 0, "{algorithm}");
            },
            RUNS,
        );
    }
}

#[test]
fn a_quota_changed_while_threads_decide_is_seen_whole() {
    shuttle::check_random(
        || {
            let limiter = Arc::new(LocalLimiter::with_clock(
                quota(Algorithm::Gcra, 2),
                ManualClock::new(1_000),
            ));
            let changer = {
                let limiter = limiter.clone();
                thread::spawn(move || limiter.set_quota(quota(Algorithm::Gcra, 5)).expect("same"))
            };
            let decider = {
                let limiter = limiter.clone();
                thread::spawn(move || (0..3).map(|_| limiter.check().limit).collect::<Vec<_>>())
            };
            changer.join().expect("no panic");
            let limits = decider.join().expect("no panic");
            assert!(limits.iter().all(|l| *l == 2 || *l == 5), "{limits:?}");
            assert!(
                limits.windows(2).all(|w| w[0] <= w[1]),
                "back to the old: {limits:?}"
            );
            assert_eq!(limiter.check().limit, 5);
        },
        RUNS,
    );
}
