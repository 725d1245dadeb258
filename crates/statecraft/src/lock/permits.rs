//! The counting semaphore's step, written once: at most `permits`
//! holders at a time, each a lease that expires if its holder dies (no
//! leaked permits), released and renewed by its owner only. The memory
//! backend runs [`semaphore_step`] under the key's lock, the
//! compare-and-swap path on sled, `permits.lua` is its copy on Redis and
//! `permits.sql` on PostgreSQL, checked against it by
//! `tests/lock_native.rs`.
//!
//! Texts on the wire (numbers in decimal, at most 16 digits; owners as 32
//! hexadecimal digits):
//!
//! - input: `a <owner> <permits> <lease µs> <now µs>`, `e <owner> <lease
//!   µs> <now µs>`, `r <owner> <now µs>` (now 0: the store's clock), or
//!   [`PEEK`] (answered `<now µs> <state>`, the state empty: none);
//! - state: `m` followed by `<owner> <expires µs>` per holder (no holder:
//!   no key; the key outlives the last lease by [`LINGER_US`]);
//! - output: `H <holders> <lease µs>`, `B <holders> <retry after µs>`, `R
//!   <holders left>` or `N`.

use bytes::Bytes;

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;

use super::machine::{LockAnswer, Owner};
use super::shared::{digits, encode_answer, lease, split_peek, PEEK};

/// The most permits a semaphore has.
pub const MAX_PERMITS: u64 = 4_096;

/// How long a semaphore's key outlives its last lease (µs): a minute, so
/// that a store's expiry a little early by its own clock never forgets a
/// live permit (the step ignores the leases that ended).
pub const LINGER_US: u64 = 60_000_000;

/// The Lua copy (a library: a chunk that returns the step).
const SCRIPT: &str = include_str!("permits.lua");

/// What a client asks of a semaphore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemaphoreOp {
    /// Take a permit for `lease_us` if fewer than `permits` are held (or
    /// renew `owner`'s: a retried acquisition keeps its permit).
    Acquire {
        /// Who asks.
        owner: Owner,
        /// How many permits the semaphore has (1 to [`MAX_PERMITS`]).
        permits: u64,
        /// For how long (µs).
        lease_us: u64,
    },
    /// Renew `owner`'s permit for `lease_us` from now, if it holds one.
    Extend {
        /// The holder.
        owner: Owner,
        /// The new lease (µs).
        lease_us: u64,
    },
    /// Give `owner`'s permit back.
    Release {
        /// The holder.
        owner: Owner,
    },
}

/// The semaphore's step: `op` on the holders `held` (owner, expiry) at the
/// store's `now_us`: the holders to write (`None`: leave them; an empty
/// list: remove the key) and the answer.
pub fn semaphore_step(
    held: &[(Owner, u64)],
    op: SemaphoreOp,
    now_us: u64,
) -> (Option<Vec<(Owner, u64)>>, LockAnswer) {
    let mut live: Vec<(Owner, u64)> = held.iter().copied().filter(|h| h.1 > now_us).collect();
    let mine = |live: &[(Owner, u64)], owner| live.iter().position(|h| h.0 == owner);
    let held_answer = |live: &Vec<(Owner, u64)>, lease_us| LockAnswer::Held {
        token: live.len() as u64,
        lease_us,
    };
    match op {
        SemaphoreOp::Acquire {
            owner,
            permits,
            lease_us,
        } => match mine(&live, owner) {
            Some(at) => {
                live[at].1 = now_us + lease_us;
                let answer = held_answer(&live, lease_us);
                (Some(live), answer)
            }
            None if (live.len() as u64) < permits => {
                live.push((owner, now_us + lease_us));
                let answer = held_answer(&live, lease_us);
                (Some(live), answer)
            }
            None => {
                let soonest = live.iter().map(|h| h.1).min().unwrap_or(now_us);
                (
                    None,
                    LockAnswer::Busy {
                        token: live.len() as u64,
                        retry_after_us: soonest - now_us,
                    },
                )
            }
        },
        SemaphoreOp::Extend { owner, lease_us } => match mine(&live, owner) {
            Some(at) => {
                live[at].1 = now_us + lease_us;
                let answer = held_answer(&live, lease_us);
                (Some(live), answer)
            }
            None => (None, LockAnswer::NotHeld),
        },
        SemaphoreOp::Release { owner } => match mine(&live, owner) {
            Some(at) => {
                live.remove(at);
                let token = live.len() as u64;
                (Some(live), LockAnswer::Released { token, next: None })
            }
            None => (None, LockAnswer::NotHeld),
        },
    }
}

/// [`semaphore_step`] as an [`AtomicUpdate`], with its Redis copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct SemaphoreStep;

