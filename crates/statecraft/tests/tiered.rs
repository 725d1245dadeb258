//! `Tiered` beyond the conformance suite: promotion with cascading TTLs,
//! write-through, a failing middle tier that is skipped and never answers
//! with an older value, a failing last tier, and concurrent writers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use statecraft::{
    Bytes, ErrorKind, KeyTtl, ManualClock, MemoryBackend, PutOptions, StateBackend, Tiered,
};
use statecraft_testkit::Switch;

fn memory(clock: &ManualClock) -> MemoryBackend {
    MemoryBackend::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build()
}

fn within(ttl: KeyTtl, max: Duration) -> bool {
    matches!(ttl, KeyTtl::ExpiresIn(left) if left <= max && !left.is_zero())
}

#[tokio::test]
async fn promotion_cascades_ttls_and_writes_go_through() {
    let clock = ManualClock::starting_now();
    let (l1, l2, l3) = (memory(&clock), memory(&clock), memory(&clock));
    let tiers = Tiered::builder()
        .tier(l1.clone(), Duration::from_secs(10))
        .tier(l2.clone(), Duration::from_secs(60))
        .last(l3.clone())
        .build()
        .expect("tiers");
    l3.put(b"persistent", "p".into()).await.expect("put");
    l3.put_with_ttl(b"short", "s".into(), Duration::from_secs(5))
        .await
        .expect("put");
    for key in [&b"persistent"[..], b"short"] {
        assert!(tiers.get(key).await.expect("get").is_some());
    }
    assert!(within(
        l1.ttl(b"persistent").await.expect("ttl"),
        Duration::from_secs(10)
    ));
    assert!(within(
        l2.ttl(b"persistent").await.expect("ttl"),
        Duration::from_secs(60)
    ));
    assert_eq!(
        l3.ttl(b"persistent").await.expect("ttl"),
        KeyTtl::Persistent
    );
    for tier in [&l1, &l2] {
        assert!(
            within(
                tier.ttl(b"short").await.expect("ttl"),
                Duration::from_secs(5)
            ),
            "a copy never outlives the value below it"
        );
    }
    // A hit in L2 fills L1 only.
    l1.delete(b"persistent").await.expect("delete");
    let before = l3.stats().await.expect("stats").hits;
    assert!(tiers.get(b"persistent").await.expect("get").is_some());
    assert_eq!(
        l3.stats().await.expect("stats").hits,
        before,
        "served by L2"
    );
    assert!(l1.get(b"persistent").await.expect("get").is_some());

    tiers
        .put_with_ttl(b"w", "1".into(), Duration::from_secs(30))
        .await
        .expect("put");
    assert!(within(
        l1.ttl(b"w").await.expect("ttl"),
        Duration::from_secs(10)
    ));
    assert!(within(
        l2.ttl(b"w").await.expect("ttl"),
        Duration::from_secs(30)
    ));
    assert!(within(
        l3.ttl(b"w").await.expect("ttl"),
        Duration::from_secs(30)
    ));
    assert_eq!(
        tiers
            .increment(b"n", 2, PutOptions::new())
            .await
            .expect("incr"),
        2
    );
    tiers.get(b"n").await.expect("get");
    assert_eq!(
        tiers
            .increment(b"n", 2, PutOptions::new())
            .await
            .expect("incr"),
        4
    );
    assert_eq!(
        tiers.get(b"n").await.expect("get").as_deref(),
        Some(&b"4"[..])
    );
    tiers.delete(b"w").await.expect("delete");
    for tier in [&l1, &l2, &l3] {
        assert_eq!(tier.get(b"w").await.expect("get"), None);
    }
    clock.advance(Duration::from_secs(11));
    assert_eq!(l1.get(b"persistent").await.expect("get"), None, "L1's TTL");
}

