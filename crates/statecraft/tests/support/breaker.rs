//! What the breaker's differential tests share: random configurations and
//! event sequences, and a runner that plays one on a store at a clock the
//! test sets, answering every step's output and the state it left.

#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use proptest::prelude::*;
use statecraft::breaker::{
    batch_input, parse_step_output, step_input, BreakerConfig, BreakerStep, CloseAfter, Event,
    Outcome, Ratio, Window, PEEK,
};
use statecraft::{Bytes, ErrorKind, StateBackend};

/// The key the sequences run on.
pub(crate) const KEY: &[u8] = b"breaker";

pub(crate) fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        (1u32..5, 1u32..4, 1u32..8, 0u8..5),
        (0u32..400, 1u32..4, any::<bool>(), 1u32..4),
        prop_oneof![Just(1_000u64), 1u64..2_500],
    )
        .prop_filter_map(
            "valid",
            |((failures, probes, size, shape), (jitter, mult, fraction, wait), open_ms)| {
                let close = match fraction {
                    true => CloseAfter::Fraction(Ratio::new(1, 2).ok()?),
                    false => CloseAfter::Successes(probes),
                };
                let builder = BreakerConfig::builder()
                    .open_for(Duration::from_millis(open_ms))
                    .backoff(mult, Duration::from_millis(5_000))
                    .jitter(jitter)
                    .half_open(probes, close)
                    .half_open_max_wait(Duration::from_millis(1_000 * u64::from(wait)));
                let builder = match shape {
                    0 => builder.consecutive_failures(failures),
                    1 => builder.failure_limit(failures.min(size), size),
                    2 => builder
                        .failure_rate(1, 2)
                        .window(Window::Count(size + 1))
                        .min_calls(size),
                    3 => builder
                        .failures_within(failures, Duration::from_millis(2_000))
                        .slow_calls(Duration::from_millis(100), 2, 3),
                    _ => builder
                        .failure_rate(2, 3)
                        .window(Window::Time {
                            size: Duration::from_millis(3_000),
                            buckets: 3,
                        })
                        .min_calls(size),
                };
                builder.build().ok()
            },
        )
}

/// In generated events: a probe of the spell the stored breaker is in, or
/// of another one (a late result), resolved when the event runs.
pub(crate) const CURRENT: u64 = u64::MAX;
pub(crate) const STALE: u64 = u64::MAX - 1;

pub(crate) fn spells() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 3 => Just(Some(CURRENT)), 1 => Just(Some(STALE))]
}

/// `event` with a generated spell made real, from the stored state's
/// `since` (its third word).
pub(crate) fn resolve(event: Event, stored: Option<&[u8]>) -> Event {
    let since = stored
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(|text| text.split(' ').nth(2)?.parse::<u64>().ok())
        .unwrap_or(0);
    match event {
        Event::Record {
            outcome,
            slow,
            probe: Some(spell),
        } => Event::Record {
            outcome,
            slow,
            probe: Some(match spell {
                CURRENT => since,
                STALE => since + 1,
                spell => spell,
            }),
        },
        event => event,
    }
}

pub(crate) fn event() -> impl Strategy<Value = Event> {
    let outcome = prop_oneof![3 => Just(Outcome::Success), 3 => Just(Outcome::Failure), 1 => Just(Outcome::Ignored)];
    prop_oneof![
        6 => Just(Event::Acquire),
        6 => (outcome, any::<bool>(), spells())
            .prop_map(|(outcome, slow, probe)| Event::Record { outcome, slow, probe }),
        1 => prop_oneof![
            Just(Event::ForceOpen),
            Just(Event::ForceClose),
            Just(Event::Reset),
            Just(Event::Disable),
            Just(Event::MetricsOnly)
        ],
    ]
}

/// What one generated step sends: an event, or a batch of results
/// ((failed, slow) pairs) recorded in one step.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    One(Event),
    Batch(Vec<(bool, bool)>),
}

pub(crate) fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => event().prop_map(Input::One),
        1 => prop::collection::vec((any::<bool>(), any::<bool>()), 1..40).prop_map(Input::Batch),
    ]
}

/// A step's advance that moves the clock to the next whole second.
pub(crate) const ALIGN: u64 = u64::MAX;

pub(crate) fn steps() -> impl Strategy<Value = Vec<(Input, u64, u32)>> {
    // Whole buckets and windows too (after ALIGN, a jump to the next whole
    // second), so that calls land on the buckets' edges.
    let dt = prop_oneof![8 => 0u64..300, 1 => 0u64..6_000, 2 => prop::sample::select(vec![200u64, 1_000, 2_000, 3_000, ALIGN])];
    prop::collection::vec((input(), dt, any::<u32>()), 1..60)
}

