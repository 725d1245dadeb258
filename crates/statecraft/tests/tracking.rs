//! `Cached` kept coherent by Redis server-assisted client caching
//! ([`Invalidation::Tracking`]: `CLIENT TRACKING` in `BCAST` mode over
//! RESP3): two instances never serve stale (also with their connections
//! cut), writes that bypass `Cached` invalidate too (unlike the layer's own
//! channel), and a lost tracking connection suspends L1 until tracking is
//! back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use statecraft::{Cached, ErrorKind, Invalidation, MemoryBackend, Namespaced, StateBackend};
use statecraft_testkit::{Fault, FaultProxy, RedisServer};

#[path = "support/stale.rs"]
mod stale;

use stale::{
    cut_suspends_l1_until_back, fault_free, never_stale, never_stale_with_cuts, pair, redis,
    redis_at, socket_of, unique, until_serving,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_redis_with_tracking_never_serve_stale() {
    let prefix = unique("track") + ":";
    let (a, b) = pair(
        redis(&prefix).await,
        redis(&prefix).await,
        &prefix,
        Invalidation::Tracking,
    )
    .await;
    fault_free(never_stale(a.clone(), b.clone()).await);
    for cached in [a, b] {
        let details = cached.stats().await.expect("stats").details;
        assert_eq!(
            details["l1_invalidations_published"], 0,
            "tracking publishes nothing"
        );
        assert!(details["l1_invalidations_received"] > 0, "{details:?}");
    }
}

/// The same with instance B's connections (its tracking connection
/// included) reset through the proxy for 50 ms every 300 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_over_redis_with_tracking_and_cut_connections_never_serve_stale() {
    let server = RedisServer::shared();
    let proxy = Arc::new(FaultProxy::start(socket_of(&server.url())));
    let prefix = unique("track-cut") + ":";
    let (a, b) = pair(
        redis_at(&server.url(), &prefix).await,
        redis_at(&format!("redis://{}", proxy.addr()), &prefix).await,
        &prefix,
        Invalidation::Tracking,
    )
    .await;
    never_stale_with_cuts(a, b, proxy).await;
}

/// Waits up to `limit` for `cached` to return `want` for `key`; whether it did.
async fn sees(
    cached: &Cached<impl StateBackend + 'static>,
    key: &[u8],
    want: &[u8],
    limit: Duration,
) -> bool {
    let started = Instant::now();
    loop {
        if cached.get(key).await.expect("get").as_deref() == Some(want) {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A write by a plain client (no `Cached`) reaches a tracking instance's L1
/// within the bound; an instance on the layer's channel keeps serving the
/// old value (until its L1 TTL), which is what tracking adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_bypass_cached_invalidate_only_with_tracking() {
    let prefix = unique("bypass") + ":";
    let plain = redis(&prefix).await;
    let build = |invalidation| {
        let prefix = prefix.clone();
        async move {
            Cached::builder(redis(&prefix).await)
                .channel(prefix.clone())
                .invalidation(invalidation)
                .build()
                .await
                .expect("cached")
        }
    };
    let tracked = build(Invalidation::Tracking).await;
    let channel = build(Invalidation::PubSub).await;
    plain.put(b"k", "v1".into()).await.expect("put");
    for cached in [&tracked, &channel] {
        assert_eq!(
            cached.get(b"k").await.expect("get").as_deref(),
            Some(&b"v1"[..])
        );
    }
    plain.put(b"k", "v2".into()).await.expect("bypassing put");
    assert!(
        sees(&tracked, b"k", b"v2", Duration::from_secs(1)).await,
        "tracking missed the write"
    );
    assert!(
        !sees(&channel, b"k", b"v2", Duration::from_millis(300)).await,
        "the channel cannot see a write that bypassed Cached"
    );
    // A delete by a plain client is reported too.
    plain.delete(b"k").await.expect("delete");
    let started = Instant::now();
    while tracked.get(b"k").await.expect("get").is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "delete not seen"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Over `Namespaced(redis)` the watch follows the namespace: a write in it
/// invalidates, one in another namespace of the same store does not reach
/// this L1 (its key is not this instance's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_follows_a_namespace() {
    let prefix = unique("ns") + ":";
    let store = redis(&prefix).await;
    let cached = Cached::builder(Namespaced::new(store.clone(), "a/"))
        .invalidation(Invalidation::Tracking)
        .build()
        .await
        .expect("cached over a namespace");
    let writer = Namespaced::new(store.clone(), "a/");
    writer.put(b"k", "v1".into()).await.expect("put");
    assert_eq!(
        cached.get(b"k").await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    writer.put(b"k", "v2".into()).await.expect("put");
    assert!(sees(&cached, b"k", b"v2", Duration::from_secs(1)).await);
    let before = cached.stats().await.expect("stats").details["l1_invalidations_received"];
    Namespaced::new(store, "b/")
        .put(b"k", "other".into())
        .await
        .expect("put");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = cached.stats().await.expect("stats").details["l1_invalidations_received"];
    assert_eq!(after, before, "a write in another namespace was reported");
    assert_eq!(
        cached.get(b"k").await.expect("get").as_deref(),
        Some(&b"v2"[..])
    );
}

/// A reset tracking connection suspends L1 at once; a write made while the
/// instance cannot track again is not served stale once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_tracking_suspends_l1_until_tracking_again() {
    cut_suspends_l1_until_back(Invalidation::Tracking, "track-one").await;
}

/// A blackholed tracking connection (open, silent) is noticed by its ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_tracking_connection_is_noticed() {
    let server = RedisServer::shared();
    let proxy = FaultProxy::start(socket_of(&server.url()));
    let prefix = unique("track-silent") + ":";
    let b = Cached::builder(redis_at(&format!("redis://{}", proxy.addr()), &prefix).await)
        .invalidation(Invalidation::Tracking)
        .build()
        .await
        .expect("cached");
    assert!(b.is_serving());
    proxy.set(Fault::Blackhole);
    // One ping a second, each bounded by the 500 ms response timeout.
    let noticed = until_serving(&b, false).await;
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}"
    );
    proxy.heal();
    until_serving(&b, true).await;
}

#[tokio::test]
async fn tracking_needs_a_tracking_backend() {
    let err = Cached::builder(MemoryBackend::new())
        .invalidation(Invalidation::Tracking)
        .build()
        .await
        .expect_err("memory does not track keys");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let err = statecraft::connect("cached(memory, invalidation=tracking)")
        .await
        .expect_err("through connect too");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let err = statecraft::connect("cached(memory, invalidation=sometimes)")
        .await
        .expect_err("a bad value");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(
        err.to_string().contains("\"sometimes\" at position 15"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_from_a_spec() {
    let key = (unique("spec") + ":k").into_bytes();
    let spec = format!(
        "cached({}, invalidation=tracking)",
        RedisServer::shared().url()
    );
    let store = statecraft::connect(&spec).await.expect("connect");
    let plain = redis("").await;
    store.put(&key, "v1".into()).await.expect("put");
    assert_eq!(
        store.get(&key).await.expect("get").as_deref(),
        Some(&b"v1"[..])
    );
    plain.put(&key, "v2".into()).await.expect("bypassing put");
    let started = Instant::now();
    while store.get(&key).await.expect("get").as_deref() != Some(&b"v2"[..]) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "tracking from a spec missed the write"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
