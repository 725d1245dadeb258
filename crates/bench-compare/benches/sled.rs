//! The sled backend through `Arc<dyn StateBackend>` against raw sled on
//! the same kind of database, in the same run.

use std::sync::Arc;

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use statecraft::{SledBackend, StateBackend};

const KEYS: usize = 10_000;

fn sled_ops(c: &mut Criterion) {
    let keys = keys(KEYS);
    let value = Bytes::from(vec![b'v'; 100]);
    let raw_dir = tempfile::tempdir().expect("temp dir");
    let ours_dir = tempfile::tempdir().expect("temp dir");
    let raw = sled::Config::new()
        .path(raw_dir.path())
        .cache_capacity(256 << 20)
        .flush_every_ms(Some(500))
        .open()
        .expect("raw sled");
    let backend: Arc<dyn StateBackend> = Arc::new(
        SledBackend::builder()
            .path(ours_dir.path())
            .sweep_interval(None)
            .open()
            .expect("sled backend"),
    );
    for key in &keys {
        raw.insert(&key[..], &value[..]).expect("raw insert");
        now(backend.put(key, value.clone())).expect("put");
    }
    let mut group = c.benchmark_group("sled");
    group.throughput(Throughput::Elements(1));
    let mut picker = Picker::new(3);
    group.bench_function("get/raw_sled", |b| {
        b.iter(|| black_box(raw.get(&keys[picker.next(KEYS)][..]).ok()))
    });
    group.bench_function("get/statecraft_dyn", |b| {
        b.iter(|| black_box(now(backend.get(&keys[picker.next(KEYS)])).ok()))
    });
    group.bench_function("insert/raw_sled", |b| {
        b.iter(|| black_box(raw.insert(&keys[picker.next(KEYS)][..], &value[..]).ok()))
    });
    group.bench_function("insert/statecraft_dyn", |b| {
        b.iter(|| black_box(now(backend.put(&keys[picker.next(KEYS)], value.clone())).ok()))
    });
    group.finish();
}

criterion_group!(benches, sled_ops);
criterion_main!(benches);
