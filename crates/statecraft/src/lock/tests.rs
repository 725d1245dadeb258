//! The lock's step as a pure function (properties over random operation
//! sequences), its wire texts, and [`Locks`] over the memory backend.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::machine::{
    lock_step, LockAnswer, LockOp, LockRecord, LockState, Owner, MAX_LINE, RETAIN_US,
};
use super::shared::{
    decode_state, encode_state, op_input, parse_input, parse_peek, LockStep, PEEK,
};
use super::*;
use crate::{AtomicUpdate, ErrorKind, ManualClock, MemoryBackend, StateBackend};

fn owner(n: u8) -> Owner {
    Owner([n; 16])
}

/// A generated operation: by one of four owners, with the token of the
/// last holding it saw (or another), and a lease (and a place's time).
#[derive(Debug, Clone)]
enum Op {
    Acquire(u8, u64),
    Wait(u8, u64, u64),
    Leave(u8),
    Extend(u8, bool, u64),
    Release(u8, bool),
}

fn ops() -> impl Strategy<Value = Vec<(Op, u64)>> {
    let who = 0u8..4;
    let lease = 1u64..5_000;
    let op = prop_oneof![
        (who.clone(), lease.clone()).prop_map(|(w, l)| Op::Acquire(w, l)),
        (who.clone(), lease.clone(), 1u64..5_000).prop_map(|(w, l, q)| Op::Wait(w, l, q)),
        who.clone().prop_map(Op::Leave),
        (who.clone(), any::<bool>(), lease).prop_map(|(w, t, l)| Op::Extend(w, t, l)),
        (who, any::<bool>()).prop_map(|(w, t)| Op::Release(w, t)),
    ];
    let dt = prop_oneof![Just(0u64), 0u64..3_000];
    prop::collection::vec((op, dt), 1..80)
}

/// The owners of the places kept at `now`, first first.
fn kept(record: Option<&LockRecord>, now: u64) -> Vec<Owner> {
    record.map_or_else(Vec::new, |r| r.waiting(now).map(|w| w.owner).collect())
}

