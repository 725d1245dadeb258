//! The breaker's tower layer: a rejected request never reaches the service
//! and maps to `503` with `Retry-After`; the classifier decides what
//! counts; a request dropped mid-call counts as a failure; two services
//! guarded by distributed breakers on one Redis share what they learn, and
//! so do two guarded by hybrid breakers, the second told by pub/sub.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use statecraft::breaker::{
    BreakerConfig, BreakerLayer, CallError, DistributedBreaker, HybridBreaker, HybridConfig,
    LocalBreaker, Outcome, Phase,
};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;
use tower::{Layer, Service, ServiceExt};

/// What an HTTP server answers for a guarded call's error.
fn to_response<E>(err: &CallError<E>) -> http::Response<()> {
    match err {
        CallError::Rejected(rejected) => {
            let mut response = http::Response::builder().status(503);
            if let Some(secs) = rejected.retry_after_secs() {
                response = response.header(http::header::RETRY_AFTER, secs);
            }
            response.body(()).expect("a response")
        }
        CallError::Failed(_) => http::Response::builder()
            .status(502)
            .body(())
            .expect("a response"),
    }
}

/// A service answering `status` and counting the requests it saw.
fn answering(
    status: u16,
    seen: Arc<AtomicUsize>,
) -> impl Service<(), Response = u16, Error = String, Future: Send> + Clone + Send {
    tower::service_fn(move |()| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<u16, String>(status) }
    })
}

fn http_classifier(result: &Result<u16, String>) -> Outcome {
    match result {
        Ok(status) if *status >= 500 => Outcome::Failure,
        Ok(status) if *status >= 400 => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::test]
async fn a_rejected_request_never_reaches_the_service_and_maps_to_503() {
    let config = BreakerConfig::builder()
        .consecutive_failures(3)
        .open_for(Duration::from_millis(2_500))
        .build()
        .expect("config");
    // On a clock of its own: 2.5 s left, whatever the machine's speed.
    let breaker = LocalBreaker::with_clock("search", config, statecraft::ManualClock::new(1_000));
    let layer = BreakerLayer::new(breaker.clone()).classify(http_classifier);
    let seen = Arc::new(AtomicUsize::new(0));
    let mut not_found = layer.layer(answering(404, seen.clone()));
    let mut failing = layer.layer(answering(503, seen.clone()));
    // 4xx says nothing about the resource: any number of them.
    for _ in 0..10 {
        let status = not_found.ready().await.expect("ready").call(()).await;
        assert_eq!(status.ok(), Some(404));
    }
    assert_eq!(breaker.phase(), Phase::Closed);
    for _ in 0..3 {
        let status = failing.ready().await.expect("ready").call(()).await;
        assert_eq!(status.ok(), Some(503));
    }
    assert_eq!(breaker.phase(), Phase::Open);
    assert_eq!(seen.load(Ordering::Relaxed), 13);
    // Both clones share the breaker; neither reaches its service now.
    for service in [&mut not_found, &mut failing] {
        let err = service
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect_err("rejected");
        let response = to_response(&err);
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.headers()[http::header::RETRY_AFTER],
            "3",
            "2.5 s rounded up"
        );
    }
    assert_eq!(seen.load(Ordering::Relaxed), 13, "no rejected request ran");
}

#[tokio::test]
async fn errors_fail_by_default() {
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .build()
        .expect("config");
    let breaker = LocalBreaker::new("db", config);
    let mut service =
        BreakerLayer::new(breaker.clone()).layer(tower::service_fn(|ok: bool| async move {
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        }));
    for ok in [false, true, false] {
        let _ = service.ready().await.expect("ready").call(ok).await;
    }
    assert_eq!(breaker.phase(), Phase::Closed, "a success broke the run");
    let err = service.ready().await.expect("ready").call(false).await;
    assert!(matches!(err, Err(CallError::Failed("down"))), "{err:?}");
    assert_eq!(breaker.phase(), Phase::Open);
    assert!(matches!(
        service.ready().await.expect("ready").call(true).await,
        Err(CallError::Rejected(_))
    ));
}

