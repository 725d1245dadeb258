//! The breaker's PL/pgSQL copy (`src/breaker/step.sql`) against the Rust
//! state machine, on a real PostgreSQL started by the test support: random
//! configurations and event sequences agree step by step with the memory
//! backend's (which runs the Rust function); the breakers' table answers
//! resilient-circuit's dashboard and alerting queries with only the table
//! name changed; bad input is a typed error; rows expire and are purged;
//! a deleted row is a fresh closed breaker.

#[path = "support/breaker.rs"]
mod breaker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use breaker::{batch_steps, config, run, steady_steps, steps, KEY};
use proptest::prelude::*;
use statecraft::breaker::{
    step_input, BreakerConfig, BreakerStep, DistributedBreaker, Event, Phase, PEEK,
};
use statecraft::{
    ErrorKind, MemoryBackend, Namespaced, PostgresBackend, PostgresConfig, StateBackend,
};
use statecraft_testkit::PostgresServer;
use tokio_postgres::NoTls;

fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn postgres(table: &str) -> Arc<PostgresBackend> {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table(table)
        .build()
        .expect("config");
    Arc::new(PostgresBackend::new(config).await.expect("postgres"))
}

/// A plain client on the test server, as an operator's `psql` would be.
async fn operator() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&PostgresServer::shared().url(), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// One runtime and one backend for every generated case (each case runs in
/// a namespace of its own, so the native path is also taken through
/// `Namespaced`).
fn shared() -> &'static (tokio::runtime::Runtime, Arc<PostgresBackend>) {
    static SHARED: OnceLock<(tokio::runtime::Runtime, Arc<PostgresBackend>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let backend = runtime.block_on(postgres(&unique("breaker_diff")));
        (runtime, backend)
    })
}

/// What the sequence answers and leaves on PostgreSQL (in a namespace of
/// its own) and on the memory backend (the Rust step).
type Seen = Vec<(
    Result<statecraft::Bytes, ErrorKind>,
    Option<statecraft::Bytes>,
)>;