proptest! {
    /// Never two holders; a new holding's token is above every token
    /// given before; only the holder extends or releases; a free lock goes
    /// only to the first waiter whose place is kept, and the line keeps
    /// its order.
    #[test]
    fn the_step_keeps_one_holder_and_raises_tokens(ops in ops()) {
        let mut now = 1_000_000u64;
        let mut record: Option<LockRecord> = None;
        let mut highest = 0u64;
        // The token each owner last held.
        let mut tokens = [0u64; 4];
        for (op, dt) in ops {
            now += dt;
            let state = record.as_ref().map(|r| r.state);
            let before = state.and_then(|s| s.holder(now));
            let line = kept(record.as_ref(), now);
            let op = match op {
                Op::Acquire(w, lease_us) => LockOp::Acquire { owner: owner(w), lease_us },
                Op::Wait(w, lease_us, line_us) => LockOp::Wait { owner: owner(w), lease_us, line_us },
                Op::Leave(w) => LockOp::Leave { owner: owner(w) },
                Op::Extend(w, right, lease_us) => LockOp::Extend {
                    owner: owner(w),
                    token: if right { tokens[w as usize] } else { tokens[w as usize] + 1 },
                    lease_us,
                },
                Op::Release(w, right) => LockOp::Release {
                    owner: owner(w),
                    token: if right { tokens[w as usize] } else { tokens[w as usize] + 1 },
                },
            };
            let stepped = lock_step(record.as_ref(), op, now);
            match (op, stepped.answer) {
                (
                    LockOp::Acquire { owner: who, lease_us } | LockOp::Wait { owner: who, lease_us, .. },
                    LockAnswer::Held { token, lease_us: left },
                ) => {
                    prop_assert_eq!(left, lease_us);
                    match before {
                        // A retried acquisition gets its own token back.
                        Some((held_by, held, _)) => {
                            prop_assert_eq!(held_by, who);
                            prop_assert_eq!(token, held);
                        }
                        None => {
                            prop_assert!(token > highest, "{} after {}", token, highest);
                            prop_assert!(token >= now);
                            prop_assert!(line.first().map_or(true, |first| *first == who),
                                "taken past the line {:?}", line);
                            highest = token;
                        }
                    }
                    tokens[who.0[0] as usize] = token;
                }
                (
                    LockOp::Acquire { owner: who, .. } | LockOp::Wait { owner: who, .. },
                    LockAnswer::Busy { token, retry_after_us },
                ) => match before {
                    Some((held_by, held, expires)) => {
                        prop_assert!(held_by != who);
                        prop_assert_eq!((token, retry_after_us), (held, expires - now));
                    }
                    None => {
                        let first = record.as_ref().and_then(|r| r.waiting(now).next()).copied();
                        let first = first.expect("busy when free only for a waiter first");
                        prop_assert!(first.owner != who);
                        prop_assert_eq!(retry_after_us, first.until_us - now);
                        prop_assert_eq!(token, state.map_or(0, |s| s.token()));
                    }
                },
                (LockOp::Leave { owner: who }, LockAnswer::Released { token, next }) => {
                    // Its own holding, given back.
                    let theirs = matches!(state, Some(LockState::Held { owner, token: t, .. })
                        if owner == who && t == token);
                    prop_assert!(theirs, "a leave released another's: {:?}", state);
                    let rest: Vec<Owner> = line.iter().filter(|o| **o != who).copied().collect();
                    prop_assert_eq!(next, rest.first().copied());
                }
                (LockOp::Leave { owner: who }, LockAnswer::Left { next }) => {
                    let rest: Vec<Owner> = line.iter().filter(|o| **o != who).copied().collect();
                    let awaited = rest.first().copied().filter(|_| before.is_none());
                    let woken = if line.contains(&who) { awaited } else { None };
                    prop_assert_eq!(next, woken);
                }
                (LockOp::Extend { owner: who, token, .. }, LockAnswer::Held { token: kept, .. }) => {
                    prop_assert_eq!(before.map(|b| (b.0, b.1)), Some((who, token)));
                    prop_assert_eq!(kept, token);
                }
                (LockOp::Release { owner: who, token }, LockAnswer::Released { token: given, next }) => {
                    prop_assert_eq!(given, token);
                    // The waiter the lock now awaits: the first still in line.
                    prop_assert_eq!(next, line.first().copied());
                    let theirs = matches!(state, Some(LockState::Held { owner, token: t, .. })
                        if owner == who && t == token);
                    prop_assert!(theirs, "released by another: {:?}", state);
                }
                (_, LockAnswer::NotHeld) => prop_assert!(stepped.write.is_none()),
                (op, answer) => prop_assert!(false, "{:?} answered {:?}", op, answer),
            }
            if let Some(written) = &stepped.write {
                prop_assert!(stepped.ttl_us >= RETAIN_US);
                prop_assert!(written.token() >= state.map_or(0, |s| s.token()));
                prop_assert!(written.line.len() <= MAX_LINE);
                // The others keep their order; a waiter asking again keeps
                // its place, a new one stands last; one that took the lock
                // or left is out.
                let after: Vec<Owner> = written.line.iter().map(|w| w.owner).collect();
                let me = match op {
                    LockOp::Acquire { owner, .. } | LockOp::Wait { owner, .. } | LockOp::Leave { owner } => Some(owner),
                    _ => None,
                };
                let others = |l: &[Owner]| l.iter().filter(|o| Some(**o) != me).copied().collect::<Vec<_>>();
                prop_assert_eq!(others(&after), others(&line));
                match (op, stepped.answer) {
                    (LockOp::Wait { owner: who, line_us, .. }, LockAnswer::Busy { .. }) => {
                        let at = written.line.iter().position(|w| w.owner == who);
                        prop_assert!(at.is_some(), "a busy waiter stands in the line");
                        prop_assert_eq!(written.line[at.unwrap_or(0)].until_us, now + line_us);
                        let was = line.iter().position(|o| *o == who);
                        prop_assert_eq!(at, Some(was.unwrap_or(line.len())));
                    }
                    _ => {
                        let out = me.map_or(true, |who| !after.contains(&who));
                        prop_assert!(out, "{:?} still in the line {:?}", op, after);
                    }
                }
                record = Some(written.clone());
            } else if let (LockOp::Wait { owner: who, line_us, .. }, LockAnswer::Busy { .. }) = (op, stepped.answer) {
                // Not written: its place has more than half its time left,
                // or the line is full without it.
                let place = record.as_ref().and_then(|r| r.waiting(now).find(|w| w.owner == who)).copied();
                let kept = place.is_some_and(|w| w.until_us - now > line_us / 2);
                prop_assert!(kept || (place.is_none() && line.len() >= MAX_LINE), "{:?} left out", who);
            }
            // The stored text reads back as written.
            if let Some(r) = &record {
                prop_assert_eq!(decode_state(encode_state(r).as_bytes()), Some(r.clone()));
            }
        }
    }

    /// Every op's input reads back as the op.
    #[test]
    fn inputs_read_back(w in 0u8..255, token in 0u64..1 << 53, lease_us in 1u64..1 << 40, now in 0u64..1 << 53) {
        for op in [
            LockOp::Acquire { owner: owner(w), lease_us },
            LockOp::Wait { owner: owner(w), lease_us, line_us: lease_us },
            LockOp::Leave { owner: owner(w) },
            LockOp::Extend { owner: owner(w), token, lease_us },
            LockOp::Release { owner: owner(w), token },
        ] {
            prop_assert_eq!(parse_input(op_input(op, now).as_bytes()).ok(), Some((op, now)));
        }
    }
}

