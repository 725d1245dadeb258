//! The semaphore's step as a pure function (properties over random
//! operation sequences), its wire texts, and [`Semaphore`] over the
//! memory backend.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::machine::{LockAnswer, Owner};
use super::*;
use crate::{AtomicUpdate, ErrorKind, ManualClock, MemoryBackend, StateBackend};

fn owner(n: u8) -> Owner {
    Owner([n + 1; 16])
}

/// A generated operation by one of five owners.
#[derive(Debug, Clone)]
enum Op {
    Acquire(u8, u64),
    Wait(u8, u64, u64),
    Leave(u8),
    Extend(u8, u64),
    Release(u8),
}

fn ops() -> impl Strategy<Value = Vec<(Op, u64)>> {
    let who = 0u8..5;
    let lease = 1u64..5_000;
    let op = prop_oneof![
        3 => (who.clone(), lease.clone()).prop_map(|(w, l)| Op::Acquire(w, l)),
        3 => (who.clone(), lease.clone(), 1u64..6_000).prop_map(|(w, l, p)| Op::Wait(w, l, p)),
        1 => who.clone().prop_map(Op::Leave),
        1 => (who.clone(), lease).prop_map(|(w, l)| Op::Extend(w, l)),
        2 => who.prop_map(Op::Release),
    ];
    let dt = prop_oneof![Just(0u64), 0u64..3_000];
    prop::collection::vec((op, dt), 1..80)
}

fn live(list: &[(Owner, u64)], now: u64) -> Vec<Owner> {
    list.iter().filter(|h| h.1 > now).map(|h| h.0).collect()
}

proptest! {
    /// Never more live holders than permits; a free permit goes to an
    /// asker only if more are free than waiters stand before it (the line
    /// first, in order); a waiter not served keeps a place; only a holder
    /// renews or gives back its permit; the answer counts the holders.
    #[test]
    fn the_step_keeps_at_most_n_holders_in_line_order(permits in 1u64..4, ops in ops()) {
        let mut now = 1_000_000u64;
        let mut state = SemaphoreState::default();
        for (op, dt) in ops {
            now += dt;
            let held_before = live(&state.held, now);
            let line_before = live(&state.line, now);
            let op = match op {
                Op::Acquire(w, lease_us) => SemaphoreOp::Acquire { owner: owner(w), permits, lease_us },
                Op::Wait(w, lease_us, line_us) => SemaphoreOp::Wait { owner: owner(w), permits, lease_us, line_us },
                Op::Leave(w) => SemaphoreOp::Leave { owner: owner(w) },
                Op::Extend(w, lease_us) => SemaphoreOp::Extend { owner: owner(w), lease_us },
                Op::Release(w) => SemaphoreOp::Release { owner: owner(w) },
            };
            let (write, answer) = semaphore_step(&state, op, now);
            let after = write.clone().unwrap_or_else(|| state.clone());
            let held_after = live(&after.held, now);
            let line_after = live(&after.line, now);
            prop_assert!(held_after.len() as u64 <= permits.max(held_before.len() as u64));
            for list in [&held_after, &line_after] {
                let mut unique = list.clone();
                unique.sort_by_key(|o| o.0);
                unique.dedup();
                prop_assert_eq!(unique.len(), list.len(), "an owner twice");
            }
            prop_assert!(line_after.iter().all(|w| !held_after.contains(w)), "a holder in line");
            match op {
                SemaphoreOp::Acquire { owner, lease_us, .. } | SemaphoreOp::Wait { owner, lease_us, .. } => {
                    let free = permits.saturating_sub(held_before.len() as u64);
                    let ahead = line_before.iter().take_while(|w| **w != owner).count() as u64;
                    if held_before.contains(&owner) || free > ahead {
                        prop_assert_eq!(answer, LockAnswer::Held { token: held_after.len() as u64, lease_us });
                        prop_assert!(after.held.contains(&(owner, now + lease_us)));
                        prop_assert!(!line_after.contains(&owner));
                    } else {
                        let busy = matches!(answer, LockAnswer::Busy { token, retry_after_us }
                            if token == held_before.len() as u64 && retry_after_us > 0);
                        prop_assert!(busy, "{:?}", answer);
                        prop_assert!(!held_after.contains(&owner));
                        if let SemaphoreOp::Wait { .. } = op {
                            // In line (unless the line is full), where it was.
                            prop_assert!(line_after.contains(&owner), "in line");
                            let kept: Vec<&Owner> = line_after.iter().filter(|w| line_before.contains(w)).collect();
                            let was: Vec<&Owner> = line_before.iter().collect();
                            prop_assert_eq!(kept, was, "the line's order");
                        } else {
                            prop_assert!(write.is_none());
                        }
                    }
                }
                SemaphoreOp::Leave { owner } => {
                    prop_assert!(!line_after.contains(&owner) && !held_after.contains(&owner));
                    if held_before.contains(&owner) {
                        prop_assert_eq!(answer, LockAnswer::Released { token: held_before.len() as u64 - 1, next: None });
                    } else {
                        prop_assert_eq!(answer, LockAnswer::Left { next: None });
                    }
                }
                SemaphoreOp::Extend { owner, lease_us } => {
                    if held_before.contains(&owner) {
                        prop_assert!(after.held.contains(&(owner, now + lease_us)));
                        let held = matches!(answer, LockAnswer::Held { .. });
                        prop_assert!(held, "{:?}", answer);
                    } else {
                        prop_assert_eq!(answer, LockAnswer::NotHeld);
                        prop_assert!(write.is_none());
                    }
                }
                SemaphoreOp::Release { owner } => {
                    if held_before.contains(&owner) {
                        prop_assert!(!held_after.contains(&owner));
                        prop_assert_eq!(answer, LockAnswer::Released { token: held_before.len() as u64 - 1, next: None });
                    } else {
                        prop_assert_eq!(answer, LockAnswer::NotHeld);
                    }
                }
            }
            // Others' permits are untouched, and so are others' places
            // (but for the one served).
            let me = match op {
                SemaphoreOp::Acquire { owner, .. }
                | SemaphoreOp::Wait { owner, .. }
                | SemaphoreOp::Leave { owner }
                | SemaphoreOp::Extend { owner, .. }
                | SemaphoreOp::Release { owner } => owner,
            };
            for other in held_before.iter().filter(|o| **o != me) {
                prop_assert!(held_after.contains(other));
            }
            for other in line_before.iter().filter(|o| **o != me) {
                prop_assert!(line_after.contains(other));
            }
            state = after;
        }
    }

    #[test]
    fn states_read_back(
        expiries in prop::collection::vec(0u64..1 << 53, 0..20),
        places in prop::collection::vec(0u64..1 << 53, 0..5),
    ) {
        let state = SemaphoreState {
            held: expiries.iter().enumerate().map(|(i, e)| (owner(i as u8), *e)).collect(),
            line: places.iter().enumerate().map(|(i, e)| (owner(100 + i as u8), *e)).collect(),
        };
        prop_assert_eq!(decode_semaphore(encode_semaphore(&state).as_bytes()), state.clone());
        prop_assert_eq!(decode_holders(encode_holders(&state.held).as_bytes()), state.held);
    }
}

