//! Runs the real `statecraft breaker` commands against a real Redis and a
//! real PostgreSQL, with a service's breakers written by the library: the
//! operator sees them (`list`, `show`, a table or JSON) and steers them
//! (`open`, `close`, `reset`), and the service obeys.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use statecraft::breaker::{BreakerConfig, DistributedBreaker, Phase};
use statecraft::{PostgresBackend, PostgresConfig, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{PostgresServer, RedisServer};

fn statecraft<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_statecraft"))
        .args(args)
        .output()
        .expect("run statecraft");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> serde_json::Value {
    let (ok, out, err) = statecraft(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

/// The service side: a breaker on `store` that one failure opens for a
/// minute.
fn service(store: Arc<dyn StateBackend>, name: &str) -> DistributedBreaker {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    DistributedBreaker::new(store, name, config)
}

async fn operate(store: Arc<dyn StateBackend>, spec: &[&str]) {
    let pid = std::process::id();
    let (payments, search) = (format!("payments-{pid}"), format!("search-{pid}"));
    let service_payments = service(store.clone(), &payments);
    let service_search = service(store.clone(), &search);
    service_payments
        .acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    service_search
        .acquire()
        .await
        .expect("closed")
        .success()
        .await
        .expect("record");
    // The success changed nothing, so nothing is stored for search yet;
    // a failure under the rule of 1 would open it: force-close writes it.
    service_search.force_close().await.expect("close");

    let with =
        |args: &[&str]| -> Vec<String> { args.iter().chain(spec).map(|s| s.to_string()).collect() };
    let listed = json(&with(&["breaker", "list", "--json"]));
    let rows = listed.as_array().expect("a list");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"))
            .clone()
    };
    let open = row(&payments);
    assert_eq!(open["state"], "OPEN", "{open}");
    assert_eq!(open["stored"], true);
    let opens_in = open["opens_in_ms"].as_u64().expect("opens_in_ms");
    assert!(opens_in > 50_000 && opens_in <= 60_000, "{open}");
    assert_eq!(open["openings"], 1);
    assert_eq!(row(&search)["state"], "CLOSED");

    let (ok, table, err) = statecraft(&with(&["breaker", "list"]));
    assert!(ok, "{err}");
    assert!(table.starts_with("NAME"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&payments))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("OPEN"), "{line}");

    // close: the service is let through again.
    let closed = json(&with(&["breaker", "close", &payments, "--json"]));
    assert_eq!(closed["state"], "CLOSED", "{closed}");
    let permit = service_payments
        .acquire()
        .await
        .expect("closed by the operator");
    permit.ignore().await.expect("record");
    // open: held open, no retry time.
    let held = json(&with(&["breaker", "open", &payments, "--json"]));
    assert_eq!(held["state"], "FORCED_OPEN", "{held}");
    let rejected = service_payments.acquire().await.expect_err("held open");
    assert_eq!(rejected.retry_after(), None);
    // reset: fresh and closed.
    json(&with(&["breaker", "reset", &payments, "--json"]));
    let shown = json(&with(&["breaker", "show", &payments, "--json"]));
    assert_eq!(shown["state"], "CLOSED", "{shown}");
    assert_eq!(
        service_payments
            .state()
            .await
            .expect("state")
            .map(|s| s.phase),
        Some(Phase::Closed)
    );
    let never = json(&with(&["breaker", "show", "never-used", "--json"]));
    assert_eq!(
        (never["state"].clone(), never["stored"].clone()),
        ("CLOSED".into(), false.into())
    );
    for name in [&payments, &search] {
        service(store.clone(), name).reset().await.expect("reset");
    }
}

#[tokio::test]
async fn operators_see_and_steer_breakers_on_redis() {
    let url = RedisServer::shared().url();
    let config = RedisConfig::builder()
        .url(url.as_str())
        .build()
        .expect("config");
    let store: Arc<dyn StateBackend> = Arc::new(RedisBackend::new(config).await.expect("redis"));
    operate(store, &["--backend", &url]).await;
}

#[tokio::test]
async fn operators_see_and_steer_breakers_on_postgres() {
    let url = PostgresServer::shared().url();
    let table = format!("cli_breakers_{}", std::process::id());
    let config = PostgresConfig::builder()
        .url(url.as_str())
        .table(table.as_str())
        .build()
        .expect("config");
    let store: Arc<dyn StateBackend> =
        Arc::new(PostgresBackend::new(config).await.expect("postgres"));
    operate(store, &["--backend", &url, "--table", &table]).await;
    // A mistyped table is an error, and stays one: nothing was created.
    let typo = format!("{table}_typo");
    for _ in 0..2 {
        let (ok, _, err) = statecraft(&["breaker", "list", "--backend", &url, "--table", &typo]);
        assert!(!ok);
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn a_missing_or_bad_backend_is_a_clear_error() {
    let (ok, _, err) = statecraft(&["breaker", "list"]);
    assert!(!ok);
    assert!(err.contains("--backend"), "{err}");
    let (ok, _, err) = statecraft(&["breaker", "show", "x", "--backend", "nonsense://"]);
    assert!(!ok);
    assert!(err.starts_with("error: "), "{err}");
    let (ok, _, err) = statecraft(&["breaker", "list", "--backend", "memory", "--table", "t"]);
    assert!(!ok);
    assert!(err.contains("PostgreSQL"), "{err}");
}
