//! The local breaker against the state machine it runs (differential, on
//! random sequences), its permits, and its fast path under threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::backend::clock::{Clock, ManualClock};

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Ends the oldest permit held.
    Finish(Outcome),
    /// Drops the oldest permit held unfinished.
    Drop,
    Manual(Event),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![3 => Just(Outcome::Success), 3 => Just(Outcome::Failure), 1 => Just(Outcome::Ignored)];
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => outcome.prop_map(Op::Finish),
        1 => Just(Op::Drop),
        1 => prop_oneof![
            Just(Event::ForceOpen),
            Just(Event::ForceClose),
            Just(Event::Reset),
            Just(Event::Disable),
            Just(Event::MetricsOnly)
        ]
        .prop_map(Op::Manual),
        4 => prop_oneof![5 => 0u64..300, 1 => 0u64..6_000].prop_map(Op::Wait),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (1u32..4, 1u32..4, 1u32..6, 0u8..4).prop_filter_map(
        "valid",
        |(failures, probes, size, shape)| {
            let builder = BreakerConfig::builder()
                .open_for(Duration::from_millis(1_000))
                .backoff(2, Duration::from_millis(4_000))
                .half_open_max_wait(Duration::from_millis(2_500));
            let builder = match shape {
                0 => builder
                    .consecutive_failures(failures)
                    .half_open(probes, CloseAfter::Successes(probes)),
                1 => builder
                    .failure_limit(failures.min(size), size)
                    .half_open(probes, CloseAfter::Fraction(Ratio::new(1, 2).ok()?)),
                2 => builder
                    .failure_rate(1, 2)
                    .window(Window::Count(size + 2))
                    .min_calls(size)
                    .consecutive_failures(failures + 2)
                    .half_open(probes, CloseAfter::Successes(probes)),
                _ => builder
                    .failures_within(failures, Duration::from_millis(1_000))
                    .failure_rate(1, 2)
                    .min_calls(size)
                    .half_open(probes, CloseAfter::Successes(1)),
            };
            builder.build().ok()
        },
    )
}

