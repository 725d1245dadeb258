//! Locks under faults of real servers started by the test support: a
//! Redlock over three Redis servers holds with one down and not with two,
//! and over three test stores, one slow, holds and releases without
//! waiting for the slow one, whose late grant joins the holding or is
//! given back;
//! tokens rise across a Redis restarted without persistence, so a stale
//! holder's fenced write (to PostgreSQL) is refused; a watchdog's renewal
//! goes on across a reconnect through the fault proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use statecraft::lock::{fenced_put, Fenced, LockConfig, Locks, Redlock};
use statecraft::{
    ErrorKind, PostgresBackend, PostgresConfig, RedisBackend, RedisConfig, StateBackend,
};
use statecraft_testkit::{Fault, FaultProxy, PostgresServer, RedisServer, Switch};

async fn redis(url: &str) -> Arc<dyn StateBackend> {
    let config = RedisConfig::builder()
        .url(url)
        .response_timeout(Duration::from_millis(300))
        .build()
        .expect("config");
    Arc::new(RedisBackend::new(config).await.expect("redis"))
}

fn quick() -> LockConfig {
    let mut config = LockConfig::default();
    config.timeout = Duration::from_millis(300);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_holds_with_one_of_three_servers_down_and_not_with_two() {
    let mut servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let mut backends = Vec::new();
    for server in &servers {
        backends.push(redis(&server.url()).await);
    }
    let redlock = Redlock::with_config(backends.clone(), quick()).expect("redlock");
    let other = Redlock::with_config(backends.clone(), quick()).expect("redlock");
    assert_eq!(redlock.quorum(), 2);
    let lease = Duration::from_secs(10);

    let guard = redlock
        .try_lock("r", lease)
        .await
        .expect("store")
        .expect("free");
    assert!(other.try_lock("r", lease).await.expect("store").is_none());
    guard.unlock().await.expect("held");

    servers[0].kill();
    let guard = redlock
        .try_lock("r", lease)
        .await
        .expect("store")
        .expect("two of three grant it");
    assert!(other.try_lock("r", lease).await.expect("store").is_none());
    assert!(guard.remaining() > Duration::from_secs(9));
    guard.unlock().await.expect("a majority released it");

    servers[1].kill();
    assert!(
        redlock.try_lock("r", lease).await.expect("store").is_none(),
        "held with one server of three"
    );
    // What the last server granted was given back at once.
    let last = Locks::new(backends[2].clone());
    assert_eq!(last.holder("r").await.expect("peek"), None);
    let err = redlock
        .lock("r", lease, Duration::from_millis(500))
        .await
        .expect_err("not with two down");
    assert_eq!(err.kind(), ErrorKind::Timeout);

    // A server back (empty, as after a restart without persistence) makes
    // a majority again.
    servers[1].restart();
    let guard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Some(guard)) = redlock.try_lock("r", lease).await {
                break guard;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("held again with two of three");
    guard.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rise_across_a_redis_restart_and_fence_a_stale_holder() {
    let mut server = RedisServer::start();
    let store = redis(&server.url()).await;
    let locks = Locks::with_config(store, quick());
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table("lock_faults")
        .build()
        .expect("config");
    let resources = PostgresBackend::new(config).await.expect("postgres");
    let resource = format!("report-{}", std::process::id());
    let lease = Duration::from_secs(30);

    let mut tokens = Vec::new();
    for _ in 0..5 {
        let guard = locks
            .try_lock("job", lease)
            .await
            .expect("store")
            .expect("free");
        tokens.push(guard.token());
        guard.unlock().await.expect("held");
    }
    let stale = locks
        .try_lock("job", lease)
        .await
        .expect("store")
        .expect("free");
    let written = fenced_put(&resources, resource.as_bytes(), stale.token(), b"a")
        .await
        .expect("postgres");
    assert_eq!(written, Fenced::Written);

    // The server forgets everything: the stale holding, the last token.
    server.restart();
    let fresh = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Some(guard)) = locks.try_lock("job", lease).await {
                break guard;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the restarted server grants the lock");
    let before = tokens
        .iter()
        .copied()
        .chain([stale.token()])
        .max()
        .unwrap_or(0);
    assert!(
        fresh.token() > before,
        "token {} after {before}: tokens went backwards across the restart",
        fresh.token()
    );
    assert_eq!(
        fenced_put(&resources, resource.as_bytes(), fresh.token(), b"b")
            .await
            .expect("postgres"),
        Fenced::Written
    );
    // The holder from before the restart is refused, and told.
    assert_eq!(
        fenced_put(&resources, resource.as_bytes(), stale.token(), b"late")
            .await
            .expect("postgres"),
        Fenced::Stale {
            highest: fresh.token()
        }
    );
    let err = stale.extend(lease).await.expect_err("forgotten");
    assert_eq!(err.kind(), ErrorKind::Lost);
    fresh.unlock().await.expect("held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_goes_on_across_a_reconnect_through_the_fault_proxy() {
    let server = RedisServer::start();
    let upstream: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let proxy = FaultProxy::start(upstream);
    let through = redis(&format!("redis://{}", proxy.addr())).await;
    let direct = Locks::new(redis(&server.url()).await);
    let locks = Locks::with_config(through, quick().renewing());
    let lease = Duration::from_millis(3_000);
    let guard = locks
        .try_lock("kept", lease)
        .await
        .expect("store")
        .expect("free");

    // Every connection reset, for a while around the first renewal (at a
    // third of the lease): renewals fail, then reconnect.
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.heal();
    tokio::time::sleep(Duration::from_millis(5_700)).await;

    // Seven seconds on, past two leases: still held, by renewals after the
    // reconnect.
    assert!(
        !guard.is_lost(),
        "the holding was lost across the reconnect"
    );
    let (token, left) = direct.holder("kept").await.expect("peek").expect("held");
    assert_eq!(token, guard.token());
    assert!(left > Duration::from_millis(1_000), "{left:?} left");
    guard.unlock().await.expect("held");
    // And no renewal after the release.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(direct.holder("kept").await.expect("peek"), None);
}

/// Three test stores, the last answering each call after 300 ms (on
/// Tokio's paused clock; a step is a read and a swap, 600 ms in all,
/// within the default 1 s timeout): a Redlock holds on the first two,
/// before the third answers.
fn one_slow() -> (Vec<Switch>, Redlock) {
    let switches: Vec<Switch> = (0..3).map(|_| Switch::new(true)).collect();
    switches[2]
        .latency_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let backends = switches
        .iter()
        .map(|s| Arc::new(s.clone()) as Arc<dyn StateBackend>)
        .collect();
    (switches, Redlock::new(backends).expect("redlock"))
}

/// Who holds "slow" in `switch`'s store, asked directly.
async fn holder_in(switch: &Switch) -> Option<(u64, Duration)> {
    let direct = Locks::new(Arc::new(switch.inner.clone()));
    direct.holder("slow").await.expect("peek")
}

/// Whether `switch`'s store turns to `held` within 10 s (of the paused
/// clock).
async fn turns(switch: &Switch, held: bool) -> bool {
    for _ in 0..100 {
        if holder_in(switch).await.is_some() == held {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(start_paused = true)]
async fn a_redlock_does_not_wait_for_a_slow_server_and_keeps_no_late_grant() {
    let lease = Duration::from_secs(60);

    // Released before the slow server answered: its late grant is given
    // back, not kept for the lease.
    let (switches, redlock) = one_slow();
    let guard = redlock
        .try_lock("slow", lease)
        .await
        .expect("store")
        .expect("two of three grant it");
    assert!(holder_in(&switches[0]).await.is_some());
    assert_eq!(
        holder_in(&switches[2]).await,
        None,
        "the slow one waited for"
    );
    guard.unlock().await.expect("a majority released it");
    assert_eq!(holder_in(&switches[0]).await, None);
    // Its grant comes at 0.6 s, its give-back at 1.2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        holder_in(&switches[2]).await,
        None,
        "a late grant was kept after the release"
    );

    // Answered while held: the late grant joins the holding, and the
    // release reaches it too.
    let (switches, redlock) = one_slow();
    let guard = redlock
        .try_lock("slow", lease)
        .await
        .expect("store")
        .expect("two of three grant it");
    assert!(turns(&switches[2], true).await, "no late grant");
    // Kept (a give-back would have come by 1.2 s), and heard by the
    // holding before its release.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        holder_in(&switches[2]).await.is_some(),
        "the late grant given back"
    );
    guard.unlock().await.expect("a majority released it");
    for (i, switch) in switches.iter().enumerate() {
        assert!(turns(switch, false).await, "still held on server {i}");
    }
}