// Paused time: the hung call's hour and the 20 ms cut pass at once.
#[tokio::test(start_paused = true)]
async fn a_request_dropped_mid_call_counts_as_a_failure() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let breaker = LocalBreaker::new("slow", config);
    let mut service = BreakerLayer::new(breaker.clone()).layer(tower::service_fn(|()| async {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        Ok::<(), String>(())
    }));
    let call = service.ready().await.expect("ready").call(());
    let cut = tokio::time::timeout(Duration::from_millis(20), call).await;
    assert!(cut.is_err(), "the call was still running");
    assert_eq!(breaker.phase(), Phase::Open, "the cancelled call failed");
}

/// `service` rejects a request, answered as 503 with `Retry-After` 29–30.
async fn rejects_for_30_s<S>(service: &mut S)
where
    S: Service<(), Response = u16, Error = CallError<String>>,
{
    let err = service
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("rejected");
    let response = to_response(&err);
    assert_eq!(response.status(), 503);
    let after: u64 = response.headers()[http::header::RETRY_AFTER]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((29..=30).contains(&after), "Retry-After {after}");
}

async fn redis(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder().url(url).build().expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

#[tokio::test]
async fn services_on_two_instances_share_a_distributed_breaker() {
    let url = RedisServer::shared().url();
    let name = format!("tower-{}", std::process::id());
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(30))
        .build()
        .expect("config");
    // Two instances: their own connections, their own breaker objects.
    let a = DistributedBreaker::new(redis(&url).await, name.as_str(), config.clone());
    let b = DistributedBreaker::new(redis(&url).await, name.as_str(), config);
    a.reset().await.expect("reset");
    let (seen_a, seen_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut on_a = BreakerLayer::new(a)
        .classify(http_classifier)
        .layer(answering(500, seen_a.clone()));
    let mut on_b = BreakerLayer::new(b.clone())
        .classify(http_classifier)
        .layer(answering(200, seen_b.clone()));
    assert_eq!(
        on_b.ready().await.expect("ready").call(()).await.ok(),
        Some(200)
    );
    for _ in 0..2 {
        assert_eq!(
            on_a.ready().await.expect("ready").call(()).await.ok(),
            Some(500)
        );
    }
    rejects_for_30_s(&mut on_b).await;
    assert_eq!(
        (
            seen_a.load(Ordering::Relaxed),
            seen_b.load(Ordering::Relaxed)
        ),
        (2, 1)
    );
    b.reset().await.expect("reset");
}

#[tokio::test]
async fn services_on_two_instances_share_a_hybrid_breaker() {
    let url = RedisServer::shared().url();
    let name = format!("tower-hybrid-{}", std::process::id());
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(30))
        .build()
        .expect("config");
    let hybrid = HybridConfig::default();
    let a = HybridBreaker::start(
        redis(&url).await,
        name.as_str(),
        config.clone(),
        hybrid.clone(),
    )
    .await;
    let b = HybridBreaker::start(redis(&url).await, name.as_str(), config, hybrid).await;
    a.reset().await.expect("reset");
    let (seen_a, seen_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut on_a = BreakerLayer::new(a.clone())
        .classify(http_classifier)
        .layer(answering(500, seen_a.clone()));
    let mut on_b = BreakerLayer::new(b.clone())
        .classify(http_classifier)
        .layer(answering(200, seen_b.clone()));
    assert_eq!(
        on_b.ready().await.expect("ready").call(()).await.ok(),
        Some(200)
    );
    for _ in 0..2 {
        assert_eq!(
            on_a.ready().await.expect("ready").call(()).await.ok(),
            Some(500)
        );
    }
    // a opened its own breaker, and the fleet's at once; b, which makes no
    // call meanwhile, is told.
    assert!(
        b.wait_for(Phase::Open, Duration::from_secs(5)).await,
        "b learned the opening within 5 s"
    );
    rejects_for_30_s(&mut on_b).await;
    assert_eq!(
        (
            seen_a.load(Ordering::Relaxed),
            seen_b.load(Ordering::Relaxed)
        ),
        (2, 1)
    );
    b.reset().await.expect("reset");
}
