//! redb durability and redb-only behaviour: what a child process's
//! concurrent writers had acknowledged survives SIGKILL, with the expiry
//! index exact; a buffered database keeps what was flushed; TTLs across a
//! reopen and the sweeper; the writers of one commit failing alone; the
//! file lock.
#![cfg(feature = "redb")]

#[path = "support/processes.rs"]
mod processes;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use statecraft::{
    ErrorKind, KeyTtl, ManualClock, PutOptions, RedbBackend, StateBackend, Transaction,
};

const CHILD_ENV: &str = "STATECRAFT_REDB_CHILD_DB";
const CHILD_MODE_ENV: &str = "STATECRAFT_REDB_CHILD_MODE";
const TASKS: u64 = 8;
const ACKED: u64 = 2_000;

fn key_of(task: u64, i: u64) -> String {
    format!("key-{task}-{i:08}")
}

fn value_of(task: u64, i: u64) -> String {
    format!("value-{task}-{i}-{}", "x".repeat((i % 50) as usize))
}

/// Whether write `i` of a task carries a TTL (an hour: it must still be
/// there after the restart, and must then be swept exactly).
fn expiring(i: u64) -> bool {
    i % 2 == 0
}

/// The child: `TASKS` tasks write keys, each printing what it has had
/// acknowledged, forever. With mode `buffered` the database acknowledges
/// before the disk: the tasks write `ACKED / TASKS` keys each, then the
/// child flushes, prints the counts and waits to be killed (the flushed
/// commits are its last, so nothing later carries them to the disk).
async fn child(path: &str, buffered: bool) {
    let backend = Arc::new(
        RedbBackend::builder()
            .path(path)
            .durable_commits(!buffered)
            .flush_every(None)
            .open()
            .expect("child opens the database"),
    );
    let mut writers = Vec::new();
    for task in 0..TASKS {
        let backend = Arc::clone(&backend);
        writers.push(tokio::spawn(async move {
            let writes = if buffered { ACKED / TASKS } else { u64::MAX };
            for i in 0..writes {
                let options = if expiring(i) {
                    PutOptions::new().ttl(Duration::from_secs(3600))
                } else {
                    PutOptions::new()
                };
                backend
                    .put_with(
                        key_of(task, i).as_bytes(),
                        value_of(task, i).into(),
                        options,
                    )
                    .await
                    .expect("child put");
                if !buffered {
                    println!("acked {task} {}", i + 1);
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    backend.flush().await.expect("child flush");
    for task in 0..TASKS {
        println!("acked {task} {}", ACKED / TASKS);
    }
    // Until the parent kills it.
    std::future::pending::<()>().await;
}

/// Runs the child in `mode`, kills it once its writers have had `ACKED`
/// writes acknowledged in all, and checks every acknowledged write and
/// the expiry index after a reopen.
async fn killed_child_keeps_what_it_acknowledged(test: &str, mode: &str) {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let buffered = std::env::var(CHILD_MODE_ENV).as_deref() == Ok("buffered");
        child(&path, buffered).await;
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    let exe = std::env::current_exe().expect("test binary path");
    let process = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &path)
        .env(CHILD_MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer process");
    let mut process = processes::Reaped(process);
    let lines = processes::stdout_lines(&mut process.0);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        let line = processes::next_line(&lines, Duration::from_secs(60), "acknowledgements");
        // The first may follow libtest's own "test … " on its line.
        let Some(rest) = line.find("acked ").map(|at| &line[at + "acked ".len()..]) else {
            continue;
        };
        let (task, n) = rest.split_once(' ').expect("task and count");
        let (task, n) = (
            task.parse().expect("task"),
            n.trim().parse().expect("count"),
        );
        acked.insert(task, n);
        if acked.values().sum::<u64>() >= ACKED {
            break;
        }
    }
    // SIGKILL while the writers are still writing (or, buffered, waiting).
    processes::kill_and_reap(&mut process.0);
    let total: u64 = acked.values().sum();
    assert!(
        total >= ACKED,
        "the writers acknowledged only {total} writes"
    );
    assert!(
        acked.len() as u64 == TASKS,
        "every writer had writes acknowledged: {acked:?}"
    );

    let clock = ManualClock::starting_now();
    let reopened = RedbBackend::builder()
        .path(&path)
        .clock(clock.clone())
        .sweep_interval(None)
        .open()
        .expect("reopen after SIGKILL");
    for (&task, &n) in &acked {
        for i in 0..n {
            let got = reopened
                .get_with_ttl(key_of(task, i).as_bytes())
                .await
                .expect("get");
            let Some((value, ttl)) = got else {
                panic!("acknowledged write {i} of writer {task} lost");
            };
            assert_eq!(value, value_of(task, i).as_bytes());
            assert_eq!(
                matches!(ttl, KeyTtl::ExpiresIn(_)),
                expiring(i),
                "write {i} of writer {task}: {ttl:?}"
            );
        }
    }
    // The index holds every expiring value and nothing else: once they
    // are due, the sweep removes exactly them.
    let keys = reopened.list_keys(b"key-").await.expect("list");
    let mut with_ttl = 0u64;
    for key in &keys {
        if let KeyTtl::ExpiresIn(_) = reopened.ttl(key).await.expect("ttl") {
            with_ttl += 1;
        }
    }
    assert_eq!(
        index_entries(&reopened).await,
        with_ttl,
        "one index entry per TTL"
    );
    clock.advance(Duration::from_secs(7200));
    let swept = reopened.sweep_expired().await.expect("sweep");
    assert_eq!(swept, with_ttl, "the sweep removed what was indexed");
    assert_eq!(
        reopened.count().await.expect("count"),
        keys.len() as u64 - with_ttl
    );
    assert_eq!(reopened.sweep_expired().await.expect("sweep again"), 0);
    assert_eq!(index_entries(&reopened).await, 0);
}

mod conformance {
    mod redb {
        #[tokio::test]
        async fn survives_sigkill_after_acknowledged_commits() {
            super::super::killed_child_keeps_what_it_acknowledged(
                "conformance::redb::survives_sigkill_after_acknowledged_commits",
                "durable",
            )
            .await;
        }

        /// SIGKILL cannot tell a durable commit from one that reached
        /// the OS only (a power loss would): this checks that what a
        /// buffered database acknowledged and flushed is in the file.
        #[tokio::test]
        async fn buffered_survives_sigkill_after_flush() {
            super::super::killed_child_keeps_what_it_acknowledged(
                "conformance::redb::buffered_survives_sigkill_after_flush",
                "buffered",
            )
            .await;
        }
    }
}

fn open(path: &std::path::Path, clock: &ManualClock) -> RedbBackend {
    RedbBackend::builder()
        .path(path)
        .clock(clock.clone())
        .sweep_interval(None)
        .open()
        .expect("open")
}

#[tokio::test]
async fn ttl_survives_reopen_and_the_sweeper_removes_only_the_expired() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    let clock = ManualClock::starting_now();
    {
        let backend = open(&path, &clock);
        for i in 0..100 {
            backend
                .put_with_ttl(
                    format!("t{i}").as_bytes(),
                    "v".into(),
                    Duration::from_secs(10),
                )
                .await
                .expect("put");
        }
        backend
            .put_with_ttl(b"rewritten", "v".into(), Duration::from_secs(10))
            .await
            .expect("put");
        backend.put(b"rewritten", "kept".into()).await.expect("put");
        backend
            .put_with_ttl(b"extended", "v".into(), Duration::from_secs(10))
            .await
            .expect("put");
        backend
            .put_with_ttl(b"extended", "v".into(), Duration::from_secs(60))
            .await
            .expect("put");
        backend.put(b"plain", "v".into()).await.expect("put");
    }
    let backend = open(&path, &clock);
    assert_eq!(backend.count().await.expect("count"), 103);
    // One entry per value with a TTL: none left by the rewrites.
    assert_eq!(index_entries(&backend).await, 101);
    assert!(matches!(
        backend.ttl(b"t5").await.expect("ttl"),
        KeyTtl::ExpiresIn(_)
    ));
    clock.advance(Duration::from_secs(11));
    assert_eq!(backend.count().await.expect("count"), 3);
    assert_eq!(backend.sweep_expired().await.expect("sweep"), 100);
    assert_eq!(backend.sweep_expired().await.expect("sweep again"), 0);
    assert_eq!(
        backend.get(b"rewritten").await.expect("get").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(index_entries(&backend).await, 1);
    clock.advance(Duration::from_secs(60));
    assert_eq!(backend.sweep_expired().await.expect("sweep"), 1);
    assert_eq!(backend.count().await.expect("count"), 2);
    assert_eq!(index_entries(&backend).await, 0);
    let stats = backend.stats().await.expect("stats");
    assert!(stats.details["size_on_disk_bytes"] > 0);
}

/// A sweep bigger than one commit's batch goes on until all is removed.
#[tokio::test]
async fn a_sweep_of_many_keys_takes_several_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::starting_now();
    let backend = open(&dir.path().join("db.redb"), &clock);
    let entries: Vec<_> = (0..25_000)
        .map(|i| (format!("k{i}").into(), "v".into()))
        .collect();
    backend
        .batch_put(entries, PutOptions::new().ttl(Duration::from_secs(1)))
        .await
        .expect("batch");
    backend.put(b"plain", "v".into()).await.expect("put");
    clock.advance(Duration::from_secs(2));
    let (commits_before, _) = commits(&backend).await;
    assert_eq!(backend.sweep_expired().await.expect("sweep"), 25_000);
    let (commits_after, _) = commits(&backend).await;
    assert!(
        commits_after - commits_before >= 3,
        "{} commits",
        commits_after - commits_before
    );
    assert_eq!(backend.count().await.expect("count"), 1);
}

async fn index_entries(backend: &RedbBackend) -> u64 {
    backend.stats().await.expect("stats").details["expiry_index_entries"]
}

async fn commits(backend: &RedbBackend) -> (u64, u64) {
    let stats = backend.stats().await.expect("stats");
    (stats.details["commits"], stats.details["committed_writes"])
}

/// Writes that arrive together share a commit, and one that fails (a
/// counter that is not an integer) fails alone: the others of its commit
/// are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_fail_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = Arc::new(
        RedbBackend::builder()
            .path(dir.path().join("db.redb"))
            .sweep_interval(None)
            .open()
            .expect("open"),
    );
    backend.put(b"text", "abc".into()).await.expect("put");
    let (commits_before, writes_before) = commits(&backend).await;
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let backend = Arc::clone(&backend);
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..50 {
                backend
                    .increment(b"counter", 1, PutOptions::new())
                    .await
                    .expect("increment");
                if task % 4 == 0 {
                    let err = backend
                        .increment(b"text", 1, PutOptions::new())
                        .await
                        .expect_err("not an integer");
                    assert_eq!(err.kind(), ErrorKind::NotAnInteger);
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await.expect("task");
    }
    assert_eq!(failed, 8 * 50);
    assert_eq!(
        backend.get(b"counter").await.expect("get").as_deref(),
        Some(&b"1600"[..]),
        "every increment applied once"
    );
    assert_eq!(
        backend.get(b"text").await.expect("get").as_deref(),
        Some(&b"abc"[..])
    );
    let (commits_after, writes_after) = commits(&backend).await;
    let (commits, writes) = (commits_after - commits_before, writes_after - writes_before);
    assert_eq!(writes, 1_600 + 400, "every write went through the writer");
    assert!(
        commits < writes,
        "{writes} writes in {commits} commits: none shared"
    );
}

#[tokio::test]
async fn transactions_apply_all_or_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backend = RedbBackend::open(dir.path().join("db.redb")).expect("open");
    backend.put(b"from", "10".into()).await.expect("put");
    let transfer = Transaction::new()
        .check("from", Some("10"))
        .check("to", None::<&str>)
        .put("from", "0")
        .put_with_ttl("to", "10", Duration::from_secs(60));
    assert!(backend.transaction(transfer.clone()).await.expect("commit"));
    assert_eq!(
        backend.get(b"to").await.expect("get").as_deref(),
        Some(&b"10"[..])
    );
    let again = transfer.delete("from");
    assert!(!backend.transaction(again).await.expect("transaction runs"));
    assert_eq!(
        backend.get(b"from").await.expect("get").as_deref(),
        Some(&b"0"[..])
    );
}

/// A database held by another handle is waited for, and opens once the
/// holder is dropped; one held throughout fails with an I/O error after
/// the bounded wait. A dropped backend has closed its file: it reopens at
/// once, with what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_waits_for_a_database_being_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    let held = RedbBackend::open(&path).expect("open");
    held.put(b"k", "v".into()).await.expect("put");
    let closing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    let again = path.clone();
    let reopened = tokio::task::spawn_blocking(move || RedbBackend::open(again))
        .await
        .expect("task")
        .expect("opened once the holder let go");
    closing.join().expect("thread");
    assert_eq!(
        reopened.get(b"k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
    let again = path.clone();
    let refused = tokio::task::spawn_blocking(move || RedbBackend::open(again))
        .await
        .expect("task")
        .expect_err("held throughout: refused");
    assert_eq!(refused.kind(), ErrorKind::Io, "{refused}");
    reopened.put(b"k", "w".into()).await.expect("put");
    drop(reopened);
    // redb itself, which does not wait: the file is free at once.
    drop(redb::Database::create(&path).expect("a dropped backend has closed its file"));
    let last = RedbBackend::open(&path).expect("reopen");
    assert_eq!(
        last.get(b"k").await.expect("get").as_deref(),
        Some(&b"w"[..])
    );
}

/// A temporary database deletes its file when dropped.
#[tokio::test]
async fn a_temporary_database_leaves_no_file() {
    let backend = RedbBackend::builder().temporary(true).open().expect("open");
    backend.put(b"k", "v".into()).await.expect("put");
    let path = backend.path().to_path_buf();
    assert!(path.exists());
    drop(backend);
    assert!(!path.exists(), "{} left behind", path.display());
}

/// A value without statecraft's header (written by something else) is a
/// `Corrupt` error that writes nothing: a batch delete that meets one
/// removes none of its keys; `clear` removes it.
#[tokio::test]
async fn a_damaged_value_fails_its_write_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db.redb");
    {
        let backend = RedbBackend::open(&path).expect("open");
        backend.put(b"good", "v".into()).await.expect("put");
    }
    {
        let db = redb::Database::create(&path).expect("raw open");
        let table: redb::TableDefinition<&[u8], &[u8]> =
            redb::TableDefinition::new("statecraft/data");
        let txn = db.begin_write().expect("write");
        txn.open_table(table)
            .expect("table")
            .insert(&b"bad"[..], &b"\x07no header"[..])
            .expect("insert");
        txn.commit().expect("commit");
    }
    let backend = RedbBackend::open(&path).expect("reopen");
    let keys = [
        statecraft::Bytes::from("good"),
        statecraft::Bytes::from("bad"),
    ];
    let err = backend.batch_delete(&keys).await.expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(!err.may_have_applied());
    assert!(backend.contains(b"good").await.expect("contains"));
    for err in [
        backend.delete(b"bad").await.expect_err("damaged"),
        backend.get(b"bad").await.expect_err("damaged"),
    ] {
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }
    let err = backend
        .increment(b"bad", 1, PutOptions::new())
        .await
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    backend.clear().await.expect("clear");
    assert_eq!(backend.count().await.expect("count"), 0);
}
