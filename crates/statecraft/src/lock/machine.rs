//! The lock's step, written once: a pure function of (stored record, what
//! a client asks, the store's time) → (record to write, answer). The
//! memory backend runs it under the key's lock, the compare-and-swap path
//! anywhere; `lock.lua` (Redis) and `lock.sql` (PostgreSQL) are its
//! copies, checked against it by `tests/lock_native.rs`.
//!
//! **Fair order.** Waiters ([`LockOp::Wait`]) stand in a line kept with the
//! lock: a free lock goes to the first of them whose place is still kept,
//! and to nobody else — a waiter woken by a release is not overtaken by a
//! caller asking just then. A place is kept for `line_us` from the
//! waiter's last ask (it asks again at least that often while it waits),
//! so a waiter that died or gave up without leaving holds up a free lock
//! for at most that long.

/// How long a lock's key outlives its lease or its release, remembering
/// the last token: one hour (µs).
pub const RETAIN_US: u64 = 3_600_000_000;

/// The longest lease: one year (µs); every figure stays below 2^53, so the
/// Lua copy's doubles compute what the integers do.
pub const MAX_LEASE_US: u64 = 366 * 86_400 * 1_000_000;

/// The most waiters a lock's line keeps; one asking when it is full waits
/// outside it (asking again, but after everyone in the line).
pub const MAX_LINE: usize = 32;

/// Who holds a lock: 16 random bytes, drawn per acquisition.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub [u8; 16]);

impl Owner {
    /// A fresh owner from the operating system's random source.
    pub fn random() -> crate::Result<Owner> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|err| {
            crate::Error::new(
                crate::ErrorKind::Unavailable,
                format!("no randomness for a lock owner: {err}"),
            )
        })?;
        Ok(Owner(bytes))
    }

    /// The owner as 32 lowercase hexadecimal digits (its wire form).
    pub fn to_hex(self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(32), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }

    /// The owner [`to_hex`](Self::to_hex) wrote, or `None`.
    pub fn from_hex(text: &str) -> Option<Owner> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            bytes[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Owner(bytes))
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A lock's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Taken by `owner` with `token`, until `expires_us` (store time);
    /// past it the lock is free, and the token remembered.
    Held {
        /// The holder.
        owner: Owner,
        /// Its fencing token.
        token: u64,
        /// When its lease runs out (µs since the Unix epoch).
        expires_us: u64,
    },
    /// Free, the last token given remembered.
    Free {
        /// The last fencing token given.
        last_token: u64,
    },
}

impl LockState {
    /// The last token given.
    pub fn token(&self) -> u64 {
        match *self {
            LockState::Held { token, .. } => token,
            LockState::Free { last_token } => last_token,
        }
    }

    /// The holder at `now_us`, with its token and expiry, if the lease
    /// still runs.
    pub fn holder(&self, now_us: u64) -> Option<(Owner, u64, u64)> {
        match *self {
            LockState::Held {
                owner,
                token,
                expires_us,
            } if expires_us > now_us => Some((owner, token, expires_us)),
            _ => None,
        }
    }
}

/// A waiter in a lock's line: its owner, and until when its place is kept
/// (store time, µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiter {
    /// The waiter's owner.
    pub owner: Owner,
    /// Its place is kept until then, unless it asks again.
    pub until_us: u64,
}

/// A lock's stored record: its state and its line of waiters, first
/// first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    /// Held or free, with the token.
    pub state: LockState,
    /// The waiters, in the order they first asked (places not kept any
    /// more are dropped at the next write).
    pub line: Vec<Waiter>,
}

impl LockRecord {
    /// A record of `state` with nobody waiting.
    pub fn new(state: LockState) -> LockRecord {
        LockRecord {
            state,
            line: Vec::new(),
        }
    }

    /// The last token given.
    pub fn token(&self) -> u64 {
        self.state.token()
    }

