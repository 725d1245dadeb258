//! The state machine's rules, one by one, and its invariants on random
//! event sequences.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn record(outcome: Outcome) -> Event {
    Event::Record {
        outcome,
        slow: false,
        probe: None,
    }
}

/// A probe's result in the spell `state` is in.
fn probe_in(state: &State, outcome: Outcome) -> Event {
    Event::Record {
        outcome,
        slow: false,
        probe: Some(state.since),
    }
}

/// In generated events: a probe of the current spell, or of another one
/// (a late result), resolved against the state when the event runs.
const CURRENT: u64 = u64::MAX;
const STALE: u64 = u64::MAX - 1;

fn resolve(event: Event, state: &State) -> Event {
    match event {
        Event::Record {
            outcome,
            slow,
            probe: Some(spell),
        } => Event::Record {
            outcome,
            slow,
            probe: Some(match spell {
                CURRENT => state.since,
                STALE => state.since.wrapping_add(1),
                spell => spell,
            }),
        },
        event => event,
    }
}

fn spells() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 3 => Just(Some(CURRENT)), 1 => Just(Some(STALE))]
}

const FAIL: Outcome = Outcome::Failure;
const OK: Outcome = Outcome::Success;

/// Runs `events` at 1 ms apart from `start`; returns the last step.
fn run(config: &BreakerConfig, state: &mut State, start: u64, events: &[Event]) -> Step {
    let mut last = None;
    for (i, event) in events.iter().enumerate() {
        last = Some(step(config, state, *event, start + i as u64, 0));
    }
    last.expect("at least one event")
}

#[test]
fn consecutive_failures_open_and_a_success_resets_the_run() {
    let config = BreakerConfig::builder()
        .consecutive_failures(3)
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    run(
        &config,
        &mut state,
        1,
        &[
            record(FAIL),
            record(FAIL),
            record(OK),
            record(FAIL),
            record(FAIL),
        ],
    );
    assert_eq!(state.phase, Phase::Closed);
    let last = run(&config, &mut state, 10, &[record(FAIL)]);
    assert_eq!(state.phase, Phase::Open);
    assert_eq!(
        last.transition,
        Some(Transition {
            from: Phase::Closed,
            to: Phase::Open
        })
    );
    assert_eq!(state.open_until, 10 + 30_000);
}

#[test]
fn failure_limit_counts_the_last_calls_only() {
    let config = BreakerConfig::builder()
        .failure_limit(3, 5)
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    // F F S S S S: both failures slide out of the last five.
    run(
        &config,
        &mut state,
        1,
        &[
            record(FAIL),
            record(FAIL),
            record(OK),
            record(OK),
            record(OK),
            record(OK),
        ],
    );
    run(&config, &mut state, 10, &[record(FAIL), record(FAIL)]);
    assert_eq!(state.phase, Phase::Closed, "S S S F F: 2 of the last 5");
    run(&config, &mut state, 20, &[record(FAIL)]);
    assert_eq!(state.phase, Phase::Open, "S S F F F: 3 of the last 5");
}

#[test]
fn rates_wait_for_the_minimum_number_of_calls() {
    let config = BreakerConfig::builder()
        .failure_rate(1, 2)
        .window(Window::Count(10))
        .min_calls(4)
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    run(
        &config,
        &mut state,
        1,
        &[record(FAIL), record(FAIL), record(OK)],
    );
    assert_eq!(
        state.phase,
        Phase::Closed,
        "2 of 3 is over half, but 3 < min_calls"
    );
    run(&config, &mut state, 10, &[record(OK)]);
    assert_eq!(state.phase, Phase::Open, "2 of 4: half");
    let ignored = BreakerConfig::builder()
        .failure_rate(1, 2)
        .window(Window::Count(10))
        .min_calls(2)
        .build()
        .expect("config");
    let mut state = State::new(&ignored, 0);
    run(
        &ignored,
        &mut state,
        1,
        &[
            record(OK),
            record(Outcome::Ignored),
            record(Outcome::Ignored),
        ],
    );
    run(&ignored, &mut state, 10, &[record(FAIL)]);
    assert_eq!(
        state.phase,
        Phase::Open,
        "ignored calls are not counted: 1 of 2"
    );
}