/// A waiter first in line is not overtaken by a caller asking when the
/// lock is freed; once its place lapses, the lock goes to the next.
#[test]
fn a_free_lock_goes_to_the_first_waiter() {
    let (a, b, c) = (owner(1), owner(2), owner(3));
    let wait = |who| LockOp::Wait {
        owner: who,
        lease_us: 1_000,
        line_us: 500,
    };
    let held = lock_step(None, wait(a), 1_000).write.expect("taken");
    let token = held.token();
    let b_waits = lock_step(Some(&held), wait(b), 1_010)
        .write
        .expect("in line");
    let c_waits = lock_step(Some(&b_waits), wait(c), 1_020)
        .write
        .expect("in line");
    assert_eq!(kept(Some(&c_waits), 1_020), vec![b, c]);
    let released = lock_step(Some(&c_waits), LockOp::Release { owner: a, token }, 1_030);
    let free = released.write.expect("released");
    // c and a fresh caller are turned away: b is first.
    for who in [c, owner(4)] {
        let answer = lock_step(Some(&free), wait(who), 1_040).answer;
        assert_eq!(
            answer,
            LockAnswer::Busy {
                token,
                retry_after_us: 1_510 - 1_040
            }
        );
    }
    let try_lock = LockOp::Acquire {
        owner: owner(4),
        lease_us: 10,
    };
    assert!(matches!(
        lock_step(Some(&free), try_lock, 1_040).answer,
        LockAnswer::Busy { .. }
    ));
    // b lapses (never asked again): c, next, takes it; b is gone.
    let taken = lock_step(Some(&free), wait(c), 1_600);
    assert!(matches!(taken.answer, LockAnswer::Held { token: t, .. } if t > token));
    assert!(taken.write.expect("taken").line.is_empty());
    // Leaving gives the place up.
    let left = lock_step(Some(&free), LockOp::Leave { owner: b }, 1_040);
    assert_eq!(left.answer, LockAnswer::Left { next: Some(c) });
    assert_eq!(kept(left.write.as_ref(), 1_040), vec![c]);
}

#[test]
fn tokens_outlive_the_key_by_the_store_clock() {
    // Forgotten (no state): the token is the store's time, above any
    // given before it.
    let first = lock_step(
        None,
        LockOp::Acquire {
            owner: owner(1),
            lease_us: 10,
        },
        5_000,
    );
    assert_eq!(
        first.answer,
        LockAnswer::Held {
            token: 5_000,
            lease_us: 10
        }
    );
    // Remembered and ahead of the clock: one past the last.
    let free = LockRecord::new(LockState::Free { last_token: 9_000 });
    let next = lock_step(
        Some(&free),
        LockOp::Acquire {
            owner: owner(2),
            lease_us: 10,
        },
        6_000,
    );
    assert_eq!(
        next.answer,
        LockAnswer::Held {
            token: 9_001,
            lease_us: 10
        }
    );
}

