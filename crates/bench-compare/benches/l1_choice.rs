//! Which concurrent cache backs `Cached`'s L1: moka against quick_cache on
//! the hit path (the one `Cached` must keep within 1.2× a memory get), with
//! the memory backend's get as the yardstick, all in one run.
//!
//! `cargo bench -p bench-compare --bench l1_choice`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use statecraft::{MemoryBackend, StateBackend};

const KEYS: usize = 10_000;

struct Slot {
    value: Bytes,
    expires_at: Instant,
    touched: AtomicU64,
}

fn keys() -> Vec<Bytes> {
    (0..KEYS)
        .map(|i| Bytes::from(format!("key:{i:08}")))
        .collect()
}

fn hits(c: &mut Criterion) {
    let keys = keys();
    let value = Bytes::from(vec![7u8; 128]);
    let memory = MemoryBackend::builder().sweep_interval(None).build();
    let moka: moka::sync::Cache<Bytes, Bytes> = moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(Duration::from_secs(600))
        .build();
    let quick: quick_cache::sync::Cache<Bytes, (Bytes, Instant)> =
        quick_cache::sync::Cache::new(100_000);
    let bare: quick_cache::sync::Cache<Bytes, Bytes> = quick_cache::sync::Cache::new(100_000);
    let shared: quick_cache::sync::Cache<Bytes, Arc<Slot>> = quick_cache::sync::Cache::new(100_000);
    let epoch = Instant::now();
    let expiry = Instant::now() + Duration::from_secs(600);
    for key in &keys {
        memory
            .put(key, value.clone())
            .into_ready()
            .expect("ready")
            .expect("put");
        moka.insert(key.clone(), value.clone());
        quick.insert(key.clone(), (value.clone(), expiry));
        bare.insert(key.clone(), value.clone());
        shared.insert(
            key.clone(),
            Arc::new(Slot {
                value: value.clone(),
                expires_at: expiry,
                touched: AtomicU64::new(0),
            }),
        );
    }
    let mut group = c.benchmark_group("l1_hit");
    let mut i = 0usize;
    group.bench_function("memory_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(memory.get(&keys[i]).into_ready())
        })
    });
    group.bench_function("moka_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(moka.get(&keys[i][..]))
        })
    });
    group.bench_function("quick_cache_get_with_expiry_check", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(
                quick
                    .get(&keys[i][..])
                    .filter(|(_, at)| Instant::now() < *at)
                    .map(|(v, _)| v),
            )
        })
    });
    group.bench_function("quick_cache_get", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(bare.get(&keys[i][..]))
        })
    });
    group.bench_function("quick_cache_arc_slot_ttl_tti", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let now = Instant::now();
            black_box(shared.get(&keys[i][..]).and_then(|slot| {
                if now >= slot.expires_at {
                    return None;
                }
                let ms = now.duration_since(epoch).as_millis() as u64;
                if slot.touched.load(Ordering::Relaxed) != ms {
                    slot.touched.store(ms, Ordering::Relaxed);
                }
                Some(slot.value.clone())
            }))
        })
    });
    let clock = quanta::Clock::new();
    let q_expiry = clock.now() + Duration::from_secs(600);
    let q: quick_cache::sync::Cache<Bytes, (Bytes, quanta::Instant)> =
        quick_cache::sync::Cache::new(100_000);
    for key in &keys {
        q.insert(key.clone(), (value.clone(), q_expiry));
    }
    group.bench_function("quick_cache_get_quanta_expiry", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(
                q.get(&keys[i][..])
                    .filter(|(_, at)| clock.now() < *at)
                    .map(|(v, _)| v),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, hits);
criterion_main!(benches);
