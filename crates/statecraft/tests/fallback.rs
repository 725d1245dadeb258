//! `Fallback` beyond the conformance suite: a blackholed Redis (through
//! the fault proxy) is answered for within its timeout, skipped once its
//! breaker opens and used again soon after healing; an outage's deletes
//! stick and its writes do not resurface; events tell all of it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use statecraft::{
    BackendStats, ErrorKind, Fallback, FallbackEvent, Health, HealthPolicy, KeyTtl, MemoryBackend,
    NullBackend, PutOptions, Recovery, RedisBackend, RedisConfig, StateBackend,
};
use statecraft_testkit::{Fault, FaultProxy, RedisServer, Switch};
use tokio::sync::broadcast::error::TryRecvError;

fn policy() -> HealthPolicy {
    HealthPolicy {
        failures: 3,
        window: Duration::from_secs(10),
        open_for: Duration::from_secs(1),
        max_open_for: Duration::from_secs(1),
    }
}

fn drain(events: &mut tokio::sync::broadcast::Receiver<FallbackEvent>) -> Vec<FallbackEvent> {
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => seen.push(event),
            Err(TryRecvError::Lagged(_)) => continue,
            Err(_) => return seen,
        }
    }
}

fn served_by(stats: &BackendStats, member: usize) -> u64 {
    stats.details[&format!("member{member}_served")]
}