#[test]
fn malformed_inputs_and_owners_are_refused() {
    for input in [
        &b""[..],
        b"a",
        b"a 00 10 0",
        b"a 0123456789abcdef0123456789ABCDEF 10 0",
        b"a 0123456789abcdef0123456789abcdef 0 0",
        b"a 0123456789abcdef0123456789abcdef 99999999999999999 0",
        b"a  0123456789abcdef0123456789abcdef 10 0",
        b"e 0123456789abcdef0123456789abcdef 10 0",
        b"r 0123456789abcdef0123456789abcdef 1 0 0",
        b"x 0123456789abcdef0123456789abcdef 1 0",
        b"w 0123456789abcdef0123456789abcdef 10 0 0",
        b"w 0123456789abcdef0123456789abcdef 10 0",
        b"l 0123456789abcdef0123456789abcdef 1 0",
    ] {
        let err = LockStep.apply(None, input, 1).expect_err("malformed input");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}");
    }
    let owner = Owner::random().expect("randomness");
    assert_eq!(Owner::from_hex(&owner.to_hex()), Some(owner));
    assert_ne!(Owner::random().expect("randomness"), owner);
}

fn memory(clock: &ManualClock) -> Arc<dyn StateBackend> {
    Arc::new(MemoryBackend::builder().clock(clock.clone()).build())
}

#[tokio::test]
async fn one_holder_at_a_time_and_release_by_drop() {
    let clock = ManualClock::new(1_000);
    let locks = Locks::new(memory(&clock));
    let lease = Duration::from_secs(10);
    let guard = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    assert!(locks.try_lock("a", lease).await.expect("store").is_none());
    // Another name is another lock.
    let other = locks
        .try_lock("b", lease)
        .await
        .expect("store")
        .expect("free");
    assert_eq!(
        locks.holder("a").await.expect("peek").map(|h| h.0),
        Some(guard.token())
    );
    let token = guard.token();
    drop(guard);
    // The release runs in the background: the next acquisition waits for
    // it (woken by its publication, or polling).
    let next = locks
        .lock("a", lease, Duration::from_secs(5))
        .await
        .expect("released");
    assert!(next.token() > token);
    next.unlock().await.expect("held");
    other.unlock().await.expect("held");
    assert_eq!(locks.holder("a").await.expect("peek"), None);
    assert!(locks.last_token("a").await.expect("peek") > token);
}

#[tokio::test]
async fn a_lease_the_store_ended_is_lost_for_its_holder() {
    let clock = ManualClock::new(1_000);
    let locks = Locks::new(memory(&clock));
    let guard = locks
        .try_lock("a", Duration::from_secs(2))
        .await
        .expect("store")
        .expect("free");
    // The store's clock ends the lease; another takes the lock.
    clock.advance(Duration::from_secs(3));
    let second = locks
        .try_lock("a", Duration::from_secs(2))
        .await
        .expect("store")
        .expect("the lease ran out");
    assert!(second.token() > guard.token());
    let err = guard
        .extend(Duration::from_secs(2))
        .await
        .expect_err("lost");
    assert_eq!(err.kind(), ErrorKind::Lost);
    assert!(guard.is_lost());
    guard.lost().await;
    let err = guard.unlock().await.expect_err("not the holder");
    assert_eq!(err.kind(), ErrorKind::Lost);
    // The second holding is untouched by the first one's release.
    assert_eq!(
        locks.holder("a").await.expect("peek").map(|h| h.0),
        Some(second.token())
    );
}

#[tokio::test(start_paused = true)]
async fn the_lost_signal_fires_when_the_lease_runs_out_locally() {
    let clock = ManualClock::new(1_000);
    let locks = Locks::new(memory(&clock));
    let guard = locks
        .try_lock("a", Duration::from_secs(1))
        .await
        .expect("store")
        .expect("free");
    assert!(!guard.is_lost());
    tokio::time::sleep(Duration::from_millis(980)).await;
    assert!(!guard.is_lost(), "lost before 99% of the lease");
    tokio::time::sleep(Duration::from_millis(20)).await;
    tokio::task::yield_now().await;
    assert!(guard.is_lost(), "not lost after the lease");
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_the_lock_until_release_and_stops_there() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    let locks = Locks::with_config(backend, LockConfig::default().renewing());
    let guard = locks
        .try_lock("a", Duration::from_secs(3))
        .await
        .expect("store")
        .expect("free");
    for _ in 0..10 {
        // Time passes on both clocks; the watchdog renews in between.
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.advance(Duration::from_secs(1));
    }
    assert!(!guard.is_lost());
    let (token, left) = locks.holder("a").await.expect("peek").expect("held");
    assert_eq!(token, guard.token());
    assert!(left > Duration::from_secs(1), "{left:?}");
    let lease = guard.holding.lease.clone();
    assert!(lease.keeping());
    guard.unlock().await.expect("held");
    // The watchdog ends with the release.
    tokio::task::yield_now().await;
    assert!(!lease.keeping(), "the watchdog runs on after the release");
    // No renewal after the release: the lock stays free.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(locks.holder("a").await.expect("peek"), None);
}

