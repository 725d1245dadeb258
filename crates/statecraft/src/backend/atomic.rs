//! [`AtomicUpdate`]: a read-modify-write of one key that a primitive writes
//! once, as a pure function, and that every store runs atomically — natively
//! where it can ([`StateBackend::update_atomic`](crate::StateBackend::update_atomic)).
//!
//! This is how a distributed primitive (a breaker's transition, a limiter's
//! step) finds a store's native path through any stack of layers: it hands
//! the same update to whatever `Arc<dyn StateBackend>` it was given, and
//!
//! - the memory backend applies it under the key's lock, at its clock;
//! - Redis runs the update's own Lua copy ([`AtomicUpdate::redis_function`]
//!   or [`AtomicUpdate::redis_script`])
//!   in one round trip, at the server's clock (`TIME`);
//! - PostgreSQL runs the update's own objects and statement
//!   ([`AtomicUpdate::postgres`]) in one round trip, at the server's clock
//!   (`clock_timestamp()`);
//! - every other store (and Redis or PostgreSQL without a copy) runs the provided
//!   compare-and-swap loop: read, apply, swap if nothing changed meanwhile,
//!   else apply again to what is there now;
//! - layers forward it as the write it is: [`Namespaced`](crate::Namespaced)
//!   maps the key, [`Cached`](crate::Cached) and [`Tiered`](crate::Tiered)
//!   drop the key from their upper tiers, [`Fallback`](crate::Fallback)
//!   tracks it as an outage write, [`Retry`](crate::Retry) never sends it
//!   twice when its outcome is unknown. An input that only reads
//!   ([`AtomicUpdate::reads_only`]) goes through as the read it is.
//!
//! A native copy must decide exactly what [`AtomicUpdate::apply`] decides;
//! each primitive checks its copies against its function with differential
//! property tests.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::clock::{Clock, SystemClock};
use crate::backend::error::{Operation, Result};
use crate::backend::options::{CasOutcome, PutOptions};
use crate::backend::StateBackend;

/// What an update does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtomicWrite {
    /// Leave the key as it is.
    Keep,
    /// Store `value` with `options`.
    Put {
        /// The new value.
        value: Bytes,
        /// Its TTL, as for [`put_with`](crate::StateBackend::put_with).
        options: PutOptions,
    },
    /// Remove the key.
    Delete,
}

/// What [`AtomicUpdate::apply`] decided: the write, and what the caller
/// gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomicStep {
    /// What happens to the key.
    pub write: AtomicWrite,
    /// The answer to the caller (a decision, say), returned by
    /// [`update_atomic`](crate::StateBackend::update_atomic).
    pub output: Bytes,
}

/// A short version of a native copy's source (FNV-1a, 32 bits, in hex):
/// stores name what they load from it with it, so that two versions of an
/// update can run side by side.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn source_version(source: &str) -> String {
    let hash = source.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// A read-modify-write of one key, decided by a pure function.
pub trait AtomicUpdate: Send + Sync + fmt::Debug {
    /// A short, stable name (for errors and the native scripts' cache).
    fn name(&self) -> &'static str;

    /// Decides the update from the key's current value (`None`: absent or
    /// expired), the caller's `input` and the store's time in microseconds
    /// since the Unix epoch. Must be pure and quick: the compare-and-swap
    /// path calls it again when the key changed under it, and the memory
    /// backend calls it while it holds the key's shard lock (so it must not
    /// call any store). An error writes nothing and is returned to the
    /// caller.
    fn apply(&self, current: Option<&[u8]>, input: &[u8], now_micros: u64) -> Result<AtomicStep>;

