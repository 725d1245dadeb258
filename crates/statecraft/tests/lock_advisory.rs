//! PostgreSQL session-level advisory locks ([`AdvisoryLocks`]) on a real
//! server: exclusion, rising tokens, waiters served in the server's order,
//! a terminated session told lost; and across OS processes (the test
//! binary runs itself as the children): 6 processes × 40 turns with an
//! enter/exit log, a SIGKILLed holder's lock free at once (no lease to
//! wait out), a SIGSTOPped holder keeping the lock while paused (the
//! documented failure behaviour: no lease).

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecraft::lock::{AdvisoryConfig, AdvisoryLocks};
use statecraft::{ErrorKind, PostgresBackend, PostgresConfig};
use statecraft_testkit::PostgresServer;

#[path = "support/processes.rs"]
mod processes;
use processes::{check_turns, log_turn, signal, wait_line};

const CHILD: &str = "STATECRAFT_ADVISORY_CHILD";
const TABLE: &str = "lock_advisory";

fn unique(tag: &str) -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{tag}-{}-{micros}", std::process::id())
}

async fn backend(url: &str) -> PostgresBackend {
    let config = PostgresConfig::builder()
        .url(url)
        .table(TABLE)
        .build()
        .expect("config");
    PostgresBackend::new(config).await.expect("postgres")
}

async fn locks(url: &str) -> AdvisoryLocks {
    let mut config = AdvisoryConfig::default();
    // Under many processes on two cores a round trip can take a while.
    config.timeout = Duration::from_secs(5);
    config.check_every = Duration::from_millis(200);
    AdvisoryLocks::with_config(&backend(url).await, config)
        .await
        .expect("advisory locks")
}

/// A raw client, to look at the server's view.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// The server process that holds `name`, by the token table.
async fn holder_pid(client: &tokio_postgres::Client, name: &str) -> Option<i32> {
    client
        .query_one(
            &format!("SELECT holder_pid FROM {TABLE}_advisory WHERE name = $1"),
            &[&name],
        )
        .await
        .expect("the token table")
        .get(0)
}

/// Waits (bounded) until `n` sessions wait for an advisory lock.
async fn waiting(client: &tokio_postgres::Client, n: i64) {
    for _ in 0..500 {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .expect("pg_locks");
        if row.get::<_, i64>(0) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} waiters never showed in pg_locks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_locks_exclude_fence_and_serve_waiters_in_order_on_postgres() {
    let url = PostgresServer::shared().url();
    let locks = locks(&url).await;
    let client = raw(&url).await;
    let name = unique("order");
    let first = locks.try_lock(&name).await.expect("store").expect("free");
    assert!(locks.try_lock(&name).await.expect("store").is_none());
    let err = locks
        .lock(&name, Duration::from_millis(100))
        .await
        .expect_err("held");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(holder_pid(&client, &name).await.is_some());
    assert_eq!(locks.last_token(&name).await.expect("token"), first.token());

    // Three waiters, queued one after another, enter in that order.
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 1..=3 {
        let (locks, order, name) = (locks.clone(), order.clone(), name.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks
                .lock(&name, Duration::from_secs(20))
                .await
                .expect("taken in turn");
            order.lock().expect("order").push((n, guard.token()));
            tokio::time::sleep(Duration::from_millis(5)).await;
            guard.unlock().await.expect("held");
        }));
        waiting(&client, n).await;
    }
    let token = first.token();
    first.unlock().await.expect("held");
    for waiter in waiters {
        waiter.await.expect("a waiter");
    }
    let order = order.lock().expect("order").clone();
    assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let mut last = token;
    for (_, token) in order {
        assert!(token > last, "token {token} after {last}");
        last = token;
    }
    assert_eq!(holder_pid(&client, &name).await, None, "released");

    // A guard dropped unlocks in the background.
    let dropped = locks.try_lock(&name).await.expect("store").expect("free");
    drop(dropped);
    let again = locks
        .lock(&name, Duration::from_secs(5))
        .await
        .expect("unlocked by the drop");
    assert!(!again.is_lost());
    again.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_session_is_told_lost_and_the_lock_is_free_on_postgres() {
    let url = PostgresServer::shared().url();
    let locks = locks(&url).await;
    let client = raw(&url).await;
    let name = unique("terminated");
    let guard = locks.try_lock(&name).await.expect("store").expect("free");
    let pid = holder_pid(&client, &name).await.expect("a holder");
    let lost = guard.lost();
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("told lost within the checks");
    assert!(guard.is_lost());
    let err = guard.unlock().await.expect_err("lost");
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    let next = locks
        .try_lock(&name)
        .await
        .expect("store")
        .expect("free once its session ended");
    next.unlock().await.expect("held");
}