    /// The holder at `now_us`, with its token and expiry, if the lease
    /// still runs.
    pub fn holder(&self, now_us: u64) -> Option<(Owner, u64, u64)> {
        self.state.holder(now_us)
    }

    /// The waiters whose places are kept at `now_us`, first first.
    pub fn waiting(&self, now_us: u64) -> impl Iterator<Item = &Waiter> {
        self.line.iter().filter(move |w| w.until_us > now_us)
    }
}

/// What a client asks of a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// Take the lock for `lease_us` if it is free and nobody waits before
    /// `owner` (or it is already `owner`'s: a retried acquisition gets its
    /// token back, the lease renewed).
    Acquire {
        /// Who asks.
        owner: Owner,
        /// For how long (µs, 1 to [`MAX_LEASE_US`]).
        lease_us: u64,
    },
    /// As [`Acquire`](Self::Acquire), by a waiter: when the answer is busy,
    /// `owner` stands in the line (at its end, or where it stood), its
    /// place kept for `line_us` from now (a place with more than half its
    /// time left is left as it is: no write).
    Wait {
        /// Who asks.
        owner: Owner,
        /// For how long (µs, 1 to [`MAX_LEASE_US`]).
        lease_us: u64,
        /// How long its place is kept (µs, 1 to [`MAX_LEASE_US`]).
        line_us: u64,
    },
    /// Leave the line (a waiter that gives up); and give the lock back if
    /// `owner` holds it (a waiter whose granted ask went unanswered).
    Leave {
        /// The waiter.
        owner: Owner,
    },
    /// Renew the lease of `owner`'s holding of `token` for `lease_us` from
    /// now, if it still holds it.
    Extend {
        /// The holder.
        owner: Owner,
        /// Its token.
        token: u64,
        /// The new lease (µs from now).
        lease_us: u64,
    },
    /// Give the lock back, if `owner` still holds `token` (or its lease
    /// ran out with nobody else taking the lock since).
    Release {
        /// The holder.
        owner: Owner,
        /// Its token.
        token: u64,
    },
}

/// The answer to a [`LockOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAnswer {
    /// Held: the token, and the lease left (µs).
    Held {
        /// The fencing token.
        token: u64,
        /// How long the lease runs from the store's now (µs).
        lease_us: u64,
    },
    /// Another holds it, or it is free but kept for a waiter before the
    /// asker: the last token, and how long until the holder's lease runs
    /// out or the first waiter's place lapses (µs) unless renewed.
    Busy {
        /// The holder's token (or the last one given).
        token: u64,
        /// Its lease left, or the first waiter's place left (µs).
        retry_after_us: u64,
    },
    /// Released.
    Released {
        /// The token given back.
        token: u64,
        /// The first waiter whose place is kept, whom the lock now awaits
        /// (`None`: nobody waits in the line).
        next: Option<Owner>,
    },
    /// Not in the line (any more).
    Left {
        /// The first waiter whose place is kept, when the lock is free:
        /// whom it now awaits (`None`: held, or nobody waits).
        next: Option<Owner>,
    },
    /// The asker does not hold it (any more): an extension or release of a
    /// lease that is lost.
    NotHeld,
}

/// One step's outcome: the record to write (`None`: leave it) with its
/// TTL, and the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockStepped {
    /// The new record, if it changed.
    pub write: Option<LockRecord>,
    /// The key's TTL for it (µs): the lease left plus [`RETAIN_US`].
    pub ttl_us: u64,
    /// The answer.
    pub answer: LockAnswer,
}

