//! The distributed breaker across OS processes sharing one Redis (or one
//! Redis Cluster, or one PostgreSQL): the half-open probe limit holds cluster-wide (4 processes
//! × 64 tasks, every probe logged with its spell), instances created while it is open never
//! reset it, a deleted key is a fresh closed breaker, and a killed store
//! fails open or closed, as configured, within the timeout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use statecraft::breaker::{BreakerConfig, CloseAfter, DistributedBreaker, Phase, StoreDown};
use statecraft::{RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::{PostgresServer, RedisCluster, RedisServer};

const CHILD: &str = "STATECRAFT_BREAKER_CHILD";

fn probe_config() -> BreakerConfig {
    BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_millis(100))
        .half_open(2, CloseAfter::Successes(2))
        .half_open_max_wait(Duration::from_millis(300))
        .build()
        .expect("config")
}

async fn redis(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .response_timeout(Duration::from_millis(500))
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

/// The store at `url`: Redis (single or Cluster, by `statecraft::connect`),
/// or PostgreSQL in a table every process of this test binary shares.
async fn store(url: &str) -> Arc<dyn StateBackend> {
    if url.starts_with("redis://") {
        return redis(url).await;
    }
    let options = statecraft::ConnectOptions::new().postgres_table("breaker_processes");
    statecraft::connect_with(url, &options)
        .await
        .expect("the test store accepts connections")
}

/// A child process: `mode|url|name|millis`.
async fn child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let (mode, url, name) = (parts[0], parts[1], parts[2]);
    let millis: u64 = parts[3].parse().expect("millis");
    // Ends the test harness's "test … " line: what follows is ours.
    println!();
    let store = store(url).await;
    match mode {
        // 64 tasks hammer the breaker, failing every call; each probe is
        // printed with its spell.
        "probes" => {
            let breaker = DistributedBreaker::new(store, name, probe_config());
            let until = Instant::now() + Duration::from_millis(millis);
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let breaker = breaker.clone();
                tasks.push(tokio::spawn(async move {
                    let mut probes = Vec::new();
                    while Instant::now() < until {
                        match breaker.acquire().await {
                            Ok(permit) => {
                                if let Some(spell) = permit.spell() {
                                    probes.push(spell);
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                permit.failure().await.expect("record");
                            }
                            Err(rejected) => {
                                let wait =
                                    rejected.retry_after().unwrap_or(Duration::from_millis(5));
                                tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
                            }
                        }
                    }
                    probes
                }));
            }
            for task in tasks {
                for spell in task.await.expect("task") {
                    println!("probe {spell}");
                }
            }
        }
        // 25 new instances each ask once while the breaker is open.
        "instances" => {
            for _ in 0..25 {
                let breaker = DistributedBreaker::new(store.clone(), name, probe_config());
                match breaker.acquire().await {
                    Ok(permit) => {
                        println!("admitted");
                        permit.ignore().await.expect("record");
                    }
                    Err(_) => println!("rejected"),
                };
            }
        }
        other => panic!("unknown child mode {other}"),
    }
    println!("done");
}

/// Runs `processes` children of `test` in `mode` and returns their lines.
fn children(test: &str, processes: usize, spec: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary");
    let spawned: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", test, "--nocapture", "--test-threads", "1"])
                .env(CHILD, spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a child process")
        })
        .collect();
    let mut lines = Vec::new();
    for mut process in spawned {
        let stdout = process.stdout.take().expect("stdout");
        let mine: Vec<String> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect();
        assert!(process.wait().expect("reap").success(), "a child failed");
        assert!(
            mine.iter().any(|l| l == "done"),
            "a child did not finish: {mine:?}"
        );
        lines.extend(mine);
    }
    lines
}

