//! The distributed limiter across OS processes sharing one Redis (or one
//! Redis Cluster, or one PostgreSQL): 4 processes × 64 tasks hammering one
//! limit admit at most its burst plus its rate over the run, and at least
//! 95% of that; the same with the processes' clocks skewed by ±5 s (each
//! child's whole wall clock, by libfaketime: the store's clock decides); every limiter key has a TTL afterwards, also after the
//! connections were cut mid-run; a killed store gives the configured
//! policy within the timeout. The same hammer also runs through the
//! provided compare-and-swap path (a store wrapped so that it offers no
//! native update), at the processes' own clocks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecraft::limiter::{
    Algorithm, DistributedLimiter, HybridLimiter, HybridLimiterConfig, Quota, WhenUnreachable,
};
use statecraft::{MonotonicClock, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{
    Fault, FaultProxy, PostgresServer, ProvidedDefaults, RedisCluster, RedisServer,
};

const CHILD: &str = "STATECRAFT_LIMITER_CHILD";

/// The limit the processes share: a burst of 50, then 200 a second (a
/// window: 200 a second).
fn quota(algorithm: Algorithm) -> Quota {
    let builder = Quota::per_second(200).algorithm(algorithm);
    match algorithm {
        Algorithm::Gcra | Algorithm::TokenBucket => builder.burst(50),
        _ => builder,
    }
    .build()
    .expect("quota")
}

/// The most a run of `span` may admit: the burst plus the rate.
fn bound(span: Duration) -> f64 {
    50.0 + 200.0 * span.as_secs_f64()
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// libfaketime, which shifts a process's wall clock (`FAKETIME`): under
/// `/usr/lib/<arch>/faketime/` or `/usr/lib/faketime/`.
fn faketime() -> std::path::PathBuf {
    let library = "libfaketimeMT.so.1";
    let arches = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime").join(library));
    std::iter::once(std::path::PathBuf::from("/usr/lib/faketime").join(library))
        .chain(arches)
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is missing: the skewed-clock tests need it \
                 (apt-get install faketime; scripts/test.sh installs it)"
            )
        })
}

async fn store(url: &str) -> Arc<dyn StateBackend> {
    if url.starts_with("redis://") {
        let config = RedisConfig::builder()
            .url(url)
            .response_timeout(Duration::from_secs(1))
            .build()
            .expect("config");
        return Arc::new(RedisBackend::new(config).await.expect("redis"));
    }
    let options = statecraft::ConnectOptions::new().postgres_table("limiter_processes");
    statecraft::connect_with(url, &options)
        .await
        .expect("the test store accepts connections")
}

