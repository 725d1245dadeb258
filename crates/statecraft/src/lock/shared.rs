//! The lock's step as one [`AtomicUpdate`]: [`lock_step`] in one round
//! trip on any store — under the key's lock in memory, as its Lua copy
//! (`lock.lua`) on Redis and its PL/pgSQL copy (`lock.sql`) on PostgreSQL
//! at the server's clock, by compare-and-swap elsewhere.
//!
//! Texts on the wire, numbers in decimal (at most 16 digits), owners as
//! 32 lowercase hexadecimal digits:
//!
//! - input: `a <owner> <lease µs> <now µs>` (acquire), `w <owner> <lease
//!   µs> <line µs> <now µs>` (wait), `l <owner> <now µs>` (leave the
//!   line), `e <owner> <token> <lease µs> <now µs>` (extend), `r <owner>
//!   <token> <now µs>` (release), `now` 0 for the store's clock (tests
//!   pass their own); or [`PEEK`];
//! - state: `h <owner> <token> <expires µs>` or `f <last token>`, then the
//!   line: ` <owner> <until µs>` per waiter;
//! - output: `H <token> <lease µs>`, `B <token> <retry after µs>`, `R
//!   <token>` or `L` (` <owner>` after either: the first waiter in the
//!   line, whom the free lock awaits) or `N`; for [`PEEK`], `<now µs>
//!   <state>` (the state empty: none).

use bytes::Bytes;

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;

use super::machine::{
    lock_step, LockAnswer, LockOp, LockRecord, LockState, Owner, Waiter, MAX_LEASE_US, MAX_LINE,
};

/// The Lua copy of [`lock_step`] (a library: a chunk that returns the
/// step).
const SCRIPT: &str = include_str!("lock.lua");

/// The PostgreSQL copy: a readable table of locks and one function.
const POSTGRES: PostgresNative = PostgresNative {
    setup: include_str!("lock.sql"),
    call: "SELECT @lock_step#@($1, $2, $3)",
    purge: Some("DELETE FROM @locks@ WHERE expires_at <= clock_timestamp()"),
    function: "@lock_step#@",
    keys: Some(
        "SELECT key FROM @locks@ WHERE substr(key, 1, length($1::bytea)) = $1::bytea \
         AND expires_at > clock_timestamp() ORDER BY key",
    ),
};

/// The input that reads the store's time and the lock's state: its output
/// is `<now µs> <state>`, as [`parse_peek`] reads it.
pub const PEEK: &[u8] = b"?";

/// [`lock_step`] as an [`AtomicUpdate`], with its Redis copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct LockStep;

/// The input of one [`LockStep`] for `op` at `now_us` (0: the store's
/// clock, as a lock always asks).
pub fn op_input(op: LockOp, now_us: u64) -> String {
    match op {
        LockOp::Acquire { owner, lease_us } => {
            format!("a {} {lease_us} {now_us}", owner.to_hex())
        }
        LockOp::Wait {
            owner,
            lease_us,
            line_us,
        } => format!("w {} {lease_us} {line_us} {now_us}", owner.to_hex()),
        LockOp::Leave { owner } => format!("l {} {now_us}", owner.to_hex()),
        LockOp::Extend {
            owner,
            token,
            lease_us,
        } => format!("e {} {token} {lease_us} {now_us}", owner.to_hex()),
        LockOp::Release { owner, token } => format!("r {} {token} {now_us}", owner.to_hex()),
    }
}

/// A decimal of 1 to 16 digits.
pub(super) fn digits(text: &str) -> Option<u64> {
    (!text.is_empty() && text.len() <= 16 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn bad(input: &[u8]) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!(
            "lock step: malformed input {:?}",
            String::from_utf8_lossy(&input[..input.len().min(80)])
        ),
    )
}

/// A lease in µs: 1 to [`MAX_LEASE_US`].
pub(super) fn lease(text: &str) -> Option<u64> {
    digits(text).filter(|lease| (1..=MAX_LEASE_US).contains(lease))
}

/// The op and the time an input asks for.
pub fn parse_input(input: &[u8]) -> Result<(LockOp, u64)> {
    let text = std::str::from_utf8(input).map_err(|_| bad(input))?;
    let words: Vec<&str> = text.split(' ').collect();
    let owner = |i: usize| words.get(i).and_then(|w| Owner::from_hex(w));
    let number = |i: usize| words.get(i).and_then(|w| digits(w));
    let parsed = match (words.first().copied(), words.len()) {
        (Some("a"), 4) => owner(1)
            .zip(words.get(2).and_then(|w| lease(w)))
            .map(|(owner, lease_us)| (LockOp::Acquire { owner, lease_us }, number(3))),
        (Some("w"), 5) => owner(1)
            .zip(words.get(2).and_then(|w| lease(w)))
            .zip(words.get(3).and_then(|w| lease(w)))
            .map(|((owner, lease_us), line_us)| {
                (
                    LockOp::Wait {
                        owner,
                        lease_us,
                        line_us,
                    },
                    number(4),
                )
            }),
        (Some("l"), 3) => owner(1).map(|owner| (LockOp::Leave { owner }, number(2))),
        (Some("e"), 5) => owner(1)
            .zip(number(2))
            .zip(words.get(3).and_then(|w| lease(w)))
            .map(|((owner, token), lease_us)| {
                (
                    LockOp::Extend {
                        owner,
                        token,
                        lease_us,
                    },
                    number(4),
                )
            }),
        (Some("r"), 4) => owner(1)
            .zip(number(2))
            .map(|(owner, token)| (LockOp::Release { owner, token }, number(3))),
        _ => None,
    };
    match parsed {
        Some((op, Some(now))) => Ok((op, now)),
        _ => Err(bad(input)),
    }
}

