//! Runs `N` memory gets through one case of the layers bench, for an
//! instruction count under valgrind, where a noisy machine's timings say
//! little: the difference between two runs with different `N`, divided by
//! the difference in `N`, is the instructions one get costs.
//!
//! ```text
//! cargo build --release -p bench-compare --example layer_instructions
//! valgrind --tool=cachegrind --cache-sim=no \
//!     target/release/examples/layer_instructions metrics_prometheus 200000
//! ```
//!
//! Cases: `memory`, `metrics_no_recorder`, `metrics_prometheus`,
//! `retry_timeout`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusBuilder;
use statecraft::{MemoryBackend, Metrics, Retry, RetryPolicy, StateBackend, Timeout};

const KEYS: usize = 10_000;

fn memory(keys: &[Bytes]) -> Arc<MemoryBackend> {
    let backend = MemoryBackend::builder()
        .capacity(KEYS)
        .sweep_interval(None)
        .build();
    let value = Bytes::from(vec![b'v'; 100]);
    for key in keys {
        now(backend.put(key, value.clone())).expect("put");
    }
    Arc::new(backend)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "memory".into());
    let n: usize = args
        .next()
        .map(|n| n.parse().expect("N, a count of gets"))
        .unwrap_or(100_000);
    let keys = keys(KEYS);
    let recorder = PrometheusBuilder::new().build_recorder();
    let backend: Arc<dyn StateBackend> = match case.as_str() {
        "memory" => memory(&keys),
        "metrics_no_recorder" => Arc::new(Metrics::new(memory(&keys), "bench")),
        "metrics_prometheus" => Arc::new(metrics::with_local_recorder(&recorder, || {
            Metrics::new(memory(&keys), "bench")
        })),
        "retry_timeout" => Arc::new(Retry::new(
            Timeout::new(memory(&keys), Duration::from_millis(100)),
            RetryPolicy::new(),
        )),
        other => panic!("unknown case {other:?}"),
    };
    let mut picker = Picker::new(7);
    for _ in 0..n {
        let key = &keys[picker.next(KEYS)];
        black_box(now(backend.get(key)).expect("get"));
    }
}