/// A child process: `mode|url|name|algorithm|millis|skew_s|parent µs`,
/// its wall clock `skew_s` seconds off (by libfaketime, which its parent
/// preloads), `parent µs` the parent's wall clock when it spawned it. It
/// prints `skew <µs>` (its clock against the parent's, plus its start-up
/// time), then its times with the skew taken off:
/// `start <µs>`, then `admitted <n>`, `without_store <n>`, `slowest <ms>`,
/// `allowed_without_store <n>`, `end <µs>` and `done`.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, url, name) = (parts[0], parts[1], parts[2]);
    let algorithm = Algorithm::from_name(parts[3]).expect("an algorithm");
    let millis: u64 = parts[4].parse().expect("millis");
    let skew_us: i64 = parts[5].parse::<i64>().expect("skew") * 1_000_000;
    let parent_us: i64 = parts[6].parse().expect("the parent's time");
    let wall = move || wall_micros().saturating_add_signed(-skew_us);
    let seen = wall_micros() as i64 - parent_us;
    // Ends the test harness's "test … " line: what follows is ours.
    println!();
    println!("skew {seen}");
    let store = match mode {
        // Only the contract's required operations: `update_atomic` is the
        // provided compare-and-swap loop, whatever the store offers.
        "generic" => Arc::new(ProvidedDefaults(store(url).await)),
        _ => store(url).await,
    };
    let policy = match mode {
        "hammer" | "hybrid" | "generic" => WhenUnreachable::Error,
        "deny" | "hybrid_deny" => WhenUnreachable::Deny,
        "local" => WhenUnreachable::Local(Quota::per_second(10).burst(5).build().expect("quota")),
        other => panic!("unknown child mode {other}"),
    };
    // A store killed is noticed within 200 ms; hammering, a store that
    // answers slowly (PostgreSQL under 256 tasks on one row) is waited for.
    let timeout = Duration::from_millis(if matches!(mode, "hammer" | "generic") {
        5_000
    } else {
        200
    });
    let limiter = Arc::new(if mode.starts_with("hybrid") {
        let mut config = HybridLimiterConfig::default();
        config.timeout = timeout;
        config.when_unreachable = policy;
        Limiter::Hybrid(HybridLimiter::new(store, name, quota(algorithm), config))
    } else {
        Limiter::Shared(Box::new(
            DistributedLimiter::new(store, name, quota(algorithm))
                .timeout(timeout)
                .when_unreachable(policy)
                // The process's clock, skewed with it.
                .with_clock(MonotonicClock::new()),
        ))
    });
    let started = wall();
    let kill_at = u64::try_from(parent_us).unwrap_or(0) + 1_000_000;
    // The modes of the kill tests: a policy for a store gone.
    let killing = policy != WhenUnreachable::Error;
    println!("start {started}");
    println!("until {}", started + millis * 1_000);
    let until = Instant::now() + Duration::from_millis(millis);
    let mut tasks = Vec::new();
    // Compare-and-swap writers of one key do not wait their turn: under 64
    // tasks a process, some lose the race for seconds (up to 3 s seen).
    let contenders = if mode == "generic" { 16 } else { 64 };
    for _ in 0..contenders {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let (mut admitted, mut slowest, mut allowed_without) = (0u64, Duration::ZERO, 0u64);
            let (mut errors, mut denied) = (0u64, 0u64);
            while Instant::now() < until {
                let asked = Instant::now();
                let decision = limiter.check().await;
                slowest = slowest.max(asked.elapsed());
                // A kill test's parent kills the store a second after it
                // spawned this child; an allowed answer counts as decided
                // without the store only 1.5 s after that, once every call
                // to the store has had its timeout to fail (and a slow
                // answer of a store alive, a timeout under load, is not
                // taken for one).
                let surely_without = killing && wall() > kill_at + 1_500_000;
                match decision {
                    Ok(decision) if decision.is_allowed() => {
                        if surely_without {
                            allowed_without += 1;
                        } else {
                            admitted += 1;
                        }
                    }
                    Ok(decision) => {
                        denied += 1;
                        let wait = decision.retry_after().unwrap_or(Duration::from_millis(1));
                        tokio::time::sleep(wait.min(Duration::from_millis(5))).await;
                    }
                    // Only with WhenUnreachable::Error, while the store is gone.
                    Err(err) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("a decision failed: {err}");
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                }
            }
            (admitted, slowest, allowed_without, denied, errors)
        }));
    }
    let (mut admitted, mut slowest, mut allowed_without) = (0, Duration::ZERO, 0);
    let (mut denied, mut errors) = (0, 0);
    for task in tasks {
        let (a, s, w, d, e) = task.await.expect("task");
        admitted += a;
        slowest = slowest.max(s);
        allowed_without += w;
        denied += d;
        errors += e;
    }
    println!("end {}", wall());
    if let Limiter::Hybrid(hybrid) = &*limiter {
        hybrid.close().await.expect("give the lease back");
        println!("leases {}", hybrid.stats().leases);
    }
    println!("admitted {admitted}");
    println!("without_store {}", limiter.without_store());
    println!("allowed_without_store {allowed_without}");
    println!("slowest {}", slowest.as_millis());
    println!("denied {denied}");
    println!("errors {errors}");
    println!("done");
}

/// The limiter a child hammers.
enum Limiter {
    Shared(Box<DistributedLimiter>),
    Hybrid(HybridLimiter),
}

impl Limiter {
    async fn check(&self) -> statecraft::Result<statecraft::limiter::Decision> {
        match self {
            Limiter::Shared(limiter) => limiter.check().await,
            Limiter::Hybrid(limiter) => limiter.check().await,
        }
    }

    fn without_store(&self) -> u64 {
        match self {
            Limiter::Shared(limiter) => limiter.stats().decided_without_store,
            Limiter::Hybrid(limiter) => limiter.stats().decided_without_store,
        }
    }
}

/// What the children reported, summed (start: the earliest; end: the
/// latest).
#[derive(Debug, Default)]
struct Report {
    start: u64,
    /// When the last child stopped asking.
    until: u64,
    end: u64,
    admitted: u64,
    without_store: u64,
    allowed_without_store: u64,
    slowest_ms: u64,
    leases: u64,
    denied: u64,
    errors: u64,
}