fn reference_event(op: &Op, held: &mut VecDeque<Option<u64>>) -> Option<Event> {
    match op {
        Op::Acquire => Some(Event::Acquire),
        Op::Finish(outcome) => held.pop_front().map(|probe| Event::Record {
            outcome: *outcome,
            slow: false,
            probe,
        }),
        Op::Drop => held.pop_front().map(|probe| Event::Record {
            outcome: Outcome::Failure,
            slow: false,
            probe,
        }),
        Op::Manual(event) => Some(*event),
        Op::Wait(_) => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// One call at a time, the local breaker decides exactly what the
    /// state machine decides (no jitter, no slow calls: both would need
    /// the same randomness and clock).
    #[test]
    fn the_local_breaker_decides_as_the_state_machine(config in config(), ops in prop::collection::vec(op(), 1..150)) {
        let clock = ManualClock::new(1_000_000);
        let breaker = LocalBreaker::with_clock("diff", config.clone(), clock.clone());
        let mut state = State::new(&config, 1_000_000);
        let mut permits: VecDeque<Permit<'_>> = VecDeque::new();
        let mut held: VecDeque<Option<u64>> = VecDeque::new();
        for op in &ops {
            let event = reference_event(op, &mut held);
            let expected = event.map(|event| step(&config, &mut state, event, clock.now_millis(), 0));
            match op {
                Op::Acquire => {
                    let got = breaker.acquire();
                    match (expected.map(|s| s.decision), &got) {
                        (Some(Decision::Permit { probe }), Ok(permit)) => {
                            prop_assert_eq!(probe, permit.is_probe());
                            prop_assert_eq!(permit.spell(), probe.then_some(state.since));
                        }
                        (Some(Decision::Reject { retry_after_ms }), Err(rejected)) => {
                            prop_assert_eq!(retry_after_ms.map(Duration::from_millis), rejected.retry_after());
                        }
                        (want, got) => prop_assert!(false, "expected {:?}, got {:?}", want, got),
                    }
                    if let Ok(permit) = got {
                        held.push_back(permit.spell());
                        permits.push_back(permit);
                    }
                }
                Op::Finish(outcome) => {
                    if let Some(permit) = permits.pop_front() {
                        permit.record(*outcome);
                    }
                }
                Op::Drop => drop(permits.pop_front()),
                Op::Manual(event) => match event {
                    Event::ForceOpen => breaker.force_open(),
                    Event::ForceClose => breaker.force_close(),
                    Event::Reset => breaker.reset(),
                    Event::Disable => breaker.disable(),
                    _ => breaker.metrics_only(),
                },
                Op::Wait(ms) => clock.advance(Duration::from_millis(*ms)),
            }
            prop_assert_eq!(breaker.phase(), state.phase, "after {:?}", op);
        }
        permits.clear();
    }
}

#[test]
fn a_dropped_permit_is_a_failure_and_calls_are_classified() {
    let breaker = LocalBreaker::new(
        "drop",
        BreakerConfig::builder()
            .consecutive_failures(2)
            .build()
            .expect("config"),
    );
    drop(breaker.acquire().expect("closed"));
    assert_eq!(breaker.phase(), Phase::Closed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ignored = runtime.block_on(breaker.call_with(
        |_: &Result<(), &str>| Outcome::Ignored,
        || async { Err("bad request") },
    ));
    assert!(matches!(ignored, Err(CallError::Failed("bad request"))));
    assert_eq!(
        breaker.phase(),
        Phase::Closed,
        "ignored: still one failure in a row"
    );
    let failed = runtime.block_on(breaker.call(|| async { Err::<(), _>("down") }));
    assert!(matches!(failed, Err(CallError::Failed("down"))));
    assert_eq!(breaker.phase(), Phase::Open);
    let rejected = runtime.block_on(breaker.call(|| async { Ok::<_, &str>(1) }));
    match rejected {
        Err(CallError::Rejected(rejected)) => {
            assert_eq!(rejected.breaker(), "drop");
            let after = rejected.retry_after().expect("an opening ends");
            assert!(
                after > Duration::from_secs(29) && after <= Duration::from_secs(30),
                "{after:?}"
            );
            assert!(rejected.to_string().contains("retry after"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(breaker.figures(), (1, 1));
}

#[test]
fn threads_on_the_fast_path_open_it_once_and_probes_stay_limited() {
    // A manual clock: the opening ends only when the test says so, however
    // late the threads are scheduled.
    let clock = ManualClock::new(1_000_000);
    let breaker = LocalBreaker::with_clock(
        "threads",
        BreakerConfig::builder()
            .failure_limit(50, 100)
            .half_open(2, CloseAfter::Successes(2))
            .open_for(Duration::from_millis(50))
            .build()
            .expect("config"),
        clock.clone(),
    );
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10_000 {
                    if let Ok(permit) = breaker.acquire() {
                        permit.success();
                    }
                }
            });
        }
    });
    assert_eq!(breaker.phase(), Phase::Closed, "successes never open it");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..1_000 {
                    if let Ok(permit) = breaker.acquire() {
                        permit.failure();
                    }
                }
            });
        }
    });
    assert_eq!(breaker.phase(), Phase::Open);
    assert_eq!(breaker.figures().0, 1, "opened once");
    clock.advance(Duration::from_millis(60));
    let admitted = AtomicU32::new(0);
    let barrier = Arc::new(std::sync::Barrier::new(8));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let barrier = barrier.clone();
            let (breaker, admitted) = (&breaker, &admitted);
            scope.spawn(move || {
                barrier.wait();
                let permit = breaker.acquire();
                if let Ok(permit) = &permit {
                    assert!(permit.is_probe());
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
                barrier.wait();
                if let Ok(permit) = permit {
                    permit.success();
                }
            });
        }
    });
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        2,
        "two probes of eight callers"
    );
    assert_eq!(
        breaker.phase(),
        Phase::Closed,
        "two probe successes close it"
    );
}
