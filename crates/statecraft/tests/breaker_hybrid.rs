//! The hybrid breaker across OS processes sharing one Redis or one
//! PostgreSQL: an opening reaches idle instances in other processes
//! without a call (and the time it takes is printed); results of several
//! processes, each too few to open its own breaker, open the shared one;
//! a new instance starts from the shared state; without pub/sub an
//! instance learns within the reconcile interval and admits nothing after
//! it; a killed store leaves it deciding locally, saying so, until the
//! store is back.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecraft::breaker::{
    BreakerConfig, BreakerEvent, CallError, DistributedBreaker, HybridBreaker, HybridConfig, Phase,
};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{PostgresServer, RedisServer};

const CHILD: &str = "STATECRAFT_HYBRID_CHILD";

/// How long a parent waits for a child's line: long, for a loaded
/// machine (a child that never sends it fails the test all the same).
const WAIT: Duration = Duration::from_secs(30);

/// The multi-process tests of this binary run one at a time: fewer
/// processes share the machine's cores at once.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn store(url: &str) -> Arc<dyn StateBackend> {
    let options = statecraft::ConnectOptions::new().postgres_table("hybrid_processes");
    statecraft::connect_with(url, &options)
        .await
        .expect("the test store accepts connections")
}

fn one_failure_opens() -> BreakerConfig {
    BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config")
}

/// 8 failures among the last 16 calls open it.
fn eight_of_sixteen() -> BreakerConfig {
    BreakerConfig::builder()
        .failure_limit(8, 16)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config")
}