/// Runs `processes` children of `test` with `specs[i % specs.len()]` while
/// `during` runs, and sums their reports.
fn children(test: &str, specs: &[String], processes: usize, during: impl FnOnce()) -> Report {
    let exe = std::env::current_exe().expect("test binary");
    let spawned: Vec<_> = (0..processes)
        .map(|n| {
            let spec = &specs[n % specs.len()];
            let skew: i64 = spec
                .rsplit('|')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut command = Command::new(&exe);
            command
                .args(["--exact", test, "--nocapture", "--test-threads", "1"])
                .env(CHILD, format!("{spec}|{}", wall_micros()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if skew != 0 {
                // The child's wall clock, shifted; its monotonic clock (and
                // so its timers) left alone.
                command
                    .env("LD_PRELOAD", faketime())
                    .env("FAKETIME", format!("{skew:+}"))
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
            }
            (skew, command.spawn().expect("spawn a child process"))
        })
        .collect();
    during();
    let mut report = Report {
        start: u64::MAX,
        ..Report::default()
    };
    for (skew, mut process) in spawned {
        let stdout = process.stdout.take().expect("stdout");
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect();
        assert!(
            process.wait().expect("reap").success(),
            "a child failed: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l == "done"),
            "a child did not finish: {lines:?}"
        );
        // The child's clock was as far off as asked (plus its start-up).
        let seen = lines
            .iter()
            .find_map(|l| l.strip_prefix("skew ").and_then(|n| n.parse::<i64>().ok()))
            .expect("the child says its skew");
        let off = seen - skew * 1_000_000;
        assert!(
            (-500_000..3_000_000).contains(&off),
            "a child asked to run {skew} s off ran {seen} µs off"
        );
        for line in &lines {
            let Some((what, n)) = line.split_once(' ') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "start" => report.start = report.start.min(n),
                "until" => report.until = report.until.max(n),
                "end" => report.end = report.end.max(n),
                "admitted" => report.admitted += n,
                "without_store" => report.without_store += n,
                "allowed_without_store" => report.allowed_without_store += n,
                "slowest" => report.slowest_ms = report.slowest_ms.max(n),
                "leases" => report.leases += n,
                "denied" => report.denied += n,
                "errors" => report.errors += n,
                _ => {}
            }
        }
    }
    report
}

/// The multi-process tests of this binary run one at a time: 4 × 64
/// tasks each on two cores, and the admission bounds are about time.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), wall_micros())
}

/// 4 processes × 64 tasks (16 on the compare-and-swap path) for 3 s on one
/// limit: within [95%, 100%] of the
/// burst plus the rate over the run (for hybrid ones, less what the last
/// leases held unspent: at most one lease of 5 per process).
fn hammer(test: &str, url: &str, mode: &str, algorithm: Algorithm, skews: &[i64]) -> Report {
    let name = unique("hammer");
    let specs: Vec<String> = skews
        .iter()
        .map(|skew| format!("{mode}|{url}|{name}|{}|3000|{skew}", algorithm.name()))
        .collect();
    let report = children(test, &specs, 4, || {});
    // Every admission happened between the first start and the last
    // answer; the processes asked until `until` (the answers still in
    // flight then may add a few).
    let span = Duration::from_micros(report.end - report.start);
    let asking = Duration::from_micros(report.until - report.start);
    let (most, least, admitted) = (bound(span), 0.95 * bound(asking), report.admitted as f64);
    let unspent = if mode == "hybrid" { 4.0 * 5.0 } else { 0.0 };
    println!("{report:?}");
    println!(
        "{mode} {algorithm}: {admitted} admitted by 4 processes asking for {asking:?}, answered \
         within {span:?} (bound {most:.0}), skews {skews:?}, {} leases",
        report.leases
    );
    assert!(admitted <= most, "over-admission: {admitted} > {most:.0}");
    assert!(
        admitted >= least - unspent,
        "under-admission: {admitted} < 95% of {:.0}",
        bound(asking)
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_limit_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let url = RedisServer::shared().url();
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
        hammer(
            "processes_share_one_limit_on_redis",
            &url,
            "hammer",
            algorithm,
            &[0],
        );
    }
    assert_every_key_has_a_ttl(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_processes_share_one_limit_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let url = RedisServer::shared().url();
    hammer(
        "hybrid_processes_share_one_limit_on_redis",
        &url,
        "hybrid",
        Algorithm::Gcra,
        &[0],
    );
    assert_every_key_has_a_ttl(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_process_clocks_change_nothing_on_redis() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let skews = [5, -5, 4, -4];
    hammer(
        "skewed_process_clocks_change_nothing_on_redis",
        &RedisServer::shared().url(),
        "hammer",
        Algorithm::Gcra,
        &skews,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_limit_on_redis_cluster() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    hammer(
        "processes_share_one_limit_on_redis_cluster",
        &RedisCluster::shared().url(),
        "hammer",
        Algorithm::Gcra,
        &[5, -5],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_limit_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    hammer(
        "processes_share_one_limit_on_postgres",
        &PostgresServer::shared().url(),
        "hammer",
        Algorithm::Gcra,
        &[5, -5],
    );
}

/// The provided compare-and-swap path (a read, the decision at this
/// process's clock, a swap; again on a conflict, after a random wait
/// once it conflicted twice), with 4 × 16 tasks conflicting on one key:
/// the same bounds, and no decision past its timeout (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_limit_through_compare_and_swap() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let url = RedisServer::shared().url();
    // Below Redis 7 the native steps run by EVALSHA, and the counts below
    // could not tell the two paths apart.
    assert!(
        server_major(&url).await >= 7,
        "this test needs Redis 7 or later (FCALL)"
    );
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
        let (scripts, swaps) = (calls(&url, "fcall").await, calls(&url, "evalsha").await);
        let report = hammer(
            "processes_share_one_limit_through_compare_and_swap",
            &url,
            "generic",
            algorithm,
            &[0],
        );
        assert_eq!(report.errors, 0, "no decision failed");
        println!("slowest decision {} ms", report.slowest_ms);
        assert_eq!(
            calls(&url, "fcall").await,
            scripts,
            "no native step ran: the children took the provided path"
        );
        // Each admission's swap is one script (the backend's
        // compare-and-swap), more with the conflicts.
        assert!(
            calls(&url, "evalsha").await - swaps >= report.admitted,
            "a swap per admission at least"
        );
    }
    assert_every_key_has_a_ttl(&url).await;
}

/// A section of the server's `INFO`.
async fn info(url: &str, section: &str) -> String {
    let mut client = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut client)
        .await
        .expect("info")
}

/// The server's major version.
async fn server_major(url: &str) -> u64 {
    info(url, "server")
        .await
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .and_then(|version| version.split('.').next())
        .map_or(0, |major| major.trim().parse().expect("a version"))
}

/// How many times the server ran `command`.
async fn calls(url: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    info(url, "commandstats")
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .and_then(|rest| rest.split(',').next().map(str::to_owned))
        .map_or(0, |n| n.parse().expect("a count"))
}

/// Every key a limiter wrote has a TTL.
async fn assert_every_key_has_a_ttl(url: &str) {
    let mut client = redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("limiter:*")
        .query_async(&mut client)
        .await
        .expect("keys");
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut client)
            .await
            .expect("pttl");
        assert_ne!(ttl, -1, "{key} has no TTL");
    }
}