fn socket_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).expect("scheme");
    rest.split('/')
        .next()
        .expect("host")
        .parse()
        .expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackholed_redis_falls_back_skips_and_recovers_without_resurrection() {
    let server = RedisServer::shared();
    let proxy = FaultProxy::start(socket_of(&server.url()));
    let prefix = format!("fallback-{}:", std::process::id());
    let config = |url: String| {
        RedisConfig::builder()
            .url(url)
            .key_prefix(prefix.clone())
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("config")
    };
    let redis = RedisBackend::new(config(format!("redis://{}", proxy.addr())))
        .await
        .expect("redis through the proxy");
    let direct = RedisBackend::new(config(server.url()))
        .await
        .expect("redis");
    let memory = MemoryBackend::new();
    let timeout = Duration::from_millis(100);
    let chain = Fallback::builder()
        .member(redis, timeout)
        .member(memory.clone(), Duration::from_millis(50))
        .health(policy())
        .build()
        .expect("chain");
    let mut events = chain.events();
    chain.put(b"kept", "v1".into()).await.expect("put");
    chain.put(b"doomed", "x".into()).await.expect("put");
    assert!(drain(&mut events).is_empty(), "no event while healthy");

    proxy.set(Fault::Blackhole);
    let started = Instant::now();
    let first = chain.get(b"kept").await.expect("answered by the fallback");
    let took = started.elapsed();
    assert_eq!(first, None, "the fallback has no copy");
    assert!(
        took <= timeout + Duration::from_millis(50),
        "answered after {took:?}"
    );
    for _ in 0..2 {
        chain.get(b"kept").await.expect("get");
    }
    let seen = drain(&mut events);
    assert!(
        seen.iter()
            .filter(|e| matches!(e, FallbackEvent::FellBack { member: 0, .. }))
            .count()
            == 3,
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(
            e,
            FallbackEvent::HealthChanged {
                member: 0,
                health: Health::Unhealthy { .. },
                ..
            }
        )),
        "{seen:?}"
    );
    // Open: calls skip Redis (no more failures of member 0 until a probe).
    let before = chain.stats().await.expect("stats");
    for _ in 0..100 {
        chain.get(b"kept").await.expect("get");
    }
    let after = chain.stats().await.expect("stats");
    assert_eq!(served_by(&after, 1) - served_by(&before, 1), 100);
    assert_eq!(
        after.details["member0_failures"], before.details["member0_failures"],
        "no call waited for Redis while its breaker was open"
    );
    // Writes during the outage.
    assert!(!chain
        .delete(b"doomed")
        .await
        .expect("delete on the fallback"));
    chain
        .put(b"new", "outage".into())
        .await
        .expect("put on the fallback");
    assert_eq!(
        memory.get(b"new").await.expect("get").as_deref(),
        Some(&b"outage"[..])
    );

    proxy.heal();
    let healed = Instant::now();
    loop {
        let stats = chain.stats().await.expect("stats");
        if served_by(&stats, 0) > served_by(&after, 0) {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(2),
            "calls did not return to Redis within 2 s of healing"
        );
        let _ = chain.get(b"kept").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = drain(&mut events);
    let recovered = seen
        .iter()
        .find(|e| matches!(e, FallbackEvent::Recovered { member: 0, .. }));
    match recovered {
        Some(FallbackEvent::Recovered {
            deletes_applied,
            cleared,
            failed,
            overflowed,
            ..
        }) => {
            assert_eq!(
                (*deletes_applied, *cleared, *failed, *overflowed),
                (1, 2, 0, false)
            );
        }
        other => panic!("no recovery event: {other:?} in {seen:?}"),
    }
    assert_eq!(
        chain.get(b"kept").await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(
        direct.get(b"doomed").await.expect("get"),
        None,
        "deleted during the outage, so deleted in Redis too"
    );
    assert_eq!(
        direct.get(b"new").await.expect("get"),
        None,
        "outage writes are dropped"
    );
    assert_eq!(
        memory.get(b"new").await.expect("get"),
        None,
        "and leave the fallback"
    );

    proxy.heal();
}

/// With [`Recovery::CopyWrites`] the outage's writes (with their TTLs) and
/// deletes reach the recovered member; a chain ending in `NullBackend`
/// fails open when every store is down.
#[tokio::test(start_paused = true)]
async fn copy_writes_on_recovery_and_fail_open_at_the_end() {
    let primary = Switch::new(false);
    let second = Switch::new(false);
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(100))
        .member(second.clone(), Duration::from_millis(100))
        .member(NullBackend::new(), Duration::from_millis(100))
        .health(policy())
        .recovery(Recovery::CopyWrites)
        .build()
        .expect("chain");
    chain.put(b"gone", "x".into()).await.expect("put");
    primary.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(chain.get(b"gone").await.expect("fallback"), None);
    }
    assert!(matches!(chain.health()[0], Health::Unhealthy { .. }));
    chain
        .put_with_ttl(b"session", "s".into(), Duration::from_secs(60))
        .await
        .expect("put");
    assert_eq!(
        chain
            .increment(b"n", 5, PutOptions::new())
            .await
            .expect("incr"),
        5
    );
    chain.delete(b"gone").await.expect("delete");

    // Both stores down: the null member answers (fail open).
    second.down.store(true, Ordering::SeqCst);
    chain
        .put(b"dropped", "d".into())
        .await
        .expect("null accepts");
    assert_eq!(chain.get(b"session").await.expect("null answers"), None);
    second.down.store(false, Ordering::SeqCst);

    primary.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    let mut events = chain.events();
    assert_eq!(
        chain
            .get(b"session")
            .await
            .expect("after the probe")
            .as_deref(),
        Some(&b"s"[..]),
        "settled before the first call reached the recovered member"
    );
    let seen = drain(&mut events);
    assert!(
        seen.iter().any(|e| matches!(
            e,
            FallbackEvent::Recovered {
                member: 0,
                copied: 2,
                deletes_applied: 1,
                failed: 0,
                ..
            }
        )),
        "{seen:?}"
    );
    assert!(matches!(
        primary.inner.ttl(b"session").await.expect("ttl"),
        KeyTtl::ExpiresIn(left) if left <= Duration::from_secs(60)
    ));
    assert_eq!(
        primary.inner.get(b"n").await.expect("get").as_deref(),
        Some(&b"5"[..])
    );
    assert_eq!(primary.inner.get(b"gone").await.expect("get"), None);
    // `dropped` (written when only the null member answered) is absent in
    // every store, so it is settled as absent.
    assert_eq!(primary.inner.get(b"dropped").await.expect("get"), None);
    assert_eq!(
        second.inner.count().await.expect("count"),
        0,
        "the fallback was emptied"
    );
}

/// During an outage a compare-and-swap that conflicted deleted nothing, so
/// recovery deletes nothing; one that deleted does.
#[tokio::test(start_paused = true)]
async fn only_applied_conditional_deletes_are_replayed() {
    let primary = Switch::new(false);
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(100))
        .member(MemoryBackend::new(), Duration::from_millis(100))
        .health(policy())
        .build()
        .expect("chain");
    chain.put(b"kept", "k".into()).await.expect("put");
    chain.put(b"gone", "g".into()).await.expect("put");
    primary.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        chain.get(b"kept").await.expect("fallback");
    }
    let conflict = chain
        .compare_and_swap(b"kept", Some(b"k"), None, PutOptions::new())
        .await
        .expect("cas on the fallback");
    assert!(!conflict.is_swapped(), "the fallback has no copy of it");
    chain.put(b"gone", "g".into()).await.expect("put");
    let swapped = chain
        .compare_and_swap(b"gone", Some(b"g"), None, PutOptions::new())
        .await
        .expect("cas");
    assert!(swapped.is_swapped());
    primary.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    chain.get(b"kept").await.expect("after recovery");
    assert_eq!(
        primary.inner.get(b"kept").await.expect("get").as_deref(),
        Some(&b"k"[..])
    );
    assert_eq!(primary.inner.get(b"gone").await.expect("get"), None);
}