/// Sequences of mostly plain successes, so that count windows fill with
/// them and the stores' shortcut for a state a plain success leaves as it
/// is (a memo in Lua, the row's `steady` on PostgreSQL) is taken, and left
/// when another event changes the state.
pub(crate) fn steady_steps() -> impl Strategy<Value = Vec<(Input, u64, u32)>> {
    let plain = Input::One(Event::Record {
        outcome: Outcome::Success,
        slow: false,
        probe: None,
    });
    let input = prop_oneof![12 => Just(plain), 1 => input()];
    let dt = prop_oneof![8 => 0u64..300, 1 => 0u64..6_000];
    prop::collection::vec((input, dt, any::<u32>()), 1..80)
}

/// Sequences of mostly batches, some long, some mostly successes (the
/// stores' one pass over a closed count window, which stops before a
/// record that trips), between other events.
pub(crate) fn batch_steps() -> impl Strategy<Value = Vec<(Input, u64, u32)>> {
    let result = prop_oneof![
        12 => Just((false, false)),
        2 => Just((true, false)),
        1 => Just((false, true)),
        1 => Just((true, true))
    ];
    let batch = prop::collection::vec(result, 1..200).prop_map(Input::Batch);
    let input = prop_oneof![4 => batch, 1 => input()];
    let dt = prop_oneof![8 => 0u64..300, 1 => 0u64..6_000];
    prop::collection::vec((input, dt, any::<u32>()), 1..30)
}

/// Runs the sequence on `store`: each answer (or error kind) and the
/// stored state after it (as the step itself reads it: on PostgreSQL the
/// state is in a table of its own, not under the key).
pub(crate) async fn run(
    store: &dyn StateBackend,
    config: &BreakerConfig,
    steps: &[(Input, u64, u32)],
) -> Vec<(Result<Bytes, ErrorKind>, Option<Bytes>)> {
    let mut now = 1_733_000_000_000u64;
    let mut seen = Vec::new();
    for (sent, dt, entropy) in steps {
        now = match *dt {
            ALIGN => now - now % 1_000 + 1_000,
            dt => now + dt,
        };
        let before = stored(store).await;
        let input = match sent {
            Input::One(event) => {
                let event = resolve(*event, before.as_deref());
                step_input(config, "breaker", event, *entropy, now)
            }
            Input::Batch(results) => batch_input(config, "breaker", results, *entropy, now),
        };
        let answer = store
            .update_atomic(KEY, &BreakerStep, input.as_bytes())
            .await
            .map_err(|err| err.kind());
        if let Ok(raw) = &answer {
            parse_step_output(raw).expect("a step's output parses");
        }
        seen.push((answer, stored(store).await));
    }
    seen
}

/// The breaker's stored state, by the step's own read.
pub(crate) async fn stored(store: &dyn StateBackend) -> Option<Bytes> {
    let raw = store
        .update_atomic(KEY, &BreakerStep, PEEK)
        .await
        .expect("peek");
    (!raw.is_empty()).then_some(raw)
}

/// `PEEK_AT` answers the store's time (this machine's, give or take) and
/// the state `PEEK` answers; nothing stored reads as no state.
pub(crate) async fn check_peek_at(store: &dyn StateBackend) {
    use statecraft::breaker::{decode_state, parse_peek_at, PEEK_AT};
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let empty = b"peek-at-nothing";
    let (now, state) = parse_peek_at(
        &store
            .update_atomic(empty, &BreakerStep, PEEK_AT)
            .await
            .expect("peek at"),
    )
    .expect("parses");
    assert_eq!(state, None);
    assert!(now.abs_diff(wall()) < 5_000, "{now} vs {}", wall());
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let fail = Event::Record {
        outcome: Outcome::Failure,
        slow: false,
        probe: None,
    };
    store
        .update_atomic(
            KEY,
            &BreakerStep,
            step_input(&config, "b", fail, 0, 0).as_bytes(),
        )
        .await
        .expect("step");
    let (now, state) = parse_peek_at(
        &store
            .update_atomic(KEY, &BreakerStep, PEEK_AT)
            .await
            .expect("peek at"),
    )
    .expect("parses");
    let peeked = stored(store).await.expect("a state");
    assert_eq!(state, decode_state(&peeked));
    let state = state.expect("a state");
    assert!(
        state.open_until > now,
        "open at the store's time {now}: {state:?}"
    );
}
