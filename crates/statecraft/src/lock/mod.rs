//! Locks with fencing tokens: named locks in a shared store ([`Locks`]),
//! each acquisition with a token that strictly increases per name, leases
//! the store's clock ends, releases and renewals by the holder only, an
//! opt-in watchdog, a "lost" signal, and writes fenced by the token
//! ([`fenced_put`]); leader election on a lock, the term its token
//! ([`Election`]); counting semaphores whose permits are leases
//! ([`Semaphore`]); one lock over several independent servers, held by a
//! majority ([`Redlock`]).
//!
//! Each step is written once ([`lock_step`], [`semaphore_step`]); the
//! Redis copies (Lua) and the PostgreSQL copies (PL/pgSQL, on tables whose
//! columns a person can read: `<table>_locks`, `<table>_semaphores`) run
//! it in one round trip at the server's clock, the memory backend under
//! the key's lock; sled by compare-and-swap, at the client's clock (fine
//! within one process, which is all sled serves). A fenced write is one
//! round trip on Redis and PostgreSQL (a function over the backend's own
//! table), compare-and-swap elsewhere (no clock involved).
//!
//! **Fair order.** Waiters in [`Locks::lock`] stand in a line the store
//! keeps with the lock ([`LockRecord`]): a free lock goes to the first
//! waiter still waiting, not to whoever asks first after the release (a
//! previous holder asking again at once would otherwise win every time,
//! as its ask needs no wake-up). [`Semaphore::acquire`] keeps a line the
//! same way ([`SemaphoreState`]): a free permit goes to an asker only if
//! more are free than waiters stand before it. Elections campaign unfairly
//! ([`LockConfig::fair`]): a queued candidate that paused or died would
//! hold up the next election.
//!
//! **Upgrading from a version without the line.** An earlier version
//! reads the stored text of a lock or a semaphore that has waiters as no
//! lock, or no permit held, at all (on Redis and the compare-and-swap
//! stores; PostgreSQL's rows are read by column, but an older semaphore
//! step there drops the line when it removes the last holder's row):
//! stop every older process that shares locks or semaphores before
//! starting this one, or two can hold a lock (or more than N a
//! semaphore) at once.
//!
//! **Fencing tokens.** An acquisition's token is the store's clock in
//! microseconds, raised past the last token the lock's key remembers:
//! `max(last + 1, now)`. Tokens of one lock so strictly increase while the
//! key lives (it outlives a release by [`RETAIN_US`]), and also after it
//! is gone (forgotten, or lost with a store restarted without
//! persistence): a new token is then the store's time, later than every
//! token given before — as long as the store's wall clock did not step
//! back past them, the one case in which tokens can go backwards. (No
//! lock is acquired more than once a microsecond: each acquisition waits
//! for the previous holder's release, a round trip.)

mod distributed;
mod election;
mod fenced;
mod guard;
mod machine;
mod permits;
mod redlock;
mod semaphore;
mod shared;

#[cfg(feature = "postgres")]
pub use crate::backends::postgres::{AdvisoryConfig, AdvisoryGuard, AdvisoryLocks};
pub use distributed::{LockGuard, Locks};
pub use election::{Election, Leader, LeaderChange, LeaderChanges, Leadership};
pub use fenced::{fenced_get, fenced_put, Fenced, FencedWrite};
pub use guard::LockConfig;
pub use machine::{
    lock_step, LockAnswer, LockOp, LockRecord, LockState, LockStepped, Owner, Waiter, MAX_LEASE_US,
    MAX_LINE, RETAIN_US,
};
pub use permits::{
    decode_holders, decode_semaphore, encode_holders, encode_semaphore, parse_holders,
    semaphore_input, semaphore_step, SemaphoreOp, SemaphoreState, SemaphoreStep, LINGER_US,
    MAX_PERMITS,
};
pub use redlock::Redlock;
pub use semaphore::{Semaphore, SemaphorePermit};
pub use shared::{
    decode_state, encode_state, op_input, parse_answer, parse_input, parse_peek, LockStep, PEEK,
};
#[cfg(test)]
mod semaphore_tests;
#[cfg(test)]
mod tests;