fn unique(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}-{}-{n}-{nanos}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stay_limited_across_processes() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    probes_stay_limited(
        "probes_stay_limited_across_processes",
        &RedisServer::shared().url(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stay_limited_across_processes_on_postgres() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    probes_stay_limited(
        "probes_stay_limited_across_processes_on_postgres",
        &PostgresServer::shared().url(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stay_limited_across_processes_on_redis_cluster() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    probes_stay_limited(
        "probes_stay_limited_across_processes_on_redis_cluster",
        &RedisCluster::shared().url(),
    );
}

/// 4 processes × 64 tasks fail every call for 2.5 s: no half-open spell
/// admits more than its 2 probes.
fn probes_stay_limited(test: &str, url: &str) {
    let name = unique("probes");
    let lines = children(test, 4, &format!("probes|{url}|{name}|2500"));
    let mut spells: HashMap<u64, u32> = HashMap::new();
    for line in &lines {
        if let Some(spell) = line.strip_prefix("probe ") {
            *spells.entry(spell.parse().expect("a spell")).or_default() += 1;
        }
    }
    let most = spells.values().max().copied().unwrap_or(0);
    println!(
        "{} half-open spells, at most {most} probes in one: {spells:?}",
        spells.len()
    );
    assert!(
        spells.len() >= 3,
        "the breaker went half-open a few times: {spells:?}"
    );
    assert!(
        most <= 2,
        "a spell admitted {most} probes (limit 2): {spells:?}"
    );
    assert_eq!(most, 2, "256 tasks fill a spell's two probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_created_while_open_never_reset_it() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let url = RedisServer::shared().url();
    let name = unique("instances");
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let breaker = DistributedBreaker::new(redis(&url).await, name.as_str(), config);
    breaker
        .acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    let opened = breaker.state().await.expect("state").expect("written");
    assert_eq!(opened.phase, Phase::Open);
    let lines = children(
        "instances_created_while_open_never_reset_it",
        4,
        &format!("instances|{url}|{name}|0"),
    );
    let rejected = lines.iter().filter(|l| *l == "rejected").count();
    assert_eq!(rejected, 100, "every new instance was rejected: {lines:?}");
    let after = breaker.state().await.expect("state").expect("still there");
    assert_eq!(after, opened, "100 new instances changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_is_a_fresh_closed_breaker() {
    let store = redis(&RedisServer::shared().url()).await;
    let breaker = DistributedBreaker::new(store.clone(), unique("deleted"), probe_config());
    let hammer = {
        let breaker = breaker.clone();
        tokio::spawn(async move {
            let (mut permits, mut rejections) = (0u32, 0u32);
            for _ in 0..2_000 {
                match breaker.acquire().await {
                    Ok(permit) => {
                        permits += 1;
                        permit.failure().await.expect("record");
                    }
                    Err(_) => rejections += 1,
                }
            }
            (permits, rejections)
        })
    };
    for _ in 0..50 {
        store.delete(breaker.key()).await.expect("delete");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (permits, rejections) = hammer.await.expect("no panic");
    assert!(
        permits > 1 && rejections > 0,
        "{permits} permits, {rejections} rejections"
    );
    store.delete(breaker.key()).await.expect("delete");
    assert_eq!(breaker.state().await.expect("state"), None);
    let permit = breaker
        .acquire()
        .await
        .expect("a deleted breaker is closed");
    assert!(!permit.is_probe());
    permit.success().await.expect("record");
    // One at a time: open for a minute, its key deleted, closed at once.
    let sticky_config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let sticky = DistributedBreaker::new(store.clone(), unique("sticky"), sticky_config);
    for _ in 0..5 {
        sticky
            .acquire()
            .await
            .expect("closed")
            .failure()
            .await
            .expect("record");
        assert!(sticky.acquire().await.is_err(), "open for a minute");
        assert!(store.delete(sticky.key()).await.expect("delete"));
        let permit = sticky.acquire().await.expect("its key gone: closed");
        assert!(!permit.is_probe());
        permit.ignore().await.expect("record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_fails_open_or_closed_within_the_timeout() {
    let mut server = RedisServer::start();
    // The client would wait 5 s: only the breaker's 300 ms timeout bounds
    // the answer.
    let config = RedisConfig::builder()
        .url(server.url())
        .response_timeout(Duration::from_secs(5))
        .build()
        .expect("config");
    let store: Arc<dyn StateBackend> = Arc::new(RedisBackend::new(config).await.expect("redis"));
    let name = unique("killed");
    let open = DistributedBreaker::new(store.clone(), name.as_str(), probe_config())
        .timeout(Duration::from_millis(300));
    let closed = open.clone().store_down(StoreDown::FailClosed);
    open.acquire()
        .await
        .expect("closed")
        .success()
        .await
        .expect("record");
    // Frozen (a hung server: only the timeout answers), then killed.
    server.pause();
    let check = |what: &'static str| {
        let (open, closed) = (open.clone(), closed.clone());
        async move {
            for _ in 0..2 {
                let started = Instant::now();
                let permit = open.acquire().await.expect("fails open");
                assert!(!permit.is_counted());
                permit
                    .success()
                    .await
                    .expect("an uncounted permit records nothing");
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(1),
                    "{what}: failing open took {took:?}"
                );
                let started = Instant::now();
                let rejected = closed.acquire().await.expect_err("fails closed");
                assert_eq!(rejected.retry_after(), None);
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(1),
                    "{what}: failing closed took {took:?}"
                );
            }
        }
    };
    check("paused").await;
    server.resume();
    server.kill();
    check("killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_events_see_what_this_instances_steps_do() {
    use statecraft::breaker::{BreakerEvent, Transition};
    let url = RedisServer::shared().url();
    let name = unique("hooks");
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(60))
        .build()
        .expect("config");
    let a = DistributedBreaker::new(redis(&url).await, name.as_str(), config.clone());
    let b = DistributedBreaker::new(redis(&url).await, name.as_str(), config);
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let opened = opened.clone();
        a.on_open(move || {
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let (mut a_events, mut b_events) = (a.events(), b.events());
    a.acquire()
        .await
        .expect("closed")
        .failure()
        .await
        .expect("record");
    assert_eq!(opened.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        a_events.try_recv().ok(),
        Some(BreakerEvent::Transition {
            breaker: Arc::from(name.as_str()),
            transition: Transition {
                from: Phase::Closed,
                to: Phase::Open
            }
        })
    );
    assert!(b.acquire().await.is_err());
    match b_events.try_recv() {
        Ok(BreakerEvent::Rejected {
            retry_after: Some(after),
            ..
        }) => assert!(after > Duration::from_secs(50), "{after:?}"),
        other => panic!("{other:?}"),
    }
    assert!(a_events.try_recv().is_err(), "a saw nothing of b's ask");
    a.reset().await.expect("reset");
}