fn differential(config: &BreakerConfig, steps: &[(breaker::Input, u64, u32)]) -> (Seen, Seen) {
    let (runtime, backend) = shared();
    runtime.block_on(async {
        let store = Namespaced::new(backend.clone(), unique("case") + ":");
        let native = run(&store, config, steps).await;
        (native, run(&MemoryBackend::new(), config, steps).await)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_plpgsql_step_decides_as_the_rust_step(config in config(), steps in steps()) {
        let (native, reference) = differential(&config, &steps);
        prop_assert_eq!(native, reference);
    }

    /// Mostly batches: the one pass over a closed window.
    #[test]
    fn the_plpgsql_batch_pass_decides_as_the_rust_step(config in config(), steps in batch_steps()) {
        let (native, reference) = differential(&config, &steps);
        prop_assert_eq!(native, reference);
    }

    /// Mostly plain successes: the statement's shortcut.
    #[test]
    fn the_statements_shortcut_decides_as_the_rust_step(config in config(), steps in steady_steps()) {
        let (native, reference) = differential(&config, &steps);
        prop_assert_eq!(native, reference);
    }
}

#[tokio::test]
async fn bad_input_is_a_typed_error_on_both_paths() {
    let store = postgres(&unique("breaker_bad")).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let good = step_input(&config, "b", Event::Acquire, 0, 0);
    let mut inputs: Vec<Vec<u8>> = vec![
        b"nonsense".to_vec(),
        b"c 5 0|A|1|0|1000".to_vec(),
        b"".to_vec(),
        good.replace("|A|", "|R s 0 x|").into_bytes(),
        good.replace("|A|", "|R s 2 -|").into_bytes(),
        good.replace("|A|", "|Q|").into_bytes(),
        good.replace("|A|", "|B |").into_bytes(),
        good.replace("|A|", "|B 0140|").into_bytes(),
        good.replace("|A|", &format!("|B {}|", "0".repeat(4_097)))
            .into_bytes(),
        good.replacen("|0|", "|4294967296|", 1).into_bytes(),
        // A configuration that does not validate: zero probes.
        good.replacen(" 1 s 1 ", " 0 s 1 ", 1).into_bytes(),
    ];
    assert_ne!(inputs[10], good.as_bytes(), "the probes field was replaced");
    let pg_only = vec![0xff, b'|'];
    for input in &inputs {
        for backend in [&*store as &dyn StateBackend, &MemoryBackend::new()] {
            let err = backend
                .update_atomic(KEY, &BreakerStep, input)
                .await
                .expect_err("malformed input");
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidArgument,
                "{} on {:?}: {err}",
                backend.name(),
                String::from_utf8_lossy(input)
            );
        }
    }
    inputs.push(pg_only);
    let err = store
        .update_atomic(KEY, &BreakerStep, inputs.last().map_or(&[][..], |i| i))
        .await
        .expect_err("not UTF-8");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    // Nothing was written by any of them, and a good input still works.
    assert!(store
        .update_atomic(KEY, &BreakerStep, PEEK)
        .await
        .expect("peek")
        .is_empty());
    let out = store
        .update_atomic(KEY, &BreakerStep, good.as_bytes())
        .await
        .expect("step");
    assert_eq!(&out[..], b"P0 -");
}

#[tokio::test]
async fn the_table_answers_resilient_circuits_queries() {
    let table = unique("breaker_ops");
    let store = postgres(&table).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(30))
        .build()
        .expect("config");
    let payments = DistributedBreaker::new(store.clone(), "payment_service", config.clone());
    let search = DistributedBreaker::new(store.clone(), "search", config.clone());
    for _ in 0..3 {
        payments
            .acquire()
            .await
            .expect("closed")
            .failure()
            .await
            .expect("record");
    }
    search
        .acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    let admin = DistributedBreaker::new(store.clone(), "admin", config);
    admin.force_open().await.expect("force open");

    let client = operator().await;
    let breakers = format!("\"{table}_breakers\"");
    // resilient-circuit's dashboard query, with only the table changed
    // (sent as text, its answer read as text, as psql would).
    let dashboard = client
        .simple_query(&format!(
            "SELECT
                resource_key,
                state,
                failure_count,
                CASE
                    WHEN state = 'OPEN' THEN
                        EXTRACT(EPOCH FROM (open_until - NOW()))
                    ELSE 0
                END as seconds_until_halfopen,
                updated_at
            FROM {breakers}
            ORDER BY updated_at DESC;"
        ))
        .await
        .expect("the dashboard query");
    let rows: Vec<(String, String, i64, f64)> = dashboard
        .iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .map(|row| {
            let text = |i: usize| row.get(i).unwrap_or_default().to_string();
            let number = |i: usize| text(i).parse::<f64>().expect("a number");
            (text(0), text(1), number(2) as i64, number(3))
        })
        .collect();
    println!("{rows:?}");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0].0, "admin", "the latest first: {rows:?}");
    assert_eq!(rows[0].1, "FORCED_OPEN");
    let (_, state, failures, wait) = &rows[2];
    assert_eq!(
        (rows[2].0.as_str(), state.as_str()),
        ("payment_service", "OPEN")
    );
    assert_eq!(*failures, 3, "the failures that opened it");
    assert!(
        *wait > 25.0 && *wait <= 30.0,
        "half-open in about 30 s: {wait}"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].2, rows[1].3),
        ("search", "CLOSED", 1, 0.0)
    );
    // Its alerting query.
    let alert = client
        .query(
            &format!(
                "SELECT resource_key, state, updated_at FROM {breakers}
                 WHERE resource_key = 'payment_service' AND state = 'OPEN'
                   AND updated_at > NOW() - INTERVAL '5 minutes'"
            ),
            &[],
        )
        .await
        .expect("the alerting query");
    assert_eq!(alert.len(), 1);
    // The row it locks, and the expiry of each.
    let row = client
        .query_one(
            &format!(
                "SELECT state, failure_count, open_until IS NOT NULL,
                    EXTRACT(EPOCH FROM (expires_at - NOW()))::float8
                 FROM {breakers} WHERE resource_key = 'payment_service'"
            ),
            &[],
        )
        .await
        .expect("the row");
    let expires_in: f64 = row.get(3);
    assert!(row.get::<_, bool>(2), "an opening has an end");
    assert!(
        expires_in > 3_000.0 && expires_in <= 3_600.0,
        "an hour's TTL: {expires_in}"
    );
    let forced: Option<f64> = client
        .query_one(
            &format!(
                "SELECT EXTRACT(EPOCH FROM (expires_at - NOW()))::float8
                 FROM {breakers} WHERE resource_key = 'admin'"
            ),
            &[],
        )
        .await
        .expect("the row")
        .get(0);
    assert_eq!(forced, None, "an operator's setting does not expire");
}

