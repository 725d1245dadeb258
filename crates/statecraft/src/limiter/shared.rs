//! The algorithms as one [`AtomicUpdate`]: how a shared limiter runs
//! [`decide`] in one round trip on any store — under the key's lock in
//! memory, as its Lua copy (`limit.lua`) on Redis at the server's clock,
//! as its PL/pgSQL copy (`limit.sql`) on PostgreSQL in a table of its own
//! at the server's clock, by compare-and-swap elsewhere.
//!
//! Texts on the wire, all numbers in decimal:
//!
//! - input: `<a> <count> <period µs> <burst> <cost> <now µs>`, `<a>` the
//!   algorithm's letter (`g`, `t`, `s`, `f`), `now` 0 for the store's
//!   clock (tests pass their own), and a cost of `-<n>` a [`refund`] of
//!   `n` permits;
//! - state: `g <tat>`, `t <period> <level> <at>`, `s <start> <previous>
//!   <current>` or `f <start> <used>` (a token bucket's level is in units
//!   of its period, so it carries the period: another period starts it
//!   afresh);
//! - output: `<v> <limit> <remaining> <retry after µs> <reset after µs>`,
//!   `<v>` `A` (allowed), `D` (denied) or `L` (too large).

use std::time::Duration;

use bytes::Bytes;

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;

use super::algorithm::{decide, refund, Decision, LimitState, Verdict};
use super::quota::{Algorithm, Quota};

/// The Lua copy of [`decide`] (a library: a chunk that returns the step).
const SCRIPT: &str = include_str!("limit.lua");

/// The PL/pgSQL copy, and the table it keeps limits in.
const POSTGRES: PostgresNative = PostgresNative {
    setup: include_str!("limit.sql"),
    call: "SELECT @limit_step#@($1, $2, $3)",
    purge: Some("DELETE FROM @limits@ WHERE expires_at <= clock_timestamp()"),
    function: "@limit_step#@",
    keys: Some(
        "SELECT key FROM @limits@ WHERE substr(key, 1, length($1::bytea)) = $1::bytea \
         AND expires_at > clock_timestamp() ORDER BY key",
    ),
};

/// [`decide`] as an [`AtomicUpdate`], with its Redis and PostgreSQL
/// copies. Its input is [`step_input`]'s, its output [`parse_output`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitStep;

fn letter(algorithm: Algorithm) -> char {
    match algorithm {
        Algorithm::Gcra => 'g',
        Algorithm::TokenBucket => 't',
        Algorithm::SlidingWindow => 's',
        Algorithm::FixedWindow => 'f',
    }
}

fn from_letter(letter: &str) -> Option<Algorithm> {
    Some(match letter {
        "g" => Algorithm::Gcra,
        "t" => Algorithm::TokenBucket,
        "s" => Algorithm::SlidingWindow,
        "f" => Algorithm::FixedWindow,
        _ => return None,
    })
}

/// The input of one [`LimitStep`]: `cost` permits of `quota` at `now_us`
/// (0: the store's clock, as a shared limiter always asks).
pub fn step_input(quota: &Quota, cost: u64, now_us: u64) -> String {
    format!(
        "{} {} {} {} {cost} {now_us}",
        letter(quota.algorithm()),
        quota.count(),
        quota.period_us(),
        quota.burst()
    )
}

/// The input of a [`LimitStep`] that gives back `permits` unused ones
/// ([`refund`]); its output is what a request of 0 reports after it.
pub fn refund_input(quota: &Quota, permits: u64, now_us: u64) -> String {
    format!(
        "{} {} {} {} -{permits} {now_us}",
        letter(quota.algorithm()),
        quota.count(),
        quota.period_us(),
        quota.burst()
    )
}

/// A request's cost, or a refund's permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Take(u64),
    Refund(u64),
}

/// A decimal of at most 16 digits (every figure is below 2^53).
fn digits(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn parse_input(input: &[u8]) -> Result<(Quota, Asked, u64)> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "limiter step: {why} in {:?}",
                String::from_utf8_lossy(&input[..input.len().min(80)])
            ),
        )
    };
    let text = std::str::from_utf8(input).map_err(|_| bad("not UTF-8"))?;
    let mut parts = text.split(' ');
    let algorithm = parts
        .next()
        .and_then(from_letter)
        .ok_or_else(|| bad("no algorithm"))?;
    let mut figure = || {
        parts
            .next()
            .and_then(digits)
            .ok_or_else(|| bad("a malformed figure"))
    };
    let (count, period, burst) = (figure()?, figure()?, figure()?);
    let asked = match parts.next() {
        Some(cost) => match cost.strip_prefix('-') {
            Some(permits) => digits(permits).map(Asked::Refund),
            None => digits(cost).map(Asked::Take),
        },
        None => None,
    }
    .ok_or_else(|| bad("a malformed cost"))?;
    let now = parts
        .next()
        .and_then(digits)
        .ok_or_else(|| bad("a malformed time"))?;
    if parts.next().is_some() {
        return Err(bad("more than six fields"));
    }
    let builder = Quota::with_period(count, Duration::from_micros(period)).algorithm(algorithm);
    let builder = match algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(burst),
        _ if burst == count => builder,
        _ => return Err(bad("a window's burst that is not its count")),
    };
    Ok((builder.build()?, asked, now))
}

