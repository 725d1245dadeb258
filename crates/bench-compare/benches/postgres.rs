//! The PostgreSQL backend against a raw tokio-postgres prepared statement,
//! on a throw-away server the test support starts, in the same run: point
//! get, reads from 64 concurrent tasks (statecraft's pool against one raw
//! client pipelining them), and a 1,000-row batch_put against
//! 1,000 single upserts.

use std::sync::Arc;
use std::time::Duration;

use bench_compare::{concurrent, keys, Picker};
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use statecraft::{PostgresBackend, PostgresConfig, PutOptions, StateBackend};
use statecraft_testkit::PostgresServer;

const KEYS: usize = 10_000;
const TASKS: usize = 64;
const PER_TASK: usize = 20;
const BATCH: usize = 1_000;
const TABLE: &str = "bench_state";

fn postgres_ops(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = PostgresServer::start();
    let keys = keys(KEYS);
    let value = Bytes::from(vec![b'v'; 100]);
    let (raw, get_statement, ours) = runtime.block_on(async {
        let config = PostgresConfig::builder()
            .url(server.url())
            .table(TABLE)
            .pool_size(TASKS)
            .build()
            .expect("config");
        let ours: Arc<dyn StateBackend> =
            Arc::new(PostgresBackend::new(config).await.expect("backend"));
        for chunk in keys.chunks(BATCH) {
            let entries = chunk.iter().map(|k| (k.clone(), value.clone())).collect();
            ours.batch_put(entries, PutOptions::new())
                .await
                .expect("prefill");
        }
        let (raw, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
            .await
            .expect("raw connection");
        tokio::spawn(connection);
        // The same statement the backend runs, prepared once.
        let get_statement = raw
            .prepare(&format!(
                "SELECT value FROM \"{TABLE}\" WHERE key = $1 \
                 AND (expires_at IS NULL OR expires_at > now())"
            ))
            .await
            .expect("prepare");
        (Arc::new(raw), get_statement, ours)
    });

    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(1));
    let mut picker = Picker::new(9);
    group.bench_function("get/raw_prepared", |b| {
        b.to_async(&runtime).iter(|| {
            let key = keys[picker.next(KEYS)].clone();
            let (raw, statement) = (raw.clone(), get_statement.clone());
            async move {
                let row = raw
                    .query_opt(&statement, &[&key.as_ref()])
                    .await
                    .expect("get");
                black_box(row.map(|row| row.get::<_, Vec<u8>>(0)))
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

    group.throughput(Throughput::Elements((TASKS * PER_TASK) as u64));
    let keys = Arc::new(keys);
    group.bench_function("get_64_tasks/raw_one_client", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (raw, statement, keys) = (raw.clone(), get_statement.clone(), keys.clone());
            async move {
                let mut total = Duration::ZERO;

                for _ in 0..iters {
                    total += concurrent(TASKS, PER_TASK, KEYS, |i| {
                        let (raw, statement, key) =
                            (raw.clone(), statement.clone(), keys[i].clone());

                        async move {
                            raw.query_opt(&statement, &[&key.as_ref()])
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
    group.bench_function("get_64_tasks/statecraft", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (ours, keys) = (ours.clone(), keys.clone());
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

    group.throughput(Throughput::Elements(BATCH as u64));
    let entries: Vec<(Bytes, Bytes)> = keys[..BATCH]
        .iter()
        .map(|k| (k.clone(), value.clone()))
        .collect();
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
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(20);
    targets = postgres_ops
}
criterion_main!(benches);