/// A stored record's text.
pub fn encode_state(record: &LockRecord) -> String {
    use std::fmt::Write;
    let mut text = match record.state {
        LockState::Held {
            owner,
            token,
            expires_us,
        } => format!("h {} {token} {expires_us}", owner.to_hex()),
        LockState::Free { last_token } => format!("f {last_token}"),
    };
    for waiter in &record.line {
        let _ = write!(text, " {} {}", waiter.owner.to_hex(), waiter.until_us);
    }
    text
}

/// A stored record read back; `None` for a text [`encode_state`] does not
/// write (a damaged key counts as no lock: a token given next is then the
/// store's time).
pub fn decode_state(raw: &[u8]) -> Option<LockRecord> {
    let text = std::str::from_utf8(raw).ok()?;
    let words: Vec<&str> = text.split(' ').collect();
    let (state, line) = match words.as_slice() {
        ["h", owner, token, expires, line @ ..] => (
            LockState::Held {
                owner: Owner::from_hex(owner)?,
                token: digits(token)?,
                expires_us: digits(expires)?,
            },
            line,
        ),
        ["f", token, line @ ..] => (
            LockState::Free {
                last_token: digits(token)?,
            },
            line,
        ),
        _ => return None,
    };
    if line.len() % 2 != 0 || line.len() > 2 * MAX_LINE {
        return None;
    }
    let line = line
        .chunks(2)
        .map(|pair| {
            Some(Waiter {
                owner: Owner::from_hex(pair[0])?,
                until_us: digits(pair[1])?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(LockRecord { state, line })
}

/// An answer's text.
pub(super) fn encode_answer(answer: LockAnswer) -> String {
    match answer {
        LockAnswer::Held { token, lease_us } => format!("H {token} {lease_us}"),
        LockAnswer::Busy {
            token,
            retry_after_us,
        } => format!("B {token} {retry_after_us}"),
        LockAnswer::Released { token, next: None } => format!("R {token}"),
        LockAnswer::Released {
            token,
            next: Some(next),
        } => format!("R {token} {}", next.to_hex()),
        LockAnswer::Left { next: None } => "L".to_string(),
        LockAnswer::Left { next: Some(next) } => format!("L {}", next.to_hex()),
        LockAnswer::NotHeld => "N".to_string(),
    }
}

/// A step's output read back.
pub fn parse_answer(raw: &[u8]) -> Result<LockAnswer> {
    let corrupt = || {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "a lock step answered {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
    let words: Vec<&str> = text.split(' ').collect();
    let number = |i: usize| words.get(i).and_then(|w| digits(w)).ok_or_else(corrupt);
    Ok(match (words.first().copied(), words.len()) {
        (Some("H"), 3) => LockAnswer::Held {
            token: number(1)?,
            lease_us: number(2)?,
        },
        (Some("B"), 3) => LockAnswer::Busy {
            token: number(1)?,
            retry_after_us: number(2)?,
        },
        (Some("R"), 2) => LockAnswer::Released {
            token: number(1)?,
            next: None,
        },
        (Some("R"), 3) => LockAnswer::Released {
            token: number(1)?,
            next: Some(Owner::from_hex(words[2]).ok_or_else(corrupt)?),
        },
        (Some("L"), 1) => LockAnswer::Left { next: None },
        (Some("L"), 2) => LockAnswer::Left {
            next: Some(Owner::from_hex(words[1]).ok_or_else(corrupt)?),
        },
        (Some("N"), 1) => LockAnswer::NotHeld,
        _ => return Err(corrupt()),
    })
}

/// A [`PEEK`] answer read back: the store's time (µs) and the record.
pub fn parse_peek(raw: &[u8]) -> Result<(u64, Option<LockRecord>)> {
    let (now, state) = split_peek(raw, "lock")?;
    Ok((now, decode_state(state.as_bytes())))
}

/// A peek's answer split: the store's time (µs) and the state's text;
/// `what` names the step in the error.
pub(super) fn split_peek<'a>(raw: &'a [u8], what: &str) -> Result<(u64, &'a str)> {
    let corrupt = || {
        Error::new(
            ErrorKind::Corrupt,
            format!(
                "a {what} peek answered {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| corrupt())?;
    let (now, state) = text.split_once(' ').ok_or_else(corrupt)?;
    Ok((digits(now).ok_or_else(corrupt)?, state))
}

impl AtomicUpdate for LockStep {
    fn name(&self) -> &'static str {
        "lock_step"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], now_micros: u64) -> Result<AtomicStep> {
        let state = current.and_then(decode_state);
        if input == PEEK {
            let text = state.as_ref().map(encode_state).unwrap_or_default();
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: Bytes::from(format!("{now_micros} {text}")),
            });
        }
        let (op, now) = parse_input(input)?;
        let now = if now == 0 { now_micros } else { now };
        let stepped = lock_step(state.as_ref(), op, now);
        let write = match stepped.write {
            None => AtomicWrite::Keep,
            Some(state) => AtomicWrite::Put {
                value: Bytes::from(encode_state(&state)),
                options: PutOptions::new().ttl(std::time::Duration::from_millis(
                    stepped.ttl_us.div_ceil(1_000),
                )),
            },
        };
        Ok(AtomicStep {
            write,
            output: Bytes::from(encode_answer(stepped.answer)),
        })
    }

    fn redis_function(&self) -> Option<&'static str> {
        Some(SCRIPT)
    }

    fn postgres(&self) -> Option<PostgresNative> {
        Some(POSTGRES)
    }

    fn reads_only(&self, input: &[u8]) -> bool {
        input == PEEK
    }
}