    /// The same update as a Redis Lua script, run atomically in one round
    /// trip: `KEYS[1]` is the key (with the backend's prefix), `ARGV[1]`
    /// the input, `ARGV[2]` the backend's default TTL in milliseconds (`0`:
    /// none), for a `Put` whose options leave the TTL to the backend; it
    /// reads the time with `redis.call('TIME')`, does the write itself and
    /// returns the output as a string. The backend's value size limit is
    /// not checked on this path: the script must bound what it stores. An
    /// error reply
    /// whose message starts with `statecraft:invalid_argument` becomes an
    /// [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error.
    /// `None` (the default) runs the compare-and-swap path instead.
    fn redis_script(&self) -> Option<&'static str> {
        None
    }

    /// The same update as a Redis Lua library: a chunk that sets up what
    /// it needs and returns the update as a function of `(keys, args)`,
    /// with `keys[1]`, `args[1]` and `args[2]` as in
    /// [`redis_script`](Self::redis_script). The Redis backend loads it
    /// once as a Redis Function (Redis 7 or later) and calls it by
    /// `FCALL`, so the chunk's set-up and whatever it keeps at its top
    /// level outlive a call (it may keep caches there, never state that a
    /// call's answer depends on: the server may lose it at any time); on
    /// an older server it runs the chunk per call by `EVALSHA`. Taken
    /// before [`redis_script`](Self::redis_script) when both are given.
    fn redis_function(&self) -> Option<&'static str> {
        None
    }

    /// The same update as PostgreSQL objects and one statement (see
    /// [`PostgresNative`]), run in one round trip at the server's clock.
    /// `None` (the default) runs the compare-and-swap path instead.
    fn postgres(&self) -> Option<PostgresNative> {
        None
    }

    /// Whether this `input` only reads (its step is always
    /// [`Keep`](AtomicWrite::Keep)): layers then pass it through as a
    /// read — [`Cached`](crate::Cached) and [`Tiered`](crate::Tiered) send
    /// it to the authoritative store without dropping anything,
    /// [`Fallback`](crate::Fallback) routes it as a read. A native copy
    /// that keeps its state outside the key-value table (a PostgreSQL
    /// update with a table of its own) is read this way, not by `get`.
    fn reads_only(&self, input: &[u8]) -> bool {
        let _ = input;
        false
    }

    /// Whether this update stores its input as the key's value (a fenced
    /// write does): the Redis and PostgreSQL native paths then check the
    /// input against the backend's value size limit, as a put would
    /// (the others bound what they store themselves).
    fn stores_input(&self) -> bool {
        false
    }
}

/// An [`AtomicUpdate`]'s native form on PostgreSQL. Setting it up creates
/// functions (and tables): the backend's role needs the right to.
///
/// In these texts `@name@` stands for the identifier `"<table>_name"` (the
/// backend's table name, with its schema if it has one), so that each
/// table's objects are its own, and `@name#@` for `"<table>_name_<v>"`,
/// `<v>` a hash of `setup`: functions written so are versioned, so that
/// two versions of an update side by side each call their own. `@table@`
/// is the backend's key-value table itself (`key bytea`, `value bytea`,
/// `expires_at timestamptz`, null: no expiry), for an update whose state
/// is the key's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresNative {
    /// SQL that creates what the statement needs, run once per backend
    /// before the first call, in a transaction under the migrations'
    /// advisory lock: it must be idempotent (`CREATE TABLE IF NOT EXISTS`,
    /// `CREATE OR REPLACE FUNCTION`).
    pub setup: &'static str,
    /// The function (`@name#@`) whose presence shows the set-up is done:
    /// a backend that finds it runs no set-up.
    pub function: &'static str,
    /// One statement that runs the update: `$1` is the key (`bytea`),
    /// `$2` the input (`text`, when the input must be UTF-8, or `bytea`
    /// as it is, where the statement takes one: `$2::bytea`), `$3` the
    /// backend's default TTL in milliseconds (`int8`, 0: none; an update
    /// whose input carries its own TTL, as a breaker's does, ignores it). It returns
    /// one row of one `text` column, the output, and reads the time with
    /// `clock_timestamp()`. An error raised with SQLSTATE `22023` becomes
    /// an [`InvalidArgument`](crate::ErrorKind::InvalidArgument) error.
    pub call: &'static str,
    /// A statement that deletes the update's expired rows, run with the
    /// backend's own purge ([`PostgresBackend::purge_expired`] and the
    /// purge task) once the update is set up; `None`: it keeps no rows.
    ///
    /// [`PostgresBackend::purge_expired`]: crate::PostgresBackend::purge_expired
    pub purge: Option<&'static str>,
    /// A statement that lists the keys the update holds live state for,
    /// `$1` a prefix (`bytea`) they start with, in key order
    /// ([`PostgresBackend::native_keys`]); `None`: it cannot list them.
    ///
    /// [`PostgresBackend::native_keys`]: crate::PostgresBackend::native_keys
    pub keys: Option<&'static str>,
}

