//! A tower [`Layer`] that guards any service with a breaker: a rejected
//! request never reaches the service and fails with
//! [`CallError::Rejected`] (a [`Rejected`] with its "retry after", what an
//! HTTP server answers as `503 Service Unavailable` with `Retry-After`);
//! every other request runs, and its result is recorded as the layer's
//! classifier says (by default an `Err` is a failure, an `Ok` a success).
//!
//! ```
//! # #[tokio::main] async fn main() -> statecraft::Result<()> {
//! use std::time::Duration;
//! use statecraft::breaker::{BreakerConfig, BreakerLayer, CallError, LocalBreaker, Outcome};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let breaker = LocalBreaker::new(
//!     "search",
//!     BreakerConfig::builder().consecutive_failures(2).open_for(Duration::from_secs(30)).build()?,
//! );
//! // A response with a 5xx status is a failure, a 4xx says nothing.
//! let mut service = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(breaker).classify(|result: &Result<u16, String>| match result {
//!         Ok(status) if *status >= 500 => Outcome::Failure,
//!         Ok(status) if *status >= 400 => Outcome::Ignored,
//!         Ok(_) => Outcome::Success,
//!         Err(_) => Outcome::Failure,
//!     }))
//!     .service_fn(|_request: &str| async { Ok::<u16, String>(503) });
//! for _ in 0..2 {
//!     assert_eq!(service.ready().await.ok().unwrap().call("q").await.ok(), Some(503));
//! }
//! match service.ready().await.ok().unwrap().call("q").await {
//!     Err(CallError::Rejected(rejected)) => {
//!         // What an HTTP handler sends: 503 with `Retry-After: 30`.
//!         assert_eq!(rejected.retry_after_secs(), Some(30));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::distributed::DistributedBreaker;
use super::hybrid::HybridBreaker;
use super::local::LocalBreaker;
use super::machine::Outcome;
use super::permit::CallError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A breaker that can guard a call made later by someone else: the
/// [`LocalBreaker`], the [`DistributedBreaker`] and the [`HybridBreaker`].
pub trait Guard: Clone + Send + Sync + 'static {
    /// Runs `call` if the breaker lets it through, and records its result
    /// as `classify` says. Dropped before the call ends, the call counts as
    /// a failure (a cancelled call).
    fn guard<T, E, F, Fut, C>(&self, classify: C, call: F) -> BoxFuture<Result<T, CallError<E>>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        C: FnOnce(&Result<T, E>) -> Outcome + Send + 'static;
}

/// The breakers that guard by their own `call_with`.
macro_rules! guard_by_call_with {
    ($($breaker:ty),*) => {$(
        impl Guard for $breaker {
            fn guard<T, E, F, Fut, C>(
                &self,
                classify: C,
                call: F,
            ) -> BoxFuture<Result<T, CallError<E>>>
            where
                T: Send + 'static,
                E: Send + 'static,
                F: FnOnce() -> Fut + Send + 'static,
                Fut: Future<Output = Result<T, E>> + Send + 'static,
                C: FnOnce(&Result<T, E>) -> Outcome + Send + 'static,
            {
                let breaker = self.clone();
                Box::pin(async move { breaker.call_with(classify, call).await })
            }
        }
    )*};
}

guard_by_call_with!(LocalBreaker, DistributedBreaker, HybridBreaker);

/// How a [`BreakerLayer`] counts a result by default: an `Err` is a
/// failure, an `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsFail;

/// Decides how a service's result counts for the breaker.
pub trait Classify<T, E>: Clone + Send + Sync + 'static {
    /// The outcome of `result`.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E> Classify<T, E> for ErrorsFail {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        Outcome::of(result)
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// Guards the services it wraps with one breaker (every clone of the
/// service shares it).
#[derive(Clone)]
pub struct BreakerLayer<B, C = ErrorsFail> {
    breaker: B,
    classify: C,
}

impl<B: fmt::Debug, C> fmt::Debug for BreakerLayer<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<B: Guard> BreakerLayer<B> {
    /// A layer guarding with `breaker`, counting errors as failures.
    pub fn new(breaker: B) -> Self {
        BreakerLayer {
            breaker,
            classify: ErrorsFail,
        }
    }
}

impl<B: Guard, C> BreakerLayer<B, C> {
    /// Counts results as `classify` says (a closure
    /// `Fn(&Result<Response, Error>) -> Outcome`, or a [`Classify`]).
    pub fn classify<K>(self, classify: K) -> BreakerLayer<B, K> {
        BreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }
}

impl<S, B: Guard, C: Clone> Layer<S> for BreakerLayer<B, C> {
    type Service = BreakerService<S, B, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service guarded by a breaker (see [`BreakerLayer`]).
#[derive(Clone)]
pub struct BreakerService<S, B, C = ErrorsFail> {
    inner: S,
    breaker: B,
    classify: C,
}

impl<S, B: fmt::Debug, C> fmt::Debug for BreakerService<S, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, B, C> BreakerService<S, B, C> {
    /// The service it guards.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The service it guards, to change.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The service it guarded.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, C, R> Service<R> for BreakerService<S, B, C>
where
    S: Service<R> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
    B: Guard,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = BoxFuture<Result<S::Response, CallError<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Failed)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The service made ready goes with the request; a fresh clone
        // stays for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let classify = self.classify.clone();
        self.breaker.guard(
            move |result: &Result<S::Response, S::Error>| classify.classify(result),
            move || inner.call(request),
        )
    }
}

/// A [`Guard`] shared behind an `Arc` guards as the breaker itself.
impl<G: Guard> Guard for Arc<G> {
    fn guard<T, E, F, Fut, C>(&self, classify: C, call: F) -> BoxFuture<Result<T, CallError<E>>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        C: FnOnce(&Result<T, E>) -> Outcome + Send + 'static,
    {
        (**self).guard(classify, call)
    }
}
