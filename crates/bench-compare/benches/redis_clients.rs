//! Redis clients side by side under concurrency, on a throw-away
//! `redis-server` the test support starts, in the same run: gets and puts
//! from 256 and from 1,000 tasks on one client, through the raw redis-rs
//! multiplexed connection (statecraft's own client), fred (which pipelines
//! every command its tasks send at once) and statecraft's Redis backend.
//! Each client has its crate's default response timeout (redis-rs 500 ms,
//! fred none, statecraft 1 s) — the peers as their users get them.

use std::sync::Arc;
use std::time::Duration;

use bench_compare::{concurrent, keys};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use statecraft::{PutOptions, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

const KEYS: usize = 10_000;
const CALLS: usize = 20_000;

#[derive(Clone)]
enum Client {
    Raw(redis::aio::MultiplexedConnection),
    Fred(fred::clients::Client),
    Statecraft(Arc<dyn StateBackend>),
}

impl Client {
    async fn get(&self, key: Bytes) {
        match self {
            Client::Raw(conn) => {
                let mut conn = conn.clone();
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key[..])
                    .query_async(&mut conn)
                    .await
                    .expect("get");
                std::hint::black_box(value);
            }
            Client::Fred(client) => {
                let value: Option<Bytes> = client.get(key).await.expect("get");
                std::hint::black_box(value);
            }
            Client::Statecraft(ours) => {
                std::hint::black_box(ours.get(&key).await.expect("get"));
            }
        }
    }

    async fn put(&self, key: Bytes, value: Bytes) {
        match self {
            Client::Raw(conn) => {
                let mut conn = conn.clone();
                redis::cmd("SET")
                    .arg(&key[..])
                    .arg(&value[..])
                    .exec_async(&mut conn)
                    .await
                    .expect("set");
            }
            Client::Fred(client) => {
                let () = client
                    .set(key, value, None, None, false)
                    .await
                    .expect("set");
            }
            Client::Statecraft(ours) => ours.put(&key, value).await.expect("put"),
        }
    }
}

fn redis_clients(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = RedisServer::start();
    let keys = Arc::new(keys(KEYS));
    let value = Bytes::from(vec![b'v'; 100]);
    let clients = runtime.block_on(async {
        let raw = redis::Client::open(server.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let fred = Builder::from_config(Config::from_url(&server.url()).expect("fred config"))
            .build()
            .expect("fred client");
        fred.init().await.expect("fred connects");
        let config = RedisConfig::builder()
            .url(server.url())
            .build()
            .expect("config");
        let ours: Arc<dyn StateBackend> =
            Arc::new(RedisBackend::new(config).await.expect("backend"));
        for chunk in keys.chunks(1_000) {
            let entries = chunk.iter().map(|k| (k.clone(), value.clone())).collect();
            ours.batch_put(entries, PutOptions::new())
                .await
                .expect("prefill");
        }
        [
            ("raw_multiplexed", Client::Raw(raw)),
            ("fred", Client::Fred(fred)),
            ("statecraft", Client::Statecraft(ours)),
        ]
    });

    let mut group = c.benchmark_group("redis_clients");
    for tasks in [256, 1_000] {
        group.throughput(Throughput::Elements((CALLS / tasks * tasks) as u64));
        for (name, client) in &clients {
            for op in ["get", "put"] {
                group.bench_function(format!("{op}_{tasks}_tasks/{name}"), |b| {
                    b.to_async(&runtime).iter_custom(|iters| {
                        let (client, keys, value) = (client.clone(), keys.clone(), value.clone());
                        async move {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                total += concurrent(tasks, CALLS / tasks, KEYS, |i| {
                                    let (client, key, value) =
                                        (client.clone(), keys[i].clone(), value.clone());
                                    async move {
                                        match op {
                                            "get" => client.get(key).await,
                                            _ => client.put(key, value).await,
                                        }
                                    }
                                })
                                .await;
                            }
                            total
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    targets = redis_clients
}
criterion_main!(benches);