#[tokio::test]
async fn expired_rows_are_not_read_and_are_purged() {
    let table = unique("breaker_expiry");
    let store = postgres(&table).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let breaker = DistributedBreaker::new(store.clone(), "old", config.clone());
    breaker
        .acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    assert_eq!(
        breaker.state().await.expect("state").map(|s| s.phase),
        Some(Phase::Open)
    );
    let kept = DistributedBreaker::new(store.clone(), "kept", config);
    kept.force_open().await.expect("force open");
    let client = operator().await;
    let breakers = format!("\"{table}_breakers\"");
    let aged = client
        .execute(
            &format!(
                "UPDATE {breakers} SET expires_at = now() - interval '1 second'
                 WHERE resource_key = 'old'"
            ),
            &[],
        )
        .await
        .expect("age the row");
    assert_eq!(aged, 1);
    assert_eq!(
        breaker.state().await.expect("state"),
        None,
        "an expired row is gone"
    );
    let purged = store.purge_expired().await.expect("purge");
    assert_eq!(purged, 1, "the breaker's expired row");
    let left: Vec<String> = client
        .query(&format!("SELECT resource_key FROM {breakers}"), &[])
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, ["kept"]);
    assert!(
        breaker.acquire().await.is_ok(),
        "a forgotten breaker is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_row_is_a_fresh_closed_breaker() {
    let table = unique("breaker_deleted");
    let store = postgres(&table).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_millis(100))
        .build()
        .expect("config");
    let breaker = DistributedBreaker::new(store.clone(), "deleted", config);
    // The first step sets the table up.
    assert_eq!(breaker.state().await.expect("state"), None);
    let hammer = {
        let breaker = breaker.clone();
        tokio::spawn(async move {
            let (mut permits, mut rejections) = (0u32, 0u32);
            for _ in 0..1_000 {
                match breaker.acquire().await {
                    Ok(permit) => {
                        permits += 1;
                        permit.failure().await.expect("record");
                    }
                    Err(_) => rejections += 1,
                }
            }
            (permits, rejections)
        })
    };
    let client = operator().await;
    let delete = format!("DELETE FROM \"{table}_breakers\"");
    for _ in 0..50 {
        client.execute(&delete, &[]).await.expect("delete");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (permits, rejections) = hammer.await.expect("no panic");
    assert!(
        permits > 1 && rejections > 0,
        "{permits} permits, {rejections} rejections"
    );
    client.execute(&delete, &[]).await.expect("delete");
    assert_eq!(breaker.state().await.expect("state"), None);
    let permit = breaker
        .acquire()
        .await
        .expect("a deleted breaker is closed");
    assert!(!permit.is_probe());
    permit.success().await.expect("record");
    // One at a time: open for a minute, its row deleted, closed at once.
    let sticky_config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let sticky = DistributedBreaker::new(store.clone(), "sticky", sticky_config);
    for _ in 0..5 {
        sticky
            .acquire()
            .await
            .expect("closed")
            .failure()
            .await
            .expect("record");
        assert!(sticky.acquire().await.is_err(), "open for a minute");
        client.execute(&delete, &[]).await.expect("delete");
        let permit = sticky.acquire().await.expect("its row gone: closed");
        assert!(!permit.is_probe());
        permit.ignore().await.expect("record");
    }
}