/// The lock's step: `op` on `record` at the store's `now_us`.
pub fn lock_step(record: Option<&LockRecord>, op: LockOp, now_us: u64) -> LockStepped {
    let keep = |answer| LockStepped {
        write: None,
        ttl_us: 0,
        answer,
    };
    let state = record.map(|r| r.state);
    let holder = state.and_then(|s| s.holder(now_us));
    // The line as the next write keeps it: places still kept, `owner`'s
    // taken out.
    let line_without = |owner: Option<Owner>| -> Vec<Waiter> {
        record
            .map(|r| {
                r.waiting(now_us)
                    .filter(|w| Some(w.owner) != owner)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    };
    let write = |state: LockState, line: Vec<Waiter>, answer| {
        let left = state
            .holder(now_us)
            .map_or(0, |(_, _, expires)| expires - now_us);
        LockStepped {
            write: Some(LockRecord { state, line }),
            ttl_us: left + RETAIN_US,
            answer,
        }
    };
    let hold = |owner, token, lease_us: u64| {
        let state = LockState::Held {
            owner,
            token,
            expires_us: now_us + lease_us,
        };
        write(
            state,
            line_without(Some(owner)),
            LockAnswer::Held { token, lease_us },
        )
    };
    match op {
        LockOp::Acquire { owner, lease_us }
        | LockOp::Wait {
            owner, lease_us, ..
        } => {
            let busy = match holder {
                Some((held_by, token, _)) if held_by == owner => {
                    return hold(owner, token, lease_us)
                }
                Some((_, token, expires_us)) => LockAnswer::Busy {
                    token,
                    retry_after_us: expires_us - now_us,
                },
                None => {
                    let first = record.and_then(|r| r.waiting(now_us).next());
                    match first {
                        Some(first) if first.owner != owner => LockAnswer::Busy {
                            token: state.map_or(0, |s| s.token()),
                            retry_after_us: first.until_us - now_us,
                        },
                        _ => {
                            let last = state.map_or(0, |s| s.token());
                            return hold(owner, (last + 1).max(now_us), lease_us);
                        }
                    }
                }
            };
            let LockOp::Wait { line_us, .. } = op else {
                return keep(busy);
            };
            // In the line: where it stood, or at its end if there is room.
            let mut line = line_without(None);
            let until_us = now_us + line_us;
            if let Some(place) = line.iter_mut().find(|w| w.owner == owner) {
                if place.until_us - now_us > line_us / 2 {
                    return keep(busy);
                }
                place.until_us = until_us;
            } else if line.len() < MAX_LINE {
                line.push(Waiter { owner, until_us });
            } else {
                return keep(busy);
            }
            let state = state.unwrap_or(LockState::Free { last_token: 0 });
            write(state, line, busy)
        }
        LockOp::Leave { owner } => match record {
            Some(LockRecord {
                state:
                    LockState::Held {
                        owner: held_by,
                        token,
                        ..
                    },
                ..
            }) if *held_by == owner => {
                let line = line_without(Some(owner));
                let next = line.first().map(|w| w.owner);
                write(
                    LockState::Free { last_token: *token },
                    line,
                    LockAnswer::Released {
                        token: *token,
                        next,
                    },
                )
            }
            Some(r) if r.waiting(now_us).any(|w| w.owner == owner) => {
                let line = line_without(Some(owner));
                let next = line.first().filter(|_| holder.is_none()).map(|w| w.owner);
                write(r.state, line, LockAnswer::Left { next })
            }
            _ => keep(LockAnswer::Left { next: None }),
        },
        LockOp::Extend {
            owner,
            token,
            lease_us,
        } => match holder {
            Some((held_by, held, _)) if held_by == owner && held == token => {
                hold(owner, token, lease_us)
            }
            _ => keep(LockAnswer::NotHeld),
        },
        LockOp::Release { owner, token } => match state {
            Some(LockState::Held {
                owner: held_by,
                token: held,
                ..
            }) if held_by == owner && held == token => {
                let line = line_without(None);
                let next = line.first().map(|w| w.owner);
                write(
                    LockState::Free { last_token: token },
                    line,
                    LockAnswer::Released { token, next },
                )
            }
            _ => keep(LockAnswer::NotHeld),
        },
    }
}
