//! The text a shared breaker's state, events and decisions travel as: the
//! same for the Rust step and its Lua copy (words and numbers a script can
//! split; no JSON, whose empty arrays Redis's cjson cannot round-trip).
//!
//! - state: `b1 PHASE since open_until openings consecutive admitted
//!   successes failures WINDOW`, the window `c:CODES` (one digit per call,
//!   oldest first: 1 failed, 2 slow, 3 both) or `t:start,calls,failures,slow;…`;
//! - input: `CONFIG|EVENT|entropy|now|ttl_ms` (`now` 0: the store's clock);
//! - output: `DECISION TRANSITION`: `P0`/`P1@spell` (permit; a probe names
//!   its half-open spell by when it began), `J<ms>` or
//!   `J-` (rejected), `D` (done); `-` or `FROM>TO`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use super::config::{millis, BreakerConfig, CloseAfter, Ratio, Window};
use super::machine::{Decision, Event, Outcome, Phase, State, Step, Transition};
use super::window::{Bucket, Calls};

/// A decimal of 1 to 18 digits only (no sign, no spaces) (as every copy of the step reads numbers:
/// below 10^18, so that PostgreSQL's `int8` holds them).
pub(crate) fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn phase_named(name: &str) -> Option<Phase> {
    Phase::named(name)
}

/// The state as stored.
pub(crate) fn encode_state(state: &State) -> String {
    let mut out = format!(
        "b1 {} {} {} {} {} {} {} {} ",
        state.phase.as_str(),
        state.since,
        state.open_until,
        state.openings,
        state.consecutive_failures,
        state.probes_admitted,
        state.probe_successes,
        state.probe_failures
    );
    match &state.calls {
        Calls::Count { outcomes, .. } => {
            out.push_str("c:");
            for code in outcomes {
                out.push(char::from(b'0' + (code & 3)));
            }
        }
        Calls::Time { buckets } => {
            out.push_str("t:");
            for (i, b) in buckets.iter().enumerate() {
                if i > 0 {
                    out.push(';');
                }
                let _ = write!(out, "{},{},{},{}", b.start, b.calls, b.failures, b.slow);
            }
        }
    }
    out
}

/// A stored state, or `None` for one that is not (a foreign or damaged
/// value: the breaker starts afresh).
pub(crate) fn decode_state(raw: &[u8]) -> Option<State> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut words = text.split(' ');
    if words.next()? != "b1" {
        return None;
    }
    let phase = phase_named(words.next()?)?;
    let mut n = || digits(words.next()?);
    let (since, open_until) = (n()?, n()?);
    let small = |v: u64| u32::try_from(v).ok();
    let openings = small(n()?)?;
    let consecutive_failures = small(n()?)?;
    let probes_admitted = small(n()?)?;
    let probe_successes = small(n()?)?;
    let probe_failures = small(n()?)?;
    let window = words.next()?;
    let calls = if let Some(codes) = window.strip_prefix("c:") {
        let mut outcomes = VecDeque::with_capacity(codes.len());
        let (mut failures, mut slow) = (0, 0);
        for byte in codes.bytes() {
            let code = byte.checked_sub(b'0').filter(|c| *c <= 3)?;
            failures += u64::from(code & 1);
            slow += u64::from(code >> 1);
            outcomes.push_back(code);
        }
        Calls::Count {
            outcomes,
            failures,
            slow,
        }
    } else if let Some(list) = window.strip_prefix("t:") {
        let mut buckets = VecDeque::new();
        for item in list.split(';').filter(|item| !item.is_empty()) {
            let mut parts = item.split(',').map(digits);
            buckets.push_back(Bucket {
                start: parts.next()??,
                calls: parts.next()??,
                failures: parts.next()??,
                slow: parts.next()??,
            });
        }
        Calls::Time { buckets }
    } else {
        return None;
    };
    Some(State {
        phase,
        since,
        open_until,
        openings,
        consecutive_failures,
        probes_admitted,
        probe_successes,
        probe_failures,
        calls,
    })
}

fn ratio_words(ratio: Option<Ratio>) -> (u32, u32) {
    ratio.map_or((0, 0), |r| (r.num(), r.den()))
}

/// The configuration as a script reads it.
pub(crate) fn encode_config(config: &BreakerConfig) -> String {
    let (kind, size, buckets) = match config.window {
        Window::Count(n) => ('c', u64::from(n), 0),
        Window::Time { size, buckets } => ('t', millis(size), buckets),
    };
    let (fr_num, fr_den) = ratio_words(config.failure_rate);
    let (sr_num, sr_den) = ratio_words(config.slow_rate);
    let (close_kind, close_a, close_b) = match config.close_after {
        CloseAfter::Successes(n) => ('s', n, 0),
        CloseAfter::Fraction(r) => ('f', r.num(), r.den()),
    };
    format!(
        "{kind} {size} {buckets} {} {} {} {fr_num} {fr_den} {sr_num} {sr_den} {} {} {} {} {} {close_kind} {close_a} {close_b} {}",
        config.min_calls,
        config.consecutive_failures.unwrap_or(0),
        config.failures_in_window.unwrap_or(0),
        millis(config.open_for),
        config.backoff_multiplier,
        millis(config.max_open_for),
        config.jitter_permille,
        config.probes,
        millis(config.half_open_max_wait),
    )
}

