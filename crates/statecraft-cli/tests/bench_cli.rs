//! Runs the real `statecraft bench` binary and checks its JSON output.

use std::process::Command;

#[test]
fn bench_json_prints_rows_for_memory_and_sled() {
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args([
            "bench",
            "--json",
            "--duration-ms",
            "50",
            "--keys",
            "500",
            "--concurrency",
            "4",
        ])
        .output()
        .expect("run statecraft bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let rows = rows.as_array().expect("a JSON array");
    // 2 backends × 5 operations × concurrency 1 and 4.
    assert_eq!(rows.len(), 20);
    for backend in ["memory", "sled"] {
        for op in ["get", "put", "increment", "batch_get", "batch_put"] {
            for concurrency in [1, 4] {
                let row = rows
                    .iter()
                    .find(|r| {
                        r["backend"] == backend
                            && r["operation"] == op
                            && r["concurrency"] == concurrency
                    })
                    .unwrap_or_else(|| panic!("no row for {backend} {op} ×{concurrency}"));
                let ops = row["ops_per_sec"].as_f64().expect("ops_per_sec");
                let p50 = row["p50_us"].as_f64().expect("p50_us");
                let p99 = row["p99_us"].as_f64().expect("p99_us");
                assert!(ops > 0.0, "{row}");
                assert!(p50 > 0.0 && p99 >= p50, "{row}");
            }
        }
    }
}

#[test]
fn bench_table_and_bad_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args([
            "bench",
            "--backend",
            "memory",
            "--op",
            "get",
            "--duration-ms",
            "20",
        ])
        .output()
        .expect("run statecraft bench");
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("| Backend"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| memory")).count(),
        2,
        "{table}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(["bench", "--backend", "nosuch://x"])
        .output()
        .expect("run statecraft bench");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown backend"));
}

/// `--backend redis://… --backend redis+cluster://… --backend postgres://…`
/// against servers the test support starts.
#[test]
fn bench_json_prints_rows_for_redis_cluster_and_postgres() {
    let redis = statecraft_testkit::RedisServer::start();
    let cluster = statecraft_testkit::RedisCluster::start(3);
    let postgres = statecraft_testkit::PostgresServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(["bench", "--json", "--duration-ms", "50", "--keys", "300"])
        .args(["--concurrency", "4", "--backend", &redis.url()])
        .args(["--backend", &cluster.url(), "--backend", &postgres.url()])
        .output()
        .expect("run statecraft bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 30, "3 backends × 5 operations × 2 levels");
    for backend in ["redis", "redis_cluster", "postgres"] {
        let mine: Vec<_> = rows.iter().filter(|r| r["backend"] == backend).collect();
        assert_eq!(mine.len(), 10, "{backend}");
        for row in mine {
            assert!(row["ops_per_sec"].as_f64().expect("ops") > 0.0, "{row}");
            assert_eq!(row["distributed"], true, "{row}");
        }
    }
}

/// A stack from its spec: `cached(redis://…)` measured next to the same
/// Redis uncached, with the L1's hits and misses in its rows.
#[test]
fn bench_measures_a_cached_stack_with_its_l1_figures() {
    let redis = statecraft_testkit::RedisServer::start();
    let cached = format!("cached({}, ttl=30s, entries=1000)", redis.url());
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(["bench", "--json", "--duration-ms", "100", "--keys", "200"])
        .args(["--concurrency", "4", "--op", "get"])
        .args(["--backend", &redis.url(), "--backend", &cached])
        .output()
        .expect("run statecraft bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(
        rows.len(),
        8,
        "redis: get × 2 levels; the stack: get, get_hit, get_miss × 2: {rows:?}"
    );
    for row in rows {
        let stacked = row["backend"] == cached.as_str();
        assert_eq!(row["l1_hits"].is_u64(), stacked, "{row}");
        if !stacked {
            assert_eq!(row["operation"], "get", "{row}");
            continue;
        }
        let hits = row["l1_hits"].as_u64().unwrap_or(0);
        let misses = row["l1_misses"].as_u64().unwrap_or(0);
        match row["operation"].as_str() {
            Some("get_hit") => assert!(hits > 0 && misses == 0, "all hits: {row}"),
            Some("get_miss") => assert!(misses > 0 && hits == 0, "all misses: {row}"),
            Some("get") => assert!(hits + misses > 0, "{row}"),
            other => panic!("unexpected operation {other:?}"),
        }
    }
}

/// `--primitive breaker`: a protected call through a local breaker (on
/// `memory`) and through a distributed one on each store, in rows with the
/// backends' fields.
#[test]
fn bench_primitive_breaker_prints_local_and_distributed_rows() {
    let rows = primitive_rows("breaker", 4);
    let expected = [
        ("memory", "breaker_local_call", false),
        ("redis", "breaker_hybrid_call", true),
        ("redis", "breaker_distributed_call", true),
        ("postgres", "breaker_hybrid_call", true),
        ("postgres", "breaker_distributed_call", true),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(backend, operation, distributed)| (backend, operation.to_string(), distributed))
        .collect();
    assert_rows(&rows, &expected, 4);
    assert!(rows.iter().all(|row| row["batch_size"] == 1), "{rows:?}");
}

/// Runs `statecraft bench --primitive <primitive> --json` at concurrency
/// 1 and `concurrency` against a Redis and a PostgreSQL, and returns its
/// rows.
fn primitive_rows(primitive: &str, concurrency: u64) -> Vec<serde_json::Value> {
    let redis = statecraft_testkit::RedisServer::start();
    let postgres = statecraft_testkit::PostgresServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(["bench", "--primitive", primitive, "--json"])
        .args([
            "--duration-ms",
            "100",
            "--concurrency",
            &concurrency.to_string(),
        ])
        .args(["--backend", &redis.url(), "--backend", &postgres.url()])
        .output()
        .expect("run statecraft bench");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    rows.as_array().expect("a JSON array").clone()
}

/// Every `(backend, operation, distributed)` has a row at concurrency 1
/// and `level` with the backends' fields.
fn assert_rows(rows: &[serde_json::Value], expected: &[(&str, String, bool)], level: u64) {
    assert_eq!(rows.len(), expected.len() * 2, "{rows:?}");
    for (backend, operation, distributed) in expected {
        let (backend, operation, distributed) = (*backend, operation.as_str(), *distributed);
        for concurrency in [1, level] {
            let row = rows
                .iter()
                .find(|r| {
                    r["backend"] == backend
                        && r["operation"] == operation
                        && r["concurrency"] == concurrency
                })
                .unwrap_or_else(|| panic!("no {operation} row on {backend} ×{concurrency}"));
            let ops = row["ops_per_sec"].as_f64().expect("ops_per_sec");
            let p50 = row["p50_us"].as_f64().expect("p50_us");
            let p99 = row["p99_us"].as_f64().expect("p99_us");
            assert!(ops > 0.0 && p50 > 0.0 && p99 >= p50, "{row}");
            assert_eq!(row["distributed"], distributed, "{row}");
            assert!(row["calls"].as_u64().expect("calls") > 0, "{row}");
        }
    }
}

/// `--primitive limiter`: a decision by each algorithm locally, keyed, in
/// each store and by leases, in rows named by primitive, algorithm and
/// placement.
#[test]
fn bench_primitive_limiter_prints_a_row_per_algorithm_and_placement() {
    let rows = primitive_rows("limiter", 2);
    let mut expected = vec![("memory", "limiter_gcra_keyed_local".to_string(), false)];
    for algorithm in ["gcra", "token_bucket", "sliding_window", "fixed_window"] {
        expected.push(("memory", format!("limiter_{algorithm}_local"), false));
        for backend in ["redis", "postgres"] {
            expected.push((backend, format!("limiter_{algorithm}_distributed"), true));
        }
    }
    for backend in ["redis", "postgres"] {
        expected.push((backend, "limiter_gcra_hybrid".to_string(), true));
    }
    assert_rows(&rows, &expected, 2);
}

/// `--primitive counter`: an add to a sharded counter, and through each
/// store, batched and one round trip each.
#[test]
fn bench_primitive_counter_prints_local_hybrid_and_distributed_rows() {
    let rows = primitive_rows("counter", 2);
    let expected = [
        ("memory", "counter_sharded_local", false),
        ("redis", "counter_hybrid", true),
        ("redis", "counter_distributed", true),
        ("postgres", "counter_hybrid", true),
        ("postgres", "counter_distributed", true),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(backend, operation, distributed)| (backend, operation.to_string(), distributed))
        .collect();
    assert_rows(&rows, &expected, 2);
}

/// `--primitive lock`: an uncontended lock and a semaphore's permit taken
/// and given back, and handovers between tasks contending on one lock
/// (2 tasks at concurrency 1), on each store; the same two for advisory
/// locks on PostgreSQL.
#[test]
fn bench_primitive_lock_prints_acquire_handover_and_semaphore_rows() {
    let rows = primitive_rows("lock", 4);
    let (handovers, others): (Vec<_>, Vec<_>) = rows.into_iter().partition(|row| {
        row["operation"] == "lock_handover" || row["operation"] == "advisory_lock_handover"
    });
    let mut expected = Vec::new();
    for backend in ["redis", "postgres"] {
        expected.push((backend, "lock_acquire_release".to_string(), true));
        expected.push((backend, "semaphore_acquire_release".to_string(), true));
    }
    expected.push((
        "postgres",
        "advisory_lock_acquire_release".to_string(),
        true,
    ));
    assert_rows(&others, &expected, 4);
    assert_eq!(handovers.len(), 6, "{handovers:?}");
    for (backend, operation) in [
        ("redis", "lock_handover"),
        ("postgres", "lock_handover"),
        ("postgres", "advisory_lock_handover"),
    ] {
        for contenders in [2, 4] {
            let row = handovers
                .iter()
                .find(|r| {
                    r["backend"] == backend
                        && r["operation"] == operation
                        && r["concurrency"] == contenders
                })
                .unwrap_or_else(|| panic!("no {operation} row on {backend} ×{contenders}"));
            let p50 = row["p50_us"].as_f64().expect("p50_us");
            assert!(
                p50 > 0.0 && row["calls"].as_u64().expect("calls") > 0,
                "{row}"
            );
        }
    }
}

/// `--with-raw`: next to each backend's rows, a `raw_<backend>` row per
/// operation and level (its peer's calls), and a `ratio` on statecraft's
/// rows; a stack has no peer, and says so.
#[test]
fn bench_with_raw_prints_raw_rows_and_ratios() {
    let redis = statecraft_testkit::RedisServer::start();
    let postgres = statecraft_testkit::PostgresServer::start();
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(["bench", "--json", "--with-raw", "--rounds", "2"])
        .args([
            "--duration-ms",
            "100",
            "--keys",
            "300",
            "--concurrency",
            "4",
        ])
        .args(["--backend", "memory", "--backend", "sled"])
        .args(["--backend", "redb"])
        .args(["--backend", &redis.url(), "--backend", &postgres.url()])
        .args(["--backend", "cached(memory)"])
        .output()
        .expect("run statecraft bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    assert!(stderr.contains("cached(memory): no raw peer"), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    let rows = rows.as_array().expect("a JSON array");
    let find = |backend: &str, op: &str, concurrency: u64| {
        rows.iter()
            .find(|r| {
                r["backend"] == backend && r["operation"] == op && r["concurrency"] == concurrency
            })
            .unwrap_or_else(|| panic!("no row for {backend} {op} ×{concurrency}"))
    };
    for backend in ["memory", "sled", "redb", "redis", "postgres"] {
        for op in ["get", "put", "increment", "batch_get", "batch_put"] {
            for concurrency in [1, 4] {
                let ours = find(backend, op, concurrency);
                let ratio = ours["ratio"].as_f64().expect("a ratio");
                assert!(ratio.is_finite() && ratio > 0.0, "{ours}");
                let raw = find(&format!("raw_{backend}"), op, concurrency);
                assert!(raw.get("ratio").is_none(), "{raw}");
                assert!(raw["calls"].as_u64().expect("calls") > 0, "{raw}");
                assert!(raw["p50_us"].as_f64().expect("p50") > 0.0, "{raw}");
                assert_eq!(raw["distributed"], ours["distributed"], "{raw}");
            }
        }
    }
    let stacked: Vec<_> = rows
        .iter()
        .filter(|r| r["backend"] == "cached(memory)")
        .collect();
    assert!(!stacked.is_empty());
    assert!(stacked.iter().all(|r| r.get("ratio").is_none()));
    assert!(!rows.iter().any(|r| r["backend"] == "raw_cached(memory)"));
    // 5 backends × 5 operations × 2 levels, twice; the stack's 7 × 2.
    assert_eq!(rows.len(), 100 + 14, "{rows:?}");
}
