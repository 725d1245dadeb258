//! The algorithms' promises as properties, and the local limiters against
//! the pure function.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::backend::clock::{Clock, ManualClock};

fn quota(algorithm: Algorithm, count: u64, period_us: u64, burst: u64) -> Quota {
    let builder = Quota::with_period(count, Duration::from_micros(period_us)).algorithm(algorithm);
    match algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(burst),
        _ => builder,
    }
    .build()
    .expect("a valid quota")
}

fn any_quota() -> impl Strategy<Value = Quota> {
    (
        prop::sample::select(Algorithm::ALL.to_vec()),
        1u64..20,
        prop::sample::select(vec![1_000u64, 7_000, 10_000, 60_000]),
        1u64..12,
    )
        .prop_map(|(algorithm, count, period, burst)| quota(algorithm, count, period, burst))
}

/// Requests as (µs since the previous one, cost).
fn requests() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec(
        (prop_oneof![Just(0u64), 0u64..3_000, 0u64..40_000], 0u64..6),
        1..120,
    )
}

/// Runs `requests` through [`decide`] from no state at `start`: each
/// request's time, cost and decision, and the state before it.
fn run(
    quota: &Quota,
    start: u64,
    requests: &[(u64, u64)],
) -> Vec<(u64, u64, Decision, Option<LimitState>)> {
    let mut state = None;
    let mut now = start;
    requests
        .iter()
        .map(|&(gap, cost)| {
            now += gap;
            let decided = decide(quota, state, cost, now);
            let before = state;
            if let Some(write) = decided.write {
                state = Some(write);
            }
            (now, cost, decided.decision, before)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A bucket (GCRA, token bucket) never admits more than its burst
    /// plus its rate over any stretch of time; a fixed window never more
    /// than its count in a window.
    #[test]
    fn no_stretch_of_time_admits_more_than_the_quota(
        quota in any_quota(), start in 0u64..1_000_000_000, requests in requests()
    ) {
        let admitted: Vec<(u64, u64)> = run(&quota, start, &requests)
            .into_iter()
            .filter(|(_, _, d, _)| d.is_allowed())
            .map(|(now, cost, _, _)| (now, cost))
            .collect();
        for (i, &(from, _)) in admitted.iter().enumerate() {
            let mut taken = 0;
            for &(to, cost) in &admitted[i..] {
                taken += cost;
                let bound = match quota.algorithm() {
                    Algorithm::Gcra | Algorithm::TokenBucket => {
                        // burst + rate × (to − from), in permits × period.
                        quota.burst() * quota.period_us() + (to - from) * quota.count()
                    }
                    Algorithm::FixedWindow if to / quota.period_us() == from / quota.period_us() => {
                        quota.count() * quota.period_us()
                    }
                    _ => u64::MAX,
                };
                prop_assert!(
                    taken * quota.period_us() <= bound,
                    "{quota}: {taken} permits between {from} and {to}"
                );
            }
        }
    }

    /// The figures are exact: a denied request passes at exactly its
    /// retry-after and not a microsecond sooner; `remaining` permits pass
    /// and one more does not; at `reset_after` the limit is whole and not
    /// a microsecond sooner; and only a cost above the burst is too large.
    #[test]
    fn the_figures_a_decision_reports_are_exact(
        quota in any_quota(), start in 0u64..1_000_000_000, requests in requests()
    ) {
        for (now, cost, decision, before) in run(&quota, start, &requests) {
            prop_assert_eq!(decision.verdict == Verdict::TooLarge, cost > quota.burst());
            prop_assert_eq!(decision.limit, quota.burst());
            let after = if decision.is_allowed() {
                decide(&quota, before, cost, now).write.or(before)
            } else {
                before
            };
            if decision.verdict == Verdict::Denied {
                let wait = decision.retry_after_us;
                prop_assert!(wait > 0);
                prop_assert!(decide(&quota, before, cost, now + wait).decision.is_allowed(),
                    "{quota}: cost {cost} at {now} not allowed after {wait}");
                prop_assert!(!decide(&quota, before, cost, now + wait - 1).decision.is_allowed(),
                    "{quota}: cost {cost} at {now} allowed before {wait}");
            }
            let remaining = decision.remaining;
            prop_assert!(decide(&quota, after, remaining, now).decision.is_allowed());
            prop_assert!(!decide(&quota, after, remaining + 1, now).decision.is_allowed());
            let reset = decision.reset_after_us;
            prop_assert!(is_idle(&quota, after, now + reset), "{quota}: not whole after {reset}");
            if reset > 0 {
                prop_assert!(!is_idle(&quota, after, now + reset - 1), "{quota}: whole before {reset}");
            }
        }
    }

    /// Giving back what was just taken leaves the limit as it was (a
    /// sliding window: at most as it was).
    #[test]
    fn a_refund_undoes_what_was_taken(
        quota in any_quota(), start in 0u64..1_000_000_000, requests in requests(), cost in 1u64..6
    ) {
        let runs = run(&quota, start, &requests);
        let (now, _, _, _) = *runs.last().expect("a request");
        let before = runs.iter().fold(None, |state, (at, cost, _, _)| {
            decide(&quota, state, *cost, *at).write.or(state)
        });
        let taken = decide(&quota, before, cost, now);
        if taken.decision.is_allowed() {
            let back = refund(&quota, taken.write, cost, now);
            let was = decide(&quota, before, 0, now).decision;
            prop_assert_eq!(decide(&quota, back.write, 0, now).decision, back.decision);
            if quota.algorithm() == Algorithm::SlidingWindow {
                // Given back from the previous window first: never more
                // than was taken.
                prop_assert!(taken.decision.remaining <= back.decision.remaining);
                prop_assert!(back.decision.remaining <= was.remaining);
            } else {
                prop_assert_eq!(back.decision, was);
            }
        }
    }

    /// Where the interval is a whole number of microseconds the token
    /// bucket decides exactly as GCRA.
    #[test]
    fn the_token_bucket_decides_as_gcra_on_a_whole_interval(
        count in 1u64..20, burst in 1u64..12, start in 0u64..1_000_000_000, requests in requests()
    ) {
        let period = count * 997;
        let gcra = quota(Algorithm::Gcra, count, period, burst);
        let bucket = quota(Algorithm::TokenBucket, count, period, burst);
        let ours: Vec<Decision> = run(&gcra, start, &requests).into_iter().map(|r| r.2).collect();
        let theirs: Vec<Decision> = run(&bucket, start, &requests).into_iter().map(|r| r.2).collect();
        prop_assert_eq!(ours, theirs);
    }

    /// The local limiter decides exactly what the pure function decides.
    #[test]
    fn the_local_limiter_decides_as_the_pure_function(
        quota in any_quota(), start in 0u64..1_000_000_000, requests in requests()
    ) {
        let clock = ManualClock::new(0);
        clock.advance(Duration::from_micros(start));
        let limiter = LocalLimiter::with_clock(quota, clock.clone());
        let keyed = KeyedLimiter::with_clock(quota, clock.clone());
        for (now, cost, decision, _) in run(&quota, start, &requests) {
            clock.advance(Duration::from_micros(now - clock.now_micros()));
            prop_assert_eq!(limiter.check_n(cost), decision);
            prop_assert_eq!(keyed.check_n(&7u8, cost), decision);
        }
    }
}

#[test]
fn a_request_of_zero_only_asks_even_over_a_lowered_limit() {
    // Counts of a limit of 10 read by a limit of 5, early in the window:
    // more is used than the budget holds.
    let quota = quota(Algorithm::SlidingWindow, 5, 3_000_000, 5);
    let state = LimitState::SlidingWindow {
        start_us: 3_000_000,
        previous: 10,
        current: 9,
    };
    let asked = decide(&quota, Some(state), 0, 3_100_000);
    assert_eq!(
        (asked.decision.verdict, asked.decision.remaining),
        (Verdict::Allowed, 0)
    );
    assert!(!is_idle(&quota, Some(state), 1_000));
}

#[test]
fn a_sliding_window_weighs_the_previous_window() {
    let quota = quota(Algorithm::SlidingWindow, 10, 1_000_000, 10);
    let mut state = None;
    for _ in 0..10 {
        let decided = decide(&quota, state, 1, 500_000);
        assert!(decided.decision.is_allowed());
        state = decided.write;
    }
    // A quarter into the next window the previous one still weighs ¾:
    // 7.5 of 10 are taken, so 2 pass and the third waits until the
    // weight has fallen to 0.7 (at 30% of the window).
    let next = decide(&quota, state, 3, 1_250_000).decision;
    assert_eq!((next.verdict, next.remaining), (Verdict::Denied, 2));
    assert_eq!(next.retry_after_us, 50_000);
    assert!(decide(&quota, state, 2, 1_250_000).decision.is_allowed());
}

#[test]
fn threads_sharing_a_limiter_take_each_permit_once() {
    for algorithm in Algorithm::ALL {
        let limit = quota(algorithm, 1_000, 1_000_000, 1_000);
        let limiter = Arc::new(LocalLimiter::with_clock(limit, ManualClock::new(5_000)));
        let admitted: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let limiter = limiter.clone();
                    scope.spawn(move || {
                        (0..2_000).filter(|_| limiter.check().is_allowed()).count() as u64
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("no panic"))
                .sum()
        });
        assert_eq!(admitted, 1_000, "{algorithm}: the clock stands still");
        assert_eq!(limiter.check_n(0).remaining, 0, "{algorithm}");
        // Threads that meet on new keys share one limit per key.
        let keyed = Arc::new(KeyedLimiter::with_clock(limit, ManualClock::new(5_000)));
        let admitted: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let keyed = keyed.clone();
                    scope.spawn(move || {
                        (0..4_000u64)
                            .filter(|n| keyed.check_n(&(n % 2), 1).is_allowed())
                            .count() as u64
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("no panic"))
                .sum()
        });
        assert_eq!((admitted, keyed.len()), (2_000, 2), "{algorithm}");
    }
}