#[tokio::test(start_paused = true)]
async fn with_lock_stops_the_work_when_the_lease_is_lost() {
    let clock = ManualClock::new(1_000);
    let locks = Locks::new(memory(&clock));
    let done = locks
        .with_lock("a", Duration::from_secs(5), Duration::ZERO, || async { 7 })
        .await
        .expect("free");
    assert_eq!(done, 7);
    assert_eq!(locks.holder("a").await.expect("peek"), None);
    let err = locks
        .with_lock("a", Duration::from_secs(1), Duration::ZERO, || {
            tokio::time::sleep(Duration::from_secs(60))
        })
        .await
        .expect_err("lost mid-work");
    assert_eq!(err.kind(), ErrorKind::Lost);
}

#[tokio::test]
async fn a_waiter_gives_up_at_its_deadline_naming_the_holder() {
    let clock = ManualClock::new(1_000);
    let locks = Locks::new(memory(&clock));
    let guard = locks
        .try_lock("a", Duration::from_secs(60))
        .await
        .expect("store")
        .expect("free");
    let err = locks
        .lock("a", Duration::from_secs(1), Duration::from_millis(50))
        .await
        .expect_err("held");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        err.to_string().contains(&guard.token().to_string()),
        "{err}"
    );
    let err = locks
        .try_lock("a", Duration::ZERO)
        .await
        .expect_err("no lease");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

/// A line keeps [`MAX_LINE`] waiters; a holder leaving gives its lock
/// back to the first, and the first leaving a free lock names the next.
#[test]
fn a_full_line_keeps_its_first_and_leavers_name_the_next() {
    let holder = owner(200);
    let held = LockOp::Acquire {
        owner: holder,
        lease_us: 10_000,
    };
    let mut record = lock_step(None, held, 1_000).write.expect("taken");
    let token = record.token();
    for n in 0..=MAX_LINE as u8 {
        let wait = LockOp::Wait {
            owner: owner(n),
            lease_us: 1_000,
            line_us: 5_000,
        };
        let stepped = lock_step(Some(&record), wait, 1_010);
        assert!(matches!(stepped.answer, LockAnswer::Busy { .. }));
        match stepped.write {
            Some(written) => record = written,
            None => assert_eq!(usize::from(n), MAX_LINE, "only the one past a full line"),
        }
    }
    assert_eq!(record.line.len(), MAX_LINE);
    // The holder, leaving (as a waiter whose grant went unanswered), gives
    // the lock back to the first.
    let left = lock_step(Some(&record), LockOp::Leave { owner: holder }, 1_020);
    assert_eq!(
        left.answer,
        LockAnswer::Released {
            token,
            next: Some(owner(0))
        }
    );
    let free = left.write.expect("released");
    let left = lock_step(Some(&free), LockOp::Leave { owner: owner(0) }, 1_030);
    assert_eq!(
        left.answer,
        LockAnswer::Left {
            next: Some(owner(1))
        }
    );
    assert_eq!(kept(left.write.as_ref(), 1_030).len(), MAX_LINE - 1);
}

/// The waiters in the line of lock `name` now, first first.
async fn line_of(backend: &Arc<dyn StateBackend>, name: &str) -> Vec<Owner> {
    let raw = backend
        .update_atomic(&super::distributed::key_of(name), &LockStep, PEEK)
        .await
        .expect("peek");
    let (now, record) = parse_peek(&raw).expect("a peek");
    kept(record.as_ref(), now)
}