/// A damaged stored state is read as Rust reads it: as a fresh breaker, or
/// (words after the window) as the state before them.
#[tokio::test]
async fn damaged_rows_read_as_the_rust_step_reads_them() {
    let table = unique("breaker_damaged");
    let store = postgres(&table).await;
    // The first step sets the table up.
    store
        .update_atomic(KEY, &BreakerStep, PEEK)
        .await
        .expect("peek");
    let client = operator().await;
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .failure_rate(1, 2)
        .min_calls(3)
        .build()
        .expect("config");
    let time_config = BreakerConfig::builder()
        .failures_within(2, Duration::from_millis(3_000))
        .build()
        .expect("config");
    let now = 1_733_000_000_500u64;
    let fail = Event::Record {
        outcome: statecraft::breaker::Outcome::Failure,
        slow: false,
        probe: None,
    };
    let damaged = [
        "b1 WHAT 1 2",
        "b1 OPEN 1 2 3 4 5 6 7 x:",
        "b1 CLOSED 1 0 99999999999 0 0 0 0 c:",
        "b1 CLOSED 1 0 0 1 0 0 0 c:0104",
        "b1 CLOSED 1 0 0 1 0 0 0 c:01",
        "b1 CLOSED 1 0 0 1 0 0 0 c:01 and more",
        "b1 CLOSED 1000000000000000000 0 0 1 0 0 0 c:01",
        "b1 CLOSED 999999999999999999 0 0 1 0 0 0 c:01",
        "b1 CLOSED 1733000000000 0 0 1 0 0 0 t:1000000000000000000,2,1,0",
        "b1 CLOSED 1  0 1 0 0 0 c:01",
        "b1 CLOSED 1733000000000 0 0 1 0 0 0 t:1733000000000,2,1,0;;1733000001000,1,1,0,x",
        "b1 CLOSED 1733000000000 0 0 1 0 0 0 t:1733000000000,2,1",
        "b1 CLOSED 1733000000000 0 0 1 0 0 0 t:1733000000000,2,1,a",
        "",
    ];
    for (i, text) in damaged.iter().enumerate() {
        for config in [&config, &time_config] {
            let key = format!("damaged-{i}");
            let memory = MemoryBackend::new();
            memory
                .put(
                    key.as_bytes(),
                    statecraft::Bytes::copy_from_slice(text.as_bytes()),
                )
                .await
                .expect("put");
            client
                .execute(
                    &format!(
                        "INSERT INTO \"{table}_breakers\" (key, resource_key, state,
                            failure_count, updated_at, expires_at, detail)
                         VALUES ($1, 'x', 'CLOSED', 0, now(), NULL, $2)
                         ON CONFLICT (key) DO UPDATE SET detail = EXCLUDED.detail"
                    ),
                    &[&key.as_bytes(), text],
                )
                .await
                .expect("a damaged row");
            let input = step_input(config, "x", fail, 7, now);
            let mut seen = Vec::new();
            for backend in [&*store as &dyn StateBackend, &memory] {
                let out = backend
                    .update_atomic(key.as_bytes(), &BreakerStep, input.as_bytes())
                    .await
                    .expect("a damaged state is no error");
                let after = backend
                    .update_atomic(key.as_bytes(), &BreakerStep, PEEK)
                    .await
                    .expect("peek");
                seen.push((out, after));
            }
            assert_eq!(seen[0], seen[1], "{text:?}");
        }
    }
}

#[tokio::test]
async fn peek_at_answers_the_store_time_and_the_state() {
    let store = postgres(&unique("breaker_peek")).await;
    breaker::check_peek_at(&*store).await;
    breaker::check_peek_at(&MemoryBackend::new()).await;
}

