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
//! - input: `a <owner> <permits> <lease µs> <now µs>`, `w <owner>
//!   <permits> <lease µs> <line µs> <now µs>`, `l <owner> <now µs>`, `e
//!   <owner> <lease µs> <now µs>`, `r <owner> <now µs>` (now 0: the
//!   store's clock), or [`PEEK`] (answered `<now µs> <state>`, the state
//!   empty: none);
//! - state: `m` followed by `<owner> <expires µs>` per holder, then, when
//!   someone waits, `w` and `<owner> <place kept until µs>` per waiter in
//!   the line, first first (no holder and no waiter: no key; the key
//!   outlives the last lease or place by [`LINGER_US`]);
//! - output: `H <holders> <lease µs>`, `B <holders> <retry after µs>`, `R
//!   <holders left>`, `L` or `N`.
//!
//! **Fair order.** Waiters ([`Wait`](SemaphoreOp::Wait)) stand in a line,
//! and a free permit goes to the first of them still waiting: an ask
//! (theirs or a [`try_acquire`](SemaphoreOp::Acquire)'s) takes one only if
//! more permits are free than waiters stand before it.

use bytes::Bytes;

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;

use super::machine::{LockAnswer, Owner, MAX_LINE};
use super::shared::{digits, encode_answer, lease, split_peek, PEEK};

/// The most permits a semaphore has.
pub const MAX_PERMITS: u64 = 4_096;

/// How long a semaphore's key outlives its last lease or place (µs): a
/// minute, so that a store's expiry a little early by its own clock never
/// forgets a live permit (the step ignores the leases that ended).
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
    /// Take a permit for `lease_us` as [`Acquire`](Self::Acquire) does,
    /// else stand in the line (or keep its place) for `line_us`.
    Wait {
        /// Who asks.
        owner: Owner,
        /// How many permits the semaphore has (1 to [`MAX_PERMITS`]).
        permits: u64,
        /// For how long (µs).
        lease_us: u64,
        /// How long its place is kept from now, unless more than half of
        /// it is left (µs).
        line_us: u64,
    },
    /// `owner` stops waiting: out of the line, and its permit given back
    /// if it holds one (an ask that took it, unanswered).
    Leave {
        /// Who gives up.
        owner: Owner,
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

/// A semaphore's stored state: its holders (owner, lease's end) and its
/// line (owner, place kept until), first first, each in the store's µs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SemaphoreState {
    /// Who holds a permit, and until when.
    pub held: Vec<(Owner, u64)>,
    /// Who waits, in order, and until when each place is kept.
    pub line: Vec<(Owner, u64)>,
}

/// The semaphore's step: `op` on `state` at the store's `now_us`: the
/// state to write (`None`: leave it; an empty one: remove the key) and
/// the answer.
pub fn semaphore_step(
    state: &SemaphoreState,
    op: SemaphoreOp,
    now_us: u64,
) -> (Option<SemaphoreState>, LockAnswer) {
    let live = |list: &[(Owner, u64)]| -> Vec<(Owner, u64)> {
        list.iter().copied().filter(|h| h.1 > now_us).collect()
    };
    let mut next = SemaphoreState {
        held: live(&state.held),
        line: live(&state.line),
    };
    let mine = next.held.iter().position(|h| h.0 == op_owner(op));
    let held_answer = |next: &SemaphoreState, lease_us| LockAnswer::Held {
        token: next.held.len() as u64,
        lease_us,
    };
    match op {
        SemaphoreOp::Acquire {
            owner,
            permits,
            lease_us,
        }
        | SemaphoreOp::Wait {
            owner,
            permits,
            lease_us,
            ..
        } => {
            if let Some(at) = mine {
                next.held[at].1 = now_us + lease_us;
                next.line.retain(|w| w.0 != owner);
                let answer = held_answer(&next, lease_us);
                return (Some(next), answer);
            }
            let free = permits.saturating_sub(next.held.len() as u64);
            let place = next.line.iter().position(|w| w.0 == owner);
            let ahead = &next.line[..place.unwrap_or(next.line.len())];
            if free > ahead.len() as u64 {
                next.held.push((owner, now_us + lease_us));
                next.line.retain(|w| w.0 != owner);
                let answer = held_answer(&next, lease_us);
                return (Some(next), answer);
            }
            // The soonest a permit may free up for it: a lease that ends
            // (none free), or a place before it that lapses.
            let soonest = if free == 0 {
                next.held.iter().map(|h| h.1).min()
            } else {
                ahead.iter().map(|w| w.1).min()
            };
            let busy = LockAnswer::Busy {
                token: next.held.len() as u64,
                retry_after_us: soonest.unwrap_or(now_us + 1) - now_us,
            };
            let SemaphoreOp::Wait { line_us, .. } = op else {
                return (None, busy);
            };
            match place {
                // A place with more than half its time left stays as it is.
                Some(at) if next.line[at].1 - now_us > line_us / 2 => (None, busy),
                Some(at) => {
                    next.line[at].1 = now_us + line_us;
                    (Some(next), busy)
                }
                None if next.line.len() < MAX_LINE => {
                    next.line.push((owner, now_us + line_us));
                    (Some(next), busy)
                }
                None => (None, busy),
            }
        }
        SemaphoreOp::Leave { owner } => {
            let before = next.line.len();
            next.line.retain(|w| w.0 != owner);
            match mine {
                Some(at) => {
                    next.held.remove(at);
                    let token = next.held.len() as u64;
                    (Some(next), LockAnswer::Released { token, next: None })
                }
                None if next.line.len() < before => (Some(next), LockAnswer::Left { next: None }),
                None => (None, LockAnswer::Left { next: None }),
            }
        }
        SemaphoreOp::Extend { lease_us, .. } => match mine {
            Some(at) => {
                next.held[at].1 = now_us + lease_us;
                let answer = held_answer(&next, lease_us);
                (Some(next), answer)
            }
            None => (None, LockAnswer::NotHeld),
        },
        SemaphoreOp::Release { .. } => match mine {
            Some(at) => {
                next.held.remove(at);
                let token = next.held.len() as u64;
                (Some(next), LockAnswer::Released { token, next: None })
            }
            None => (None, LockAnswer::NotHeld),
        },
    }
}