/// Whether `look` says yes within a bounded number of yields (the
/// waiters run between two looks: one thread, a memory store).
pub(super) async fn yields_until<Fut>(mut look: impl FnMut() -> Fut) -> bool
where
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2_000 {
        if look().await {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

/// Waits until the line of lock "a" is `n` long.
async fn line_is(backend: &Arc<dyn StateBackend>, n: usize) {
    let long = yields_until(|| async { line_of(backend, "a").await.len() == n }).await;
    assert!(
        long,
        "the line never was {n} long: {:?}",
        line_of(backend, "a").await
    );
}

#[tokio::test]
async fn waiters_take_the_lock_in_the_order_they_asked() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    let locks = Locks::new(backend.clone());
    let lease = Duration::from_secs(60);
    let holder = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 1..=2 {
        let (locks, order) = (locks.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks
                .lock("a", lease, Duration::from_secs(10))
                .await
                .expect("taken in turn");
            order.lock().expect("order").push(n);
            guard.unlock().await.expect("held");
        }));
        line_is(&backend, n).await;
    }
    // A third that gives up (dropped while it waits) leaves the line.
    let quitter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock("a", lease, Duration::from_secs(10)).await }
    });
    line_is(&backend, 3).await;
    quitter.abort();
    line_is(&backend, 2).await;
    holder.unlock().await.expect("held");
    // A caller asking now is turned away: the lock is the first waiter's.
    assert!(locks.try_lock("a", lease).await.expect("store").is_none());
    for waiter in waiters {
        waiter.await.expect("a waiter");
    }
    assert_eq!(*order.lock().expect("order"), vec![1, 2]);
    assert!(line_of(&backend, "a").await.is_empty());
    // A waiter that times out leaves before it answers.
    let holder = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    let err = locks
        .lock("a", lease, Duration::from_millis(20))
        .await
        .expect_err("held");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(line_of(&backend, "a").await.is_empty());
    holder.unlock().await.expect("held");
    assert!(locks.try_lock("a", lease).await.expect("store").is_some());
}

/// Unfair locks: no line (a caller asking at a release may take the lock
/// first), and a release wakes every waiter (here the only way to wake
/// within the test: the poll interval is a minute).
#[tokio::test]
async fn an_unfair_lock_keeps_no_line_and_wakes_all() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    let mut config = LockConfig::default().unfair();
    config.poll_every = Duration::from_secs(60);
    let locks = Locks::with_config(backend.clone(), config);
    let lease = Duration::from_secs(60);
    let holder = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock("a", lease, Duration::from_secs(30)).await }
    });
    // Asked at least once (it runs when this task yields), and stands in
    // no line.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(line_of(&backend, "a").await.is_empty());
    holder.unlock().await.expect("held");
    let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the release, not by a poll")
        .expect("the waiter")
        .expect("taken");
    woken.unlock().await.expect("held");
}

/// A release wakes the first waiter in line by name, and publishes
/// nothing when nobody waits.
#[tokio::test]
async fn a_release_wakes_the_first_waiter_and_only_when_one_waits() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    let locks = Locks::new(backend.clone());
    let lease = Duration::from_secs(60);
    let mut releases = backend
        .subscribe(&super::distributed::channel_of("a"))
        .await
        .expect("subscribe");
    let alone = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    alone.unlock().await.expect("held");
    let holder = locks
        .try_lock("a", lease)
        .await
        .expect("store")
        .expect("free");
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock("a", lease, Duration::from_secs(10)).await }
    });
    line_is(&backend, 1).await;
    let first = line_of(&backend, "a").await[0];
    holder.unlock().await.expect("held");
    // The first message is the second release's: the first published none.
    let message = tokio::time::timeout(Duration::from_secs(5), releases.next_message())
        .await
        .expect("a release published")
        .expect("open")
        .expect("a message");
    assert_eq!(message.payload, first.to_hex().as_bytes());
    waiter
        .await
        .expect("the waiter")
        .expect("woken")
        .unlock()
        .await
        .expect("held");
}

#[tokio::test]
async fn a_fenced_write_refuses_an_older_token() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    assert_eq!(
        fenced_put(&*backend, b"r", 5, b"five")
            .await
            .expect("store"),
        Fenced::Written
    );
    assert_eq!(
        fenced_put(&*backend, b"r", 5, b"again")
            .await
            .expect("store"),
        Fenced::Written
    );
    assert_eq!(
        fenced_put(&*backend, b"r", 4, b"old").await.expect("store"),
        Fenced::Stale { highest: 5 }
    );
    assert_eq!(
        fenced_put(&*backend, b"r", 9, b"new \x00 bytes")
            .await
            .expect("store"),
        Fenced::Written
    );
    let (token, value) = fenced_get(&*backend, b"r")
        .await
        .expect("store")
        .expect("set");
    assert_eq!((token, value.as_ref()), (9, &b"new \x00 bytes"[..]));
    assert_eq!(fenced_get(&*backend, b"none").await.expect("store"), None);
}