/// A child process: `mode|url|name[|go-file]`.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, url, name) = (parts[0], parts[1], parts[2]);
    // Ends the test harness's "test … " line: what follows is ours.
    println!();
    let store = store(url).await;
    match mode {
        // Never calls: reports each shared phase it learns, with the time.
        "idle" => {
            let breaker =
                HybridBreaker::start(store, name, one_failure_opens(), HybridConfig::default())
                    .await;
            println!("ready");
            let until = Instant::now() + Duration::from_secs(60);
            let mut seen = breaker.shared_phase();
            let mut opened = 0;
            while Instant::now() < until && !(opened == ROUNDS && seen == Phase::Closed) {
                let now = breaker.shared_phase();
                if now != seen {
                    println!("learned {now} {}", wall_us());
                    seen = now;
                    opened += usize::from(now == Phase::Open);
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let stats = breaker.stats();
            println!("flushed {} pushed {}", stats.flushed, stats.pushed);
        }
        // Three failures (too few for its own breaker), then waits for the
        // shared one to open.
        "fail3" => {
            let breaker =
                HybridBreaker::start(store, name, eight_of_sixteen(), HybridConfig::default())
                    .await;
            println!("ready");
            // All at once, when the parent says so.
            let go = std::path::Path::new(parts[3]);
            let until = Instant::now() + Duration::from_secs(30);
            while !go.exists() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // A child scheduled late may find the fleet open already.
            let mut admitted = 0;
            for _ in 0..3 {
                if let Ok(permit) = breaker.acquire().await {
                    admitted += 1;
                    permit.failure().await;
                }
            }
            println!("admitted {admitted}");
            let open = breaker.wait_for(Phase::Open, Duration::from_secs(20)).await;
            println!(
                "shared {} local {}",
                breaker.shared_phase(),
                breaker.local().phase()
            );
            println!("open {open}");
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("done");
}

/// Rounds of "open, everyone learns, reset".
const ROUNDS: usize = 20;

struct Children {
    processes: Vec<Child>,
    lines: Vec<Receiver<String>>,
}

fn spawn(test: &str, processes: usize, spec: &str) -> Children {
    let exe = std::env::current_exe().expect("test binary");
    let mut children = Children {
        processes: Vec::new(),
        lines: Vec::new(),
    };
    for _ in 0..processes {
        let mut process = Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(CHILD, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child process");
        let stdout = process.stdout.take().expect("stdout");
        let (send, receive) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        children.processes.push(process);
        children.lines.push(receive);
    }
    children
}

impl Children {
    /// The next line of child `i` that starts with `prefix`.
    fn next(&self, i: usize, prefix: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines[i].recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(err) => panic!("child {i}: no {prefix:?} line within {within:?}: {err}"),
            }
        }
    }

    fn finish(mut self) {
        for (i, process) in self.processes.iter_mut().enumerate() {
            assert!(process.wait().expect("reap").success(), "child {i} failed");
        }
        for i in 0..self.lines.len() {
            self.next(i, "done", WAIT);
        }
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), wall_us())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 3 idle processes; this one opens the breaker by one failure, ROUNDS
/// times, and resets it: every child learns every opening without a call.
async fn openings_reach_idle_processes(test: &str, url: &str) {
    let name = unique("idle");
    let children = spawn(test, 3, &format!("idle|{url}|{name}"));
    for i in 0..3 {
        children.next(i, "ready", Duration::from_secs(20));
    }
    let breaker = HybridBreaker::start(
        store(url).await,
        name.as_str(),
        one_failure_opens(),
        HybridConfig::default(),
    )
    .await;
    let mut delays = Vec::new();
    for _ in 0..ROUNDS {
        let opened_at = wall_us();
        breaker.acquire().await.expect("closed").failure().await;
        for i in 0..3 {
            let line = children.next(i, "learned OPEN", WAIT);
            let at: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|w| w.parse().ok())
                .expect("a time");
            delays.push(at.saturating_sub(opened_at));
        }
        breaker.reset().await.expect("reset");
        for i in 0..3 {
            children.next(i, "learned CLOSED", WAIT);
        }
    }
    for i in 0..3 {
        let line = children.next(i, "flushed", WAIT);
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[1], "0", "an idle child sent nothing: {line}");
        let pushed: usize = words[3].parse().expect("a count");
        assert!(
            pushed >= 2 * ROUNDS,
            "child {i} learned each opening and closing by pub/sub: {line}"
        );
    }
    children.finish();
    delays.sort_unstable();
    println!(
        "{test}: an opening reached {} idle instances in other processes: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (from the failure that opened it)",
        delays.len(),
        percentile(&delays, 0.50) as f64 / 1e3,
        percentile(&delays, 0.99) as f64 / 1e3,
        percentile(&delays, 1.0) as f64 / 1e3,
    );
    assert_eq!(delays.len(), 3 * ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openings_reach_idle_processes_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    openings_reach_idle_processes(
        "openings_reach_idle_processes_on_redis",
        &RedisServer::shared().url(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openings_reach_idle_processes_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    openings_reach_idle_processes(
        "openings_reach_idle_processes_on_postgres",
        &PostgresServer::shared().url(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_several_processes_open_the_shared_breaker() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let url = RedisServer::shared().url();
    let name = unique("fail3");
    let dir = tempfile::tempdir().expect("dir");
    let go = dir.path().join("go");
    let children = spawn(
        "results_of_several_processes_open_the_shared_breaker",
        4,
        &format!("fail3|{url}|{name}|{}", go.display()),
    );
    for i in 0..4 {
        children.next(i, "ready", Duration::from_secs(20));
    }
    std::fs::write(&go, b"go").expect("go");
    let mut admitted = 0;
    for i in 0..4 {
        let line = children.next(i, "admitted", Duration::from_secs(30));
        admitted += line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .expect("a count");
    }
    assert!(admitted >= 8, "the failures that opened it: {admitted}");
    for i in 0..4 {
        let phases = children.next(i, "shared", Duration::from_secs(30));
        assert_eq!(
            phases, "shared OPEN local CLOSED",
            "child {i}: 3 failures do not open its own breaker; 12 open the shared one"
        );
        assert_eq!(children.next(i, "open", WAIT), "open true");
    }
    children.finish();
    let shared = DistributedBreaker::new(store(&url).await, name.as_str(), eight_of_sixteen());
    let state = shared.state().await.expect("state").expect("written");
    assert_eq!(state.phase, Phase::Open);
}

async fn redis_at(url: &str, timeout: Duration) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .response_timeout(timeout)
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_starts_from_the_shared_state() {
    let url = RedisServer::shared().url();
    let name = unique("new");
    let first = DistributedBreaker::new(store(&url).await, name.as_str(), one_failure_opens());
    first
        .acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    let late = HybridBreaker::start(
        store(&url).await,
        name.as_str(),
        one_failure_opens(),
        HybridConfig::default(),
    )
    .await;
    assert_eq!(late.shared_phase(), Phase::Open);
    let rejected = late.acquire().await.expect_err("open");
    let left = rejected.retry_after().expect("an opening");
    assert!(left > Duration::from_secs(50), "{left:?}");
    assert_eq!(late.stats().flushes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pubsub_an_instance_learns_within_the_reconcile_interval() {
    let url = RedisServer::shared().url();
    let name = unique("nopubsub");
    let reconcile_every = Duration::from_millis(200);
    let quiet = HybridConfig {
        pubsub: false,
        reconcile_every,
        ..HybridConfig::default()
    };
    let opener = HybridBreaker::start(
        store(&url).await,
        name.as_str(),
        one_failure_opens(),
        quiet.clone(),
    )
    .await;
    let other = HybridBreaker::start(
        store(&url).await,
        name.as_str(),
        one_failure_opens(),
        quiet.clone(),
    )
    .await;
    let caller = {
        let other = other.clone();
        tokio::spawn(async move {
            // (admitted, when) of each call, until rejected for good.
            let mut admitted = Vec::new();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                match other.acquire().await {
                    Ok(permit) => {
                        admitted.push(Instant::now());
                        permit.success().await;
                    }
                    Err(_) => return (admitted, Some(Instant::now())),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (admitted, None)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    opener.acquire().await.expect("closed").failure().await;
    assert!(opener.wait_for(Phase::Open, Duration::from_secs(5)).await);
    let opened = Instant::now();
    let (admitted, rejected) = caller.await.expect("no panic");
    let rejected = rejected.expect("the other instance learned the opening");
    let learned = rejected.saturating_duration_since(opened);
    let late = admitted
        .iter()
        .filter(|at| {
            at.saturating_duration_since(opened)
                > reconcile_every + quiet.flush_every + Duration::from_millis(300)
        })
        .count();
    println!(
        "without pub/sub: learned {learned:?} after the store opened; {} calls admitted in all",
        admitted.len()
    );
    assert!(!admitted.is_empty(), "it admitted while closed");
    assert_eq!(late, 0, "no call admitted past the reconcile bound");
    assert_eq!(other.stats().pushed, 0);
    assert!(other.stats().reconciled > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_leaves_it_deciding_locally_until_the_store_is_back() {
    let mut server = RedisServer::start();
    let url = server.url();
    let hybrid = HybridConfig {
        timeout: Duration::from_millis(300),
        reconcile_every: Duration::from_millis(100),
        ..HybridConfig::default()
    };
    let config = BreakerConfig::builder()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let breaker = HybridBreaker::start(
        redis_at(&url, Duration::from_millis(300)).await,
        unique("killed"),
        config,
        hybrid,
    )
    .await;
    let mut events = breaker.events();
    breaker.acquire().await.expect("closed").success().await;
    assert!(breaker.stats().store_up);
    server.kill();
    // Still deciding, locally: calls go through, and this instance's own
    // failures still open its breaker.
    let started = Instant::now();
    for _ in 0..2 {
        breaker
            .acquire()
            .await
            .expect("closed locally")
            .failure()
            .await;
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no wait on the store"
    );
    breaker
        .acquire()
        .await
        .expect("closed locally")
        .failure()
        .await;
    assert!(
        breaker.acquire().await.is_err(),
        "its own evidence opened it"
    );
    let down = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(BreakerEvent::StoreUnavailable { .. }) => return,
                Ok(_) => {}
                Err(err) => panic!("{err}"),
            }
        }
    })
    .await;
    assert!(down.is_ok(), "it said the store is down");
    assert!(!breaker.stats().store_up);
    assert!(breaker.stats().store_errors > 0);
    server.restart();
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(BreakerEvent::StoreRecovered { .. }) => return,
                Ok(_) => {}
                Err(err) => panic!("{err}"),
            }
        }
    })
    .await;
    assert!(back.is_ok(), "it said the store is back");
    assert!(breaker.stats().store_up);
}

/// A hybrid breaker `name` that one failure opens for 10 s, over a memory
/// store, the store and the instance on one manual clock (an opening ends
/// when the test says so).
async fn on_one_manual_clock(name: &str) -> (statecraft::ManualClock, HybridBreaker) {
    let clock = statecraft::ManualClock::new(1_733_000_000_000);
    let store: Arc<dyn StateBackend> = Arc::new(
        statecraft::MemoryBackend::builder()
            .clock(clock.clone())
            .build(),
    );
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(10))
        .build()
        .expect("config");
    let breaker = HybridBreaker::start_with_clock(
        store,
        name,
        config,
        HybridConfig::default(),
        clock.clone(),
    )
    .await;
    (clock, breaker)
}

/// The synchronous forms: decided here while the shared breaker is closed
/// or open; once an opening ends only the store decides, and a probe's
/// result goes to the store.
#[tokio::test]
async fn try_acquire_and_try_record_decide_here_or_hand_over() {
    let (clock, breaker) = on_one_manual_clock("sync").await;
    let mut shared_events = breaker.events();
    let permit = breaker
        .try_acquire()
        .expect("decided here")
        .expect("closed");
    assert!(permit
        .try_record(statecraft::breaker::Outcome::Failure)
        .is_ok());
    assert!(breaker.wait_for(Phase::Open, Duration::from_secs(5)).await);
    match shared_events.try_recv() {
        Ok(BreakerEvent::Transition { transition, .. }) => {
            assert_eq!(
                (transition.from, transition.to),
                (Phase::Closed, Phase::Open)
            )
        }
        other => panic!("the shared opening, learned: {other:?}"),
    }
    let rejected = breaker.try_acquire().expect("decided here");
    assert!(rejected.is_err(), "open");
    clock.advance(Duration::from_secs(10));
    assert!(
        breaker.try_acquire().is_none(),
        "the opening ended: the store decides"
    );
    let probe = breaker.acquire().await.expect("a probe");
    assert!(probe.is_probe());
    let probe = probe
        .try_record(statecraft::breaker::Outcome::Success)
        .expect_err("a probe's result goes to the store");
    probe.success().await;
    assert_eq!(breaker.shared_phase(), Phase::Closed);
}

/// A permit dropped unfinished is a cancelled call: a failure, here and in
/// the flush that reaches the store.
#[tokio::test]
async fn a_dropped_permit_is_a_failure_here_and_in_the_store() {
    let store: Arc<dyn StateBackend> = Arc::new(statecraft::MemoryBackend::new());
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let breaker = HybridBreaker::start(store, "dropped", config, HybridConfig::default()).await;
    let permit = breaker.acquire().await.expect("closed");
    drop(permit);
    // A result's future dropped before it ran: the permit inside it too.
    let permit = breaker.acquire().await.expect("closed");
    drop(permit.success());
    assert_eq!(
        breaker.local().phase(),
        Phase::Open,
        "two failures in a row"
    );
    assert!(
        breaker.wait_for(Phase::Open, Duration::from_secs(5)).await,
        "the flushed failures opened the shared breaker: {:?}",
        breaker.stats()
    );
}

/// `call` rejects while the breaker is open, asks the store once the
/// opening has ended, and its probe's success closes the shared breaker.
#[tokio::test]
async fn call_decides_here_then_asks_the_store_for_a_probe() {
    let (clock, breaker) = on_one_manual_clock("call").await;
    let failed = breaker.call(|| async { Err::<(), _>("down") }).await;
    assert!(matches!(failed, Err(CallError::Failed("down"))));
    assert!(breaker.wait_for(Phase::Open, Duration::from_secs(5)).await);
    let rejected = breaker.call(|| async { Ok::<_, ()>(1) }).await;
    match rejected {
        Err(CallError::Rejected(rejected)) => {
            assert_eq!(rejected.retry_after(), Some(Duration::from_secs(10)))
        }
        other => panic!("open, rejected here: {other:?}"),
    }
    clock.advance(Duration::from_secs(10));
    let probed = breaker.call(|| async { Ok::<_, ()>(2) }).await;
    assert!(matches!(probed, Ok(2)), "{probed:?}");
    assert_eq!(
        breaker.shared_phase(),
        Phase::Closed,
        "the probe's success reached the store"
    );
}

/// With slow calls counted, a permit times its call: a quick success
/// leaves the breaker closed, a slow one opens it here and, flushed, in
/// the store.
#[tokio::test]
async fn a_slow_success_opens_it_here_and_in_the_store() {
    let store: Arc<dyn StateBackend> = Arc::new(statecraft::MemoryBackend::new());
    let config = BreakerConfig::builder()
        .slow_calls(Duration::from_millis(20), 1, 1)
        .window(statecraft::breaker::Window::Count(1))
        .min_calls(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let breaker = HybridBreaker::start(store, "slow", config, HybridConfig::default()).await;
    let quick = breaker.acquire().await.expect("closed");
    quick.success().await;
    assert_eq!(breaker.local().phase(), Phase::Closed, "a quick success");
    let slow = breaker.acquire().await.expect("closed");
    // A permit times its call by the process's monotonic clock (not the
    // breaker's injectable one, nor tokio's): 30 ms of real time.
    tokio::time::sleep(Duration::from_millis(30)).await;
    slow.success().await;
    assert_eq!(breaker.local().phase(), Phase::Open, "a slow success");
    assert!(
        breaker.wait_for(Phase::Open, Duration::from_secs(5)).await,
        "the flushed slow call opened the shared breaker: {:?}",
        breaker.stats()
    );
}
