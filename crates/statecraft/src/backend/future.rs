//! [`StateFuture`]: the future every backend operation returns.
//!
//! Backend methods must be object safe (`Arc<dyn StateBackend>`), so they
//! cannot be `async fn`. Boxing every future would cost an allocation on every
//! call, which matters for the in-process backends whose whole operation takes
//! tens of nanoseconds. A `StateFuture` is therefore either a value that is
//! already there (no allocation) or a boxed future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::backend::error::Result;

/// The future returned by [`StateBackend`](crate::StateBackend) operations.
///
/// Build one with [`StateFuture::ready`] when the result is known without
/// waiting, or [`StateFuture::new`] around an `async` block otherwise.
///
/// # Cancellation
///
/// Dropping a `StateFuture` before it completes (a timeout, a `select!`) is
/// allowed everywhere and never corrupts a store, but what it leaves behind
/// differs:
///
/// - **memory, null, sled**: the operation runs when the method is called
///   and the future is already complete ([`is_ready`](Self::is_ready)), so
///   there is nothing left to cancel — it happened, whether or not the
///   future is polled. (sled's `maintain(Flush)` is the exception: it is
///   done only if the future completes.)
/// - **Redis**: once the request is written to the connection the server
///   runs it; dropping the future only drops the reply. A write cancelled
///   mid-flight may have been applied.
/// - **PostgreSQL**: the pooled connection running the statement is closed
///   (never returned to the pool); the server may still finish the
///   statement. Inside a `transaction` nothing is committed unless the
///   commit ran. A point read on a shared read connection only drops its
///   answer, which the connection skips when it comes.
/// - **layers** (`Namespaced`, `Retry`, `Timeout`, `Metrics`) add no state
///   of their own: cancelling them cancels the inner call, as above. A
///   cancelled `Retry` sends no further attempt.
#[must_use = "futures do nothing unless awaited"]
pub struct StateFuture<'a, T> {
    inner: Inner<'a, T>,
}

enum Inner<'a, T> {
    Ready(Option<Result<T>>),
    Boxed(Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>),
}

impl<'a, T> StateFuture<'a, T> {
    /// A future that resolves at once to `result`, without allocating.
    #[inline]
    pub fn ready(result: Result<T>) -> Self {
        StateFuture {
            inner: Inner::Ready(Some(result)),
        }
    }

    /// A future that runs `future`, boxed.
    pub fn new(future: impl Future<Output = Result<T>> + Send + 'a) -> Self {
        StateFuture {
            inner: Inner::Boxed(Box::pin(future)),
        }
    }

    /// The result, if this future already holds one (no poll, no waiting);
    /// otherwise the future itself, to be awaited.
    #[inline]
    pub fn into_ready(self) -> std::result::Result<Result<T>, Self> {
        match self.inner {
            Inner::Ready(Some(result)) => Ok(result),
            inner => Err(StateFuture { inner }),
        }
    }

    /// Whether this future holds an already known result.
    pub fn is_ready(&self) -> bool {
        matches!(self.inner, Inner::Ready(_))
    }
}

// The ready value is moved out, never pinned in place, and the boxed future is
// pinned on the heap, so a `StateFuture` may move freely between polls.
impl<T> Unpin for StateFuture<'_, T> {}

impl<T> Future for StateFuture<'_, T> {
    type Output = Result<T>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Ready(value) => match value.take() {
                Some(value) => Poll::Ready(value),
                None => panic!("StateFuture polled after it completed"),
            },
            Inner::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl<T> std::fmt::Debug for StateFuture<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFuture")
            .field("ready", &self.is_ready())
            .finish()
    }
}
