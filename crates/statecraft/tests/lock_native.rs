//! The lock's Lua copies (`src/lock/lock.lua`, `src/lock/fenced.lua`,
//! `src/lock/permits.lua`) against the Rust steps, on a real Redis (single node and Cluster)
//! started by the test support: random operation sequences by a few
//! owners at a clock the test sets, through Redis's native path and
//! through the memory backend's (which runs the Rust step under the key's
//! lock). Every answer and every stored state must be the same, and every
//! key the lock writes has a TTL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use statecraft::lock::{
    fenced_put, op_input, parse_answer, semaphore_input, Fenced, FencedWrite, LockAnswer, LockOp,
    LockStep, Locks, Owner, Semaphore, SemaphoreOp, SemaphoreStep, PEEK,
};
use statecraft::{
    ErrorKind, MemoryBackend, Namespaced, PostgresBackend, PostgresConfig, RedisBackend,
    RedisConfig, StateBackend,
};
use statecraft_testkit::{PostgresServer, RedisCluster, RedisServer};

fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Around now in µs.
const EPOCH: u64 = 1_764_000_000_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn redis_at(url: &str, functions: bool) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(unique("lock_diff") + ":")
        .server_functions(functions)
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

/// A generated step: an op by one of three owners (with the token it last
/// held, or a wrong one), and how far the clock moves first; now and then
/// a damaged state is stored first.
#[derive(Debug, Clone)]
enum Step {
    Acquire(u8, u64),
    Wait(u8, u64, u64),
    Leave(u8),
    Extend(u8, bool, u64),
    Release(u8, bool),
    Damage(usize),
}

/// Texts the step does not write, stored by [`Step::Damage`]: among them
/// ones with no line, as the uncontended paths of the Lua copy read them
/// (a figure of 17 digits, an owner of 31 hex digits or in capitals,
/// holding still or with a token past the clock).
const DAMAGED: [&[u8]; 9] = [
    b"h zz 1 2",
    b"f 5 0123456789abcdef0123456789abcdef",
    b"f 5 0123456789abcdef0123456789abcdeg 9",
    b"f 12345678901234567",
    b"h 0123456789abcdef0123456789abcde 1 4000000000000000",
    b"h 01010101010101010101010101010101 12345678901234567 2",
    b"h 0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A 1 4000000000000000",
    b"h 0123456789abcdef0123456789abcde 4000000000000000 2",
    b"h 0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A 4000000000000000 2",
];

fn steps() -> impl Strategy<Value = Vec<(Step, u64)>> {
    let who = 0u8..3;
    let lease = prop_oneof![1u64..5_000, 1_000_000u64..5_000_000];
    let line = prop_oneof![1u64..5_000, 1_000_000u64..5_000_000];
    let step = prop_oneof![
        3 => (who.clone(), lease.clone()).prop_map(|(w, l)| Step::Acquire(w, l)),
        3 => (who.clone(), lease.clone(), line).prop_map(|(w, l, q)| Step::Wait(w, l, q)),
        1 => who.clone().prop_map(Step::Leave),
        2 => (who.clone(), any::<bool>(), lease).prop_map(|(w, t, l)| Step::Extend(w, t, l)),
        2 => (who, any::<bool>()).prop_map(|(w, t)| Step::Release(w, t)),
        1 => (0..DAMAGED.len()).prop_map(Step::Damage),
    ];
    // No time between two steps now and then: a token then has to rise
    // past the last one, not to the clock.
    let dt = prop_oneof![2 => Just(0u64), 3 => 0u64..3_000, 3 => 0u64..3_000_000];
    prop::collection::vec((step, dt), 1..40)
}

type Seen = Vec<(Result<String, ErrorKind>, Option<bytes::Bytes>)>;

