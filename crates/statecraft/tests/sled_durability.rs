//! Sled durability and sled-only features: what a child process acknowledged
//! after a flush survives SIGKILL; transactions; TTLs across reopen; the sweeper.

use std::process::{Command, Stdio};
use std::time::Duration;

#[path = "support/processes.rs"]
mod processes;

use statecraft::{KeyTtl, ManualClock, PutOptions, SledBackend, StateBackend, Transaction};

const CHILD_ENV: &str = "STATECRAFT_SLED_CHILD_DB";
const ACKED: u64 = 3_000;

fn value_of(i: u64) -> String {
    format!("value-{i}-{}", "x".repeat((i % 50) as usize))
}

/// Whether write `i` carries a TTL (an hour: it must still be there
/// after the restart, and must then be swept exactly).
fn expiring(i: u64) -> bool {
    i % 3 == 0
}

/// The child: writes keys forever (every third with a TTL), increments a
/// plain counter and one with a TTL at each write, flushing every 100 and
/// printing the count it has flushed, until the parent kills it.
async fn child(path: &str) {
    let backend = SledBackend::builder()
        .path(path)
        .flush_every(None)
        .open()
        .expect("child opens the database");
    let hour = PutOptions::new().ttl(Duration::from_secs(3600));
    let mut i = 0u64;
    loop {
        let options = if expiring(i) { hour } else { PutOptions::new() };
        backend
            .put_with(
                format!("key-{i:08}").as_bytes(),
                value_of(i).into(),
                options,
            )
            .await
            .expect("child put");
        backend
            .increment(b"counter", 1, PutOptions::new())
            .await
            .expect("child increment");
        backend
            .increment(b"counter-ttl", 1, hour)
            .await
            .expect("child increment");
        i += 1;
        if i % 100 == 0 {
            backend.flush().await.expect("child flush");
            println!("acked {i}");
        }
    }
}

mod conformance {
    mod sled {
        use super::super::processes;
        use super::super::*;

