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
    Extend(u8, u64),
    Release(u8),
}

fn ops() -> impl Strategy<Value = Vec<(Op, u64)>> {
    let who = 0u8..5;
    let lease = 1u64..5_000;
    let op = prop_oneof![
        3 => (who.clone(), lease.clone()).prop_map(|(w, l)| Op::Acquire(w, l)),
        1 => (who.clone(), lease).prop_map(|(w, l)| Op::Extend(w, l)),
        2 => who.prop_map(Op::Release),
    ];
    let dt = prop_oneof![Just(0u64), 0u64..3_000];
    prop::collection::vec((op, dt), 1..80)
}

proptest! {
    /// Never more live holders than permits; a free permit is given to
    /// the first who asks; only a holder renews or gives back its permit;
    /// the answer counts the holders left.
    #[test]
    fn the_step_keeps_at_most_n_holders(permits in 1u64..4, ops in ops()) {
        let mut now = 1_000_000u64;
        let mut held: Vec<(Owner, u64)> = Vec::new();
        for (op, dt) in ops {
            now += dt;
            let live_before: Vec<Owner> =
                held.iter().filter(|h| h.1 > now).map(|h| h.0).collect();
            let op = match op {
                Op::Acquire(w, lease_us) => SemaphoreOp::Acquire { owner: owner(w), permits, lease_us },
                Op::Extend(w, lease_us) => SemaphoreOp::Extend { owner: owner(w), lease_us },
                Op::Release(w) => SemaphoreOp::Release { owner: owner(w) },
            };
            let (write, answer) = semaphore_step(&held, op, now);
            let after = write.clone().unwrap_or_else(|| held.clone());
            let live_after: Vec<Owner> =
                after.iter().filter(|h| h.1 > now).map(|h| h.0).collect();
            prop_assert!(live_after.len() as u64 <= permits.max(live_before.len() as u64));
            let mut unique = live_after.clone();
            unique.sort_by_key(|o| o.0);
            unique.dedup();
            prop_assert_eq!(unique.len(), live_after.len(), "an owner twice");
            match op {
                SemaphoreOp::Acquire { owner, lease_us, .. } => {
                    let could = live_before.contains(&owner) || (live_before.len() as u64) < permits;
                    if could {
                        prop_assert_eq!(answer, LockAnswer::Held { token: live_after.len() as u64, lease_us });
                        prop_assert!(after.contains(&(owner, now + lease_us)));
                    } else {
                        let busy = matches!(answer, LockAnswer::Busy { token, retry_after_us }
                            if token == permits && retry_after_us > 0);
                        prop_assert!(busy, "{:?}", answer);
                        prop_assert!(write.is_none());
                    }
                }
                SemaphoreOp::Extend { owner, lease_us } => {
                    if live_before.contains(&owner) {
                        prop_assert!(after.contains(&(owner, now + lease_us)));
                        let held = matches!(answer, LockAnswer::Held { .. });
                        prop_assert!(held, "{:?}", answer);
                    } else {
                        prop_assert_eq!(answer, LockAnswer::NotHeld);
                        prop_assert!(write.is_none());
                    }
                }
                SemaphoreOp::Release { owner } => {
                    if live_before.contains(&owner) {
                        prop_assert!(!live_after.contains(&owner));
                        prop_assert_eq!(answer, LockAnswer::Released { token: live_before.len() as u64 - 1, next: None });
                    } else {
                        prop_assert_eq!(answer, LockAnswer::NotHeld);
                    }
                }
            }
            // Others' permits are untouched.
            for other in live_before.iter().filter(|o| {
                **o != match op {
                    SemaphoreOp::Acquire { owner, .. }
                    | SemaphoreOp::Extend { owner, .. }
                    | SemaphoreOp::Release { owner } => owner,
                }
            }) {
                prop_assert!(live_after.contains(other));
            }
            held = after;
        }
    }

    #[test]
    fn holders_read_back(expiries in prop::collection::vec(0u64..1 << 53, 1..20)) {
        let held: Vec<(Owner, u64)> = expiries
            .iter()
            .enumerate()
            .map(|(i, e)| (owner(i as u8), *e))
            .collect();
        prop_assert_eq!(decode_holders(encode_holders(&held).as_bytes()), held);
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
        "a 0123456789ABCDEF0123456789abcdef 2 10 0".into(),
    ] {
        let err = SemaphoreStep
            .apply(None, input.as_bytes(), 1)
            .expect_err("malformed input");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}");
    }
    for raw in ["", "m ", "h 1 2", &format!("m {o}"), &format!("m {o} x")] {
        assert_eq!(decode_holders(raw.as_bytes()), Vec::new(), "{raw:?}");
    }
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