#[test]
fn malformed_inputs_and_states_are_refused() {
    let o = "0123456789abcdef0123456789abcdef";
    for input in [
        String::new(),
        "a".into(),
        format!("a {o} 0 10 0"),
        format!("a {o} 4097 10 0"),
        format!("a {o} 2 0 0"),
        format!("a {o} 2 99999999999999999 0"),
        format!("a  {o} 2 10 0"),
        format!("a {o} 2 10"),
        format!("e {o} 10"),
        format!("r {o} 1 0"),
        format!("x {o} 0"),
        format!("w {o} 2 10 0"),
        format!("w {o} 2 10 0 0"),
        format!("w {o} 0 10 10 0"),
        format!("l {o}"),
        format!("l {o} 1 0"),
        "a 0123456789ABCDEF0123456789abcdef 2 10 0".into(),
    ] {
        let err = SemaphoreStep
            .apply(None, input.as_bytes(), 1)
            .expect_err("malformed input");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}");
    }
    for raw in [
        "",
        "m ",
        "h 1 2",
        &format!("m {o}"),
        &format!("m {o} x"),
        &format!("m {o} 5 w"),
        &format!("m w {o}"),
        &format!("m {o} 5 w {o} 6 w {o} 7"),
    ] {
        assert_eq!(
            decode_semaphore(raw.as_bytes()),
            SemaphoreState::default(),
            "{raw:?}"
        );
    }
    let waiting = format!("m w {o} 6");
    assert_eq!(decode_semaphore(waiting.as_bytes()).line.len(), 1);
    let stored = format!("m {o} 5");
    assert_eq!(decode_holders(stored.as_bytes()).len(), 1);
}

fn memory(clock: &ManualClock) -> Arc<dyn StateBackend> {
    Arc::new(MemoryBackend::builder().clock(clock.clone()).build())
}

