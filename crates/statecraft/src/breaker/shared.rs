//! The state machine as one [`AtomicUpdate`]: how a shared breaker runs
//! [`step`](super::machine::step) in one round trip on any store — under
//! the key's lock in memory, as its Lua copy (`step.lua`) on Redis at the
//! server's clock, as its PL/pgSQL copy (`step.sql`) on PostgreSQL in a
//! table of its own at the server's clock, by compare-and-swap elsewhere.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;

use super::config::{millis, BreakerConfig, Window};
use super::machine::{merge, step, Decision, Event, Outcome, Phase, State, Step};
use super::wire;

/// The Lua copy of [`step`] (a library: a chunk that returns the step),
/// kept beside it and checked against it.
const SCRIPT: &str = include_str!("step.lua");

/// The PL/pgSQL copy, and the readable table it keeps breakers in.
const POSTGRES: PostgresNative = PostgresNative {
    setup: include_str!("step.sql"),
    // The peeks are plain reads, not calls of the function; so is the
    // commonest record, a plain success that the row says changes nothing
    // under this configuration (its `steady`, which only the function
    // writes), with the rest of the input as the function checks it. The
    // row is read once, in `FROM`: with one scan in the statement, its
    // generic plan costs no more than a custom one, so the server plans it
    // once instead of at every call (a custom plan per call cost ~60 µs).
    call: "SELECT CASE WHEN $2 IN ('?', '?t') THEN \
           CASE WHEN $2 = '?t' THEN floor(extract(epoch FROM clock_timestamp()) * 1000)::int8 \
           || ' ' ELSE '' END || coalesce(r.detail, '') \
           WHEN $2 ~ '^[^|]*\\|R s 0 -\\|[0-9]{1,10}\\|[0-9]{1,18}\\|[0-9]{1,18}\\|' \
           AND lpad(split_part($2, '|', 3), 10, '0') COLLATE \"C\" <= '4294967295' \
           AND r.steady = split_part($2, '|', 1) || '|' || r.detail THEN 'D -' \
           ELSE @breaker_step#@($1, $2, $3) END \
           FROM (SELECT) AS one LEFT JOIN LATERAL (SELECT detail, steady FROM @breakers@ \
           WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())) AS r ON true",
    purge: Some("DELETE FROM @breakers@ WHERE expires_at <= clock_timestamp()"),
    function: "@breaker_step#@",
    keys: Some(
        "SELECT key FROM @breakers@ WHERE substr(key, 1, length($1::bytea)) = $1::bytea \
         AND (expires_at IS NULL OR expires_at > clock_timestamp()) ORDER BY key",
    ),
};

/// The input of a [`BreakerStep`] that only reads the stored state: its
/// output is the state's text (empty: none), as [`decode_state`] reads it.
pub const PEEK: &[u8] = b"?";

/// The input of a [`BreakerStep`] that reads the store's time and the
/// stored state: its output is `<store ms> <state text>` (the state empty:
/// none), as [`parse_peek_at`] reads it.
pub const PEEK_AT: &[u8] = b"?t";

/// A [`PEEK_AT`] answer read back: the store's time, and the state
/// (`None`: none, or damaged).
pub fn parse_peek_at(raw: &[u8]) -> Result<(u64, Option<State>)> {
    let corrupt = || {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "a breaker peek answered {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
    let (now, state) = text.split_once(' ').ok_or_else(corrupt)?;
    let now = wire::digits(now).ok_or_else(corrupt)?;
    Ok((now, wire::decode_state(state.as_bytes())))
}

/// How long a shared breaker's key lives after its last write: long enough
/// to outlast any opening, half-open wait and window, so that only a
/// breaker nobody uses expires (and comes back closed).
pub fn state_ttl(config: &BreakerConfig) -> Duration {
    let window = match config.window {
        Window::Count(_) => Duration::ZERO,
        Window::Time { size, .. } => size,
    };
    let span = config
        .max_open_for
        .saturating_add(config.half_open_max_wait)
        .saturating_add(window);
    span.saturating_mul(2).max(Duration::from_secs(3600))
}

/// The input of one [`BreakerStep`]: the configuration, the event, the
/// entropy (the opening's jitter), the time in milliseconds (0: the
/// store's clock, as a shared breaker always asks; tests pass their own),
/// the key's TTL and the breaker's name (for a store's readable table).
pub fn step_input(
    config: &BreakerConfig,
    name: &str,
    event: Event,
    entropy: u32,
    now: u64,
) -> String {
    format!(
        "{}|{}|{entropy}|{now}|{}|{name}",
        wire::encode_config(config),
        wire::encode_event(event),
        millis(state_ttl(config)),
    )
}

/// The most results one batch carries.
pub const MAX_BATCH: usize = 4_096;

/// The input of one [`BreakerStep`] that records a batch of results (no
/// probe's among them), each as its own step, in order, at one time:
/// `results` are (failed, slow) pairs. Ignored results are not sent.
/// At most [`MAX_BATCH`] of them; an empty batch is bad input.
pub fn batch_input(
    config: &BreakerConfig,
    name: &str,
    results: &[(bool, bool)],
    entropy: u32,
    now: u64,
) -> String {
    let codes: String = results
        .iter()
        .map(|&(failed, slow)| char::from(b'0' + u8::from(failed) + 2 * u8::from(slow)))
        .collect();
    format!(
        "{}|B {codes}|{entropy}|{now}|{}|{name}",
        wire::encode_config(config),
        millis(state_ttl(config)),
    )
}

/// The events of an input's event field: one event, or a batch's records.
fn events(text: &str) -> Option<Vec<Event>> {
    let Some(codes) = text.strip_prefix("B ") else {
        return wire::decode_event(text).map(|event| vec![event]);
    };
    if codes.is_empty() || codes.len() > MAX_BATCH {
        return None;
    }
    codes
        .bytes()
        .map(|code| {
            let code = code.checked_sub(b'0').filter(|c| *c <= 3)?;
            Some(Event::Record {
                outcome: match code & 1 {
                    1 => Outcome::Failure,
                    _ => Outcome::Success,
                },
                slow: code & 2 != 0,
                probe: None,
            })
        })
        .collect()
}

/// A stored state's text read back (`None`: damaged, or not a breaker's).
pub fn decode_state(raw: &[u8]) -> Option<State> {
    wire::decode_state(raw)
}

/// What one [`BreakerStep`] answered, and for a probe's permit the
/// half-open spell it belongs to (when the spell began, store ms).
pub fn parse_step_output(raw: &[u8]) -> Result<(Step, Option<u64>)> {
    wire::decode_output(raw).ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "a breaker step answered {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ),
        )
    })
}