/// Three members: deletes made on the third while the first two were down
/// reach the second when it recovers and the first when it does.
#[tokio::test(start_paused = true)]
async fn three_members_carry_deletes_to_the_first() {
    let (primary, second) = (Switch::new(false), Switch::new(false));
    let third = MemoryBackend::new();
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(100))
        .member(second.clone(), Duration::from_millis(100))
        .member(third.clone(), Duration::from_millis(100))
        .health(policy())
        .build()
        .expect("chain");
    chain.put(b"a", "1".into()).await.expect("put");
    chain.put(b"b", "2".into()).await.expect("put");
    primary.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        chain.get(b"x").await.expect("get");
    }
    chain.delete(b"a").await.expect("delete on the second");
    second.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        chain.get(b"x").await.expect("get");
    }
    assert!(matches!(chain.health()[1], Health::Unhealthy { .. }));
    chain.delete(b"b").await.expect("delete on the third");
    chain.put(b"c", "3".into()).await.expect("put on the third");

    second.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    chain.get(b"x").await.expect("the second recovers");
    assert_eq!(chain.health()[1], Health::Healthy);
    assert!(matches!(chain.health()[0], Health::Unhealthy { .. }));
    assert_eq!(
        third.count().await.expect("count"),
        0,
        "the third was emptied"
    );

    primary.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    chain.get(b"x").await.expect("the primary recovers");
    assert_eq!(chain.health()[0], Health::Healthy);
    for key in [&b"a"[..], b"b", b"c"] {
        assert_eq!(primary.inner.get(key).await.expect("get"), None, "{key:?}");
        assert_eq!(second.inner.get(key).await.expect("get"), None, "{key:?}");
    }
}

/// A call dropped while it probes the recovered primary (its health check
/// or the settling of the outage's writes) loses nothing: the outage stays
/// tracked, the next call probes and settles it, and a key deleted during
/// the outage stays deleted.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_probing_leaves_the_outage_to_settle() {
    let primary = Switch::new(false);
    let fallback = MemoryBackend::new();
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(1_000))
        .member(fallback.clone(), Duration::from_millis(100))
        .health(policy())
        .build()
        .expect("chain");
    chain.put(b"gone", "old".into()).await.expect("put");
    chain.put(b"kept", "old".into()).await.expect("put");
    primary.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        chain.get(b"x").await.expect("get");
    }
    assert!(matches!(chain.health()[0], Health::Unhealthy { .. }));
    assert!(!chain.delete(b"gone").await.expect("delete on the fallback"));
    chain
        .put(b"kept", "new".into())
        .await
        .expect("put on the fallback");

    // Back, but slow: each call to it takes 100 ms.
    primary.down.store(false, Ordering::SeqCst);
    primary.latency_ms.store(100, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    for give_up_after in [50, 150] {
        // Dropped during the health check, then during the settling.
        let call = tokio::time::timeout(Duration::from_millis(give_up_after), chain.get(b"x"));
        assert!(
            call.await.is_err(),
            "the call gave up after {give_up_after} ms"
        );
        assert_ne!(
            chain.health()[0],
            Health::Healthy,
            "a dropped probe closes nothing"
        );
        assert_eq!(
            primary.inner.get(b"gone").await.expect("get").as_deref(),
            Some(&b"old"[..]),
            "the delete was not applied yet"
        );
    }
    primary.latency_ms.store(0, Ordering::SeqCst);
    chain.get(b"x").await.expect("the primary recovers");
    assert_eq!(chain.health()[0], Health::Healthy);
    assert_eq!(
        primary.inner.get(b"gone").await.expect("get"),
        None,
        "no resurrection"
    );
    assert_eq!(chain.get(b"gone").await.expect("get"), None);
    assert_eq!(
        fallback.count().await.expect("count"),
        0,
        "the fallback was emptied"
    );
}