/// The statement answers a plain success on a steady row (a closed count
/// window full of successes, as the row's `steady` says for this
/// configuration) without the function and without writing; any other
/// input, configuration or text goes to the function: malformed fields
/// are still errors, a row an operator changed is stepped in full, and a
/// success that does change the state is recorded.
#[tokio::test]
async fn the_statements_shortcut_takes_only_a_steady_row_and_good_input() {
    let table = unique("breaker_steady");
    let store = postgres(&table).await;
    let client = operator().await;
    let config = BreakerConfig::builder()
        .window(statecraft::breaker::Window::Count(3))
        .failure_rate(1, 2)
        .min_calls(3)
        .build()
        .expect("config");
    let wider = BreakerConfig::builder()
        .window(statecraft::breaker::Window::Count(4))
        .failure_rate(1, 2)
        .min_calls(3)
        .build()
        .expect("config");
    let now = 1_733_000_000_000u64;
    let record = |outcome, slow| Event::Record {
        outcome,
        slow,
        probe: None,
    };
    let success = record(statecraft::breaker::Outcome::Success, false);
    let step = |config: &BreakerConfig, event, now: u64| {
        let store = store.clone();
        let input = step_input(config, "steady", event, 9, now);
        async move {
            store
                .update_atomic(KEY, &BreakerStep, input.as_bytes())
                .await
        }
    };
    let row = || async {
        let row = client
            .query_one(
                &format!("SELECT detail, steady, updated_at::text FROM \"{table}_breakers\""),
                &[],
            )
            .await
            .expect("the row");
        (
            row.get::<_, String>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, String>(2),
        )
    };
    for i in 0..3 {
        step(&config, success, now + i).await.expect("success");
    }
    let (detail, steady, updated) = row().await;
    assert_eq!(detail, format!("b1 CLOSED {now} 0 0 0 0 0 0 c:000"));
    let config_text = step_input(&config, "steady", success, 0, 0);
    let config_text = config_text.split('|').next().unwrap_or_default();
    assert_eq!(steady, Some(format!("{config_text}|{detail}")));

    // A plain success on it changes nothing, writes nothing.
    let out = step(&config, success, now + 10).await.expect("success");
    assert_eq!(&out[..], b"D -");
    assert_eq!(
        row().await,
        (detail.clone(), steady.clone(), updated.clone())
    );

    // Malformed fields after the event are errors, shortcut or not.
    let good = step_input(&config, "steady", success, 0, 0);
    for bad in [
        good.replacen("|0|0|", "|4294967296|0|", 1),
        good.replacen("|0|0|", "|x|0|", 1),
        good.replacen("|0|0|", "|0||", 1),
        good.replacen("|0|0|", "|0|1234567890123456789|", 1),
        good.rsplit_once('|').map_or(String::new(), |(head, _)| {
            head.rsplit_once('|')
                .map_or(String::new(), |(h, _)| h.to_owned())
        }),
    ] {
        assert_ne!(bad, good);
        let err = store
            .update_atomic(KEY, &BreakerStep, bad.as_bytes())
            .await
            .expect_err("malformed input");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
    }
    // The widest entropy the function takes is taken here too.
    let widest = step_input(&config, "steady", success, u32::MAX, 0);
    let out = store
        .update_atomic(KEY, &BreakerStep, widest.as_bytes())
        .await
        .expect("u32::MAX entropy");
    assert_eq!(&out[..], b"D -");

    // Under another configuration the same row is not steady: the success
    // widens the window.
    step(&wider, success, now + 20).await.expect("success");
    let (detail, steady, _) = row().await;
    assert_eq!(detail, format!("b1 CLOSED {now} 0 0 0 0 0 0 c:0000"));
    let wider_text = step_input(&wider, "steady", success, 0, 0);
    let wider_text = wider_text.split('|').next().unwrap_or_default();
    assert_eq!(steady, Some(format!("{wider_text}|{detail}")));

    // An operator's hand on the row: its `steady` no longer matches, so
    // the success is stepped (the failure moves along the window).
    client
        .execute(
            &format!(
                "UPDATE \"{table}_breakers\" SET detail = 'b1 CLOSED {now} 0 0 0 0 0 0 c:1000'"
            ),
            &[],
        )
        .await
        .expect("an operator's update");
    step(&wider, success, now + 30).await.expect("success");
    let (detail, steady, _) = row().await;
    assert_eq!(detail, format!("b1 CLOSED {now} 0 0 0 0 0 0 c:0000"));
    assert_eq!(steady, Some(format!("{wider_text}|{detail}")));

    // A slow success changes the window, and the row is no longer steady.
    let slow = record(statecraft::breaker::Outcome::Success, true);
    step(&wider, slow, now + 40).await.expect("slow success");
    let (detail, steady, _) = row().await;
    assert_eq!(detail, format!("b1 CLOSED {now} 0 0 0 0 0 0 c:0002"));
    assert_eq!(steady, None);
}