#[test]
fn a_changed_quota_decides_the_next_request() {
    let clock = ManualClock::new(0);
    let limiter = LocalLimiter::with_clock(quota(Algorithm::Gcra, 1, 1_000_000, 1), clock.clone());
    assert!(limiter.check().is_allowed());
    assert!(!limiter.check().is_allowed());
    limiter
        .set_quota(quota(Algorithm::Gcra, 10, 1_000_000, 10))
        .expect("the same algorithm");
    // What was taken still counts (a second of the old rate), but at the
    // new rate: a permit comes back after 100 ms, not after a second.
    let next = limiter.check();
    assert_eq!(
        (next.limit, next.retry_after()),
        (10, Some(Duration::from_millis(100)))
    );
    clock.advance(Duration::from_millis(100));
    assert!(limiter.check().is_allowed());
    let other = quota(Algorithm::FixedWindow, 10, 1_000_000, 10);
    let err = limiter.set_quota(other).expect_err("another algorithm");
    assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);
    limiter.reset();
    assert_eq!(limiter.check_n(0).remaining, 10);
}

#[test]
fn keys_have_their_own_quota_and_idle_ones_are_reclaimed() {
    let clock = ManualClock::new(1_000);
    let limiter = KeyedLimiter::with_clock(quota(Algorithm::Gcra, 1, 1_000_000, 1), clock.clone())
        .reclaim_after(Duration::ZERO);
    limiter
        .set_quota_for(0u32, quota(Algorithm::Gcra, 5, 1_000_000, 5))
        .expect("the same algorithm");
    assert_eq!((0..6).filter(|_| limiter.check(&0).is_allowed()).count(), 5);
    assert_eq!(limiter.quota_for(&0).burst(), 5);
    // A flood of distinct keys, a thousand a millisecond: each is whole
    // again a second after its request, so the map never holds much more
    // than twice a second's keys.
    let mut most = 0;
    for key in 1..20_000u32 {
        assert!(limiter.check(&key).is_allowed());
        if key % 1_000 == 0 {
            clock.advance(Duration::from_millis(100));
        }
        most = most.max(limiter.len());
    }
    assert!(most <= 2 * 11_000 + 2, "held {most} keys");
    assert!(most > 1_024, "no sweep was needed: {most}");
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        limiter.reclaim(),
        1,
        "only the key with its own quota is left"
    );
    assert_eq!(limiter.quota_for(&0).burst(), 5);
    limiter.remove_quota_for(&0);
    assert_eq!(limiter.reclaim(), 0);
    // By default a whole limit is kept for 10 s before it is dropped.
    let kept = KeyedLimiter::with_clock(quota(Algorithm::Gcra, 1, 1_000_000, 1), clock.clone());
    assert!(kept.check(&1u32).is_allowed());
    clock.advance(Duration::from_secs(10));
    assert_eq!(kept.reclaim(), 1, "whole for 9 s");
    clock.advance(Duration::from_secs(1));
    assert_eq!(kept.reclaim(), 0, "whole for 10 s");
}

