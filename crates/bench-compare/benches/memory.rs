//! The memory backend through `Arc<dyn StateBackend>` against the raw
//! DashMap it wraps (same hasher, same shard count), in the same run.

use std::sync::Arc;
use std::time::Instant;

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dashmap::DashMap;
use statecraft::raw::MemoryHasher;
use statecraft::{MemoryBackend, PutOptions, StateBackend};

const KEYS: usize = 10_000;

type RawMap = DashMap<Box<[u8]>, Bytes, MemoryHasher>;

fn setup() -> (Arc<dyn StateBackend>, Arc<RawMap>, Vec<Bytes>) {
    let keys = keys(KEYS);
    let value = Bytes::from(vec![b'v'; 100]);
    let backend = MemoryBackend::builder()
        .capacity(KEYS)
        .sweep_interval(None)
        .build();
    let raw = DashMap::with_capacity_and_hasher_and_shard_amount(KEYS, MemoryHasher::default(), 64);
    for key in &keys {
        now(backend.put(key, value.clone())).expect("put");
        raw.insert(Box::from(&key[..]), value.clone());
    }
    (Arc::new(backend), Arc::new(raw), keys)
}

fn point_ops(c: &mut Criterion) {
    let (backend, raw, keys) = setup();
    let value = Bytes::from(vec![b'w'; 100]);
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));
    let mut picker = Picker::new(7);
    group.bench_function("get/raw_dashmap", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)];
            black_box(raw.get(&key[..]).map(|v| v.clone()))
        })
    });
    group.bench_function("get/statecraft_dyn", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)];
            black_box(now(backend.get(key)).ok())
        })
    });
    group.bench_function("put/raw_dashmap", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)];
            match raw.get_mut(&key[..]) {
                Some(mut slot) => *slot = value.clone(),
                None => {
                    raw.insert(Box::from(&key[..]), value.clone());
                }
            }
        })
    });
    group.bench_function("put/statecraft_dyn", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)];
            black_box(now(backend.put(key, value.clone())).ok())
        })
    });
    group.bench_function("increment/statecraft_dyn", |b| {
        b.iter(|| {
            let key = &keys[picker.next(100)];
            black_box(now(backend.increment(&key[..], 1, PutOptions::new())).ok())
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_get_100/statecraft_dyn", |b| {
        b.iter_batched(
            || {
                (0..100)
                    .map(|_| keys[picker.next(KEYS)].clone())
                    .collect::<Vec<_>>()
            },
            |batch| black_box(now(backend.batch_get(&batch)).ok()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Gets from two threads at once: total gets per second, raw vs statecraft.
fn two_threads(c: &mut Criterion) {
    let (backend, raw, keys) = setup();
    let keys = Arc::new(keys);
    let mut group = c.benchmark_group("memory_2_threads");
    group.throughput(Throughput::Elements(2));
    group.bench_function("get/raw_dashmap", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (raw, keys) = (&raw, &keys);
                    s.spawn(move || {
                        let mut picker = Picker::new(t + 11);
                        for _ in 0..iters {
                            black_box(raw.get(&keys[picker.next(KEYS)][..]).map(|v| v.clone()));
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.bench_function("get/statecraft_dyn", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (backend, keys) = (&backend, &keys);
                    s.spawn(move || {
                        let mut picker = Picker::new(t + 11);
                        for _ in 0..iters {
                            black_box(now(backend.get(&keys[picker.next(KEYS)])).ok());
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, point_ops, two_threads);
criterion_main!(benches);