#[test]
fn slow_calls_open_at_their_rate() {
    let config = BreakerConfig::builder()
        .slow_calls(Duration::from_millis(500), 3, 4)
        .window(Window::Count(4))
        .min_calls(4)
        .build()
        .expect("config");
    let slow = |outcome| Event::Record {
        outcome,
        slow: true,
        probe: None,
    };
    let mut state = State::new(&config, 0);
    run(
        &config,
        &mut state,
        1,
        &[slow(OK), slow(FAIL), record(OK), slow(OK)],
    );
    assert_eq!(state.phase, Phase::Open, "3 of 4 slow");
}

#[test]
fn failures_within_a_time_window_expire() {
    let config = BreakerConfig::builder()
        .failures_within(3, Duration::from_secs(10))
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 1_000, 0);
    step(&config, &mut state, record(FAIL), 2_000, 0);
    step(&config, &mut state, record(FAIL), 13_500, 0);
    assert_eq!(
        state.phase,
        Phase::Closed,
        "the first two are more than 10 s old"
    );
    step(&config, &mut state, record(FAIL), 14_000, 0);
    step(&config, &mut state, record(FAIL), 15_000, 0);
    assert_eq!(state.phase, Phase::Open);
}

#[test]
fn half_open_admits_its_probes_closes_on_successes_and_backs_off() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(1))
        .backoff(2, Duration::from_secs(3))
        .half_open(2, CloseAfter::Successes(2))
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 0, 0);
    assert_eq!(state.open_until, 1_000);
    let early = step(&config, &mut state, Event::Acquire, 400, 0);
    assert_eq!(
        early.decision,
        Decision::Reject {
            retry_after_ms: Some(600)
        }
    );
    let first = step(&config, &mut state, Event::Acquire, 1_000, 0);
    assert_eq!(first.decision, Decision::Permit { probe: true });
    assert_eq!(
        first.transition,
        Some(Transition {
            from: Phase::Open,
            to: Phase::HalfOpen
        })
    );
    assert_eq!(
        step(&config, &mut state, Event::Acquire, 1_001, 0).decision,
        Decision::Permit { probe: true }
    );
    assert!(matches!(
        step(&config, &mut state, Event::Acquire, 1_002, 0).decision,
        Decision::Reject { .. }
    ));
    // A failed probe reopens, for twice as long; then three times capped.
    let event = probe_in(&state, FAIL);
    step(&config, &mut state, event, 1_003, 0);
    assert_eq!(
        (state.phase, state.open_until),
        (Phase::Open, 1_003 + 2_000)
    );
    step(&config, &mut state, Event::Acquire, 3_003, 0);
    let event = probe_in(&state, FAIL);
    step(&config, &mut state, event, 3_004, 0);
    assert_eq!(state.open_until, 3_004 + 3_000, "capped at 3 s");
    step(&config, &mut state, Event::Acquire, 6_004, 0);
    step(&config, &mut state, Event::Acquire, 6_005, 0);
    let event = probe_in(&state, OK);
    step(&config, &mut state, event, 6_006, 0);
    assert_eq!(state.phase, Phase::HalfOpen, "one success of two");
    // A result from before the opening changes nothing.
    step(&config, &mut state, record(FAIL), 6_007, 0);
    assert_eq!(state.phase, Phase::HalfOpen);
    let event = probe_in(&state, OK);
    let closed = step(&config, &mut state, event, 6_008, 0);
    assert_eq!(
        closed.transition,
        Some(Transition {
            from: Phase::HalfOpen,
            to: Phase::Closed
        })
    );
    assert_eq!(state.openings, 0, "the back-off starts over");
}

