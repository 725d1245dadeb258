//! What the process tests of locks and elections share: the test binary
//! run again as a child, signals, the children's output, and the
//! enter/exit log of a lock's holders with its checker (lines `enter
//! <token> <pid>` and `exit <token> <pid>`, appended by the holders with
//! O_APPEND: in the order the writes happened).
// Each test binary uses a part of it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, Command, Stdio};

/// The test binary run again as a child: only `test`, with `spec` in the
/// environment variable `env`; its stdin piped when `stdin`, its stdout
/// piped when `stdout` (else discarded).
pub(crate) fn spawn(test: &str, env: &str, spec: &str, stdin: bool, stdout: bool) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let piped = |yes: bool| if yes { Stdio::piped() } else { Stdio::null() };
    Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(env, spec)
        .stdin(piped(stdin))
        .stdout(piped(stdout))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child process")
}

/// A child killed (and reaped) when dropped: one a failed assertion left
/// behind, paused or holding, would hold up the tests after it.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to `child`.
pub(crate) fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// Waits for each of `children` (their stdout piped) to end: each must
/// exit with success after printing `done`.
pub(crate) fn finish(children: Vec<Child>) {
    use std::io::{BufRead, BufReader};
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
}

/// Reads a child's stdout until a line starts with `prefix`: the rest.
pub(crate) fn wait_line(lines: &mut impl Iterator<Item = String>, prefix: &str) -> String {
    lines
        .find_map(|line| line.strip_prefix(prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("the child ended without a {prefix:?} line"))
}

/// One turn inside a lock held with `token`, the `i`th of this process:
/// its entry and exit appended to `log` (one write each: O_APPEND puts it
/// at the file's end as one piece), around a short hold.
pub(crate) async fn log_turn(log: &mut std::fs::File, token: u64, i: usize) {
    let pid = std::process::id();
    log.write_all(format!("enter {token} {pid}\n").as_bytes())
        .expect("log");
    if i % 5 == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    } else {
        tokio::task::yield_now().await;
    }
    log.write_all(format!("exit {token} {pid}\n").as_bytes())
        .expect("log");
}

/// Replays `text`: every entry finds nobody inside, every exit is the one
/// inside, tokens strictly rise. The number of entries.
pub(crate) fn check_turns(text: &str) -> usize {
    let mut inside: Option<(u64, u32)> = None;
    let mut last_token = 0u64;
    let mut entries = 0;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split(' ').collect();
        let (what, token, pid) = match words.as_slice() {
            [what, token, pid] => (
                *what,
                token.parse::<u64>().expect("token"),
                pid.parse::<u32>().expect("pid"),
            ),
            _ => panic!("line {n} is damaged: {line:?}"),
        };
        match what {
            "enter" => {
                assert_eq!(
                    inside, None,
                    "line {n}: {pid} entered while {inside:?} held the lock"
                );
                assert!(
                    token > last_token,
                    "line {n}: token {token} after {last_token}"
                );
                last_token = token;
                inside = Some((token, pid));
                entries += 1;
            }
            "exit" => {
                assert_eq!(inside, Some((token, pid)), "line {n}: an exit by another");
                inside = None;
            }
            other => panic!("line {n}: {other:?}"),
        }
    }
    assert_eq!(inside, None, "the log ends with a holder inside");
    entries
}

/// A child's stdout, read on a thread of its own until the child ends (so
/// the pipe stays open however long the test takes to kill it): the
/// lines, each as it comes.
pub(crate) fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// The next line of `lines` within `wait`, or a panic that says what the
/// test was waiting for.
pub(crate) fn next_line(
    lines: &std::sync::mpsc::Receiver<String>,
    wait: std::time::Duration,
    waiting_for: &str,
) -> String {
    lines.recv_timeout(wait).unwrap_or_else(|err| {
        panic!("no line from the child within {wait:?} ({err}) while waiting for {waiting_for}")
    })
}

/// Kills `child` with SIGKILL and checks that it died of it (not of a
/// panic of its own, say).
#[cfg(unix)]
pub(crate) fn kill_and_reap(child: &mut Child) {
    use std::os::unix::process::ExitStatusExt;
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child died of SIGKILL: {status}"
    );
}
