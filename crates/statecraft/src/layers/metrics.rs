//! [`Metrics`]: counters, latency histograms and `tracing` spans for every
//! operation, through the [`metrics`] crate's facade.
//!
//! ```
//! # async fn demo() -> statecraft::Result<()> {
//! use statecraft::{MemoryBackend, Metrics, StateBackend};
//!
//! // Install a recorder (metrics-exporter-prometheus, say) first: the layer
//! // registers its counters when it is built.
//! let store = Metrics::new(MemoryBackend::new(), "sessions");
//! store.put(b"k", "v".into()).await?;
//! # Ok(()) }
//! ```
//!
//! Every series carries the labels `backend` (the inner backend's name),
//! `layer` (the name given to [`Metrics::new`], to tell stacked layers
//! apart) and `operation`:
//!
//! - `statecraft_operations_total{outcome="ok"|"error"}` — a counter;
//! - `statecraft_errors_total{kind}` — a counter per [`ErrorKind`] (with
//!   `backend` and `layer` only);
//! - `statecraft_operation_seconds` — a histogram of latencies. Operations
//!   that wait (remote stores) are all timed; operations that answer at once
//!   (in-process stores) are timed one in 64, which keeps the
//!   layer's cost to a few nanoseconds.
//!
//! Operations that wait run inside a `debug` span `statecraft.op` with the
//! backend, layer and operation; keys are never recorded.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{Counter, Histogram};
use tracing::Instrument;

use crate::backend::error::{ErrorKind, Operation};
use crate::backend::future::StateFuture;
use crate::backend::maintenance::MaintenanceTask;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::Subscription;
use crate::backend::stats::BackendStats;
use crate::backend::transaction::Transaction;
use crate::backend::StateBackend;
use crate::layers::operation::{operation_layer, OperationLayer};

/// One operation in this many that answers at once is timed.
const SAMPLE_EVERY: u32 = 64;

/// The handles of one operation's series, registered once.
#[derive(Debug)]
struct Series {
    ok: Counter,
    error: Counter,
    latency: Histogram,
}

/// A backend whose operations are counted, timed and traced.
#[derive(Debug)]
pub struct Metrics<B> {
    inner: B,
    layer: &'static str,
    series: Box<[Series]>,
    errors: Box<[Counter]>,
}

thread_local! {
    static TICK: Cell<u32> = const { Cell::new(0) };
}

fn sampled() -> bool {
    TICK.with(|tick| {
        let n = tick.get().wrapping_add(1);
        tick.set(n);
        n % SAMPLE_EVERY == 0
    })
}

impl<B: StateBackend> Metrics<B> {
    /// Wraps `inner`; `layer` names this point of the stack in the labels.
    pub fn new(inner: B, layer: &'static str) -> Self {
        let backend = inner.name();
        let series = Operation::ALL
            .iter()
            .map(|op| {
                let operation = op.as_str();
                Series {
                    ok: metrics::counter!("statecraft_operations_total",
                        "backend" => backend, "layer" => layer,
                        "operation" => operation, "outcome" => "ok"),
                    error: metrics::counter!("statecraft_operations_total",
                        "backend" => backend, "layer" => layer,
                        "operation" => operation, "outcome" => "error"),
                    latency: metrics::histogram!("statecraft_operation_seconds",
                        "backend" => backend, "layer" => layer, "operation" => operation),
                }
            })
            .collect();
        let errors = ErrorKind::ALL
            .iter()
            .map(|kind| {
                metrics::counter!("statecraft_errors_total",
                    "backend" => backend, "layer" => layer, "kind" => kind.as_str())
            })
            .collect();
        Metrics {
            inner,
            layer,
            series,
            errors,
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

    #[inline]
    fn record<T>(
        &self,
        operation: Operation,
        result: &crate::Result<T>,
        latency: Option<Duration>,
    ) {
        let series = &self.series[operation.index()];
        match result {
            Ok(_) => series.ok.increment(1),
            Err(err) => {
                series.error.increment(1);
                self.errors[err.kind().index()].increment(1);
            }
        }
        if let Some(latency) = latency {
            series.latency.record(latency.as_secs_f64());
        }
    }
}

impl<B: StateBackend> OperationLayer for Metrics<B> {
    type Inner = B;

    fn inner(&self) -> &B {
        &self.inner
    }

    #[inline]
    fn run<'a, T, F>(&'a self, operation: Operation, mut call: F) -> StateFuture<'a, T>
    where
        T: Send + 'a,
        F: FnMut() -> StateFuture<'a, T> + Send + 'a,
    {
        let started = sampled().then(Instant::now);
        let pending = match call().into_ready() {
            Ok(result) => {
                self.record(operation, &result, started.map(|s| s.elapsed()));
                return StateFuture::ready(result);
            }
            Err(pending) => pending,
        };
        let span = tracing::debug_span!(
            "statecraft.op",
            backend = self.inner.name(),
            layer = self.layer,
            operation = operation.as_str()
        );
        StateFuture::new(
            async move {
                let started = started.unwrap_or_else(Instant::now);
                let result = pending.await;
                self.record(operation, &result, Some(started.elapsed()));
                if let Err(err) = &result {
                    tracing::debug!(error = %err, "operation failed");
                }
                result
            }
            .instrument(span),
        )
    }
}

operation_layer!(Metrics);
