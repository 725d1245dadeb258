//! The local breaker under shuttle's scheduler: its atomics and lock are
//! shuttle's (`--cfg shuttle`), and each test runs many random
//! interleavings of its threads, checking what must hold in every one.
//!
//! `RUSTFLAGS="--cfg shuttle" cargo test -p statecraft --lib shuttle`

use std::sync::Arc;
use std::time::Duration;

use shuttle::sync::atomic::{AtomicUsize, Ordering};
use shuttle::sync::Mutex;
use shuttle::thread;

use crate::backend::clock::ManualClock;

use super::{BreakerConfig, CloseAfter, LocalBreaker, Phase};

/// Interleavings per test.
const RUNS: usize = 2_000;

/// A breaker that one failure opens for 10 s, admitting `probes` probes
/// that `probes` successes close.
fn breaker(probes: u32, clock: ManualClock) -> LocalBreaker {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(10))
        .half_open(probes, CloseAfter::Successes(probes))
        .build()
        .expect("config");
    LocalBreaker::with_clock("shuttle", config, clock)
}

#[test]
fn a_half_open_spell_admits_at_most_its_probes() {
    shuttle::check_random(
        || {
            let clock = ManualClock::new(1_000_000);
            let breaker = breaker(2, clock.clone());
            breaker.acquire().expect("closed").failure();
            clock.advance(Duration::from_secs(10));
            let spells = Arc::new(Mutex::new(Vec::new()));
            let threads: Vec<_> = (0..3)
                .map(|n| {
                    let (breaker, spells) = (breaker.clone(), spells.clone());
                    thread::spawn(move || {
                        for _ in 0..2 {
                            if let Ok(permit) = breaker.acquire() {
                                if let Some(spell) = permit.spell() {
                                    spells.lock().expect("spells").push(spell);
                                }
                                // One thread's probes fail, reopening it.
                                match n {
                                    0 => permit.failure(),
                                    _ => permit.success(),
                                }
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().expect("no panic");
            }
            let spells = spells.lock().expect("spells").clone();
            for spell in &spells {
                let admitted = spells.iter().filter(|s| *s == spell).count();
                assert!(
                    admitted <= 2,
                    "spell {spell} admitted {admitted}: {spells:?}"
                );
            }
        },
        RUNS,
    );
}

#[test]
fn concurrent_failures_open_it_and_nothing_is_lost() {
    shuttle::check_random(
        || {
            let config = BreakerConfig::builder()
                .consecutive_failures(3)
                .open_for(Duration::from_secs(10))
                .build()
                .expect("config");
            let breaker = LocalBreaker::with_clock("shuttle", config, ManualClock::new(1_000));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let breaker = breaker.clone();
                    thread::spawn(move || breaker.acquire().expect("closed").failure())
                })
                .collect();
            for thread in threads {
                thread.join().expect("no panic");
            }
            assert_eq!(breaker.phase(), Phase::Open, "3 failures in a row");
            let (transitions, _) = breaker.figures();
            assert_eq!(transitions, 1, "opened once");
        },
        RUNS,
    );
}

#[test]
fn a_reset_racing_calls_leaves_one_consistent_phase() {
    shuttle::check_random(
        || {
            let clock = ManualClock::new(1_000_000);
            let breaker = breaker(1, clock);
            let admitted = Arc::new(AtomicUsize::new(0));
            let caller = {
                let (breaker, admitted) = (breaker.clone(), admitted.clone());
                thread::spawn(move || {
                    for _ in 0..3 {
                        if let Ok(permit) = breaker.acquire() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            permit.failure();
                        }
                    }
                })
            };
            let operator = {
                let breaker = breaker.clone();
                thread::spawn(move || breaker.reset())
            };
            caller.join().expect("no panic");
            operator.join().expect("no panic");
            // Whatever the order: an open breaker rejects; a closed one
            // admits, and its window is whole again (one failure opens it).
            match breaker.phase() {
                Phase::Open => assert!(breaker.acquire().is_err()),
                Phase::Closed => {
                    breaker.acquire().expect("closed").failure();
                    assert_eq!(breaker.phase(), Phase::Open, "one failure opens it");
                }
                other => panic!("{other:?}"),
            }
            // The reset came first, between, or last: 1 to 3 admitted.
            let admitted = admitted.load(Ordering::Relaxed);
            assert!((1..=3).contains(&admitted), "{admitted}");
        },
        RUNS,
    );
}