/// The input of one [`SemaphoreStep`] for `op` at `now_us` (0: the
/// store's clock).
pub fn semaphore_input(op: SemaphoreOp, now_us: u64) -> String {
    match op {
        SemaphoreOp::Acquire {
            owner,
            permits,
            lease_us,
        } => format!("a {} {permits} {lease_us} {now_us}", owner.to_hex()),
        SemaphoreOp::Extend { owner, lease_us } => {
            format!("e {} {lease_us} {now_us}", owner.to_hex())
        }
        SemaphoreOp::Release { owner } => format!("r {} {now_us}", owner.to_hex()),
    }
}

fn parse(input: &[u8]) -> Result<(SemaphoreOp, u64)> {
    let bad = || {
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "semaphore step: malformed input {:?}",
                String::from_utf8_lossy(&input[..input.len().min(80)])
            ),
        )
    };
    let text = std::str::from_utf8(input).map_err(|_| bad())?;
    let w: Vec<&str> = text.split(' ').collect();
    let owner = || w.get(1).and_then(|o| Owner::from_hex(o));
    let lease = |i: usize| w.get(i).and_then(|l| lease(l));
    let number = |i: usize| w.get(i).and_then(|n| digits(n));
    let parsed = match (w[0], w.len()) {
        ("a", 5) => owner()
            .zip(number(2).filter(|p| (1..=MAX_PERMITS).contains(p)))
            .zip(lease(3))
            .zip(number(4))
            .map(|(((owner, permits), lease_us), now)| {
                (
                    SemaphoreOp::Acquire {
                        owner,
                        permits,
                        lease_us,
                    },
                    now,
                )
            }),
        ("e", 4) => owner()
            .zip(lease(2))
            .zip(number(3))
            .map(|((owner, lease_us), now)| (SemaphoreOp::Extend { owner, lease_us }, now)),
        ("r", 3) => owner()
            .zip(number(2))
            .map(|(owner, now)| (SemaphoreOp::Release { owner }, now)),
        _ => None,
    };
    parsed.ok_or_else(bad)
}

/// The holders a stored text lists (a text [`encode_holders`] does not
/// write counts as none: its permits are lost, as if their leases ended).
pub fn decode_holders(raw: &[u8]) -> Vec<(Owner, u64)> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Vec::new();
    };
    let words: Vec<&str> = text.split(' ').collect();
    if words.first() != Some(&"m") || words.len() % 2 != 1 || words.len() > 1 + 2 * 4_096 {
        return Vec::new();
    }
    let mut held = Vec::with_capacity(words.len() / 2);
    for pair in words[1..].chunks(2) {
        match (Owner::from_hex(pair[0]), digits(pair[1])) {
            (Some(owner), Some(expires)) => held.push((owner, expires)),
            _ => return Vec::new(),
        }
    }
    held
}

/// The stored text of `held` (not empty).
pub fn encode_holders(held: &[(Owner, u64)]) -> String {
    held.iter()
        .fold(String::from("m"), |mut text, (owner, expires)| {
            text.push(' ');
            text.push_str(&owner.to_hex());
            text.push(' ');
            text.push_str(&expires.to_string());
            text
        })
}

/// The PostgreSQL copy: a readable table of semaphores and one function.
const POSTGRES: PostgresNative = PostgresNative {
    setup: include_str!("permits.sql"),
    call: "SELECT @semaphore_step#@($1, $2, $3)",
    purge: Some("DELETE FROM @semaphores@ WHERE expires_at <= clock_timestamp()"),
    function: "@semaphore_step#@",
    keys: Some(
        "SELECT key FROM @semaphores@ WHERE substr(key, 1, length($1::bytea)) = $1::bytea \
         AND expires_at > clock_timestamp() ORDER BY key",
    ),
};

impl AtomicUpdate for SemaphoreStep {
    fn name(&self) -> &'static str {
        "semaphore_step"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], now_micros: u64) -> Result<AtomicStep> {
        let held = current.map(decode_holders).unwrap_or_default();
        if input == PEEK {
            let text = if held.is_empty() {
                String::new()
            } else {
                encode_holders(&held)
            };
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: Bytes::from(format!("{now_micros} {text}")),
            });
        }
        let (op, now) = parse(input)?;
        let now = if now == 0 { now_micros } else { now };
        let (write, answer) = semaphore_step(&held, op, now);
        let write = match write {
            None => AtomicWrite::Keep,
            Some(held) if held.is_empty() => AtomicWrite::Delete,
            Some(held) => {
                let last = held.iter().map(|h| h.1).max().unwrap_or(now);
                AtomicWrite::Put {
                    value: Bytes::from(encode_holders(&held)),
                    options: PutOptions::new().ttl(std::time::Duration::from_millis(
                        (last - now + LINGER_US).div_ceil(1_000),
                    )),
                }
            }
        };
        Ok(AtomicStep {
            write,
            output: Bytes::from(encode_answer(answer)),
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

/// A [`PEEK`] answer of a semaphore read back: the store's time (µs) and
/// the holders stored (some may have run out).
pub fn parse_holders(raw: &[u8]) -> Result<(u64, Vec<(Owner, u64)>)> {
    let (now, held) = split_peek(raw, "semaphore")?;
    Ok((now, decode_holders(held.as_bytes())))
}