/// Connections cut again and again while the processes hammer: nothing
/// hangs, and every key left has a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_leave_no_key_without_a_ttl() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into());
    let url = format!("redis://{}", proxy.addr());
    let name = unique("cut");
    let specs = [format!("local|{url}|{name}|sliding_window|2500|0")];
    let report = children(
        "cut_connections_leave_no_key_without_a_ttl",
        &specs,
        2,
        || {
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(150));
                proxy.set(Fault::Reset);
                std::thread::sleep(Duration::from_millis(50));
                proxy.heal();
            }
        },
    );
    println!("{report:?}");
    assert!(report.without_store > 0, "the cuts were felt: {report:?}");
    assert!(report.slowest_ms < 1_500, "a decision hung: {report:?}");
    assert_every_key_has_a_ttl(&server.url()).await;
}

/// The store killed mid-run: with `Deny`, every decision after it is a
/// denial, each within the 200 ms timeout (plus scheduling); with a local
/// fallback quota, what the fallback allows passes (at most its quota);
/// a hybrid limiter with `Deny` spends what its lease holds, then denies.
fn killed(test: &str, mode: &str, allowed: bool, url: &str, kill: impl FnOnce()) {
    let name = unique("killed");
    let specs = [format!("{mode}|{url}|{name}|gcra|3500|0")];
    let report = children(test, &specs, 2, || {
        std::thread::sleep(Duration::from_millis(1_000));
        kill();
    });
    println!("{mode}: {report:?}");
    // (`admitted` also holds what was allowed around the kill.)
    assert!(
        report.admitted > 0,
        "{mode}: the store admitted before the kill"
    );
    assert!(
        report.without_store > 0,
        "{mode}: decided without the store"
    );
    assert!(
        report.slowest_ms < 1_000,
        "{mode}: a decision took {} ms",
        report.slowest_ms
    );
    assert_eq!(
        report.allowed_without_store > 0,
        allowed,
        "{mode}: {report:?}"
    );
    // The local fallback admits at most its own quota per process.
    assert!(
        report.allowed_without_store <= 2 * (5 + 10 * 4),
        "{mode}: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_gives_the_configured_policy_within_the_timeout() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let test = "a_killed_store_gives_the_configured_policy_within_the_timeout";
    for (mode, allowed) in [("deny", false), ("local", true), ("hybrid_deny", false)] {
        let mut server = RedisServer::start();
        let url = server.url();
        killed(test, mode, allowed, &url, || server.kill());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postgres_gives_the_configured_policy_within_the_timeout() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let _serial = one_at_a_time().await;
    let test = "a_killed_postgres_gives_the_configured_policy_within_the_timeout";
    for (mode, allowed) in [("deny", false), ("local", true)] {
        let mut server = PostgresServer::start();
        let url = server.url();
        killed(test, mode, allowed, &url, || server.kill());
    }
}