/// A child: `turns|url|name|log|n` takes the lock `n` times (waiting),
/// logging `enter`/`exit` around a short hold; `hold|url|name` takes it,
/// prints `held <token>`, waits for a line on stdin, then unlocks and
/// prints `unlocked ok` or `unlocked <error kind>`. Each prints `done`.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, url, name) = (parts[0], parts[1], parts[2]);
    println!();
    let locks = locks(url).await;
    match mode {
        "turns" => {
            let n: usize = parts[4].parse().expect("n");
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(parts[3])
                .expect("the log");
            for i in 0..n {
                let guard = locks
                    .lock(name, Duration::from_secs(60))
                    .await
                    .expect("the lock within a minute");
                log_turn(&mut log, guard.token(), i).await;
                guard.unlock().await.expect("still held");
            }
        }
        "hold" => {
            let guard = locks.try_lock(name).await.expect("store").expect("free");
            println!("held {}", guard.token());
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
            match guard.unlock().await {
                Ok(()) => println!("unlocked ok"),
                Err(err) => println!("unlocked {:?}", err.kind()),
            }
        }
        other => panic!("unknown child mode {other:?}"),
    }
    println!("done");
}

fn spawn(test: &str, spec: &str) -> Child {
    processes::spawn(test, CHILD, spec, true, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_turns_on_an_advisory_lock_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let test = "processes_take_turns_on_an_advisory_lock_on_postgres";
    let url = PostgresServer::shared().url();
    // The table exists before the children race to make it.
    drop(locks(&url).await);
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("holders.log");
    std::fs::write(&log, "").expect("log");
    let (processes, each) = (6, 40);
    let spec = format!("turns|{url}|{}|{}|{each}", unique("turns"), log.display());
    let started = Instant::now();
    let children: Vec<Child> = (0..processes).map(|_| spawn(test, &spec)).collect();
    for mut child in children {
        let stdout = child.stdout.take().expect("stdout");
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect();
        assert!(
            child.wait().expect("reap").success(),
            "a child failed: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "done"),
            "a child did not finish: {lines:?}"
        );
    }
    let entries = check_turns(&std::fs::read_to_string(&log).expect("log"));
    assert_eq!(entries, processes * each);
    println!(
        "{entries} acquisitions by {processes} processes in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_advisory_holder_frees_the_lock_at_once_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let test = "a_killed_advisory_holder_frees_the_lock_at_once_on_postgres";
    let url = PostgresServer::shared().url();
    let locks = locks(&url).await;
    let name = unique("killed");
    let mut holder = spawn(test, &format!("hold|{url}|{name}"));
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok);
    let token: u64 = wait_line(&mut lines, "held ").parse().expect("token");
    assert!(
        locks.try_lock(&name).await.expect("store").is_none(),
        "held"
    );
    signal(&holder, "-KILL");
    holder.wait().expect("reap");
    let killed = Instant::now();
    // The server ends the session once the socket closes: no lease to
    // wait out.
    let next = locks
        .lock(&name, Duration::from_secs(10))
        .await
        .expect("free after the kill");
    println!("taken {:?} after the kill", killed.elapsed());
    assert!(next.token() > token);
    next.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_advisory_holder_keeps_the_lock_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let test = "a_paused_advisory_holder_keeps_the_lock_on_postgres";
    let url = PostgresServer::shared().url();
    let locks = locks(&url).await;
    let name = unique("paused");
    let mut holder = spawn(test, &format!("hold|{url}|{name}"));
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok);
    wait_line(&mut lines, "held ");
    signal(&holder, "-STOP");
    // Paused, its session open: nobody else enters (no lease ends it).
    let err = locks
        .lock(&name, Duration::from_millis(1_500))
        .await
        .expect_err("kept while paused");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    signal(&holder, "-CONT");
    let mut stdin = holder.stdin.take().expect("stdin");
    writeln!(stdin).expect("resume the holder");
    assert_eq!(wait_line(&mut lines, "unlocked "), "ok", "still its lock");
    assert!(holder.wait().expect("reap").success());
    let next = locks
        .try_lock(&name)
        .await
        .expect("store")
        .expect("free after the unlock");
    next.unlock().await.expect("held");
}
