//! The sled backend through `Arc<dyn StateBackend>` against raw sled on
//! the same kind of database, in the same run.

use std::sync::Arc;
use std::time::Duration;

use bench_compare::{keys, now, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use statecraft::{PutOptions, SledBackend, StateBackend};

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
    // The writes that keep a key's expiry (a counter, a swap of a plain
    // value) and one that sets it (a TTL put): issue 11's "3× faster".
    let counters: Vec<Bytes> = (0..1_000)
        .map(|i| Bytes::from(format!("counter:{i}")))
        .collect();
    group.bench_function("increment/raw_sled", |b| {
        b.iter(|| {
            black_box(
                raw.update_and_fetch(&counters[picker.next(counters.len())][..], |old| {
                    let n = old
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, i64::from_be_bytes);
                    Some(n.wrapping_add(1).to_be_bytes().to_vec())
                })
                .ok(),
            )
        })
    });
    group.bench_function("increment/statecraft_dyn", |b| {
        b.iter(|| {
            let key = &counters[picker.next(counters.len())];
            black_box(now(backend.increment(key, 1, PutOptions::new())).ok())
        })
    });
    let other = Bytes::from(vec![b'w'; 100]);
    group.bench_function("compare_and_swap/raw_sled", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)][..];
            let current = raw.get(key).ok().flatten();
            black_box(raw.compare_and_swap(key, current, Some(&other[..])).ok())
        })
    });
    group.bench_function("compare_and_swap/statecraft_dyn", |b| {
        b.iter(|| {
            let key = &keys[picker.next(KEYS)];
            let current = now(backend.get(key)).ok().flatten();
            black_box(
                now(backend.compare_and_swap(
                    key,
                    current.as_deref(),
                    Some(other.clone()),
                    PutOptions::new(),
                ))
                .ok(),
            )
        })
    });
    let ttl = PutOptions::new().ttl(Duration::from_secs(3600));
    group.bench_function("put_ttl/statecraft_dyn", |b| {
        b.iter(|| {
            black_box(now(backend.put_with(&keys[picker.next(KEYS)], value.clone(), ttl)).ok())
        })
    });
    group.finish();
}

criterion_group!(benches, sled_ops);
criterion_main!(benches);