fn bad_input() -> Error {
    Error::new(ErrorKind::InvalidArgument, "breaker step: malformed input")
}

/// [`step`] as an update of the breaker's key, for
/// [`update_atomic`](crate::StateBackend::update_atomic): its input is
/// [`step_input`], its output read by [`parse_step_output`]. The key holds
/// the state as text (`b1 OPEN 1733… …`) with a TTL of [`state_ttl`], so
/// that abandoned breakers expire.
#[derive(Debug, Clone, Copy, Default)]
pub struct BreakerStep;

impl AtomicUpdate for BreakerStep {
    fn name(&self) -> &'static str {
        "breaker_step"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], now_micros: u64) -> Result<AtomicStep> {
        let now_millis = now_micros / 1_000;
        if input == PEEK {
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: current.map(Bytes::copy_from_slice).unwrap_or_default(),
            });
        }
        if input == PEEK_AT {
            let mut output = format!("{now_millis} ").into_bytes();
            output.extend_from_slice(current.unwrap_or_default());
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: Bytes::from(output),
            });
        }
        let text = std::str::from_utf8(input).map_err(|_| bad_input())?;
        // The name, last, may hold any character.
        if text.splitn(6, '|').count() != 6 {
            return Err(bad_input());
        }
        let mut parts = text.splitn(6, '|');
        let config = parts
            .next()
            .and_then(wire::decode_config)
            .ok_or_else(bad_input)?;
        let events = parts.next().and_then(events).ok_or_else(bad_input)?;
        let mut number = || parts.next().and_then(wire::digits);
        let entropy = number()
            .and_then(|e| u32::try_from(e).ok())
            .ok_or_else(bad_input)?;
        let now = match number().ok_or_else(bad_input)? {
            0 => now_millis,
            given => given,
        };
        let ttl = number().ok_or_else(bad_input)?;
        let baseline = match current {
            Some(raw) => raw.to_vec(),
            None => wire::encode_state(&State::new(&config, now)).into_bytes(),
        };
        let mut state = current
            .and_then(wire::decode_state)
            .unwrap_or_else(|| State::new(&config, now));
        let mut taken = Step {
            decision: Decision::Done,
            transition: None,
        };
        for event in events {
            let one = step(&config, &mut state, event, now, entropy);
            taken = Step {
                decision: one.decision,
                transition: merge(taken.transition, one.transition),
            };
        }
        let encoded = wire::encode_state(&state);
        let write = if encoded.as_bytes() == baseline.as_slice() {
            AtomicWrite::Keep
        } else {
            AtomicWrite::Put {
                value: Bytes::from(encoded),
                // An operator's setting stays until an operator changes it
                // (no later step would write it again to renew a TTL).
                options: match state.phase {
                    Phase::ForcedOpen | Phase::Disabled | Phase::MetricsOnly => {
                        PutOptions::new().no_expiry()
                    }
                    _ => PutOptions::new().ttl(Duration::from_millis(ttl.max(1))),
                },
            }
        };
        Ok(AtomicStep {
            write,
            output: Bytes::from(wire::encode_output(&taken, &state)),
        })
    }

    fn redis_function(&self) -> Option<&'static str> {
        Some(SCRIPT)
    }

    fn postgres(&self) -> Option<PostgresNative> {
        Some(POSTGRES)
    }

    fn reads_only(&self, input: &[u8]) -> bool {
        input == PEEK || input == PEEK_AT
    }
}