#[test]
fn a_success_fraction_reopens_once_it_cannot_be_reached() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .half_open(4, CloseAfter::Fraction(Ratio::new(3, 4).expect("ratio")))
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 0, 0);
    let reopen_at = state.open_until;
    for i in 0..4 {
        step(&config, &mut state, Event::Acquire, reopen_at + i, 0);
    }
    let event = probe_in(&state, OK);
    step(&config, &mut state, event, reopen_at + 5, 0);
    let event = probe_in(&state, FAIL);
    step(&config, &mut state, event, reopen_at + 6, 0);
    assert_eq!(state.phase, Phase::HalfOpen, "3 of 4 still possible");
    let event = probe_in(&state, FAIL);
    step(&config, &mut state, event, reopen_at + 7, 0);
    assert_eq!(state.phase, Phase::Open, "at most 2 of 4 now");
}

#[test]
fn probes_that_never_report_do_not_hold_it_half_open() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(1))
        .half_open_max_wait(Duration::from_secs(5))
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 0, 0);
    assert_eq!(
        step(&config, &mut state, Event::Acquire, 1_000, 0).decision,
        Decision::Permit { probe: true }
    );
    let waiting = step(&config, &mut state, Event::Acquire, 2_000, 0);
    assert_eq!(
        waiting.decision,
        Decision::Reject {
            retry_after_ms: Some(4_000)
        }
    );
    let late = step(&config, &mut state, Event::Acquire, 6_000, 0);
    assert!(matches!(late.decision, Decision::Reject { .. }));
    assert_eq!((state.phase, state.openings), (Phase::Open, 2));
    // An ignored probe gives its slot back.
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 0, 0);
    step(&config, &mut state, Event::Acquire, 1_000, 0);
    let event = probe_in(&state, Outcome::Ignored);
    step(&config, &mut state, event, 1_001, 0);
    assert_eq!(
        step(&config, &mut state, Event::Acquire, 1_002, 0).decision,
        Decision::Permit { probe: true }
    );
}

#[test]
fn a_probe_of_an_earlier_spell_changes_nothing() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(1))
        .half_open(1, CloseAfter::Successes(1))
        .half_open_max_wait(Duration::from_secs(5))
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, record(FAIL), 0, 0);
    step(&config, &mut state, Event::Acquire, 1_000, 0);
    let first = probe_in(&state, FAIL);
    step(&config, &mut state, first, 1_001, 0);
    // The next spell begins; the first spell's probe, reported again late
    // (a retried record), neither fails nor frees anything in it.
    let admitted = step(&config, &mut state, Event::Acquire, 3_001, 0);
    assert_eq!(admitted.decision, Decision::Permit { probe: true });
    let spell = state.clone();
    step(&config, &mut state, first, 3_002, 0);
    let ignored_late = Event::Record {
        outcome: Outcome::Ignored,
        slow: false,
        probe: Some(1_000),
    };
    step(&config, &mut state, ignored_late, 3_003, 0);
    assert_eq!(state, spell, "a late probe changes nothing");
    let success = probe_in(&state, OK);
    let closed = step(&config, &mut state, success, 3_004, 0);
    assert_eq!(closed.transition.map(|t| t.to), Some(Phase::Closed));
}

#[test]
fn operators_hold_it_open_switch_it_off_or_let_it_only_count() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    step(&config, &mut state, Event::ForceOpen, 1, 0);
    assert_eq!(
        step(&config, &mut state, Event::Acquire, 1_000_000, 0).decision,
        Decision::Reject {
            retry_after_ms: None
        }
    );
    step(&config, &mut state, Event::Disable, 2, 0);
    step(&config, &mut state, record(FAIL), 3, 0);
    assert_eq!(state.phase, Phase::Disabled);
    assert_eq!(
        step(&config, &mut state, Event::Acquire, 4, 0).decision,
        Decision::Permit { probe: false }
    );
    step(&config, &mut state, Event::MetricsOnly, 5, 0);
    step(&config, &mut state, record(FAIL), 6, 0);
    step(&config, &mut state, record(FAIL), 7, 0);
    assert_eq!(
        (state.phase, state.consecutive_failures),
        (Phase::MetricsOnly, 2),
        "counted, not opened"
    );
    let reset = step(&config, &mut state, Event::Reset, 8, 0);
    assert_eq!(
        reset.transition,
        Some(Transition {
            from: Phase::MetricsOnly,
            to: Phase::Closed
        })
    );
    assert_eq!(state, State::new(&config, 8));
}

