//! [`Timeout`]: a deadline on every operation.
//!
//! ```
//! # async fn demo() -> statecraft::Result<()> {
//! use std::time::Duration;
//! use statecraft::{MemoryBackend, StateBackend, Timeout};
//!
//! let store = Timeout::new(MemoryBackend::new(), Duration::from_millis(50))
//!     .write_timeout(Duration::from_millis(200));
//! store.put(b"k", "v".into()).await?;
//! # Ok(()) }
//! ```
//!
//! An operation that misses its deadline is dropped (see the cancellation
//! rules on [`StateFuture`]) and fails with a temporary
//! [`ErrorKind::Timeout`] error. For a write that error also says
//! [`may_have_applied`](Error::may_have_applied): the request may have reached
//! the store, so only an idempotent write is safe to send again
//! ([`Retry`](crate::Retry) follows that rule). Put `Retry` outside
//! `Timeout` to give each attempt its own deadline.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::{Error, ErrorKind, Operation};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::StateBackend;
use crate::layers::operation::{operation_layer, OperationLayer};

/// A backend whose operations fail with a timeout error after a deadline.
#[derive(Debug)]
pub struct Timeout<B> {
    inner: B,
    read: Duration,
    write: Duration,
}

impl<B: StateBackend> Timeout<B> {
    /// Wraps `inner` with one deadline for every operation.
    pub fn new(inner: B, timeout: Duration) -> Self {
        Timeout {
            inner,
            read: timeout,
            write: timeout,
        }
    }

    /// Gives operations that change the store their own deadline.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write = timeout;
        self
    }

    /// The deadline of `operation`.
    pub fn timeout_of(&self, operation: Operation) -> Duration {
        if operation.is_read() {
            self.read
        } else {
            self.write
        }
    }

    /// The inner backend.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner backend, consuming the layer.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

/// The error of an operation that missed its deadline.
pub(crate) fn timeout_error(backend: &'static str, operation: Operation, after: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no answer within {} ms", after.as_millis()),
    )
    .with_backend(backend)
    .with_operation(operation)
    .maybe_applied(!operation.is_read())
}

impl<B: StateBackend> OperationLayer for Timeout<B> {
    type Inner = B;

    fn inner(&self) -> &B {
        &self.inner
    }

    fn run<'a, T, F>(&'a self, operation: Operation, mut call: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: FnMut() -> StateFuture<'a, T> + Send + 'a,
    {
        let pending = call();
        if pending.is_ready() {
            return pending;
        }
        let after = self.timeout_of(operation);
        StateFuture::new(async move {
            match tokio::time::timeout(after, pending).await {
                Ok(result) => result,
                Err(_) => Err(timeout_error(self.inner.name(), operation, after)),
            }
        })
    }
}

operation_layer!(Timeout);