/// A breakers table or step function an operator dropped is set up again
/// by the next step, which then runs: the table comes back (empty, so
/// the breaker is fresh and closed) and the step decides as before.
#[tokio::test]
async fn a_dropped_table_or_function_is_set_up_again() {
    let table = unique("breaker_dropped");
    let store = postgres(&table).await;
    let client = operator().await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let breaker = DistributedBreaker::new(store.clone(), "dropped", config);
    let fail = |breaker: &DistributedBreaker| {
        let breaker = breaker.clone();
        async move {
            breaker
                .acquire()
                .await
                .expect("closed")
                .failure()
                .await
                .expect("record");
        }
    };
    fail(&breaker).await;
    assert!(breaker.acquire().await.is_err(), "open");
    client
        .batch_execute(&format!("DROP TABLE \"{table}_breakers\""))
        .await
        .expect("drop the table");
    let permit = breaker.acquire().await.expect("a fresh table: closed");
    permit.failure().await.expect("recorded in the new table");
    assert!(breaker.acquire().await.is_err(), "open again");
    let rows: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{table}_breakers\" WHERE state = 'OPEN'"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1);

    let functions: Vec<String> = client
        .query(
            "SELECT oid::regprocedure::text FROM pg_proc WHERE proname LIKE $1",
            &[&format!("{table}_breaker_step_%")],
        )
        .await
        .expect("the step function")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(functions.len(), 1, "{functions:?}");
    client
        .batch_execute(&format!("DROP FUNCTION {}", functions[0]))
        .await
        .expect("drop the function");
    client
        .batch_execute(&format!("DELETE FROM \"{table}_breakers\""))
        .await
        .expect("forget the opening");
    fail(&breaker).await;
    assert!(
        breaker.acquire().await.is_err(),
        "opened by the function set up again"
    );
}

/// A step that waited for its breaker's turn (the advisory lock, held by
/// another transaction) decides at the time its turn comes: open for a
/// second, asked 0.7 s after opening and let through 1.3 s after it, the
/// call is a half-open probe, not a rejection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_waited_for_its_turn_decides_at_its_turn() {
    let table = unique("breaker_turn");
    let store = postgres(&table).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(1))
        .build()
        .expect("config");
    let breaker = DistributedBreaker::new(store, "turn", config).timeout(Duration::from_secs(5));
    let permit = breaker.acquire().await.expect("closed");
    permit.failure().await.expect("record");
    let opened = tokio::time::Instant::now();
    assert!(breaker.acquire().await.is_err(), "open");

    let client = operator().await;
    tokio::time::sleep_until(opened + Duration::from_millis(700)).await;
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .query_one(
            &format!(
                "SELECT pg_advisory_xact_lock(1651664235, hashtext(encode(key, 'hex')))::text \
                 FROM \"{table}_breakers\""
            ),
            &[],
        )
        .await
        .expect("take the breaker's turn");
    let asked = tokio::spawn({
        let breaker = breaker.clone();
        async move { breaker.acquire().await.map(|permit| permit.is_probe()) }
    });
    tokio::time::sleep_until(opened + Duration::from_millis(1_300)).await;
    assert!(!asked.is_finished(), "the step did not wait for its turn");
    client.batch_execute("COMMIT").await.expect("commit");
    let probe = asked.await.expect("task");
    assert!(
        matches!(probe, Ok(true)),
        "decided at the time it asked, not at its turn: {probe:?}"
    );
}
