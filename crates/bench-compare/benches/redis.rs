//! The Redis backend against the raw redis-rs multiplexed connection, on a
//! throw-away `redis-server` the test support starts, in the same run: point
//! get and put, 256 concurrent tasks on one client, and a 1,000-key batch
//! against 1,000 single calls.

use std::sync::Arc;
use std::time::Duration;

use bench_compare::{concurrent, keys, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use statecraft::{PutOptions, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

const KEYS: usize = 10_000;
const TASKS: usize = 256;
const PER_TASK: usize = 40;
const BATCH: usize = 1_000;

fn redis_ops(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let keys = keys(KEYS);
    let value = Bytes::from(vec![b'v'; 100]);
    let (raw, ours, pool4) = runtime.block_on(async {
        let client = redis::Client::open(server.url()).expect("client");
        let raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let config = RedisConfig::builder()
            .url(server.url())
            .build()
            .expect("config");
        let ours: Arc<dyn StateBackend> =
            Arc::new(RedisBackend::new(config).await.expect("backend"));
        let pool4 = RedisConfig::builder()
            .url(server.url())
            .pool_size(4)
            .build()
            .expect("config");
        let pool4: Arc<dyn StateBackend> =
            Arc::new(RedisBackend::new(pool4).await.expect("backend"));
        for chunk in keys.chunks(BATCH) {
            let entries = chunk.iter().map(|k| (k.clone(), value.clone())).collect();
            ours.batch_put(entries, PutOptions::new())
                .await
                .expect("prefill");
        }
        (raw, ours, pool4)
    });

    let mut group = c.benchmark_group("redis");
    group.throughput(Throughput::Elements(1));
    let mut picker = Picker::new(5);
    group.bench_function("get/raw_multiplexed", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let key = keys[picker.next(KEYS)].clone();
            async move {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key[..])
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                black_box(value)
            }
        })
    });
    group.bench_function("get/statecraft", |b| {
        b.to_async(&runtime).iter(|| {
            let key = keys[picker.next(KEYS)].clone();
            let ours = ours.clone();
            async move { black_box(ours.get(&key).await.expect("get")) }
        })
    });
    group.bench_function("put/raw_multiplexed", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let key = keys[picker.next(KEYS)].clone();
            let value = value.clone();
            async move {
                redis::cmd("SET")
                    .arg(&key[..])
                    .arg(&value[..])
                    .exec_async(&mut conn)
                    .await
                    .expect("set")
            }
        })
    });
    group.bench_function("put/statecraft", |b| {
        b.to_async(&runtime).iter(|| {
            let key = keys[picker.next(KEYS)].clone();
            let (ours, value) = (ours.clone(), value.clone());
            async move { ours.put(&key, value).await.expect("put") }
        })
    });

    // 256 tasks on one client, each doing PER_TASK gets; time per get.
    group.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    let keys = Arc::new(keys);
    group.bench_function("get_256_tasks/raw_multiplexed", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (raw, keys) = (raw.clone(), keys.clone());
            async move {
                let mut total = Duration::ZERO;

                for _ in 0..iters {
                    total += concurrent(TASKS, PER_TASK, KEYS, |i| {
                        let (mut conn, key) = (raw.clone(), keys[i].clone());
                        async move {
                            let _: Option<Vec<u8>> = redis::cmd("GET")
                                .arg(&key[..])
                                .query_async(&mut conn)
                                .await
                                .expect("get");
                        }
                    })
                    .await;
                }

                total
            }
        })
    });
    for (name, backend) in [
        ("statecraft", ours.clone()),
        ("statecraft_4_connections", pool4.clone()),
    ] {
        group.bench_function(format!("get_256_tasks/{name}"), |b| {
            b.to_async(&runtime).iter_custom(|iters| {
                let (ours, keys) = (backend.clone(), keys.clone());
                async move {
                    let mut total = Duration::ZERO;

                    for _ in 0..iters {
                        total += concurrent(TASKS, PER_TASK, KEYS, |i| {
                            let (ours, key) = (ours.clone(), keys[i].clone());
                            async move {
                                ours.get(&key).await.expect("get");
                            }
                        })
                        .await;
                    }

                    total
                }
            })
        });
    }

    // 1,000 keys: one batch call against 1,000 awaited single calls.
    group.throughput(Throughput::Elements(BATCH as u64));
    let batch: Vec<Bytes> = keys[..BATCH].to_vec();
    let entries: Vec<(Bytes, Bytes)> = batch.iter().map(|k| (k.clone(), value.clone())).collect();
    group.bench_function("batch_get_1000/raw_mget", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = raw.clone();
            let batch = &batch;
            async move {
                let mut cmd = redis::cmd("MGET");
                for key in batch {
                    cmd.arg(&key[..]);
                }
                let values: Vec<Option<Vec<u8>>> = cmd.query_async(&mut conn).await.expect("mget");
                black_box(values)
            }
        })
    });
    group.bench_function("batch_get_1000/statecraft_batch", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(ours.batch_get(&batch).await.expect("batch")) })
    });
    group.bench_function("batch_get_1000/statecraft_one_by_one", |b| {
        b.to_async(&runtime).iter(|| async {
            for key in &batch {
                black_box(ours.get(key).await.expect("get"));
            }
        })
    });
    group.bench_function("batch_put_1000/statecraft_batch", |b| {
        b.to_async(&runtime).iter(|| async {
            ours.batch_put(entries.clone(), PutOptions::new())
                .await
                .expect("batch")
        })
    });
    group.bench_function("batch_put_1000/statecraft_one_by_one", |b| {
        b.to_async(&runtime).iter(|| async {
            for (key, value) in &entries {
                ours.put(key, value.clone()).await.expect("put");
            }
        })
    });
    group.finish();
    drop(server);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = redis_ops
}
criterion_main!(benches);
