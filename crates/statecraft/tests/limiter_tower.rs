//! The limiter's tower layer: a request over its key's limit never reaches
//! the service and is answered 429 with `Retry-After` and the RateLimit
//! fields; an allowed one carries the fields; keys are limited apart; a
//! limit shared through a store that stops answering gives 503.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use statecraft::limiter::{DistributedLimiter, KeyedLimiter, LocalLimiter, Quota, RateLimitLayer};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;
use tower::{Layer, Service, ServiceExt};

/// A service that answers 200 and counts what it saw.
fn counted(
    seen: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<String>, Error = String, Future: Send> + Clone + Send
{
    tower::service_fn(move |_request: Request<()>| {
        seen.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, String>(Response::new("ok".to_string())) }
    })
}

fn from(client: &str) -> Request<()> {
    Request::builder()
        .header("x-client", client)
        .body(())
        .expect("a request")
}

fn client(request: &Request<()>) -> String {
    request
        .headers()
        .get("x-client")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

async fn send<S>(service: &mut S, request: Request<()>) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>, Error = String>,
{
    service
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("an answer")
}

#[tokio::test]
async fn each_key_has_its_limit_and_the_headers_say_so() {
    let seen = Arc::new(AtomicUsize::new(0));
    let limiter = Arc::new(KeyedLimiter::new(
        Quota::per_minute(3).build().expect("quota"),
    ));
    let mut service = RateLimitLayer::new(limiter, client)
        .policy("per-client")
        .layer(counted(seen.clone()));
    for left in [2, 1, 0] {
        let response = send(&mut service, from("a")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            r#""per-client";q=3;w=60"#
        );
        let limit = response.headers()["ratelimit"].to_str().expect("text");
        assert!(
            limit.starts_with(&format!(r#""per-client";r={left};t="#)),
            "{limit}"
        );
        assert!(!response.headers().contains_key("retry-after"));
    }
    let over = send(&mut service, from("a")).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.headers()["retry-after"], "20");
    assert!(over.body().is_empty());
    // Another key is limited apart.
    assert_eq!(send(&mut service, from("b")).await.status(), StatusCode::OK);
    assert_eq!(
        seen.load(Ordering::Relaxed),
        4,
        "the 429 never reached the service"
    );
}

#[tokio::test]
async fn one_limit_for_every_key_with_a_local_limiter() {
    let seen = Arc::new(AtomicUsize::new(0));
    let limiter = Arc::new(LocalLimiter::new(
        Quota::per_second(2).build().expect("quota"),
    ));
    let mut service = RateLimitLayer::new(limiter, client).layer(counted(seen.clone()));
    assert_eq!(send(&mut service, from("a")).await.status(), StatusCode::OK);
    assert_eq!(send(&mut service, from("b")).await.status(), StatusCode::OK);
    let over = send(&mut service, from("c")).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.headers()["retry-after"], "1");
    assert_eq!(seen.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_store_that_stops_answering_gives_503() {
    let mut server = RedisServer::start();
    let config = RedisConfig::builder()
        .url(server.url())
        .response_timeout(Duration::from_millis(200))
        .build()
        .expect("config");
    let store: Arc<dyn StateBackend> = Arc::new(RedisBackend::new(config).await.expect("redis"));
    let limiter = Arc::new(
        DistributedLimiter::new(store, "api", Quota::per_second(100).build().expect("quota"))
            .timeout(Duration::from_millis(300)),
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let mut service = RateLimitLayer::new(limiter, client).layer(counted(seen.clone()));
    assert_eq!(send(&mut service, from("a")).await.status(), StatusCode::OK);
    server.kill();
    let started = std::time::Instant::now();
    let down = send(&mut service, from("a")).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(seen.load(Ordering::Relaxed), 1);
}
