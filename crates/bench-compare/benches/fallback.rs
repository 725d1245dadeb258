//! `Fallback` while its primary is down, against its peer in the same run:
//! a Redis primary blackholed through the fault proxy (its breaker open)
//! in front of a memory backend, against that memory backend's own get.
//! Also the call that finds Redis blackholed (answered after the member's
//! timeout).
//!
//! `cargo bench -p bench-compare --bench fallback`

use std::time::{Duration, Instant};

use bench_compare::keys;
use bytes::Bytes;
use statecraft::{
    Fallback, Health, HealthPolicy, MemoryBackend, RedisBackend, RedisConfig, StateBackend,
};
use statecraft_testkit::{Fault, FaultProxy, RedisServer};

/// Under `cargo test` (no `--bench` argument) the bench runs as a quick
/// smoke test: a hundredth of the work.
fn scale(n: usize) -> usize {
    if std::env::args().any(|arg| arg == "--bench") {
        n
    } else {
        (n / 100).max(1)
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let server = RedisServer::start();
    let upstream = server
        .url()
        .trim_start_matches("redis://")
        .parse()
        .expect("host:port");
    let proxy = FaultProxy::start(upstream);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let keys = keys(1_000);
        let value = Bytes::from(vec![b'v'; 100]);
        let memory = MemoryBackend::new();
        let peer = MemoryBackend::new();
        for key in &keys {
            memory.put(key, value.clone()).await.expect("put");
            peer.put(key, value.clone()).await.expect("put");
        }
        let redis = RedisBackend::new(
            RedisConfig::builder()
                .url(format!("redis://{}", proxy.addr()))
                .build()
                .expect("config"),
        )
        .await
        .expect("redis");
        let timeout = Duration::from_millis(100);
        let chain = Fallback::builder()
            .member(redis, timeout)
            .member(memory, Duration::from_millis(50))
            .health(HealthPolicy {
                failures: 3,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(3600),
                max_open_for: Duration::from_secs(3600),
            })
            .build()
            .expect("chain");
        proxy.set(Fault::Blackhole);
        let mut finding = Vec::new();
        for key in keys.iter().take(3) {
            let started = Instant::now();
            chain.get(key).await.expect("answered by memory");
            finding.push(started.elapsed());
        }
        assert!(matches!(chain.health()[0], Health::Unhealthy { .. }));
        println!(
            "calls that found Redis blackholed (member timeout {timeout:?}): {:?}",
            finding
        );
        let cases: [(&str, &dyn StateBackend); 2] = [("memory get (peer)", &peer), ("fallback, primary open", &chain)];
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 2];
        let mut medians: Vec<Vec<f64>> = vec![Vec::new(); 2];
        let (calls, rounds) = (scale(100_000), scale(300).clamp(3, 11));
        for round in 0..rounds {
            for step in 0..2 {
                let index = (round + step) % 2;
                let backend = cases[index].1;
                let started = Instant::now();
                for i in 0..calls {
                    let call = Instant::now();
                    backend.get(&keys[i % keys.len()]).await.expect("get");
                    if i % 10 == 0 {
                        samples[index].push(call.elapsed());
                    }
                }
                medians[index].push(started.elapsed().as_nanos() as f64 / calls as f64);
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratios: Vec<f64> = medians[1].iter().zip(&medians[0]).map(|(f, m)| f / m).collect();
        for (index, (name, _)) in cases.iter().enumerate() {
            let mut sorted = samples[index].clone();
            sorted.sort();
            println!(
                "{name:<24} mean {:>8.1} ns/call (median of rounds)   p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}",
                median(medians[index].clone()),
                percentile(&sorted, 0.5),
                percentile(&sorted, 0.99),
                percentile(&sorted, 1.0),
            );
        }
        println!("fallback ÷ memory get, median per-round ratio: {:.2}", median(ratios));
        proxy.heal();
    });
}
