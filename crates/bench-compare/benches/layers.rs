//! The cost of the operation layers over a bare memory get, in the same run:
//! `Metrics` with no recorder installed and with the Prometheus recorder,
//! and `Retry` over `Timeout`.

use std::sync::Arc;
use std::time::Duration;

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
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

fn get(c: &mut Criterion) {
    let keys = keys(KEYS);
    let bare: Arc<dyn StateBackend> = memory(&keys);
    let noop: Arc<dyn StateBackend> = Arc::new(Metrics::new(memory(&keys), "bench"));
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus: Arc<dyn StateBackend> =
        Arc::new(metrics::with_local_recorder(&recorder, || {
            Metrics::new(memory(&keys), "bench")
        }));
    let resilient: Arc<dyn StateBackend> = Arc::new(Retry::new(
        Timeout::new(memory(&keys), Duration::from_millis(100)),
        RetryPolicy::new(),
    ));
    let mut group = c.benchmark_group("layers");
    group.throughput(Throughput::Elements(1));
    let cases = [
        ("get/memory", &bare),
        ("get/metrics_no_recorder", &noop),
        ("get/metrics_prometheus", &prometheus),
        ("get/retry_timeout", &resilient),
    ];
    for (name, backend) in cases {
        let mut picker = Picker::new(7);
        group.bench_function(name, |b| {
            b.iter(|| black_box(now(backend.get(&keys[picker.next(KEYS)])).ok()))
        });
    }
    group.finish();
    // The recorder saw every operation of the Prometheus case.
    let rendered = recorder.handle().render();
    assert!(
        rendered.contains("statecraft_operations_total"),
        "{rendered}"
    );
}

criterion_group!(benches, get);
criterion_main!(benches);