#[test]
fn jitter_spreads_openings_within_bounds() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(10))
        .jitter(100)
        .build()
        .expect("config");
    let lengths: Vec<u64> = (0..1_000u32)
        .map(|e| open_duration(&config, 1, e.wrapping_mul(2_654_435_761)))
        .collect();
    assert!(
        lengths.iter().all(|l| (9_000..=11_000).contains(l)),
        "{:?}",
        lengths.iter().min()
    );
    assert!(lengths.iter().any(|l| *l < 9_500) && lengths.iter().any(|l| *l > 10_500));
}

#[test]
fn a_state_from_another_window_starts_afresh() {
    let count = BreakerConfig::builder()
        .failure_limit(2, 5)
        .build()
        .expect("config");
    let time = BreakerConfig::builder()
        .failures_within(2, Duration::from_secs(1))
        .build()
        .expect("config");
    let mut state = State::new(&count, 0);
    step(&count, &mut state, record(FAIL), 1, 0);
    step(&time, &mut state, record(FAIL), 2, 0);
    assert_eq!(
        state.phase,
        Phase::Closed,
        "the count window's failure was dropped"
    );
    assert!(matches!(state.calls, Calls::Time { .. }));
}

#[test]
fn states_round_trip_through_json() {
    let config = BreakerConfig::builder()
        .failure_limit(2, 5)
        .build()
        .expect("config");
    let mut state = State::new(&config, 0);
    run(&config, &mut state, 1, &[record(FAIL), record(OK)]);
    let text = serde_json::to_string(&state).expect("encode");
    assert_eq!(serde_json::from_str::<State>(&text).expect("decode"), state);
}

// Invariants on random sequences.

#[derive(Debug, Clone)]
struct Input {
    event: Event,
    /// Milliseconds since the previous event (negative: the clock went back).
    dt: i64,
    entropy: u32,
}

fn input() -> impl Strategy<Value = Input> {
    let outcome = prop_oneof![4 => Just(OK), 4 => Just(FAIL), 1 => Just(Outcome::Ignored)];
    let event = prop_oneof![
        8 => Just(Event::Acquire),
        8 => (outcome, any::<bool>(), spells())
            .prop_map(|(outcome, slow, probe)| Event::Record { outcome, slow, probe }),
        1 => prop_oneof![
            Just(Event::ForceOpen),
            Just(Event::ForceClose),
            Just(Event::Reset),
            Just(Event::Disable),
            Just(Event::MetricsOnly)
        ],
    ];
    let dt = prop_oneof![10 => 0i64..400, 1 => 0i64..20_000, 1 => -500i64..0];
    (event, dt, any::<u32>()).prop_map(|(event, dt, entropy)| Input { event, dt, entropy })
}

fn configs() -> impl Strategy<Value = BreakerConfig> {
    (1u32..5, 1u32..4, 1u32..8, 0u32..300, any::<bool>()).prop_filter_map(
        "valid",
        |(failures, probes, size, jitter, time)| {
            let builder = BreakerConfig::builder()
                .consecutive_failures(failures)
                .open_for(Duration::from_millis(1_000))
                .backoff(2, Duration::from_millis(8_000))
                .jitter(jitter)
                .half_open(probes, CloseAfter::Successes(probes))
                .half_open_max_wait(Duration::from_millis(3_000));
            let builder = match time {
                true => builder.failures_within(failures.min(size), Duration::from_millis(2_000)),
                false => builder
                    .failure_limit(failures.min(size), size)
                    .failure_rate(1, 2)
                    .min_calls(size),
            };
            builder.build().ok()
        },
    )
}