/// A clock that reads tokio's (paused) time.
#[derive(Debug)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now_millis(&self) -> u64 {
        self.now_micros() / 1_000
    }

    fn now_micros(&self) -> u64 {
        1_000_000 + self.0.elapsed().as_micros() as u64
    }
}

#[tokio::test(start_paused = true)]
async fn until_ready_waits_the_retry_after_within_its_deadline() {
    let started = tokio::time::Instant::now();
    let limiter = LocalLimiter::with_clock(
        quota(Algorithm::Gcra, 10, 1_000_000, 1),
        TokioClock(started),
    );
    assert!(limiter.check().is_allowed());
    let ready = limiter.until_ready(1, Duration::from_secs(1)).await;
    assert!(ready.is_allowed());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    let too_soon = limiter.until_ready(1, Duration::from_millis(50)).await;
    assert_eq!(too_soon.retry_after(), Some(Duration::from_millis(100)));
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100),
        "no wait in vain"
    );
    let never = limiter.until_ready(2, Duration::from_secs(10)).await;
    assert_eq!(never.verdict, Verdict::TooLarge);
    let keyed = KeyedLimiter::with_clock(
        quota(Algorithm::FixedWindow, 1, 1_000_000, 1),
        TokioClock(started),
    );
    assert!(keyed.check(&"k").is_allowed());
    assert!(keyed
        .until_ready(&"k", 1, Duration::from_secs(2))
        .await
        .is_allowed());
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[test]
fn limiters_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<LocalLimiter>();
    shared::<KeyedLimiter<String>>();
    shared::<Quota>();
}