#[tokio::test]
async fn n_permits_at_a_time_and_given_back_on_drop() {
    let clock = ManualClock::new(1_000);
    let store = memory(&clock);
    let semaphore = Semaphore::new(store.clone(), "jobs", 3).expect("semaphore");
    let lease = Duration::from_secs(10);
    let mut permits = Vec::new();
    for _ in 0..3 {
        permits.push(
            semaphore
                .try_acquire(lease)
                .await
                .expect("store")
                .expect("free"),
        );
    }
    assert!(semaphore.try_acquire(lease).await.expect("store").is_none());
    assert_eq!(semaphore.held().await.expect("peek"), 3);
    // Another name is another semaphore.
    let other = Semaphore::new(store, "other", 1).expect("semaphore");
    let theirs = other
        .try_acquire(lease)
        .await
        .expect("store")
        .expect("free");
    drop(permits.pop());
    // The release runs in the background: the waiter is woken by it.
    let next = semaphore
        .acquire(lease, Duration::from_secs(5))
        .await
        .expect("given back");
    assert!(semaphore.try_acquire(lease).await.expect("store").is_none());
    next.release().await.expect("held");
    permits
        .pop()
        .expect("a permit")
        .release()
        .await
        .expect("held");
    let a = semaphore
        .try_acquire(lease)
        .await
        .expect("store")
        .expect("free");
    let b = semaphore
        .try_acquire(lease)
        .await
        .expect("store")
        .expect("free");
    assert!(semaphore.try_acquire(lease).await.expect("store").is_none());
    drop((a, b, permits, theirs));
}

#[tokio::test]
async fn a_dead_holders_permit_comes_back_after_its_lease() {
    let clock = ManualClock::new(1_000);
    let semaphore = Semaphore::new(memory(&clock), "jobs", 1).expect("semaphore");
    let permit = semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .expect("free");
    // As if its holder died: the lease is never given back.
    std::mem::forget(permit);
    assert_eq!(semaphore.held().await.expect("peek"), 1);
    assert!(semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .is_none());
    clock.advance(Duration::from_millis(2_001));
    assert_eq!(semaphore.held().await.expect("peek"), 0);
    let second = semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .expect("the lease ran out");
    second.release().await.expect("held");
}

#[tokio::test]
async fn a_permit_the_store_ended_is_lost_and_not_given_back_twice() {
    let clock = ManualClock::new(1_000);
    let semaphore = Semaphore::new(memory(&clock), "jobs", 1).expect("semaphore");
    let first = semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .expect("free");
    clock.advance(Duration::from_secs(3));
    let second = semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .expect("the lease ran out");
    let err = first
        .extend(Duration::from_secs(2))
        .await
        .expect_err("lost");
    assert_eq!(err.kind(), ErrorKind::Lost);
    assert!(first.is_lost());
    let err = first.release().await.expect_err("not a holder");
    assert_eq!(err.kind(), ErrorKind::Lost);
    // The second permit is untouched by the first one's release.
    assert!(semaphore
        .try_acquire(Duration::from_secs(2))
        .await
        .expect("store")
        .is_none());
    second.release().await.expect("held");
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_a_permit_until_release() {
    let clock = ManualClock::new(1_000);
    let semaphore =
        Semaphore::with_config(memory(&clock), "jobs", 1, LockConfig::default().renewing())
            .expect("semaphore");
    let permit = semaphore
        .try_acquire(Duration::from_secs(3))
        .await
        .expect("store")
        .expect("free");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.advance(Duration::from_secs(1));
    }
    assert!(!permit.is_lost());
    assert!(semaphore
        .try_acquire(Duration::from_secs(3))
        .await
        .expect("store")
        .is_none());
    permit.release().await.expect("held");
    tokio::time::sleep(Duration::from_secs(5)).await;
    clock.advance(Duration::from_secs(5));
    assert!(semaphore
        .try_acquire(Duration::from_secs(3))
        .await
        .expect("store")
        .is_some());
}

