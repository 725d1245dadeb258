//! Locks across OS processes sharing one Redis or PostgreSQL (the test
//! binary runs itself as the children): 8 processes × 200 acquisitions of one lock,
//! each holder logging its entry and exit to one append-only file — never
//! two holders, tokens strictly rising; a holder SIGKILLed frees the lock
//! after its lease and not before; a holder SIGSTOPped past its lease,
//! while another takes the lock and writes, has its next fenced write
//! refused on resuming and its guard reports the lease lost. Semaphores
//! the same way: 6 processes × 60 permits of 3, logged — never more than
//! 3 inside, and more than one at times; a SIGKILLed holder's permit
//! comes back after its lease.

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecraft::lock::{fenced_get, fenced_put, Fenced, LockConfig, Locks, Semaphore};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{PostgresServer, RedisServer};

#[path = "support/processes.rs"]
mod processes;
use processes::{check_turns, finish, log_turn, signal, wait_line};

const CHILD: &str = "STATECRAFT_LOCK_CHILD";

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), wall_micros())
}

async fn store(url: &str) -> Arc<dyn StateBackend> {
    if !url.starts_with("redis://") {
        let options = statecraft::ConnectOptions::new().postgres_table("lock_processes");
        return statecraft::connect_with(url, &options)
            .await
            .expect("the test store accepts connections");
    }
    let config = RedisConfig::builder()
        .url(url)
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

/// A child process: `mode|url|name|…`.
///
/// - `turns|url|name|log|n`: `n` times takes the lock (waiting), appends
///   `enter <token> <pid>` and `exit <token> <pid>` to `log` around a
///   short hold, and releases it;
/// - `permits|url|name|log|n|permits`: `n` times takes a permit of the
///   semaphore (waiting), appends `enter <pid>` and `exit <pid>` to `log`
///   around a short hold, and gives it back;
/// - `hold|url|name|lease ms`: takes the lock, prints `sent <wall µs>`
///   (before it asked) and `held <token>`, then sleeps until killed;
///   `hold-permit|…` the same with the semaphore's only permit (`held 0`);
/// - `paused|url|name|lease ms|resource`: takes the lock, prints `held
///   <token>`, waits for a line on stdin, then tries a fenced write of
///   `child` and prints `write written` or `write stale <highest>`, and
///   `lost yes` or `lost no` (whether its guard said so within 2 s).
///
/// Each prints `done` at its end.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, url, name) = (parts[0], parts[1], parts[2]);
    // Ends the test harness's "test … " line: what follows is ours.
    println!();
    let store = store(url).await;
    // Under 14 processes on two cores a round trip can take a while: the
    // checkers test exclusion, not speed.
    let mut config = LockConfig::default();
    config.timeout = Duration::from_secs(5);
    let locks = Locks::with_config(store.clone(), config.clone());
    match mode {
        "turns" => {
            let log_path = parts[3];
            let n: usize = parts[4].parse().expect("n");
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(log_path)
                .expect("the log");
            for i in 0..n {
                let guard = locks
                    .lock(name, Duration::from_secs(5), Duration::from_secs(60))
                    .await
                    .expect("the lock within a minute");
                log_turn(&mut log, guard.token(), i).await;
                guard.unlock().await.expect("still held");
            }
        }
        "permits" => {
            let log_path = parts[3];
            let n: usize = parts[4].parse().expect("n");
            let permits: u64 = parts[5].parse().expect("permits");
            let semaphore = Semaphore::with_config(store.clone(), name, permits, config.clone())
                .expect("semaphore");
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .open(log_path)
                .expect("the log");
            let pid = std::process::id();
            for i in 0..n {
                let permit = semaphore
                    .acquire(Duration::from_secs(5), Duration::from_secs(60))
                    .await
                    .expect("a permit within a minute");
                log.write_all(format!("enter {pid}\n").as_bytes())
                    .expect("log");
                tokio::time::sleep(Duration::from_millis(1 + (i % 3) as u64)).await;
                log.write_all(format!("exit {pid}\n").as_bytes())
                    .expect("log");
                permit.release().await.expect("still held");
            }
        }
        "hold-permit" => {
            let lease = Duration::from_millis(parts[3].parse().expect("lease"));
            let semaphore = Semaphore::new(store.clone(), name, 1).expect("semaphore");
            let sent = wall_micros();
            let permit = semaphore
                .acquire(lease, Duration::from_secs(10))
                .await
                .expect("the permit");
            println!("sent {sent}");
            println!("held 0");
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(permit);
        }
        "hold" => {
            let lease = Duration::from_millis(parts[3].parse().expect("lease"));
            let sent = wall_micros();
            let guard = locks
                .lock(name, lease, Duration::from_secs(10))
                .await
                .expect("the lock");
            println!("sent {sent}");
            println!("held {}", guard.token());
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(guard);
        }
        "paused" => {
            let lease = Duration::from_millis(parts[3].parse().expect("lease"));
            let resource = parts[4];
            let guard = locks
                .lock(name, lease, Duration::from_secs(10))
                .await
                .expect("the lock");
            println!("held {}", guard.token());
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).expect("stdin");
            match fenced_put(&*store, resource.as_bytes(), guard.token(), b"child")
                .await
                .expect("the store")
            {
                Fenced::Written => println!("write written"),
                Fenced::Stale { highest } => println!("write stale {highest}"),
            }
            let lost = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await;
            println!("lost {}", if lost.is_ok() { "yes" } else { "no" });
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("done");
}

fn spawn(test: &str, spec: &str, stdin: bool) -> Child {
    processes::spawn(test, CHILD, spec, stdin, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_turns_on_one_lock_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = RedisServer::shared().url();
    take_turns("processes_take_turns_on_one_lock_on_redis", &url, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_turns_on_one_lock_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = PostgresServer::shared().url();
    take_turns("processes_take_turns_on_one_lock_on_postgres", &url, 100);
}

/// 8 processes × `each` turns on one lock in the store at `url`, checked
/// by their log.
fn take_turns(test: &str, url: &str, each: usize) {
    let name = unique("turns");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("holders.log");
    std::fs::write(&log, "").expect("log");
    let processes = 8;
    let spec = format!("turns|{url}|{name}|{}|{each}", log.display());
    let started = Instant::now();
    let children: Vec<Child> = (0..processes).map(|_| spawn(test, &spec, false)).collect();
    finish(children);
    let elapsed = started.elapsed();
    // The checker: replayed in the order the writes happened.
    let text = std::fs::read_to_string(&log).expect("log");
    let entries = check_turns(&text);
    assert_eq!(entries, processes * each);
    println!(
        "{entries} acquisitions by {processes} processes in {:.2} s ({:.0} µs a handover)",
        elapsed.as_secs_f64(),
        elapsed.as_micros() as f64 / entries as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_the_lock_after_its_lease_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = RedisServer::shared().url();
    let name = unique("killed");
    let lease = Duration::from_millis(1_500);
    let mut holder = spawn(
        "a_killed_holder_frees_the_lock_after_its_lease_on_redis",
        &format!("hold|{url}|{name}|{}", lease.as_millis()),
        false,
    );
    let stdout = holder.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let sent: u64 = wait_line(&mut lines, "sent ").parse().expect("µs");
    let token: u64 = wait_line(&mut lines, "held ").parse().expect("token");
    holder.kill().expect("SIGKILL");
    holder.wait().expect("reap");
    let locks = Locks::new(store(&url).await);
    let taken = loop {
        if let Some(guard) = locks.try_lock(&name, lease).await.expect("store") {
            break (wall_micros(), guard);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            wall_micros() < sent + 10 * lease.as_micros() as u64,
            "the lock stayed taken long after its lease"
        );
    };
    let (at, guard) = taken;
    let lease_us = lease.as_micros() as u64;
    // Not before the lease ran out (it started after `sent`), and soon
    // after (the holder's ask and answer, and this process's start, took
    // well under two seconds).
    assert!(
        at >= sent + lease_us,
        "taken {} µs after the holder asked",
        at - sent
    );
    assert!(
        at <= sent + lease_us + 2_000_000,
        "taken {} µs after the holder asked",
        at - sent
    );
    assert!(guard.token() > token);
    guard.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_off_and_told_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = RedisServer::shared().url();
    paused_holder("a_paused_holder_is_fenced_off_and_told_on_redis", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_off_and_told_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = PostgresServer::shared().url();
    paused_holder("a_paused_holder_is_fenced_off_and_told_on_postgres", &url).await;
}

/// A holder SIGSTOPped past its lease while the parent takes the lock and
/// writes: resumed, its fenced write is refused and it is told.
async fn paused_holder(test: &str, url: &str) {
    let name = unique("paused");
    let resource = unique("resource");
    let lease = Duration::from_millis(800);
    let mut holder = spawn(
        test,
        &format!("paused|{url}|{name}|{}|{resource}", lease.as_millis()),
        true,
    );
    let stdout = holder.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let first: u64 = wait_line(&mut lines, "held ").parse().expect("token");
    signal(&holder, "-STOP");
    let store = store(url).await;
    let locks = Locks::new(store.clone());
    // Taken as soon as the paused holder's lease runs out.
    let guard = locks
        .lock(&name, Duration::from_secs(10), Duration::from_secs(5))
        .await
        .expect("free after the lease");
    assert!(guard.token() > first);
    assert_eq!(
        fenced_put(&*store, resource.as_bytes(), guard.token(), b"parent")
            .await
            .expect("store"),
        Fenced::Written
    );
    signal(&holder, "-CONT");
    let mut stdin = holder.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("stdin");
    drop(stdin);
    let write = wait_line(&mut lines, "write ");
    assert_eq!(write, format!("stale {}", guard.token()));
    assert_eq!(wait_line(&mut lines, "lost "), "yes");
    assert!(holder.wait().expect("reap").success());
    let (token, value) = fenced_get(&*store, resource.as_bytes())
        .await
        .expect("store")
        .expect("written");
    assert_eq!((token, value.as_ref()), (guard.token(), &b"parent"[..]));
    guard.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_n_permits_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    share_permits(
        "processes_share_n_permits_on_redis",
        &RedisServer::shared().url(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_n_permits_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    share_permits(
        "processes_share_n_permits_on_postgres",
        &PostgresServer::shared().url(),
    );
}

/// 6 processes × 60 permits of 3 in the store at `url`, checked by their
/// log.
fn share_permits(test: &str, url: &str) {
    let name = unique("permits");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("permits.log");
    std::fs::write(&log, "").expect("log");
    let (processes, each, permits) = (6, 60, 3);
    let spec = format!("permits|{url}|{name}|{}|{each}|{permits}", log.display());
    let children: Vec<Child> = (0..processes).map(|_| spawn(test, &spec, false)).collect();
    finish(children);
    // The checker: replayed in the order the writes happened, never more
    // than `permits` inside, each exit by one inside.
    let text = std::fs::read_to_string(&log).expect("log");
    let mut inside: Vec<u32> = Vec::new();
    let (mut entries, mut most) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let (what, pid) = line
            .split_once(' ')
            .and_then(|(what, pid)| Some((what, pid.parse::<u32>().ok()?)))
            .unwrap_or_else(|| panic!("line {n} is damaged: {line:?}"));
        match what {
            "enter" => {
                assert!(!inside.contains(&pid), "line {n}: {pid} entered twice");
                inside.push(pid);
                assert!(
                    inside.len() <= permits,
                    "line {n}: {} inside: {inside:?}",
                    inside.len()
                );
                most = most.max(inside.len());
                entries += 1;
            }
            "exit" => {
                let at = inside.iter().position(|p| *p == pid);
                let at = at.unwrap_or_else(|| panic!("line {n}: {pid} left without entering"));
                inside.remove(at);
            }
            other => panic!("line {n}: {other:?}"),
        }
    }
    assert!(inside.is_empty());
    assert_eq!(entries, processes * each);
    assert!(
        most > 1,
        "never more than one holder: not a counting semaphore"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_permit_comes_back_after_its_lease_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = RedisServer::shared().url();
    let name = unique("killed-permit");
    let lease = Duration::from_millis(1_500);
    let mut holder = spawn(
        "a_killed_holders_permit_comes_back_after_its_lease_on_redis",
        &format!("hold-permit|{url}|{name}|{}", lease.as_millis()),
        false,
    );
    let stdout = holder.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let sent: u64 = wait_line(&mut lines, "sent ").parse().expect("µs");
    wait_line(&mut lines, "held ");
    holder.kill().expect("SIGKILL");
    holder.wait().expect("reap");
    let semaphore = Semaphore::new(store(&url).await, &name, 1).expect("semaphore");
    let (at, permit) = loop {
        if let Some(permit) = semaphore.try_acquire(lease).await.expect("store") {
            break (wall_micros(), permit);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            wall_micros() < sent + 10 * lease.as_micros() as u64,
            "the permit stayed taken long after its lease"
        );
    };
    let lease_us = lease.as_micros() as u64;
    assert!(at >= sent + lease_us, "taken {} µs after", at - sent);
    assert!(
        at <= sent + lease_us + 2_000_000,
        "taken {} µs after",
        at - sent
    );
    permit.release().await.expect("held");
}