/// A configuration read back from [`encode_config`] (only checked enough
/// that the step cannot misbehave on it).
pub(crate) fn decode_config(text: &str) -> Option<BreakerConfig> {
    let words: Vec<&str> = text.split(' ').collect();
    if words.len() != 19 {
        return None;
    }
    let n = |i: usize| digits(words[i]);
    let m = |i: usize| n(i).and_then(|v| u32::try_from(v).ok());
    let ratio = |a: u32, b: u32| match a {
        0 => Some(None),
        _ => Ratio::new(a, b).ok().map(Some),
    };
    let window = match words[0] {
        "c" => Window::Count(m(1).filter(|n| *n >= 1)?),
        "t" => {
            let buckets = m(2).filter(|b| *b >= 1)?;
            let size = n(1).filter(|s| *s >= u64::from(buckets) && *s % u64::from(buckets) == 0)?;
            Window::Time {
                size: Duration::from_millis(size),
                buckets,
            }
        }
        _ => return None,
    };
    let close_after = match words[15] {
        "s" => CloseAfter::Successes(m(16).filter(|n| *n >= 1)?),
        "f" => CloseAfter::Fraction(Ratio::new(m(16)?, m(17)?).ok()?),
        _ => return None,
    };
    let positive = |v: u32| (v > 0).then_some(v);
    Some(BreakerConfig {
        window,
        min_calls: m(3)?,
        consecutive_failures: positive(m(4)?),
        failures_in_window: positive(m(5)?),
        failure_rate: ratio(m(6)?, m(7)?)?,
        slow_rate: ratio(m(8)?, m(9)?)?,
        slow_call: None,
        open_for: Duration::from_millis(n(10).filter(|v| *v >= 1)?),
        backoff_multiplier: m(11).filter(|v| *v >= 1)?,
        max_open_for: Duration::from_millis(n(12)?),
        jitter_permille: m(13).filter(|v| *v <= 1000)?,
        probes: m(14).filter(|v| *v >= 1)?,
        close_after,
        half_open_max_wait: Duration::from_millis(n(18).filter(|v| *v >= 1)?),
    })
}

/// An event as a script reads it.
pub(crate) fn encode_event(event: Event) -> String {
    match event {
        Event::Acquire => "A".into(),
        Event::Record {
            outcome,
            slow,
            probe,
        } => {
            let outcome = match outcome {
                Outcome::Success => 's',
                Outcome::Failure => 'f',
                Outcome::Ignored => 'i',
            };
            match probe {
                Some(spell) => format!("R {outcome} {} {spell}", u8::from(slow)),
                None => format!("R {outcome} {} -", u8::from(slow)),
            }
        }
        Event::ForceOpen => "FO".into(),
        Event::ForceClose => "FC".into(),
        Event::Reset => "RS".into(),
        Event::Disable => "DI".into(),
        Event::MetricsOnly => "MO".into(),
    }
}

pub(crate) fn decode_event(text: &str) -> Option<Event> {
    let mut words = text.split(' ');
    let event = match words.next()? {
        "A" => Event::Acquire,
        "R" => {
            let outcome = match words.next()? {
                "s" => Outcome::Success,
                "f" => Outcome::Failure,
                "i" => Outcome::Ignored,
                _ => return None,
            };
            let flag = |w: Option<&str>| match w? {
                "0" => Some(false),
                "1" => Some(true),
                _ => None,
            };
            let slow = flag(words.next())?;
            let probe = match words.next()? {
                "-" => None,
                spell => Some(digits(spell)?),
            };
            Event::Record {
                outcome,
                slow,
                probe,
            }
        }
        "FO" => Event::ForceOpen,
        "FC" => Event::ForceClose,
        "RS" => Event::Reset,
        "DI" => Event::Disable,
        "MO" => Event::MetricsOnly,
        _ => return None,
    };
    words.next().is_none().then_some(event)
}

/// What [`step`](super::machine::step) answered, as the script returns it;
/// a probe's permit names its half-open spell (`P1@since`).
pub(crate) fn encode_output(step: &Step, state: &State) -> String {
    let decision = match step.decision {
        Decision::Permit { probe: true } => format!("P1@{}", state.since),
        Decision::Permit { probe: false } => "P0".into(),
        Decision::Reject {
            retry_after_ms: Some(ms),
        } => format!("J{ms}"),
        Decision::Reject {
            retry_after_ms: None,
        } => "J-".into(),
        Decision::Done => "D".into(),
    };
    let transition = match step.transition {
        Some(t) => format!("{}>{}", t.from.as_str(), t.to.as_str()),
        None => "-".into(),
    };
    format!("{decision} {transition}")
}

/// An answer read back: the step, and a probe's spell.
pub(crate) fn decode_output(raw: &[u8]) -> Option<(Step, Option<u64>)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (decision, transition) = text.split_once(' ')?;
    let mut spell = None;
    let decision = match decision {
        "P0" => Decision::Permit { probe: false },
        probe if probe.starts_with("P1@") => {
            spell = Some(digits(&probe[3..])?);
            Decision::Permit { probe: true }
        }
        "J-" => Decision::Reject {
            retry_after_ms: None,
        },
        "D" => Decision::Done,
        other => Decision::Reject {
            retry_after_ms: Some(other.strip_prefix('J')?.parse().ok()?),
        },
    };
    let transition = match transition {
        "-" => None,
        pair => {
            let (from, to) = pair.split_once('>')?;
            Some(Transition {
                from: phase_named(from)?,
                to: phase_named(to)?,
            })
        }
    };
    Some((
        Step {
            decision,
            transition,
        },
        spell,
    ))
}