/// The longest wait between two tries of a compare-and-swap that keeps
/// conflicting (the waits double from 1 ms up to it, each a random part).
pub(crate) const MOST_CAS_WAIT: Duration = Duration::from_millis(50);

/// The random part of the wait after `conflicts` conflicts in a row: none
/// after the first (a retry at once wins under light contention), then
/// up to 1 ms, 2 ms, … [`MOST_CAS_WAIT`] (tokio's timer counts whole
/// milliseconds), so that many writers of one
/// key (in any number of processes) stop retrying in lockstep, where each
/// round lets one of them through.
pub(crate) fn cas_wait(conflicts: u32) -> Duration {
    static JITTER: std::sync::OnceLock<crate::jitter::Jitter> = std::sync::OnceLock::new();
    if conflicts < 2 {
        return Duration::ZERO;
    }
    let cap = (Duration::from_millis(1) * (1 << (conflicts - 2).min(6))).min(MOST_CAS_WAIT);
    JITTER.get_or_init(crate::jitter::Jitter::random).below(cap)
}

/// The provided path of [`update_atomic`](StateBackend::update_atomic): read,
/// apply at this process's wall clock, swap if the key is unchanged, and
/// apply again to what is there now if it changed (after a random wait
/// once it conflicted twice in a row: [`cas_wait`]).
pub(crate) async fn by_compare_and_swap<B: StateBackend + ?Sized>(
    backend: &B,
    key: &[u8],
    update: &dyn AtomicUpdate,
    input: &[u8],
) -> Result<Bytes> {
    let mut current = backend.get(key).await?;
    let mut conflicts = 0u32;
    loop {
        let step = update
            .apply(current.as_deref(), input, SystemClock.now_micros())
            .map_err(|err| {
                err.with_key(key)
                    .context(backend.name(), Operation::UpdateAtomic)
            })?;
        let (new, options) = match step.write {
            AtomicWrite::Keep => return Ok(step.output),
            AtomicWrite::Put { value, options } => (Some(value), options),
            AtomicWrite::Delete if current.is_none() => return Ok(step.output),
            AtomicWrite::Delete => (None, PutOptions::new()),
        };
        match backend
            .compare_and_swap(key, current.as_deref(), new, options)
            .await?
        {
            CasOutcome::Swapped => return Ok(step.output),
            CasOutcome::Conflict(now) => {
                conflicts = conflicts.saturating_add(1);
                let wait = cas_wait(conflicts);
                current = if wait.is_zero() {
                    now
                } else {
                    tokio::time::sleep(wait).await;
                    // What the conflict showed is older than the wait.
                    backend.get(key).await?
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflicting_swap_waits_longer_each_time_up_to_the_cap() {
        assert_eq!(cas_wait(0), Duration::ZERO);
        assert_eq!(cas_wait(1), Duration::ZERO, "the first retry at once");
        for (conflicts, cap_us) in [
            (2, 1_000),
            (3, 2_000),
            (4, 4_000),
            (7, 32_000),
            (8, 50_000),
            (40, 50_000),
        ] {
            let waits: Vec<Duration> = (0..400).map(|_| cas_wait(conflicts)).collect();
            let cap = Duration::from_micros(cap_us);
            assert!(waits.iter().all(|w| *w <= cap), "{conflicts}: over {cap:?}");
            // Spread over the range, not stuck at an end.
            assert!(
                waits.iter().any(|w| *w < cap / 4),
                "{conflicts}: none short"
            );
            assert!(
                waits.iter().any(|w| *w > cap * 3 / 4),
                "{conflicts}: none long"
            );
        }
        assert!(cas_wait(u32::MAX) <= MOST_CAS_WAIT);
    }
}