        #[tokio::test]
        async fn survives_sigkill_after_flush() {
            if let Ok(path) = std::env::var(CHILD_ENV) {
                child(&path).await;
                return;
            }
            let dir = tempfile::tempdir().expect("temp dir");
            let exe = std::env::current_exe().expect("test binary path");
            let process = Command::new(exe)
                .args([
                    "--exact",
                    "conformance::sled::survives_sigkill_after_flush",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the writer process");
            let mut process = processes::Reaped(process);
            let lines = processes::stdout_lines(&mut process.0);
            let mut acked = 0u64;
            while acked < ACKED {
                let line =
                    processes::next_line(&lines, Duration::from_secs(60), "acknowledgements");
                // The first may follow libtest's own "test … " on its line.
                if let Some(at) = line.find("acked ") {
                    acked = line[at + "acked ".len()..]
                        .trim()
                        .parse()
                        .expect("ack count");
                }
            }
            // SIGKILL while the child is still writing.
            processes::kill_and_reap(&mut process.0);
            assert!(
                acked >= ACKED,
                "the writer acknowledged only {acked} writes"
            );

            let clock = ManualClock::starting_now();
            let reopened = SledBackend::builder()
                .path(dir.path())
                .clock(clock.clone())
                .sweep_interval(None)
                .open()
                .expect("reopen after SIGKILL");
            assert!(reopened.was_recovered());
            for i in 0..acked {
                let got = reopened
                    .get_with_ttl(format!("key-{i:08}").as_bytes())
                    .await
                    .expect("get");
                let Some((value, ttl)) = got else {
                    panic!("acknowledged key {i} lost");
                };
                assert_eq!(value, value_of(i).as_bytes());
                assert_eq!(
                    matches!(ttl, KeyTtl::ExpiresIn(_)),
                    expiring(i),
                    "{i}: {ttl:?}"
                );
            }
            let count = reopened.count().await.expect("count");
            assert!(count >= acked, "count {count} < acked {acked}");
            for counter in [&b"counter"[..], b"counter-ttl"] {
                let n: u64 = std::str::from_utf8(
                    &reopened
                        .get(counter)
                        .await
                        .expect("get")
                        .expect("a counter"),
                )
                .expect("text")
                .parse()
                .expect("a number");
                assert!(n >= acked, "{n} increments kept of {acked} acknowledged");
            }
            assert!(matches!(
                reopened.ttl(b"counter-ttl").await.expect("ttl"),
                KeyTtl::ExpiresIn(_)
            ));
            // The index holds every expiring value: once they are due,
            // the sweep removes exactly them.
            let keys = reopened.list_keys(b"").await.expect("list");
            let mut with_ttl = 0;
            for key in &keys {
                if let KeyTtl::ExpiresIn(_) = reopened.ttl(key).await.expect("ttl") {
                    with_ttl += 1;
                }
            }
            let stats = reopened.stats().await.expect("stats");
            assert!(stats.details["expiry_index_entries"] >= with_ttl as u64);
            clock.advance(Duration::from_secs(7200));
            assert_eq!(reopened.sweep_expired().expect("sweep"), with_ttl);
            assert_eq!(
                reopened.list_keys(b"").await.expect("list").len(),
                keys.len() - with_ttl
            );
            // Every index entry was due: none is left, stale or not.
            let stats = reopened.stats().await.expect("stats");
            assert_eq!(
                stats.details["expiry_index_entries"], 0,
                "index entries left after the sweep"
            );
        }

        #[tokio::test]
        async fn transactions_apply_all_or_nothing() {
            let dir = tempfile::tempdir().expect("temp dir");
            let backend = SledBackend::open(dir.path()).expect("open");
            backend.put(b"from", "10".into()).await.expect("put");
            let transfer = Transaction::new()
                .check("from", Some("10"))
                .check("to", None::<&str>)
                .put("from", "0")
                .put_with_ttl("to", "10", Duration::from_secs(60));
            assert!(backend.transaction(transfer.clone()).await.expect("commit"));
            assert_eq!(
                backend.get(b"from").await.expect("get").as_deref(),
                Some(&b"0"[..])
            );
            assert_eq!(
                backend.get(b"to").await.expect("get").as_deref(),
                Some(&b"10"[..])
            );
            assert!(matches!(
                backend.ttl(b"to").await.expect("ttl"),
                KeyTtl::ExpiresIn(_)
            ));
            // The same transaction again: its checks fail, nothing is written.
            let again = transfer.delete("from");
            assert!(!backend.transaction(again).await.expect("transaction runs"));
            assert_eq!(
                backend.get(b"from").await.expect("get").as_deref(),
                Some(&b"0"[..])
            );
        }

        #[tokio::test]
        async fn ttl_survives_reopen_and_sweeper_removes_expired() {
            let dir = tempfile::tempdir().expect("temp dir");
            let clock = ManualClock::starting_now();
            let open = || {
                SledBackend::builder()
                    .path(dir.path())
                    .clock(clock.clone())
                    .sweep_interval(None)
                    .open()
                    .expect("open")
            };
            {
                let backend = open();
                for i in 0..100 {
                    let key = format!("t{i}");
                    backend
                        .put_with_ttl(key.as_bytes(), "v".into(), Duration::from_secs(10))
                        .await
                        .expect("put");
                }
                backend
                    .put_with_ttl(b"rewritten", "v".into(), Duration::from_secs(10))
                    .await
                    .expect("put");
                backend.put(b"rewritten", "kept".into()).await.expect("put");
                backend.put(b"plain", "v".into()).await.expect("put");
                backend.flush().await.expect("flush");
            }
            let backend = open();
            assert_eq!(backend.count().await.expect("count"), 102);
            assert!(matches!(
                backend.ttl(b"t5").await.expect("ttl"),
                KeyTtl::ExpiresIn(_)
            ));
            clock.advance(Duration::from_secs(11));
            assert_eq!(backend.count().await.expect("count"), 2);
            assert_eq!(backend.sweep_expired().expect("sweep"), 100);
            assert_eq!(backend.sweep_expired().expect("sweep again"), 0);
            assert_eq!(
                backend.get(b"rewritten").await.expect("get").as_deref(),
                Some(&b"kept"[..])
            );
            let stats = backend.stats().await.expect("stats");
            assert!(
                stats
                    .details
                    .get("size_on_disk_bytes")
                    .copied()
                    .unwrap_or(0)
                    > 0
            );
        }
    }
}

/// A database opened while this process still holds it (as just after a
/// close, while sled's flusher lets go of the file lock) is waited for,
/// and opens once the holder is dropped; one held throughout fails with an
/// I/O error after the bounded wait, rather than hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_waits_for_a_database_being_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = SledBackend::open(dir.path()).expect("open");
    held.put(b"k", "v".into()).await.expect("put");
    held.flush().await.expect("flush");
    let closing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    let path = dir.path().to_path_buf();
    let reopened = tokio::task::spawn_blocking(move || SledBackend::open(path))
        .await
        .expect("task")
        .expect("opened once the holder let go");
    closing.join().expect("thread");
    assert_eq!(
        reopened.get(b"k").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );

    let path = dir.path().to_path_buf();
    let refused = tokio::task::spawn_blocking(move || SledBackend::open(path))
        .await
        .expect("task")
        .expect_err("held throughout: refused");
    assert_eq!(refused.kind(), statecraft::ErrorKind::Io, "{refused}");
    drop(reopened);
}
