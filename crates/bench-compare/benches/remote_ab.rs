//! Interleaved A/B rounds, statecraft against the raw client, on throw-away
//! servers: on a noisy machine a slow patch hits both sides of a round, so
//! the median of the per-round ratios is steadier than two criterion runs
//! taken one after the other.
//!
//! `cargo bench -p bench-compare --bench remote_ab` (about a minute).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bench_compare::{concurrent, keys, Picker};
use bytes::Bytes;
use statecraft::{
    PostgresBackend, PostgresConfig, PutOptions, RedisBackend, RedisConfig, StateBackend,
};
use statecraft_testkit::{PostgresServer, RedisServer};

const ROUNDS: usize = 21;
const KEYS: usize = 10_000;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Runs `raw` and `ours` alternately (which goes first alternates too);
/// each returns the seconds one round took. Prints medians and the median
/// per-round ratio (ours / raw: below 1 is faster).
async fn ab<R, O, RF, OF>(name: &str, per_round: usize, mut raw: R, mut ours: O)
where
    R: FnMut() -> RF,
    O: FnMut() -> OF,
    RF: Future<Output = f64>,
    OF: Future<Output = f64>,
{
    let (mut raws, mut ourss, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    raw().await;
    ours().await;
    for round in 0..ROUNDS {
        let (r, o) = if round % 2 == 0 {
            let r = raw().await;
            (r, ours().await)
        } else {
            let o = ours().await;
            (raw().await, o)
        };
        raws.push(r);
        ourss.push(o);
        ratios.push(o / r);
    }
    let per_op = |s: f64| s * 1e6 / per_round as f64;
    println!(
        "{name:<28} raw {:>9.2} µs/op {:>10.0} op/s | statecraft {:>9.2} µs/op {:>10.0} op/s | ratio {:.3}",
        per_op(median(raws.clone())),
        per_round as f64 / median(raws),
        per_op(median(ourss.clone())),
        per_round as f64 / median(ourss),
        median(ratios)
    );
}

/// The seconds a burst took.
async fn seconds(burst: impl Future<Output = std::time::Duration>) -> f64 {
    burst.await.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let keys = Arc::new(keys(KEYS));
    let value = Bytes::from(vec![b'v'; 100]);
    let redis_server = RedisServer::start();
    let pg_server = PostgresServer::start();

    let client = redis::Client::open(redis_server.url()).expect("client");
    let raw_redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let config = RedisConfig::builder()
        .url(redis_server.url())
        .build()
        .expect("config");
    let redis: Arc<RedisBackend> = Arc::new(RedisBackend::new(config).await.expect("redis"));
    let pg = Arc::new(
        PostgresBackend::new(
            PostgresConfig::builder()
                .url(pg_server.url())
                .table("ab")
                .pool_size(
                    std::env::var("PG_POOL")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(16),
                )
                .build()
                .expect("config"),
        )
        .await
        .expect("postgres"),
    );
    for chunk in keys.chunks(1000) {
        let entries: Vec<(Bytes, Bytes)> =
            chunk.iter().map(|k| (k.clone(), value.clone())).collect();
        redis
            .batch_put(entries.clone(), PutOptions::new())
            .await
            .expect("fill");
        pg.batch_put(entries, PutOptions::new())
            .await
            .expect("fill");
    }
    let (raw_pg, connection) = tokio_postgres::connect(&pg_server.url(), tokio_postgres::NoTls)
        .await
        .expect("raw pg");
    tokio::spawn(connection);
    let raw_pg = Arc::new(raw_pg);
    let statement = raw_pg
        .prepare("SELECT value FROM \"ab\" WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())")
        .await
        .expect("prepare");

    const POINT: usize = 2_000;
    let picker = std::cell::RefCell::new(Picker::new(11));
    let sample = || keys_at(&mut picker.borrow_mut(), POINT);
    let keys_for =
        |idx: Vec<usize>| -> Vec<Bytes> { idx.into_iter().map(|i| keys[i].clone()).collect() };

    ab(
        "redis get",
        POINT,
        || {
            let (mut conn, batch) = (raw_redis.clone(), keys_for(sample()));
            async move {
                let t = Instant::now();
                for key in &batch {
                    let _: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key[..])
                        .query_async(&mut conn)
                        .await
                        .expect("get");
                }
                t.elapsed().as_secs_f64()
            }
        },
        || {
            let (redis, batch) = (redis.clone(), keys_for(sample()));
            async move {
                let t = Instant::now();
                for key in &batch {
                    redis.get(key).await.expect("get");
                }
                t.elapsed().as_secs_f64()
            }
        },
    )
    .await;
    ab(
        "redis put",
        POINT,
        || {
            let (mut conn, batch, value) = (raw_redis.clone(), keys_for(sample()), value.clone());
            async move {
                let t = Instant::now();
                for key in &batch {
                    redis::cmd("SET")
                        .arg(&key[..])
                        .arg(&value[..])
                        .exec_async(&mut conn)
                        .await
                        .expect("set");
                }
                t.elapsed().as_secs_f64()
            }
        },
        || {
            let (redis, batch, value) = (redis.clone(), keys_for(sample()), value.clone());
            async move {
                let t = Instant::now();
                for key in &batch {
                    redis.put(key, value.clone()).await.expect("put");
                }
                t.elapsed().as_secs_f64()
            }
        },
    )
    .await;
    ab(
        "redis get, 256 tasks",
        256 * 40,
        || {
            let (conn, keys) = (raw_redis.clone(), keys.clone());
            seconds(concurrent(256, 40, KEYS, move |i| {
                let (mut conn, key) = (conn.clone(), keys[i].clone());
                async move {
                    let _: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&key[..])
                        .query_async(&mut conn)
                        .await
                        .expect("get");
                }
            }))
        },
        || {
            let (redis, keys) = (redis.clone(), keys.clone());
            seconds(concurrent(256, 40, KEYS, move |i| {
                let (redis, key) = (redis.clone(), keys[i].clone());
                async move {
                    redis.get(&key).await.expect("get");
                }
            }))
        },
    )
    .await;
    ab(
        "postgres get",
        POINT / 2,
        || {
            let (raw, statement, batch) = (
                raw_pg.clone(),
                statement.clone(),
                keys_for(sample()[..POINT / 2].to_vec()),
            );
            async move {
                let t = Instant::now();
                for key in &batch {
                    raw.query_opt(&statement, &[&key.as_ref()])
                        .await
                        .expect("get");
                }
                t.elapsed().as_secs_f64()
            }
        },
        || {
            let (pg, batch) = (pg.clone(), keys_for(sample()[..POINT / 2].to_vec()));
            async move {
                let t = Instant::now();
                for key in &batch {
                    pg.get(key).await.expect("get");
                }
                t.elapsed().as_secs_f64()
            }
        },
    )
    .await;
    ab(
        "postgres get, 64 tasks",
        64 * 20,
        || {
            let (raw, statement, keys) = (raw_pg.clone(), statement.clone(), keys.clone());
            seconds(concurrent(64, 20, KEYS, move |i| {
                let (raw, statement, key) = (raw.clone(), statement.clone(), keys[i].clone());
                async move {
                    raw.query_opt(&statement, &[&key.as_ref()])
                        .await
                        .expect("get");
                }
            }))
        },
        || {
            let (pg, keys) = (pg.clone(), keys.clone());
            seconds(concurrent(64, 20, KEYS, move |i| {
                let (pg, key) = (pg.clone(), keys[i].clone());
                async move {
                    pg.get(&key).await.expect("get");
                }
            }))
        },
    )
    .await;
}

fn keys_at(picker: &mut Picker, n: usize) -> Vec<usize> {
    (0..n).map(|_| picker.next(KEYS)).collect()
}
