//! Leader election across OS processes sharing one Redis (the test binary
//! runs itself as the candidates), for 60 s of random pauses (SIGSTOP …
//! SIGCONT, some past the lease) and kills (SIGKILL, then a new
//! candidate). Each candidate campaigns, and while it leads it acts every
//! few milliseconds — logging the time at which it checked that it still
//! leads — and now and then resigns. The checker: every term is one
//! leader's; no act of a term is later than the election of a later term
//! (a leader is told it lost before another can be elected, even one
//! paused past its lease); the observer's change stream shows every
//! elected term, in order.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use statecraft::lock::{Election, LeaderChange};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

#[path = "support/processes.rs"]
mod processes;
use processes::signal;

const CHILD: &str = "STATECRAFT_ELECTION_CHILD";
const TEST: &str = "one_leader_at_a_time_over_pauses_and_kills_on_redis";

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A small generator (xorshift), seeded by the process and the time.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        Dice((u64::from(std::process::id()) << 32) ^ wall_micros() | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn store(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .response_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

/// A candidate: `url|name|log|lease ms`. Campaigns for ever; logs
/// `elected <term> <pid> <wall µs after>`, then while it leads `act
/// <term> <pid> <wall µs before the check>` every 5 ms, and `resigned
/// <term> <pid>` when it resigns (after 100 to 700 ms, at random) or
/// `lost <term> <pid>` when told it lost.
async fn candidate(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (url, name, log_path) = (parts[0], parts[1], parts[2]);
    let lease = Duration::from_millis(parts[3].parse().expect("lease"));
    let election = Election::new(store(url).await, name, lease).expect("election");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(log_path)
        .expect("the log");
    let pid = std::process::id();
    let mut dice = Dice::new();
    // One write a line: O_APPEND puts it at the file's end in one piece.
    let mut line = |text: String| log.write_all(text.as_bytes()).expect("log");
    loop {
        let Ok(leadership) = election
            .campaign(&pid.to_string(), Duration::from_secs(30))
            .await
        else {
            continue;
        };
        let term = leadership.term();
        line(format!("elected {term} {pid} {}\n", wall_micros()));
        let until = tokio::time::Instant::now() + Duration::from_millis(100 + dice.below(600));
        loop {
            let at = wall_micros();
            if leadership.is_lost() {
                line(format!("lost {term} {pid}\n"));
                break;
            }
            line(format!("act {term} {pid} {at}\n"));
            if tokio::time::Instant::now() >= until {
                let resigned = leadership.resign().await;
                line(format!("resigned {term} {pid} {}\n", resigned.is_ok()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(dice.below(30))).await;
    }
}

fn spawn(spec: &str) -> Child {
    processes::spawn(TEST, CHILD, spec, false, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_over_pauses_and_kills_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return candidate(&spec).await;
    }
    let url = RedisServer::shared().url();
    let name = format!("leader-{}-{}", std::process::id(), wall_micros());
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("leaders.log");
    std::fs::write(&log, "").expect("log");
    let lease = Duration::from_millis(1_000);
    let spec = format!("{url}|{name}|{}|{}", log.display(), lease.as_millis());

    // The observer: every change it is shown, in order.
    let election = Election::new(store(&url).await, &name, lease).expect("election");
    let mut changes = election.changes().await.expect("changes");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observer = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                if let Ok(change) = changes.next().await {
                    seen.lock().expect("seen").push(change);
                }
            }
        }
    });

    let mut candidates: Vec<Child> = (0..4).map(|_| spawn(&spec)).collect();
    let mut dice = Dice::new();
    let (mut pauses, mut long_pauses, mut kills) = (0, 0, 0);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200 + dice.below(800))).await;
        let at = dice.below(candidates.len() as u64) as usize;
        if dice.below(100) < 70 {
            let pause = Duration::from_millis(100 + dice.below(2_400));
            signal(&candidates[at], "-STOP");
            tokio::time::sleep(pause).await;
            signal(&candidates[at], "-CONT");
            pauses += 1;
            long_pauses += usize::from(pause > lease);
        } else {
            let mut child = std::mem::replace(&mut candidates[at], spawn(&spec));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            kills += 1;
        }
    }
    for mut child in candidates {
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    // The last changes reach the observer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    observer.abort();

    let text = std::fs::read_to_string(&log).expect("log");
    let mut elected: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut acts: Vec<(u64, u32, u64)> = Vec::new();
    let mut told = 0;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split(' ').collect();
        let number = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("line {n} is damaged: {line:?}"))
        };
        match words[0] {
            "elected" => {
                let (term, pid, at) = (number(1), number(2) as u32, number(3));
                let before = elected.insert(term, (pid, at));
                assert!(before.is_none(), "line {n}: term {term} elected twice");
            }
            "act" => acts.push((number(1), number(2) as u32, number(3))),
            "lost" => told += 1,
            "resigned" => {}
            other => panic!("line {n}: {other:?}"),
        }
    }
    assert!(elected.len() >= 20, "only {} elections", elected.len());
    assert!(
        told > 0,
        "no leader was told it lost ({long_pauses} long pauses)"
    );
    // The earliest election of a term later than each term.
    let mut next_election: HashMap<u64, u64> = HashMap::new();
    let mut earliest = u64::MAX;
    for (term, (_, at)) in elected.iter().rev() {
        next_election.insert(*term, earliest);
        earliest = earliest.min(*at);
    }
    for (term, pid, at) in &acts {
        let (leader, _) = elected
            .get(term)
            .unwrap_or_else(|| panic!("an act of term {term} nobody was elected in"));
        assert_eq!(leader, pid, "term {term}: an act by another process");
        let later = next_election[term];
        assert!(
            *at < later,
            "term {term} ({pid}) acted at {at}, {} µs after a later term's election",
            at - later
        );
    }
    let seen = seen.lock().expect("seen").clone();
    let shown: Vec<u64> = seen
        .iter()
        .filter_map(|change| match change {
            LeaderChange::Elected(leader) => Some(leader.term),
            LeaderChange::Vacant { .. } => None,
        })
        .collect();
    assert!(
        shown.windows(2).all(|w| w[0] < w[1]),
        "the stream's terms are out of order: {shown:?}"
    );
    let missed: Vec<u64> = elected
        .keys()
        .filter(|term| !shown.contains(term))
        .copied()
        .collect();
    assert!(
        missed.is_empty(),
        "the stream missed {} of {} terms: {missed:?}",
        missed.len(),
        elected.len()
    );
    println!(
        "{} terms, {} acts, {told} leaders told they lost; {pauses} pauses ({long_pauses} past the lease), {kills} kills; {} changes shown",
        elected.len(),
        acts.len(),
        seen.len()
    );
}