/// A settling dropped after its delete reached the recovered primary (on
/// the path where the primary's breaker never opened) does not send that
/// delete again later, over a write the primary acknowledged meanwhile.
#[tokio::test(start_paused = true)]
async fn a_dropped_settling_does_not_apply_its_deletes_twice() {
    let (primary, fallback) = (Switch::new(false), Switch::new(false));
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(1_000))
        .member(fallback.clone(), Duration::from_millis(1_000))
        .health(policy())
        .build()
        .expect("chain");
    chain.put(b"k", "old".into()).await.expect("put");
    primary.down.store(true, Ordering::SeqCst);
    chain.delete(b"k").await.expect("delete, on the fallback");
    assert_eq!(
        chain.health()[0],
        Health::Healthy,
        "one failure opens nothing"
    );
    primary.down.store(false, Ordering::SeqCst);
    primary.latency_ms.store(100, Ordering::SeqCst);
    fallback.latency_ms.store(100, Ordering::SeqCst);
    // The get (100 ms) settles: the delete reaches the primary at 200 ms,
    // the removal from the fallback would end at 300 ms; dropped at 250.
    let call = tokio::time::timeout(Duration::from_millis(250), chain.get(b"x"));
    assert!(call.await.is_err(), "dropped while settling");
    assert_eq!(
        primary.inner.get(b"k").await.expect("get"),
        None,
        "the delete reached the primary"
    );
    primary.latency_ms.store(0, Ordering::SeqCst);
    fallback.latency_ms.store(0, Ordering::SeqCst);
    chain
        .put(b"k", "new".into())
        .await
        .expect("put on the primary");
    chain.get(b"x").await.expect("settles what was left");
    assert_eq!(
        primary.inner.get(b"k").await.expect("get").as_deref(),
        Some(&b"new"[..]),
        "the acknowledged put survived the second settling"
    );
    assert_eq!(
        fallback.inner.count().await.expect("count"),
        0,
        "nothing left on the fallback"
    );
}

/// `update_atomic` on the fallback during an outage is settled by what the
/// fallback holds at recovery: an update that deleted the key deletes it
/// on the primary too; one that wrote is dropped like any outage write.
#[tokio::test(start_paused = true)]
async fn updates_during_an_outage_settle_by_what_they_left() {
    use statecraft_testkit::BoundedCounter;
    let primary = Switch::new(false);
    let fallback = MemoryBackend::new();
    let chain = Fallback::builder()
        .member(primary.clone(), Duration::from_millis(100))
        .member(fallback.clone(), Duration::from_millis(100))
        .health(policy())
        .build()
        .expect("chain");
    for key in [&b"reset-me"[..], b"counted"] {
        let out = chain
            .update_atomic(key, &BoundedCounter, b"5")
            .await
            .expect("update");
        assert_eq!(&out[..], b"admitted 1");
    }
    primary.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        chain.get(b"x").await.expect("get");
    }
    let out = chain
        .update_atomic(b"reset-me", &BoundedCounter, b"reset")
        .await
        .expect("update");
    assert_eq!(&out[..], b"reset");
    let out = chain
        .update_atomic(b"counted", &BoundedCounter, b"5")
        .await
        .expect("update");
    assert_eq!(&out[..], b"admitted 1", "counted afresh on the fallback");
    primary.down.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    chain.get(b"x").await.expect("the primary recovers");
    assert_eq!(chain.health()[0], Health::Healthy);
    assert_eq!(
        primary.inner.get(b"reset-me").await.expect("get"),
        None,
        "the reset stuck"
    );
    assert_eq!(
        primary.inner.get(b"counted").await.expect("get").as_deref(),
        Some(&b"1"[..]),
        "the outage's count was dropped (Recovery::ApplyDeletes)"
    );
    assert_eq!(fallback.count().await.expect("count"), 0);
}

/// Errors that say the call was wrong (not the store) do not fall back and
/// do not count against the member's health.
#[tokio::test]
async fn caller_errors_do_not_fall_back() {
    let limited = MemoryBackend::builder()
        .limits(statecraft::Limits::new(8, 1024))
        .build();
    let chain = Fallback::builder()
        .member(limited, Duration::from_millis(100))
        .member(MemoryBackend::new(), Duration::from_millis(100))
        .health(HealthPolicy {
            failures: 1,
            ..policy()
        })
        .build()
        .expect("chain");
    let mut events = chain.events();
    let err = chain.put(b"a key far too long", "v".into()).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::KeyTooLarge));
    assert_eq!(chain.health()[0], Health::Healthy);
    assert!(drain(&mut events).is_empty());
}

#[tokio::test]
async fn bad_chains_are_typed_errors() {
    let err = Fallback::builder().build().err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    let err = Fallback::builder()
        .member(MemoryBackend::new(), Duration::ZERO)
        .build()
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    let err = Fallback::builder()
        .member(MemoryBackend::new(), Duration::from_secs(1))
        .health(HealthPolicy {
            failures: 0,
            ..policy()
        })
        .build()
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
}
