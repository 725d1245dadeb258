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
use processes::{check_turns, finish, log_turn, signal, wait_line, Reaped};

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

/// How many sessions hold (`granted`) or wait for the advisory lock
/// `name`, in this database.
async fn sessions_on(client: &tokio_postgres::Client, name: &str, granted: bool) -> i64 {
    let key = format!("{TABLE}:{name}");
    client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
             AND granted = $2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::int8 << 32) | objid::int8) = hashtextextended($1, 0)",
            &[&key, &granted],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

/// Waits (bounded) until `n` sessions wait for the advisory lock `name`.
async fn waiting(client: &tokio_postgres::Client, name: &str, n: i64) {
    for _ in 0..500 {
        if sessions_on(client, name, false).await == n {
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
        let (locks, order, own) = (locks.clone(), order.clone(), name.clone());
        waiters.push(tokio::spawn(async move {
            let guard = locks
                .lock(&own, Duration::from_secs(20))
                .await
                .expect("taken in turn");
            order.lock().expect("order").push((n, guard.token()));
            tokio::time::sleep(Duration::from_millis(5)).await;
            guard.unlock().await.expect("held");
        }));
        waiting(&client, &name, n).await;
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
    // (The server frees it as the session's process exits, just after
    // the session is seen closed.)
    let next = locks
        .lock(&name, Duration::from_secs(5))
        .await
        .expect("free once its session ended");
    next.unlock().await.expect("held");
}

/// Takes cut short by the caller, unlocks cut short, guards dropped and
/// tries, by 6 tasks over a pool of 3 sessions: never two inside (a
/// session given back to the pool still holding the lock would let a
/// later take re-enter it), and no session of this process left holding
/// it once all are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_short_takes_and_unlocks_never_let_two_in_on_postgres() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let url = PostgresServer::shared().url();
    let mut config = AdvisoryConfig::default();
    config.sessions = 3;
    config.timeout = Duration::from_secs(5);
    // Checks often: an unlock then often waits for the keeper's.
    config.check_every = Duration::from_millis(2);
    let locks = AdvisoryLocks::with_config(&backend(&url).await, config)
        .await
        .expect("advisory locks");
    let client = raw(&url).await;
    let name = unique("cut-short");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let tasks: Vec<_> = (0..6usize)
        .map(|task| {
            let (locks, name) = (locks.clone(), name.clone());
            let (inside, most, entries) = (inside.clone(), most.clone(), entries.clone());
            tokio::spawn(async move {
                let enter = || async {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    entries.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                };
                let mut i = task;
                while Instant::now() < until {
                    i += 1;
                    let cut = Duration::from_micros(200 + (i as u64 * 397) % 3_000);
                    match i % 4 {
                        0 => {
                            if let Ok(Some(guard)) = locks.try_lock(&name).await {
                                enter().await;
                                drop(guard);
                            }
                        }
                        1 => {
                            let take = locks.lock(&name, Duration::from_secs(1));
                            if let Ok(Ok(guard)) = tokio::time::timeout(cut, take).await {
                                enter().await;
                                let _ = tokio::time::timeout(cut, guard.unlock()).await;
                            }
                        }
                        2 => {
                            if let Ok(guard) = locks.lock(&name, Duration::from_secs(2)).await {
                                enter().await;
                                let _ = guard.unlock().await;
                            }
                        }
                        _ => {
                            let take = locks.lock(&name, Duration::from_secs(1));
                            let _ = tokio::time::timeout(cut, take).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task");
    }
    let entries = entries.load(Ordering::SeqCst);
    assert_eq!(most.load(Ordering::SeqCst), 1, "two inside at once");
    assert!(
        entries >= 20,
        "only {entries} entries: the test did not contend"
    );
    // Every session let go of it: the background unlocks and the closes
    // of cut-short ones are done.
    for _ in 0..500 {
        if sessions_on(&client, &name, true).await == 0
            && sessions_on(&client, &name, false).await == 0
        {
            println!("{entries} entries");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a session still holds or waits for the lock after every task ended");
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
    finish(children);
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
    let mut holder = Reaped(spawn(test, &format!("hold|{url}|{name}")));
    let holder = &mut holder.0;
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok);
    let token: u64 = wait_line(&mut lines, "held ").parse().expect("token");
    assert!(
        locks.try_lock(&name).await.expect("store").is_none(),
        "held"
    );
    signal(holder, "-KILL");
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
    let mut holder = Reaped(spawn(test, &format!("hold|{url}|{name}")));
    let holder = &mut holder.0;
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok);
    wait_line(&mut lines, "held ");
    signal(holder, "-STOP");
    // Paused, its session open: nobody else enters (no lease ends it).
    let err = locks
        .lock(&name, Duration::from_millis(1_500))
        .await
        .expect_err("kept while paused");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    signal(holder, "-CONT");
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