/// What is seen of the lock's state after a step: the stored text, or
/// (`peek`: a store that keeps it in a table of its own) the state a
/// [`PEEK`] answers.
async fn run(store: &dyn StateBackend, steps: &[(Step, u64)], peek: bool) -> Seen {
    let key = b"lock:diff";
    let mut now = EPOCH;
    let mut tokens = [0u64; 64];
    let mut seen = Vec::new();
    for (step, dt) in steps {
        now += dt;
        let owner = |w: u8| Owner([w + 1; 16]);
        let op = match *step {
            Step::Acquire(w, lease_us) => LockOp::Acquire {
                owner: owner(w),
                lease_us,
            },
            Step::Wait(w, lease_us, line_us) => LockOp::Wait {
                owner: owner(w),
                lease_us,
                line_us,
            },
            Step::Leave(w) => LockOp::Leave { owner: owner(w) },
            Step::Extend(w, right, lease_us) => LockOp::Extend {
                owner: owner(w),
                token: tokens[w as usize] + u64::from(!right),
                lease_us,
            },
            Step::Release(w, right) => LockOp::Release {
                owner: owner(w),
                token: tokens[w as usize] + u64::from(!right),
            },
            // A table's typed columns hold no damaged state.
            Step::Damage(_) if peek => continue,
            Step::Damage(text) => {
                store
                    .put_with(
                        key,
                        bytes::Bytes::from_static(DAMAGED[text]),
                        statecraft::PutOptions::new().ttl(Duration::from_secs(60)),
                    )
                    .await
                    .expect("put");
                continue;
            }
        };
        let answer = store
            .update_atomic(key, &LockStep, op_input(op, now).as_bytes())
            .await
            .map(|raw| String::from_utf8_lossy(&raw).into_owned())
            .map_err(|err| err.kind());
        if let (Ok(text), LockOp::Acquire { owner, .. } | LockOp::Wait { owner, .. }) =
            (&answer, op)
        {
            if let Ok(LockAnswer::Held { token, .. }) = parse_answer(text.as_bytes()) {
                tokens[owner.0[0] as usize - 1] = token;
            }
        }
        if peek {
            let raw = store
                .update_atomic(key, &LockStep, PEEK)
                .await
                .expect("peek");
            let state = raw.splitn(2, |b| *b == b' ').nth(1).unwrap_or_default();
            let state = (!state.is_empty()).then(|| bytes::Bytes::copy_from_slice(state));
            seen.push((answer, state));
            continue;
        }
        seen.push((answer, store.get(key).await.expect("get")));
        let ttl = store.ttl(key).await.expect("ttl");
        assert!(
            !matches!(ttl, statecraft::KeyTtl::Persistent),
            "a lock key without a TTL after {step:?}"
        );
    }
    seen
}

/// The PostgreSQL backend the differential tests share (its table set up
/// by the first step), and a key of its own for each case.
async fn postgres() -> Namespaced<PostgresBackend> {
    postgres_under(unique("case") + ":").await
}

/// A backend of its own (its own connections) on the shared table, under
/// `prefix`.
async fn postgres_under(prefix: String) -> Namespaced<PostgresBackend> {
    let config = PostgresConfig::builder()
        .url(PostgresServer::shared().url())
        .table("lock_diff")
        .build()
        .expect("config");
    let backend = PostgresBackend::new(config).await.expect("postgres");
    Namespaced::new(backend, prefix)
}

