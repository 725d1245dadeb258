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

/// The same four cases interleaved in rounds (the order rotating each
/// round), printing each case's median time and its median per-round ratio
/// to the bare get: on a noisy machine this is the figure to quote.
fn interleaved(_: &mut Criterion) {
    const ROUNDS: usize = 21;
    const OPS: usize = 200_000;
    let keys = keys(KEYS);
    let recorder = PrometheusBuilder::new().build_recorder();
    let cases: Vec<(&str, Arc<dyn StateBackend>)> = vec![
        ("memory", memory(&keys)),
        (
            "metrics_no_recorder",
            Arc::new(Metrics::new(memory(&keys), "bench")),
        ),
        (
            "metrics_prometheus",
            Arc::new(metrics::with_local_recorder(&recorder, || {
                Metrics::new(memory(&keys), "bench")
            })),
        ),
        (
            "retry_timeout",
            Arc::new(Retry::new(
                Timeout::new(memory(&keys), Duration::from_millis(100)),
                RetryPolicy::new(),
            )),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut picker = Picker::new(3);
    for round in 0..ROUNDS {
        for step in 0..cases.len() {
            let index = (round + step) % cases.len();
            let backend = &cases[index].1;
            let started = std::time::Instant::now();
            for _ in 0..OPS {
                black_box(now(backend.get(&keys[picker.next(KEYS)])).ok());
            }
            times[index].push(started.elapsed().as_nanos() as f64 / OPS as f64);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (index, (name, _)) in cases.iter().enumerate() {
        let ratios = times[index]
            .iter()
            .zip(&times[0])
            .map(|(t, base)| t / base)
            .collect();
        println!(
            "interleaved get/{name:<22} {:>7.1} ns/op   ratio to memory {:.3}",
            median(times[index].clone()),
            median(ratios)
        );
    }
}

criterion_group!(benches, get, interleaved);
criterion_main!(benches);
