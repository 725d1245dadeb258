//! The lock's step, written once: a pure function of (stored state, what
//! a client asks, the store's time) → (state to write, answer). The
//! memory backend runs it under the key's lock, the compare-and-swap path
//! anywhere, and `lock.lua` is its copy on Redis, checked against it by
//! `tests/lock_native.rs`.

/// How long a lock's key outlives its lease or its release, remembering
/// the last token: one hour (µs).
pub const RETAIN_US: u64 = 3_600_000_000;

/// The longest lease: one year (µs); every figure stays below 2^53, so the
/// Lua copy's doubles compute what the integers do.
pub const MAX_LEASE_US: u64 = 366 * 86_400 * 1_000_000;

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

/// What a client asks of a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// Take the lock for `lease_us` if it is free (or already `owner`'s:
    /// a retried acquisition gets its token back, the lease renewed).
    Acquire {
        /// Who asks.
        owner: Owner,
        /// For how long (µs, 1 to [`MAX_LEASE_US`]).
        lease_us: u64,
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
    /// Another holds it: its token, and how long until its lease runs out
    /// (µs) unless renewed.
    Busy {
        /// The holder's token.
        token: u64,
        /// Its lease left (µs).
        retry_after_us: u64,
    },
    /// Released.
    Released {
        /// The token given back.
        token: u64,
    },
    /// The asker does not hold it (any more): an extension or release of a
    /// lease that is lost.
    NotHeld,
}

/// One step's outcome: the state to write (`None`: leave it) with its TTL,
/// and the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockStepped {
    /// The new state, if it changed.
    pub write: Option<LockState>,
    /// The key's TTL for it (µs): the lease left plus [`RETAIN_US`].
    pub ttl_us: u64,
    /// The answer.
    pub answer: LockAnswer,
}

/// The lock's step: `op` on `state` at the store's `now_us`.
pub fn lock_step(state: Option<LockState>, op: LockOp, now_us: u64) -> LockStepped {
    let keep = |answer| LockStepped {
        write: None,
        ttl_us: 0,
        answer,
    };
    let hold = |owner, token, lease_us: u64| LockStepped {
        write: Some(LockState::Held {
            owner,
            token,
            expires_us: now_us + lease_us,
        }),
        ttl_us: lease_us + RETAIN_US,
        answer: LockAnswer::Held { token, lease_us },
    };
    let holder = state.and_then(|s| s.holder(now_us));
    match op {
        LockOp::Acquire { owner, lease_us } => match holder {
            Some((held_by, token, _)) if held_by == owner => hold(owner, token, lease_us),
            Some((_, token, expires_us)) => keep(LockAnswer::Busy {
                token,
                retry_after_us: expires_us - now_us,
            }),
            None => {
                let last = state.map_or(0, |s| s.token());
                hold(owner, (last + 1).max(now_us), lease_us)
            }
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
            }) if held_by == owner && held == token => LockStepped {
                write: Some(LockState::Free { last_token: token }),
                ttl_us: RETAIN_US,
                answer: LockAnswer::Released { token },
            },
            _ => keep(LockAnswer::NotHeld),
        },
    }
}
