//! A tower [`Layer`] that rate-limits HTTP requests by a key taken from
//! each request: a request over its limit never reaches the service and
//! is answered `429 Too Many Requests` with `Retry-After` and the IETF
//! `RateLimit-Policy` / `RateLimit` fields; an allowed one gets the same
//! two fields on its response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::algorithm::{Decision, Verdict};
use super::distributed::DistributedLimiter;
use super::headers::RateLimitHeaders;
use super::keyed::KeyedLimiter;
use super::local::LocalLimiter;
use super::quota::Quota;
use crate::backend::clock::Clock;
use crate::backend::error::Result;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A limiter a [`RateLimitLayer`] can ask: a [`LocalLimiter`] (one limit
/// for all, the key unused), a [`KeyedLimiter`] or a
/// [`DistributedLimiter`] (a limit per key), each behind an `Arc`.
pub trait Limits: Clone + Send + Sync + 'static {
    /// Decides one permit for `key`, with the quota it was decided by.
    fn decide(&self, key: String) -> BoxFuture<Result<(Decision, Quota)>>;
}

impl<C: Clock + 'static> Limits for Arc<LocalLimiter<C>> {
    fn decide(&self, _key: String) -> BoxFuture<Result<(Decision, Quota)>> {
        let answer = (self.check(), self.quota());
        Box::pin(std::future::ready(Ok(answer)))
    }
}

impl<C: Clock + 'static> Limits for Arc<KeyedLimiter<String, C>> {
    fn decide(&self, key: String) -> BoxFuture<Result<(Decision, Quota)>> {
        let answer = (self.check(&key), self.quota_for(&key));
        Box::pin(std::future::ready(Ok(answer)))
    }
}

impl Limits for Arc<DistributedLimiter> {
    fn decide(&self, key: String) -> BoxFuture<Result<(Decision, Quota)>> {
        let limiter = self.clone();
        Box::pin(async move {
            let decision = limiter.check_key(key.as_bytes(), 1).await?;
            Ok((decision, limiter.quota()))
        })
    }
}

/// Limits every request of the services it wraps by a key: a request
/// over its limit is answered `429 Too Many Requests` with `Retry-After`
/// and the `RateLimit-Policy` / `RateLimit` fields, an allowed one gets
/// the two fields on its response, and a limit that cannot be decided (the
/// store's error) is answered `503`. The policy's name in the fields is
/// `default` unless told.
///
/// ```
/// # #[tokio::main] async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use http::{Request, Response, StatusCode};
/// use statecraft::limiter::{KeyedLimiter, Quota, RateLimitLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// let per_client = Arc::new(KeyedLimiter::new(Quota::per_minute(2).build()?));
/// let mut service = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(per_client, |request: &Request<()>| {
///         request.headers().get("x-api-key").map_or(String::new(), |v| {
///             String::from_utf8_lossy(v.as_bytes()).into_owned()
///         })
///     }))
///     .service_fn(|_request: Request<()>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
///     });
/// let request = || Request::builder().header("x-api-key", "k1").body(()).unwrap();
/// for _ in 0..2 {
///     let response = service.ready().await.unwrap().call(request()).await.unwrap();
///     assert_eq!(response.status(), StatusCode::OK);
/// }
/// let response = service.ready().await.unwrap().call(request()).await.unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(response.headers()["retry-after"], "30");
/// assert_eq!(response.headers()["ratelimit"], r#""default";r=0;t=60"#);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RateLimitLayer<L, K> {
    limits: L,
    key: K,
    policy: Arc<str>,
}

impl<L, K> fmt::Debug for RateLimitLayer<L, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<L: Limits, K> RateLimitLayer<L, K> {
    /// Limits by `limits`, keyed by what `key` takes from a request.
    pub fn new(limits: L, key: K) -> Self {
        RateLimitLayer {
            limits,
            key,
            policy: Arc::from("default"),
        }
    }

    /// The policy's name in the `RateLimit` fields.
    pub fn policy(mut self, name: &str) -> Self {
        self.policy = Arc::from(name);
        self
    }
}

impl<S, L: Clone, K: Clone> Layer<S> for RateLimitLayer<L, K> {
    type Service = RateLimit<S, L, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limits: self.limits.clone(),
            key: self.key.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// A service limited by a [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit<S, L, K> {
    inner: S,
    limits: L,
    key: K,
    policy: Arc<str>,
}

impl<S: fmt::Debug, L, K> fmt::Debug for RateLimit<S, L, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, L, K> RateLimit<S, L, K> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn insert<B>(response: &mut Response<B>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}

fn with_headers<B>(response: &mut Response<B>, headers: &RateLimitHeaders) {
    insert(response, "ratelimit-policy", &headers.policy);
    insert(response, "ratelimit", &headers.limit);
    if let Some(retry_after) = &headers.retry_after {
        insert(response, "retry-after", retry_after);
    }
}

fn answer<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

impl<S, L, K, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, L, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    L: Limits,
    K: Fn(&Request<ReqBody>) -> String,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service made ready is the one that runs the request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let decided = self.limits.decide((self.key)(&request));
        let policy = self.policy.clone();
        Box::pin(async move {
            let (decision, quota) = match decided.await {
                Ok(decided) => decided,
                Err(err) => {
                    tracing::warn!(error = %err, "the rate limit could not be decided");
                    return Ok(answer(StatusCode::SERVICE_UNAVAILABLE));
                }
            };
            let headers = RateLimitHeaders::new(&policy, &quota, &decision);
            if decision.verdict != Verdict::Allowed {
                let mut response = answer(StatusCode::TOO_MANY_REQUESTS);
                with_headers(&mut response, &headers);
                return Ok(response);
            }
            let mut response = inner.call(request).await?;
            with_headers(&mut response, &headers);
            Ok(response)
        })
    }
}