fn op_owner(op: SemaphoreOp) -> Owner {
    match op {
        SemaphoreOp::Acquire { owner, .. }
        | SemaphoreOp::Wait { owner, .. }
        | SemaphoreOp::Leave { owner }
        | SemaphoreOp::Extend { owner, .. }
        | SemaphoreOp::Release { owner } => owner,
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
        SemaphoreOp::Wait {
            owner,
            permits,
            lease_us,
            line_us,
        } => format!(
            "w {} {permits} {lease_us} {line_us} {now_us}",
            owner.to_hex()
        ),
        SemaphoreOp::Leave { owner } => format!("l {} {now_us}", owner.to_hex()),
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
        ("w", 6) => owner()
            .zip(number(2).filter(|p| (1..=MAX_PERMITS).contains(p)))
            .zip(lease(3))
            .zip(lease(4))
            .zip(number(5))
            .map(|((((owner, permits), lease_us), line_us), now)| {
                (
                    SemaphoreOp::Wait {
                        owner,
                        permits,
                        lease_us,
                        line_us,
                    },
                    now,
                )
            }),
        ("l", 3) => owner()
            .zip(number(2))
            .map(|(owner, now)| (SemaphoreOp::Leave { owner }, now)),
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

/// The holders a stored text lists (see [`decode_semaphore`]).
pub fn decode_holders(raw: &[u8]) -> Vec<(Owner, u64)> {
    decode_semaphore(raw).held
}

/// A stored text read back (a text [`encode_semaphore`] does not write
/// counts as none: its permits are lost, as if their leases ended).
pub fn decode_semaphore(raw: &[u8]) -> SemaphoreState {
    let Ok(text) = std::str::from_utf8(raw) else {
        return SemaphoreState::default();
    };
    let words: Vec<&str> = text.split(' ').collect();
    if words.first() != Some(&"m") {
        return SemaphoreState::default();
    }
    let (held, line) = match words.iter().position(|w| *w == "w") {
        Some(at) => (&words[1..at], &words[at + 1..]),
        None => (&words[1..], &words[..0]),
    };
    let pairs = |list: &[&str], most: usize| -> Option<Vec<(Owner, u64)>> {
        if list.len() % 2 != 0 || list.len() > 2 * most {
            return None;
        }
        list.chunks(2)
            .map(|pair| Owner::from_hex(pair[0]).zip(digits(pair[1])))
            .collect()
    };
    let has_line = words.contains(&"w");
    match (pairs(held, MAX_PERMITS as usize), pairs(line, MAX_LINE)) {
        // A `w` with nobody after it is not written.
        (Some(held), Some(line)) if !(has_line && line.is_empty()) => SemaphoreState { held, line },
        _ => SemaphoreState::default(),
    }
}

/// The holders' stored text (a state without a line).
pub fn encode_holders(held: &[(Owner, u64)]) -> String {
    encode_semaphore(&SemaphoreState {
        held: held.to_vec(),
        line: Vec::new(),
    })
}

/// The stored text of `state` (not empty).
pub fn encode_semaphore(state: &SemaphoreState) -> String {
    fn pairs(text: &mut String, list: &[(Owner, u64)]) {
        for (owner, until) in list {
            text.push(' ');
            text.push_str(&owner.to_hex());
            text.push(' ');
            text.push_str(&until.to_string());
        }
    }
    let mut text = String::from("m");
    pairs(&mut text, &state.held);
    if !state.line.is_empty() {
        text.push_str(" w");
        pairs(&mut text, &state.line);
    }
    text
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
        let state = current.map(decode_semaphore).unwrap_or_default();
        if input == PEEK {
            let text = if state.held.is_empty() && state.line.is_empty() {
                String::new()
            } else {
                encode_semaphore(&state)
            };
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: Bytes::from(format!("{now_micros} {text}")),
            });
        }
        let (op, now) = parse(input)?;
        let now = if now == 0 { now_micros } else { now };
        let (write, answer) = semaphore_step(&state, op, now);
        let write = match write {
            None => AtomicWrite::Keep,
            Some(next) if next.held.is_empty() && next.line.is_empty() => AtomicWrite::Delete,
            Some(next) => {
                let last = next
                    .held
                    .iter()
                    .chain(&next.line)
                    .map(|h| h.1)
                    .max()
                    .unwrap_or(now);
                AtomicWrite::Put {
                    value: Bytes::from(encode_semaphore(&next)),
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