/// A middle tier that fails is skipped on reads; one that missed a write
/// holds an older value, so reads skip it for its TTL rather than answer
/// with that value. A failing last tier is an error.
#[tokio::test]
async fn a_failing_middle_tier_is_skipped_and_never_answers_stale() {
    let l1 = MemoryBackend::new();
    let (middle, l3) = (Switch::new(false), Switch::new(false));
    let clock = ManualClock::starting_now();
    let build = || {
        Tiered::builder()
            .tier(l1.clone(), Duration::from_millis(200))
            .tier(middle.clone(), Duration::from_millis(300))
            .last(l3.clone())
            .clock(clock.clone())
            .build()
            .expect("tiers")
    };
    let minute = Duration::from_secs(60);
    let tiers = build();
    tiers
        .put_with_ttl(b"k", "v1".into(), minute)
        .await
        .expect("put");
    assert_eq!(
        middle.inner.get(b"k").await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    middle.down.store(true, Ordering::SeqCst);
    l1.delete(b"k").await.expect("evict from L1");
    let read = tiers.get(b"k").await.expect("read past the failing tier");
    assert_eq!(read.as_deref(), Some(&b"v1"[..]));

    // A fresh instance: only the failed write-through below makes the
    // middle tier suspect.
    middle.down.store(false, Ordering::SeqCst);
    let tiers = build();
    assert_eq!(
        tiers.stats().await.expect("stats").details["tier1_skipped"],
        0
    );
    middle.down.store(true, Ordering::SeqCst);
    tiers
        .put_with_ttl(b"k", "v2".into(), minute)
        .await
        .expect("the last tier took it");
    middle.down.store(false, Ordering::SeqCst);
    assert_eq!(
        middle.inner.get(b"k").await.expect("get").as_deref(),
        Some(&b"v1"[..]),
        "the middle tier still holds the older value"
    );
    l1.delete(b"k").await.expect("evict from L1");
    assert_eq!(
        tiers.get(b"k").await.expect("get").as_deref(),
        Some(&b"v2"[..]),
        "never the older value"
    );
    let stats = tiers.stats().await.expect("stats");
    assert_eq!(stats.details["tier1_skipped"], 1, "{stats:?}");
    assert!(stats.details["tier1_errors"] >= 1);
    clock.advance(Duration::from_millis(350));
    assert_eq!(
        tiers.stats().await.expect("stats").details["tier1_skipped"],
        0
    );

    // A put that leaves the TTL to the last tier drops the upper copies.
    tiers.put(b"d", "x".into()).await.expect("put");
    assert_eq!(l1.get(b"d").await.expect("get"), None);

    l3.down.store(true, Ordering::SeqCst);
    let err = tiers.put(b"k", "v3".into()).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));
    l1.delete(b"k").await.expect("evict");
    middle.inner.delete(b"k").await.expect("evict");
    let err = tiers.get(b"k").await.err();
    assert_eq!(
        err.map(|e| e.kind()),
        Some(ErrorKind::Unavailable),
        "no answer in the last tier's place"
    );
}

/// Concurrent writers and readers of a few keys over tiers that yield on
/// every call: both upper tiers end as the last tier did, for every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_leave_the_tiers_agreeing() {
    let (l1, l2, l3) = (Switch::new(true), Switch::new(true), Switch::new(true));
    let tiers = Arc::new(
        Tiered::builder()
            .tier(l1.clone(), Duration::from_secs(60))
            .tier(l2.clone(), Duration::from_secs(60))
            .last(l3.clone())
            .build()
            .expect("tiers"),
    );
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let tiers = tiers.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..2_000u64 {
                let key = format!("k{}", (i * 7 + t) % 5);
                let counter = format!("n{}", i % 3);
                match (i + t) % 5 {
                    0 => tiers.delete(key.as_bytes()).await.map(drop),
                    1 => tiers.get(key.as_bytes()).await.map(drop),
                    2 => tiers.get(counter.as_bytes()).await.map(drop),
                    3 => tiers
                        .increment(counter.as_bytes(), 1, PutOptions::new())
                        .await
                        .map(drop),
                    _ => {
                        let value = Bytes::from(format!("{t}-{i}"));
                        let minute = Duration::from_secs(60);
                        tiers.put_with_ttl(key.as_bytes(), value, minute).await
                    }
                }
                .expect("operation");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    for key in ["k0", "k1", "k2", "k3", "k4", "n0", "n1", "n2"] {
        let below = l3.inner.get(key.as_bytes()).await.expect("get");
        for (name, tier) in [("L1", &l1), ("L2", &l2)] {
            let above = tier.inner.get(key.as_bytes()).await.expect("get");
            assert!(
                above.is_none() || above == below,
                "{key}: {name} {above:?}, last {below:?}"
            );
        }
        assert_eq!(tiers.get(key.as_bytes()).await.expect("get"), below);
    }
}

#[tokio::test]
async fn bad_tiers_are_typed_errors() {
    let err = Tiered::builder()
        .tier(MemoryBackend::new(), Duration::from_secs(1))
        .build()
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    let err = Tiered::builder()
        .tier(MemoryBackend::new(), Duration::ZERO)
        .last(MemoryBackend::new())
        .build()
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
}