/// The stored state's text.
pub fn encode_state(state: &LimitState, quota: &Quota) -> String {
    match *state {
        LimitState::Gcra { tat_us } => format!("g {tat_us}"),
        LimitState::TokenBucket { level, at_us } => {
            format!("t {} {level} {at_us}", quota.period_us())
        }
        LimitState::SlidingWindow {
            start_us,
            previous,
            current,
        } => format!("s {start_us} {previous} {current}"),
        LimitState::FixedWindow { start_us, used } => format!("f {start_us} {used}"),
    }
}

/// The state a stored text holds for `quota`: `None` when there is none,
/// when it is damaged, or when it belongs to another algorithm (or, for a
/// token bucket, another period).
pub fn decode_state(raw: &[u8], quota: &Quota) -> Option<LimitState> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.split(' ');
    let algorithm = from_letter(parts.next()?)?;
    let numbers: Vec<u64> = parts.map(digits).collect::<Option<_>>()?;
    if algorithm != quota.algorithm() {
        return None;
    }
    Some(match (algorithm, numbers.as_slice()) {
        (Algorithm::Gcra, &[tat_us]) => LimitState::Gcra { tat_us },
        (Algorithm::TokenBucket, &[period, level, at_us]) if period == quota.period_us() => {
            LimitState::TokenBucket { level, at_us }
        }
        (Algorithm::SlidingWindow, &[start_us, previous, current]) => LimitState::SlidingWindow {
            start_us,
            previous,
            current,
        },
        (Algorithm::FixedWindow, &[start_us, used]) => LimitState::FixedWindow { start_us, used },
        _ => return None,
    })
}

/// A decision's text.
pub fn encode_output(decision: &Decision) -> String {
    let verdict = match decision.verdict {
        Verdict::Allowed => 'A',
        Verdict::Denied => 'D',
        Verdict::TooLarge => 'L',
    };
    format!(
        "{verdict} {} {} {} {}",
        decision.limit, decision.remaining, decision.retry_after_us, decision.reset_after_us
    )
}

/// A [`LimitStep`]'s output read back.
pub fn parse_output(raw: &[u8]) -> Result<Decision> {
    let corrupt = || {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "a limiter step answered {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
    let mut parts = text.split(' ');
    let verdict = match parts.next() {
        Some("A") => Verdict::Allowed,
        Some("D") => Verdict::Denied,
        Some("L") => Verdict::TooLarge,
        _ => return Err(corrupt()),
    };
    let mut figure = || parts.next().and_then(digits).ok_or_else(corrupt);
    let decision = Decision {
        verdict,
        limit: figure()?,
        remaining: figure()?,
        retry_after_us: figure()?,
        reset_after_us: figure()?,
    };
    if parts.next().is_some() {
        return Err(corrupt());
    }
    Ok(decision)
}

impl AtomicUpdate for LimitStep {
    fn name(&self) -> &'static str {
        "limiter_step"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], now_micros: u64) -> Result<AtomicStep> {
        let (quota, asked, now) = parse_input(input)?;
        let now = if now == 0 { now_micros } else { now };
        let state = current.and_then(|raw| decode_state(raw, &quota));
        let decided = match asked {
            Asked::Take(cost) => decide(&quota, state, cost, now),
            Asked::Refund(permits) => refund(&quota, state, permits, now),
        };
        let write = match decided.write {
            Some(state) => AtomicWrite::Put {
                value: Bytes::from(encode_state(&state, &quota)),
                // A millisecond more than the state matters: a store that
                // counts expiry in whole milliseconds from a time it
                // rounded down never expires it early.
                options: PutOptions::new()
                    .ttl(Duration::from_millis(decided.ttl_us.div_ceil(1_000) + 1)),
            },
            None => AtomicWrite::Keep,
        };
        Ok(AtomicStep {
            write,
            output: Bytes::from(encode_output(&decided.decision)),
        })
    }

    fn redis_function(&self) -> Option<&'static str> {
        Some(SCRIPT)
    }

    fn postgres(&self) -> Option<PostgresNative> {
        Some(POSTGRES)
    }

    fn reads_only(&self, input: &[u8]) -> bool {
        // A cost of 0 only asks.
        input
            .rsplitn(3, |b| *b == b' ')
            .nth(1)
            .is_some_and(|cost| cost == b"0")
    }
}