#[test]
fn a_semaphore_has_one_to_4096_permits() {
    let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    for permits in [0, MAX_PERMITS + 1] {
        let err = Semaphore::new(store.clone(), "s", permits).expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
    assert_eq!(
        Semaphore::new(store, "s", MAX_PERMITS)
            .expect("allowed")
            .permits(),
        MAX_PERMITS
    );
}

/// The waiters in the line of semaphore `name` now, first first.
async fn line_of(backend: &Arc<dyn StateBackend>, name: &str) -> Vec<Owner> {
    let key = format!("semaphore:{name}");
    let raw = backend
        .update_atomic(key.as_bytes(), &SemaphoreStep, super::shared::PEEK)
        .await
        .expect("peek");
    let text = std::str::from_utf8(&raw).expect("text");
    let (now, state) = text.split_once(' ').expect("a peek");
    let now: u64 = now.parse().expect("the store's time");
    let state = decode_semaphore(state.as_bytes());
    state
        .line
        .iter()
        .filter(|w| w.1 > now)
        .map(|w| w.0)
        .collect()
}

/// Waits until the line of semaphore "s" is `n` long.
async fn line_is(backend: &Arc<dyn StateBackend>, n: usize) {
    let long =
        super::tests::yields_until(|| async { line_of(backend, "s").await.len() == n }).await;
    assert!(
        long,
        "the line never was {n} long: {:?}",
        line_of(backend, "s").await
    );
}

#[tokio::test]
async fn waiters_take_permits_in_the_order_they_asked() {
    let clock = ManualClock::new(1_000);
    let backend = memory(&clock);
    let semaphore = Semaphore::new(backend.clone(), "s", 2).expect("semaphore");
    let lease = Duration::from_secs(60);
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(
            semaphore
                .try_acquire(lease)
                .await
                .expect("store")
                .expect("free"),
        );
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 1..=3 {
        let (semaphore, order) = (semaphore.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let permit = semaphore
                .acquire(lease, Duration::from_secs(10))
                .await
                .expect("taken in turn");
            order.lock().expect("order").push(n);
            // Held until the test lets it go.
            permit
        }));
        line_is(&backend, n).await;
    }
    // A fourth that gives up (dropped while it waits) leaves the line.
    let quitter = tokio::spawn({
        let semaphore = semaphore.clone();
        async move { semaphore.acquire(lease, Duration::from_secs(10)).await }
    });
    line_is(&backend, 4).await;
    quitter.abort();
    line_is(&backend, 3).await;
    let mut waiters = waiters.into_iter();
    let mut permits = Vec::new();
    for turn in 1..=3 {
        // A permit freed: a caller asking now is turned away (the permit
        // is the first waiter's), and the first waiter takes it.
        match holders.pop() {
            Some(holder) => holder.release().await.expect("held"),
            None => {
                let permit: SemaphorePermit = permits.remove(0);
                permit.release().await.expect("held");
            }
        }
        assert!(semaphore.try_acquire(lease).await.expect("store").is_none());
        let permit = waiters
            .next()
            .expect("a waiter")
            .await
            .expect("a waiter's task");
        permits.push(permit);
        assert_eq!(order.lock().expect("order").len(), turn);
    }
    assert_eq!(*order.lock().expect("order"), vec![1, 2, 3]);
    assert!(line_of(&backend, "s").await.is_empty());
    // A waiter that times out leaves before it answers.
    let err = semaphore
        .acquire(lease, Duration::from_millis(20))
        .await
        .expect_err("both held");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(line_of(&backend, "s").await.is_empty());
    drop((holders, permits));
}

/// A waiter's place: taken, kept while more than half its time is left,
/// refreshed after; a Busy answer says when a permit may free up (the
/// soonest lease's end when none is free, the place before it that lapses
/// first when one is kept for the line).
#[test]
fn a_place_is_kept_until_half_its_time_and_busy_says_until_when() {
    let (a, b, c) = (owner(0), owner(1), owner(2));
    let wait = |who, now, state: &SemaphoreState| {
        let op = SemaphoreOp::Wait {
            owner: who,
            permits: 1,
            lease_us: 50,
            line_us: 400,
        };
        semaphore_step(state, op, now)
    };
    let held = SemaphoreState {
        held: vec![(a, 1_000)],
        line: Vec::new(),
    };
    let (placed, busy) = wait(b, 100, &held);
    let placed = placed.expect("placed");
    assert_eq!(placed.line, vec![(b, 500)]);
    let until_the_lease_ends = LockAnswer::Busy {
        token: 1,
        retry_after_us: 900,
    };
    assert_eq!(busy, until_the_lease_ends);
    // 201 µs of 400 left: kept (nothing written); 200: refreshed.
    assert_eq!(wait(b, 299, &placed), (None, until_the_lease_ends_at(299)));
    let (refreshed, _) = wait(b, 300, &placed);
    assert_eq!(refreshed.expect("refreshed").line, vec![(b, 700)]);
    let (free, _) = semaphore_step(&placed, SemaphoreOp::Release { owner: a }, 400);
    let free = free.expect("released");
    let (behind, busy) = wait(c, 400, &free);
    assert_eq!(
        busy,
        LockAnswer::Busy {
            token: 0,
            retry_after_us: 100
        },
        "the permit is b's until its place lapses at 500"
    );
    assert_eq!(behind.expect("placed").line, vec![(b, 500), (c, 800)]);
    let try_c = SemaphoreOp::Acquire {
        owner: c,
        permits: 1,
        lease_us: 50,
    };
    assert_eq!(semaphore_step(&free, try_c, 400).0, None, "no write");
    // Once b's place lapsed, the permit is anyone's.
    assert!(matches!(
        semaphore_step(&free, try_c, 500).1,
        LockAnswer::Held { .. }
    ));
}

fn until_the_lease_ends_at(now: u64) -> LockAnswer {
    LockAnswer::Busy {
        token: 1,
        retry_after_us: 1_000 - now,
    }
}