/// The calls the count window must hold: every non-ignored result since
/// the breaker last entered CLOSED or METRICS_ONLY.
#[derive(Default)]
struct Reference {
    calls: Vec<(bool, bool)>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_on_random_sequences(config in configs(), inputs in prop::collection::vec(input(), 1..200)) {
        let mut now: u64 = 1_000_000;
        let mut state = State::new(&config, now);
        let mut reference = Reference::default();
        let mut probe_permits = 0u32;
        let mut freed = 0u32;
        for input in inputs {
            now = now.saturating_add_signed(input.dt);
            let before = state.clone();
            let event = resolve(input.event, &state);
            let taken = step(&config, &mut state, event, now, input.entropy);
            prop_assert!(state.probes_admitted <= config.probes());
            if before.phase == Phase::Open && event == Event::Acquire && now < before.open_until {
                let rejected = matches!(taken.decision, Decision::Reject { retry_after_ms: Some(_) });
                prop_assert!(rejected, "an open breaker rejects until its opening ends");
                prop_assert_eq!(&state, &before, "a rejection changes nothing");
            }
            if state.phase == Phase::Open {
                prop_assert!(state.open_until > state.since || state.open_until == u64::MAX);
                let longest = super::config::millis(Duration::from_millis(8_000)) * 13 / 10;
                prop_assert!(state.open_until - state.since <= longest);
            }
            if let Some(t) = taken.transition {
                prop_assert_ne!(t.from, t.to);
                prop_assert_eq!(t.to, state.phase);
                if t.to == Phase::HalfOpen {
                    probe_permits = 0;
                    freed = 0;
                }
            }
            if state.phase != Phase::HalfOpen {
                probe_permits = 0;
                freed = 0;
            }
            match taken.decision {
                Decision::Permit { probe: true } => {
                    prop_assert_eq!(state.phase, Phase::HalfOpen);
                    probe_permits += 1;
                }
                Decision::Permit { probe: false } => prop_assert!(matches!(
                    state.phase,
                    Phase::Closed | Phase::Disabled | Phase::MetricsOnly
                )),
                _ => {}
            }
            let ignored_probe = matches!(
                event,
                Event::Record { outcome: Outcome::Ignored, probe: Some(spell), .. } if spell == before.since
            );
            if before.phase == Phase::HalfOpen && state.phase == Phase::HalfOpen && ignored_probe {
                freed += 1;
            }
            prop_assert!(probe_permits <= config.probes() + freed, "{probe_permits} probes admitted");
            // The count window against a plain list of the same calls.
            if matches!(config.window(), Window::Count(_)) {
                let counting = matches!(before.phase, Phase::Closed | Phase::MetricsOnly);
                let manual = !matches!(event, Event::Acquire | Event::Record { .. });
                if manual || !matches!(state.phase, Phase::Closed | Phase::MetricsOnly) || before.phase != state.phase {
                    reference.calls.clear();
                }
                if let (true, Event::Record { outcome, slow, .. }) = (counting, event) {
                    if outcome != Outcome::Ignored && before.phase == state.phase {
                        reference.calls.push((outcome == Outcome::Failure, slow));
                    }
                }
                if let Window::Count(size) = config.window() {
                    let skip = reference.calls.len().saturating_sub(size as usize);
                    let kept = &reference.calls[skip..];
                    let tally = state.calls.tally(&config, now);
                    prop_assert_eq!(tally.calls, kept.len() as u64);
                    prop_assert_eq!(tally.failures, kept.iter().filter(|c| c.0).count() as u64);
                    prop_assert_eq!(tally.slow, kept.iter().filter(|c| c.1).count() as u64);
                }
            }
        }
    }
}