fn differential(steps: &[(Step, u64)], functions: bool) -> (Seen, Seen) {
    runtime().block_on(async {
        let redis = redis_at(&RedisServer::shared().url(), functions).await;
        let native = run(&redis, steps, false).await;
        redis.clear().await.expect("clear");
        (native, run(&MemoryBackend::new(), steps, false).await)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_lua_lock_step_decides_as_the_rust_step(steps in steps()) {
        let (native, reference) = differential(&steps, true);
        prop_assert_eq!(native, reference);
    }

    #[test]
    fn the_postgres_lock_step_decides_as_the_rust_step(steps in steps()) {
        let (native, reference) = runtime().block_on(async {
            let native = run(&postgres().await, &steps, true).await;
            (native, run(&MemoryBackend::new(), &steps, true).await)
        });
        prop_assert_eq!(native, reference);
    }

    #[test]
    fn the_lua_and_postgres_fenced_writes_decide_as_the_rust_step(
        writes in prop::collection::vec((0u64..20, prop::collection::vec(any::<u8>(), 0..12)), 1..30),
        stored in prop::option::of(prop_oneof![
            Just(&b"not fenced"[..]),
            Just(&b"007 x"[..]),
            Just(&b"5 "[..]),
            Just(&b"9999999999999999 sixteen digits"[..]),
            Just(&b"99999999999999999 seventeen"[..]),
            Just(&b"1\xff3 high"[..]),
            Just(&b"1\x003 nul"[..]),
        ]),
    ) {
        let (native, on_postgres, reference) = runtime().block_on(async {
            let redis = redis_at(&RedisServer::shared().url(), true).await;
            let postgres = postgres().await;
            let memory = MemoryBackend::new();
            let mut seen = [Vec::new(), Vec::new(), Vec::new()];
            let stores = [&redis as &dyn StateBackend, &postgres, &memory];
            for (n, store) in stores.into_iter().enumerate() {
                if let Some(stored) = stored {
                    // Put with a TTL: a fenced write keeps its value for good.
                    store
                        .put_with(b"r", bytes::Bytes::from_static(stored), statecraft::PutOptions::new().ttl(Duration::from_secs(60)))
                        .await
                        .expect("put");
                }
                for (token, value) in &writes {
                    let answer = fenced_put(store, b"r", *token, value).await.map_err(|e| e.kind());
                    let kept = matches!(store.ttl(b"r").await.expect("ttl"), statecraft::KeyTtl::Persistent);
                    seen[n].push((answer, store.get(b"r").await.expect("get"), kept));
                }
            }
            redis.clear().await.expect("clear");
            postgres.clear().await.expect("clear");
            let [native, on_postgres, reference] = seen;
            (native, on_postgres, reference)
        });
        prop_assert_eq!(&native, &reference);
        prop_assert_eq!(on_postgres, reference);
    }
}

/// A generated semaphore step: an op by one of five owners (asking with
/// 1 to 3 permits: processes may disagree), and how far the clock moves
/// first; now and then a damaged or doubled state is stored first.
#[derive(Debug, Clone)]
enum PermitStep {
    Acquire(u8, u64, u64),
    Wait(u8, u64, u64, u64),
    Leave(u8),
    Extend(u8, u64),
    Release(u8),
    Store(&'static str),
}

fn permit_steps() -> impl Strategy<Value = Vec<(PermitStep, u64)>> {
    let who = 0u8..5;
    let lease = prop_oneof![1u64..5_000, 1_000_000u64..5_000_000];
    let step = prop_oneof![
        5 => (who.clone(), 1u64..4, lease.clone()).prop_map(|(w, p, l)| PermitStep::Acquire(w, p, l)),
        4 => (who.clone(), 1u64..4, lease.clone(), lease.clone())
            .prop_map(|(w, p, l, line)| PermitStep::Wait(w, p, l, line)),
        1 => who.clone().prop_map(PermitStep::Leave),
        2 => (who.clone(), lease).prop_map(|(w, l)| PermitStep::Extend(w, l)),
        3 => who.prop_map(PermitStep::Release),
        1 => prop_oneof![
            Just("m zz 1"),
            Just("h 01010101010101010101010101010101 1 2"),
            // The first owner twice: its first entry is the one that counts.
            Just("m 01010101010101010101010101010101 1764000009000000 01010101010101010101010101010101 1764000001000000"),
            // A line with no holder, a waiter twice, a line left empty.
            Just("m w 02020202020202020202020202020202 1764000009000000 03030303030303030303030303030303 1764000002000000"),
            Just("m 01010101010101010101010101010101 1764000009000000 w 02020202020202020202020202020202 1764000009000000 02020202020202020202020202020202 1764000001000000"),
            Just("m 01010101010101010101010101010101 1764000009000000 w"),
        ].prop_map(PermitStep::Store),
    ];
    let dt = prop_oneof![2 => Just(0u64), 3 => 0u64..3_000, 3 => 0u64..3_000_000];
    prop::collection::vec((step, dt), 1..40)
}

async fn run_permits(store: &dyn StateBackend, steps: &[(PermitStep, u64)], peek: bool) -> Seen {
    let key = b"semaphore:diff";
    let mut now = EPOCH;
    let mut seen = Vec::new();
    for (step, dt) in steps {
        now += dt;
        let owner = |w: u8| Owner([w + 1; 16]);
        let op = match *step {
            PermitStep::Acquire(w, permits, lease_us) => SemaphoreOp::Acquire {
                owner: owner(w),
                permits,
                lease_us,
            },
            PermitStep::Wait(w, permits, lease_us, line_us) => SemaphoreOp::Wait {
                owner: owner(w),
                permits,
                lease_us,
                line_us,
            },
            PermitStep::Leave(w) => SemaphoreOp::Leave { owner: owner(w) },
            PermitStep::Extend(w, lease_us) => SemaphoreOp::Extend {
                owner: owner(w),
                lease_us,
            },
            PermitStep::Release(w) => SemaphoreOp::Release { owner: owner(w) },
            // A table's typed columns hold no damaged state.
            PermitStep::Store(_) if peek => continue,
            PermitStep::Store(text) => {
                store
                    .put_with(
                        key,
                        bytes::Bytes::from_static(text.as_bytes()),
                        statecraft::PutOptions::new().ttl(Duration::from_secs(60)),
                    )
                    .await
                    .expect("put");
                continue;
            }
        };
        let answer = store
            .update_atomic(key, &SemaphoreStep, semaphore_input(op, now).as_bytes())
            .await
            .map(|raw| String::from_utf8_lossy(&raw).into_owned())
            .map_err(|err| err.kind());
        if peek {
            let raw = store
                .update_atomic(key, &SemaphoreStep, PEEK)
                .await
                .expect("peek");
            let state = raw.splitn(2, |b| *b == b' ').nth(1).unwrap_or_default();
            let state = (!state.is_empty()).then(|| bytes::Bytes::copy_from_slice(state));
            seen.push((answer, state));
            continue;
        }
        seen.push((answer, store.get(key).await.expect("get")));
        let ttl = store.ttl(key).await.expect("ttl");
        assert!(
            !matches!(ttl, statecraft::KeyTtl::Persistent),
            "a semaphore key without a TTL after {step:?}"
        );
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn the_lua_semaphore_step_decides_as_the_rust_step(steps in permit_steps()) {
        let (native, reference) = runtime().block_on(async {
            let redis = redis_at(&RedisServer::shared().url(), true).await;
            let native = run_permits(&redis, &steps, false).await;
            redis.clear().await.expect("clear");
            (native, run_permits(&MemoryBackend::new(), &steps, false).await)
        });
        prop_assert_eq!(native, reference);
    }

    #[test]
    fn the_postgres_semaphore_step_decides_as_the_rust_step(steps in permit_steps()) {
        let (native, reference) = runtime().block_on(async {
            let native = run_permits(&postgres().await, &steps, true).await;
            (native, run_permits(&MemoryBackend::new(), &steps, true).await)
        });
        prop_assert_eq!(native, reference);
    }

    #[test]
    fn the_lua_semaphore_peek_answers_as_the_rust_step(steps in permit_steps()) {
        let (native, reference) = runtime().block_on(async {
            let redis = redis_at(&RedisServer::shared().url(), true).await;
            let native = run_permits(&redis, &steps, true).await;
            redis.clear().await.expect("clear");
            (native, run_permits(&MemoryBackend::new(), &steps, true).await)
        });
        prop_assert_eq!(native, reference);
    }
}

#[test]
fn the_step_by_evalsha_decides_as_the_rust_step() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
    runner
        .run(&steps(), |steps| {
            let (native, reference) = differential(&steps, false);
            prop_assert_eq!(native, reference);
            Ok(())
        })
        .expect("the EVALSHA copy agrees");
}

/// A line filled past its end, then emptied by leaves and a release, on
/// every path: the copies agree where random steps rarely reach.
#[test]
fn a_full_line_decides_alike_on_every_path() {
    let mut steps = vec![(Step::Acquire(40, 30_000_000), 0)];
    for w in 0..34 {
        steps.push((Step::Wait(w, 1_000_000, 20_000_000), 10));
    }
    // Asked again: early (kept as it is) and late (its place renewed).
    steps.push((Step::Wait(5, 1_000_000, 20_000_000), 1_000));
    steps.push((Step::Wait(6, 1_000_000, 20_000_000), 12_000_000));
    steps.push((Step::Leave(0), 10));
    steps.push((Step::Leave(40), 10));
    steps.push((Step::Leave(1), 10));
    steps.push((Step::Wait(33, 1_000_000, 20_000_000), 10));
    steps.push((Step::Acquire(2, 1_000_000), 10));
    steps.push((Step::Wait(2, 1_000_000, 20_000_000), 10));
    steps.push((Step::Release(2, true), 10));
    let (native, reference) = differential(&steps, true);
    assert_eq!(native, reference);
    let (native, reference) = runtime().block_on(async {
        let native = run(&postgres().await, &steps, true).await;
        (native, run(&MemoryBackend::new(), &steps, true).await)
    });
    assert_eq!(native, reference);
    // The holder's leave gave the lock back, naming the next waiter.
    let named = |a: &Result<String, ErrorKind>| matches!(a, Ok(t) if t.starts_with("R ") && t.split(' ').count() == 3);
    assert!(reference.iter().any(|(a, _)| named(a)), "{reference:?}");
}

/// A semaphore's line filled past its 32 places, asked again early and
/// late, left by a waiter and by the holder (whose permit goes to the
/// first waiter), and a try turned away by the line: alike on every path.
#[test]
fn a_full_semaphore_line_decides_alike_on_every_path() {
    let mut steps = vec![(PermitStep::Acquire(40, 1, 30_000_000), 0)];
    for w in 0..34 {
        steps.push((PermitStep::Wait(w, 1, 1_000_000, 20_000_000), 10));
    }
    // Asked again: early (kept as it is) and late (its place renewed).
    steps.push((PermitStep::Wait(5, 1, 1_000_000, 20_000_000), 1_000));
    steps.push((PermitStep::Wait(6, 1, 1_000_000, 20_000_000), 12_000_000));
    steps.push((PermitStep::Leave(0), 10));
    steps.push((PermitStep::Leave(40), 10));
    // Free now, but kept for the line: the last in it and one outside it
    // are turned away, its first takes it.
    steps.push((PermitStep::Wait(33, 1, 1_000_000, 20_000_000), 10));
    steps.push((PermitStep::Acquire(39, 1, 1_000_000), 10));
    steps.push((PermitStep::Wait(1, 1, 1_000_000, 20_000_000), 10));
    steps.push((PermitStep::Release(1), 10));
    let (native, reference) = runtime().block_on(async {
        let redis = redis_at(&RedisServer::shared().url(), true).await;
        let native = run_permits(&redis, &steps, false).await;
        redis.clear().await.expect("clear");
        (
            native,
            run_permits(&MemoryBackend::new(), &steps, false).await,
        )
    });
    assert_eq!(native, reference);
    let (native, reference) = runtime().block_on(async {
        let native = run_permits(&postgres().await, &steps, true).await;
        (
            native,
            run_permits(&MemoryBackend::new(), &steps, true).await,
        )
    });
    assert_eq!(native, reference);
    // The line's first took the permit the holder's leave gave back.
    let answers: Vec<&str> = reference
        .iter()
        .map(|(answer, _)| answer.as_deref().unwrap_or("error"))
        .collect();
    let n = answers.len();
    assert!(
        answers[n - 4].starts_with("B "),
        "the last in line: {answers:?}"
    );
    assert!(answers[n - 3].starts_with("B "), "one outside: {answers:?}");
    assert!(answers[n - 2].starts_with("H 1 "), "the first: {answers:?}");
    assert_eq!(answers[n - 1], "R 0");
}

#[tokio::test]
async fn bad_input_is_a_typed_error_on_both_paths() {
    let redis = redis_at(&RedisServer::shared().url(), true).await;
    let memory = MemoryBackend::new();
    let owner = "0123456789abcdef0123456789abcdef";
    let inputs = [
        String::new(),
        "nonsense".into(),
        format!("a {owner} 0 0"),
        format!("a {owner} 99999999999999999 0"),
        format!("a {} 10 0", owner.to_uppercase()),
        format!("a  {owner} 10 0"),
        format!("a {owner} 10 0 "),
        format!("e {owner} 1 10"),
        format!("r {owner} x 0"),
        format!("w {owner} 10 0 0"),
        format!("w {owner} 10 99999999999999999 0"),
        format!("w {owner} 0 10 0"),
        format!("w {owner} 10 0"),
        format!("l {owner} 1 0"),
        format!("l {owner}"),
    ];
    let postgres = postgres().await;
    for input in &inputs {
        for store in [&redis as &dyn StateBackend, &memory, &postgres] {
            let err = store
                .update_atomic(b"bad", &LockStep, input.as_bytes())
                .await
                .expect_err("malformed input");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}: {err}");
        }
    }
    for input in [
        &b"5"[..],
        b"x 1",
        b" 1",
        b"12345678901234567 v",
        b"1\xff2 v",
        b"9007199254740992 v",
    ] {
        for store in [&redis as &dyn StateBackend, &memory, &postgres] {
            let err = store
                .update_atomic(b"bad", &FencedWrite, input)
                .await
                .expect_err("malformed input");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}: {err}");
        }
    }
    let inputs = [
        String::new(),
        format!("a {owner} 0 10 0"),
        format!("a {owner} 4097 10 0"),
        format!("a {owner} 2 0 0"),
        format!("a {owner} 2 99999999999999999 0"),
        format!("a {owner} 2 10 99999999999999999"),
        format!("a {} 2 10 0", owner.to_uppercase()),
        format!("a  {owner} 2 10 0"),
        format!("e {owner} 10"),
        format!("r {owner} 1 0"),
        format!("w {owner} 2 10 0"),
        format!("w {owner} 2 10 0 0"),
        format!("w {owner} 0 10 10 0"),
        format!("w {owner} 2 10 99999999999999999 0"),
        format!("l {owner}"),
        format!("l {owner} 1 0"),
    ];
    for input in &inputs {
        for store in [&redis as &dyn StateBackend, &memory, &postgres] {
            let err = store
                .update_atomic(b"bad", &SemaphoreStep, input.as_bytes())
                .await
                .expect_err("malformed input");
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{input:?}: {err}");
        }
    }
    // A peek answers the server's time (near this machine's) and no state.
    let raw = redis
        .update_atomic(b"none", &LockStep, PEEK)
        .await
        .expect("peek");
    let (now, state) = statecraft::lock::parse_peek(&raw).expect("parses");
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    assert!(now.abs_diff(wall) < 5_000_000, "{now} vs {wall}");
    assert_eq!(state, None);
}

#[tokio::test]
async fn locks_work_on_a_redis_cluster() {
    let config = RedisConfig::builder()
        .url(RedisCluster::shared().url())
        .key_prefix(unique("lock_cluster") + ":")
        .build()
        .expect("config");
    let backend: Arc<dyn StateBackend> =
        Arc::new(RedisBackend::new(config).await.expect("cluster"));
    let locks = Locks::new(backend.clone());
    let lease = Duration::from_secs(5);
    let mut last = 0;
    for n in 0..24 {
        let name = format!("cluster-{n}");
        let guard = locks
            .try_lock(&name, lease)
            .await
            .expect("store")
            .expect("free");
        assert!(locks.try_lock(&name, lease).await.expect("store").is_none());
        assert!(guard.token() > 0);
        let written = fenced_put(&*backend, name.as_bytes(), guard.token(), b"v")
            .await
            .expect("store");
        assert_eq!(written, Fenced::Written);
        let stale = fenced_put(&*backend, name.as_bytes(), guard.token() - 1, b"old")
            .await
            .expect("store");
        assert_eq!(
            stale,
            Fenced::Stale {
                highest: guard.token()
            }
        );
        last = last.max(guard.token());
        guard.unlock().await.expect("held");
        let again = locks
            .try_lock(&name, lease)
            .await
            .expect("store")
            .expect("free");
        assert!(again.token() > last);
        again.unlock().await.expect("held");
    }
    // Semaphores too, each on its own slot.
    for n in 0..8 {
        let semaphore = Semaphore::new(backend.clone(), &format!("cluster-{n}"), 2).expect("new");
        let a = semaphore
            .try_acquire(lease)
            .await
            .expect("store")
            .expect("free");
        let b = semaphore
            .try_acquire(lease)
            .await
            .expect("store")
            .expect("free");
        assert!(semaphore.try_acquire(lease).await.expect("store").is_none());
        a.release().await.expect("held");
        let c = semaphore
            .try_acquire(lease)
            .await
            .expect("store")
            .expect("free");
        b.release().await.expect("held");
        c.release().await.expect("held");
    }
}

/// Two acquisitions (by two backends) of a lock whose row has expired
/// and was not purged yet, waiting together for its row lock: the first
/// takes it over, the second finds it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_row_taken_over_by_two_at_once_has_one_holder_on_postgres() {
    let url = PostgresServer::shared().url();
    // Two backends (as two processes): calls of one backend on one key
    // wait for each other before they reach the server.
    let prefix = unique("expired") + ":";
    let stores = [
        Arc::new(postgres_under(prefix.clone()).await),
        Arc::new(postgres_under(prefix).await),
    ];
    let store = stores[0].clone();
    let owner = |n: u8| Owner([n; 16]);
    let acquire = |n: u8| {
        op_input(
            LockOp::Acquire {
                owner: owner(n),
                lease_us: 60_000_000,
            },
            0,
        )
    };
    store
        .update_atomic(b"lock:x", &LockStep, acquire(1).as_bytes())
        .await
        .expect("acquire");
    let (mut operator, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    // The row's key: the namespace's prefix, then the lock's key.
    let row: (Vec<u8>,) = {
        let found = operator
            .query_one(
                "SELECT key FROM lock_diff_locks WHERE key LIKE '%lock:x' \
                 ORDER BY updated_at DESC LIMIT 1",
                &[],
            )
            .await
            .expect("the row");
        (found.get(0),)
    };
    operator
        .execute(
            "UPDATE lock_diff_locks SET expires_at = clock_timestamp() - interval '1 second' \
             WHERE key = $1",
            &[&row.0],
        )
        .await
        .expect("expire the row");
    let tx = operator.transaction().await.expect("begin");
    tx.execute(
        "SELECT 1 FROM lock_diff_locks WHERE key = $1 FOR UPDATE",
        &[&row.0],
    )
    .await
    .expect("lock the row");
    let asks: Vec<_> = [2u8, 3]
        .into_iter()
        .map(|n| {
            let (store, input) = (stores[usize::from(n) - 2].clone(), acquire(n));
            tokio::spawn(async move {
                let raw = store
                    .update_atomic(b"lock:x", &LockStep, input.as_bytes())
                    .await
                    .expect("acquire");
                parse_answer(&raw).expect("an answer")
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.expect("commit");
    let mut answers = Vec::new();
    for ask in asks {
        answers.push(ask.await.expect("task"));
    }
    let held = answers
        .iter()
        .filter(|a| matches!(a, LockAnswer::Held { .. }))
        .count();
    let busy = answers
        .iter()
        .filter(|a| matches!(a, LockAnswer::Busy { .. }))
        .count();
    assert_eq!((held, busy), (1, 1), "{answers:?}");
}

/// A fenced write on PostgreSQL is one statement: the backend counts one
/// write and no read (the compare-and-swap path reads first).
#[tokio::test]
async fn a_postgres_fenced_write_is_one_statement() {
    let store = postgres().await;
    let before = store.stats().await.expect("stats");
    assert_eq!(
        fenced_put(&store, b"one", 7, b"v").await.expect("store"),
        Fenced::Written
    );
    assert_eq!(
        fenced_put(&store, b"one", 6, b"old").await.expect("store"),
        Fenced::Stale { highest: 7 }
    );
    let after = store.stats().await.expect("stats");
    assert_eq!(after.writes - before.writes, 2, "one statement each");
    assert_eq!(
        after.hits + after.misses,
        before.hits + before.misses,
        "no read first"
    );
    assert_eq!(
        statecraft::lock::fenced_get(&store, b"one")
            .await
            .expect("get"),
        Some((7, bytes::Bytes::from_static(b"v")))
    );
}

/// A fenced value larger than the backend's value limit is refused with a
/// typed error on every path, and nothing is stored.
#[tokio::test]
async fn a_fenced_value_over_the_limit_is_refused() {
    let limits = statecraft::Limits::new(256, 64);
    let redis = RedisBackend::new(
        RedisConfig::builder()
            .url(RedisServer::shared().url())
            .key_prefix(unique("fenced_limit") + ":")
            .limits(limits)
            .build()
            .expect("config"),
    )
    .await
    .expect("redis");
    let postgres = Namespaced::new(
        PostgresBackend::new(
            PostgresConfig::builder()
                .url(PostgresServer::shared().url())
                .table("lock_diff")
                .limits(limits)
                .build()
                .expect("config"),
        )
        .await
        .expect("postgres"),
        unique("fenced_limit") + ":",
    );
    let memory = MemoryBackend::builder().limits(limits).build();
    for store in [&redis as &dyn StateBackend, &postgres, &memory] {
        let fits = fenced_put(store, b"v", 1, &[b'x'; 62]).await.expect("fits");
        assert_eq!(fits, Fenced::Written, "{}", store.name());
        let err = fenced_put(store, b"v", 2, &[b'x'; 63])
            .await
            .expect_err("over the limit");
        assert_eq!(
            err.kind(),
            ErrorKind::ValueTooLarge,
            "{}: {err}",
            store.name()
        );
        let (token, _) = statecraft::lock::fenced_get(store, b"v")
            .await
            .expect("get")
            .expect("the first value");
        assert_eq!(token, 1, "{}", store.name());
    }
}

/// A semaphores table an older version made, without the line's columns,
/// gets them at set-up, and a waiter stands in line on it.
#[tokio::test]
async fn an_older_semaphores_table_gets_the_lines_columns() {
    let table = unique("sem_old");
    let url = PostgresServer::shared().url();
    let (operator, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    operator
        .batch_execute(&format!(
            "CREATE TABLE \"{table}_semaphores\" (key bytea PRIMARY KEY, owners text[] NOT NULL, \
             held_until timestamptz[] NOT NULL, updated_at timestamptz NOT NULL, \
             expires_at timestamptz NOT NULL)"
        ))
        .await
        .expect("the old table");
    let config = PostgresConfig::builder()
        .url(url)
        .table(table.clone())
        .build()
        .expect("config");
    let backend = PostgresBackend::new(config).await.expect("postgres");
    let holder = Owner([1; 16]);
    let waiter = Owner([2; 16]);
    let ask = |owner, wait: bool| {
        let op = if wait {
            SemaphoreOp::Wait {
                owner,
                permits: 1,
                lease_us: 60_000_000,
                line_us: 60_000_000,
            }
        } else {
            SemaphoreOp::Acquire {
                owner,
                permits: 1,
                lease_us: 60_000_000,
            }
        };
        semaphore_input(op, 0)
    };
    let held = backend
        .update_atomic(b"s", &SemaphoreStep, ask(holder, false).as_bytes())
        .await
        .expect("step");
    assert!(held.starts_with(b"H 1 "), "{held:?}");
    let busy = backend
        .update_atomic(b"s", &SemaphoreStep, ask(waiter, true).as_bytes())
        .await
        .expect("step");
    assert!(busy.starts_with(b"B 1 "), "{busy:?}");
    let row = operator
        .query_one(
            &format!("SELECT waiters FROM \"{table}_semaphores\" WHERE key = $1"),
            &[&&b"s"[..]],
        )
        .await
        .expect("the row");
    let waiters: Vec<String> = row.get(0);
    assert_eq!(waiters, vec![waiter.to_hex()]);
}