#[tokio::test]
async fn a_hybrid_limiter_spends_leases_and_gives_the_rest_back() {
    let store: Arc<dyn crate::StateBackend> = Arc::new(crate::MemoryBackend::new());
    // A rate that refills nothing meanwhile; a lease window long enough
    // that a slow machine still sees a busy instance.
    let limit = quota(Algorithm::Gcra, 100, 3_600_000_000, 100);
    let config = HybridLimiterConfig {
        lease_window: Duration::from_secs(10),
        ..HybridLimiterConfig::default()
    };
    let hybrid = HybridLimiter::new(store.clone(), "h", limit, config);
    let started = std::time::Instant::now();
    let mut admitted = 0u64;
    for _ in 0..300 {
        if hybrid.check().await.expect("decision").is_allowed() {
            admitted += 1;
        }
    }
    // The burst, plus what the rate refilled meanwhile (one per 36 s).
    let refilled = started.elapsed().as_secs() / 36 + 1;
    assert!(
        (100..=100 + refilled).contains(&admitted),
        "admitted {admitted}"
    );
    // Asking takes nothing; too much never passes, and is said so here.
    assert_eq!(
        hybrid.check_n(0).await.expect("ask").verdict,
        Verdict::Allowed
    );
    assert_eq!(
        hybrid.try_check(101).map(|d| d.verdict),
        Some(Verdict::TooLarge)
    );
    let stats = hybrid.stats();
    assert!(
        stats.leases * 5 <= admitted,
        "a lease per decision: {stats:?}"
    );
    hybrid.close().await.expect("give back");
    let stats = hybrid.stats();
    assert_eq!(stats.leased - stats.returned, admitted, "{stats:?}");
    // What was given back is the shared limit's again.
    let shared = DistributedLimiter::new(store, "h", limit);
    assert!(shared.check_n(0).await.expect("peek").remaining >= stats.returned);
}

