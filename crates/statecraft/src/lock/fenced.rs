//! Fenced writes: a value stored only by a writer whose fencing token is
//! at least the highest the key has seen, checked in the same atomic step
//! as the write (one round trip on Redis and PostgreSQL; under the key's
//! lock in memory; by compare-and-swap elsewhere). A holder paused past its lease, whose
//! lock another has taken since (with a higher token) and written under,
//! is refused.
//!
//! The stored value is `<token> <value>` (the token in decimal): read it
//! with [`fenced_get`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::atomic::{AtomicStep, AtomicUpdate, AtomicWrite, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::options::PutOptions;
use crate::backend::StateBackend;

/// The Lua copy of [`FencedWrite`] (a library: a chunk that returns the
/// step).
const SCRIPT: &str = include_str!("fenced.lua");

/// The PostgreSQL copy: one function over the backend's own table (the
/// value is the key's, read by [`fenced_get`]), the input as `bytea`.
const POSTGRES: PostgresNative = PostgresNative {
    setup: include_str!("fenced.sql"),
    call: "SELECT @fenced_write#@($1, $2, $3)",
    purge: None,
    function: "@fenced_write#@",
    keys: None,
};

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// The value is stored.
    Written,
    /// Refused: the key has seen a higher token (`highest`).
    Stale {
        /// The highest token the key has seen.
        highest: u64,
    },
}

/// The fenced write as an [`AtomicUpdate`]: input `<token> <value>`,
/// output `W` (written) or `S <highest>` (stale).
#[derive(Debug, Clone, Copy, Default)]
pub struct FencedWrite;

/// A decimal of 1 to 16 digits.
fn digits(text: &[u8]) -> Option<u64> {
    (!text.is_empty() && text.len() <= 16 && text.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(text).ok()?.parse().ok())
        .flatten()
}

/// Tokens are below 2^53, so that Lua's doubles hold them exactly.
const TOKEN_LIMIT: u64 = 1 << 53;

/// `<token> <value>` split (the value may hold any byte; a token of 2^53
/// or more is none).
fn split(raw: &[u8]) -> Option<(u64, &[u8])> {
    let space = raw.iter().position(|b| *b == b' ')?;
    let token = digits(&raw[..space]).filter(|t| *t < TOKEN_LIMIT)?;
    Some((token, &raw[space + 1..]))
}

impl AtomicUpdate for FencedWrite {
    fn name(&self) -> &'static str {
        "fenced_write"
    }

    fn apply(&self, current: Option<&[u8]>, input: &[u8], _now_micros: u64) -> Result<AtomicStep> {
        let (token, _) = split(input).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "fenced write: the input is not `<token> <value>`",
            )
        })?;
        // A stored value that is not `<token> <value>` has seen no token.
        let highest = current.and_then(split).map_or(0, |(token, _)| token);
        if token < highest {
            return Ok(AtomicStep {
                write: AtomicWrite::Keep,
                output: Bytes::from(format!("S {highest}")),
            });
        }
        Ok(AtomicStep {
            // Kept (not under a backend's default TTL): a fenced value
            // that expired would let a stale writer in.
            write: AtomicWrite::Put {
                value: Bytes::copy_from_slice(input),
                options: PutOptions::new().no_expiry(),
            },
            output: Bytes::from_static(b"W"),
        })
    }

    fn redis_function(&self) -> Option<&'static str> {
        Some(SCRIPT)
    }

    fn postgres(&self) -> Option<PostgresNative> {
        Some(POSTGRES)
    }

    fn stores_input(&self) -> bool {
        true
    }
}

/// Stores `value` under `key` if `token` is at least the highest token the
/// key has seen (a lock's [`token`](super::LockGuard::token)).
pub async fn fenced_put(
    backend: &dyn StateBackend,
    key: &[u8],
    token: u64,
    value: &[u8],
) -> Result<Fenced> {
    if token >= TOKEN_LIMIT {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("fenced write: token {token} is past 2^53"),
        ));
    }
    let mut input = BytesMut::with_capacity(value.len() + 17);
    input.put_slice(token.to_string().as_bytes());
    input.put_u8(b' ');
    input.put_slice(value);
    let raw = backend.update_atomic(key, &FencedWrite, &input).await?;
    match raw.as_ref() {
        b"W" => Ok(Fenced::Written),
        other => other
            .strip_prefix(b"S ")
            .and_then(digits)
            .map(|highest| Fenced::Stale { highest })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "a fenced write answered {:?}",
                        String::from_utf8_lossy(&other[..other.len().min(64)])
                    ),
                )
            }),
    }
}

/// The value a fenced write stored under `key`, with its writer's token
/// (`None`: nothing stored; a value not stored by a fenced write is
/// [`Corrupt`](ErrorKind::Corrupt)).
pub async fn fenced_get(backend: &dyn StateBackend, key: &[u8]) -> Result<Option<(u64, Bytes)>> {
    let Some(raw) = backend.get(key).await? else {
        return Ok(None);
    };
    let (token, value) = split(&raw).ok_or_else(|| {
        Error::new(
            ErrorKind::Corrupt,
            "a fenced value is not `<token> <value>`",
        )
    })?;
    let start = raw.len() - value.len();
    Ok(Some((token, raw.slice(start..))))
}