/// On an injected clock: a lease is spent here until its time is up, then
/// the next decision asks the store for a new one.
#[tokio::test]
async fn a_hybrid_lease_ends_on_its_clock() {
    let store: Arc<dyn crate::StateBackend> = Arc::new(crate::MemoryBackend::new());
    let limit = quota(Algorithm::Gcra, 100, 3_600_000_000, 100);
    let config = HybridLimiterConfig {
        lease_window: Duration::from_secs(10),
        lease_ttl: Duration::from_secs(1),
        ..HybridLimiterConfig::default()
    };
    let clock = ManualClock::new(1_000_000);
    let hybrid = HybridLimiter::with_clock(store, "t", limit, config, Arc::new(clock.clone()));
    for _ in 0..3 {
        assert!(hybrid.check().await.expect("decision").is_allowed());
    }
    let leases = hybrid.stats().leases;
    clock.advance(Duration::from_millis(999));
    assert!(
        hybrid.try_check(1).is_some_and(|d| d.is_allowed()),
        "within its time, the lease decides here"
    );
    clock.advance(Duration::from_millis(1));
    assert!(
        hybrid.try_check(1).is_none(),
        "its time is up: the store decides"
    );
    assert_eq!(hybrid.stats().leases, leases, "nothing asked yet");
    assert!(hybrid.check().await.expect("decision").is_allowed());
    assert_eq!(hybrid.stats().leases, leases + 1, "a new lease");
}

#[tokio::test]
async fn a_dropped_hybrid_limiter_gives_its_lease_back() {
    let store: Arc<dyn crate::StateBackend> = Arc::new(crate::MemoryBackend::new());
    let limit = quota(Algorithm::Gcra, 1, 3_600_000_000, 100);
    let shared = DistributedLimiter::new(store.clone(), "d", limit);
    let hybrid = HybridLimiter::new(store, "d", limit, HybridLimiterConfig::default());
    for _ in 0..2 {
        assert!(hybrid.check().await.expect("decision").is_allowed());
    }
    let leased = hybrid.stats().leased;
    assert!(leased > 2, "a lease bigger than the checks: {leased}");
    let held = shared.check_n(0).await.expect("peek").remaining;
    assert_eq!(held, 100 - leased);
    drop(hybrid);
    // The refund is a task on this runtime: it runs when this one yields.
    for _ in 0..100 {
        if shared.check_n(0).await.expect("peek").remaining == 98 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the lease's rest never came back");
}

#[tokio::test]
async fn a_lease_the_limit_has_refilled_since_is_not_given_back() {
    let store: Arc<dyn crate::StateBackend> = Arc::new(crate::MemoryBackend::new());
    // A permit a millisecond, ten at once.
    let limit = quota(Algorithm::Gcra, 1_000, 1_000_000, 10);
    let config = HybridLimiterConfig {
        lease_window: Duration::from_secs(10),
        max_lease: Some(10),
        ..HybridLimiterConfig::default()
    };
    let hybrid = HybridLimiter::new(store.clone(), "r", limit, config);
    for _ in 0..2 {
        assert!(hybrid.check().await.expect("decision").is_allowed());
    }
    assert!(hybrid.stats().leased > 2);
    // The limit refills; another instance then takes all of it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shared = DistributedLimiter::new(store, "r", limit);
    let mut drained = 0;
    while shared.check().await.expect("decision").is_allowed() {
        drained += 1;
    }
    assert!(drained >= 10, "drained {drained}");
    hybrid.close().await.expect("close");
    // The lease's rest was refilled long ago: giving it back now would
    // credit the other instance with permits it never had.
    assert_eq!(hybrid.stats().returned, 0);
    assert!(!shared.check().await.expect("decision").is_allowed());
}
