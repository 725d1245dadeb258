//! The breaker's Lua copy (`src/breaker/step.lua`) against the Rust state
//! machine: random configurations and event sequences, at a clock the test
//! sets, through Redis's native path and through the memory backend's
//! (which runs the Rust function under the key's lock). Every answer and
//! every stored state must be the same.

#[path = "support/breaker.rs"]
mod breaker;

use breaker::{batch_steps, config, run, steady_steps, steps};
use proptest::prelude::*;
use statecraft::breaker::{step_input, BreakerConfig, BreakerStep, Event};
use statecraft::{ErrorKind, MemoryBackend, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

async fn redis(prefix: &str) -> RedisBackend {
    redis_at(&RedisServer::shared().url(), prefix, true).await
}

/// A backend on `url`; `functions`: whether it loads the step as a Redis
/// Function (else it runs it by EVALSHA, as on Redis before 7).
async fn redis_at(url: &str, prefix: &str, functions: bool) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix(prefix.to_string())
        .server_functions(functions)
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

/// The same run through Redis (as a function, or by EVALSHA) and the
/// memory backend.
type Seen = Vec<(Result<bytes::Bytes, ErrorKind>, Option<bytes::Bytes>)>;

fn differential(
    config: &BreakerConfig,
    steps: &[(breaker::Input, u64, u32)],
    functions: bool,
) -> (Seen, Seen) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("breaker_diff_{}_{n}:", std::process::id());
        let store = redis_at(&RedisServer::shared().url(), &prefix, functions).await;
        let native = run(&store, config, steps).await;
        store.clear().await.expect("clear");
        (native, run(&MemoryBackend::new(), config, steps).await)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn the_lua_step_decides_as_the_rust_step(config in config(), steps in steps()) {
        let (native, reference) = differential(&config, &steps, true);
        prop_assert_eq!(native, reference);
    }

    /// Mostly batches: the one pass over a closed window.
    #[test]
    fn the_lua_batch_pass_decides_as_the_rust_step(config in config(), steps in batch_steps()) {
        let (native, reference) = differential(&config, &steps, true);
        prop_assert_eq!(native, reference);
    }

    /// Mostly plain successes: the function's memo of unchanged states.
    #[test]
    fn the_lua_steps_memo_decides_as_the_rust_step(config in config(), steps in steady_steps()) {
        let (native, reference) = differential(&config, &steps, true);
        prop_assert_eq!(native, reference);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The step run per call by EVALSHA, as on a server without functions.
    #[test]
    fn the_lua_step_by_evalsha_decides_as_the_rust_step(config in config(), steps in steps()) {
        let (native, reference) = differential(&config, &steps, false);
        prop_assert_eq!(native, reference);
    }
}

/// The function remembers a stored text that a plain success leaves as it
/// is (a closed count window full of successes) and answers it without
/// reading it again; any other text, under the same configuration, is
/// stepped in full. A failure then a success must move the window as the
/// Rust step moves it, with such a text remembered.
#[test]
fn a_remembered_unchanged_state_is_only_its_own_text() {
    use statecraft::breaker::Outcome;
    let config = BreakerConfig::builder()
        .failure_limit(2, 2)
        .build()
        .expect("config");
    let record = |outcome| {
        (
            breaker::Input::One(Event::Record {
                outcome,
                slow: false,
                probe: None,
            }),
            10,
            7,
        )
    };
    let mut steps = vec![record(Outcome::Success); 4];
    steps.extend([record(Outcome::Failure), record(Outcome::Success)]);
    steps.extend(vec![record(Outcome::Success); 3]);
    let (native, reference) = differential(&config, &steps, true);
    assert_eq!(native, reference);
    let windows: Vec<_> = native
        .iter()
        .map(|(_, stored)| {
            let text = String::from_utf8_lossy(stored.as_deref().unwrap_or_default()).into_owned();
            text.rsplit(' ').next().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(windows[3], "c:00", "{windows:?}");
    assert_eq!(windows[5], "c:10", "{windows:?}");
    assert_eq!(windows[6], "c:00", "{windows:?}");
}

/// The step is loaded once as a Redis Function (only with functions on),
/// and loaded again, transparently, when the server lost it.
#[tokio::test]
async fn the_step_is_a_function_loaded_again_when_lost() {
    let server = RedisServer::start();
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .build()
        .expect("config");
    let fail = step_input(
        &config,
        "b",
        Event::Record {
            outcome: statecraft::breaker::Outcome::Failure,
            slow: false,
            probe: None,
        },
        0,
        0,
    );
    let by_sha = redis_at(&server.url(), "sha:", false).await;
    by_sha
        .update_atomic(b"b", &BreakerStep, fail.as_bytes())
        .await
        .expect("step by EVALSHA");
    assert!(
        !server.cli(&["FUNCTION", "LIST"]).contains("statecraft_"),
        "EVALSHA loaded no function"
    );
    let store = redis_at(&server.url(), "fn:", true).await;
    store
        .update_atomic(b"b", &BreakerStep, fail.as_bytes())
        .await
        .expect("first failure");
    assert!(
        server
            .cli(&["FUNCTION", "LIST"])
            .contains("statecraft_breaker_step_"),
        "the step was loaded as a function"
    );
    assert!(server.cli(&["FUNCTION", "FLUSH"]).contains("OK"));
    let out = store
        .update_atomic(b"b", &BreakerStep, fail.as_bytes())
        .await
        .expect("second failure, after FUNCTION FLUSH");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "D CLOSED>OPEN",
        "the second failure in a row opened it: the state survived the flush"
    );
}

#[tokio::test]
async fn bad_input_is_a_typed_error_on_both_paths() {
    let store = redis(&format!("breaker_bad_{}:", std::process::id())).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    let good = step_input(&config, "b", Event::Acquire, 0, 0);
    let batches = [
        good.replace("|A|", "|B |"),
        good.replace("|A|", "|B 0140|"),
        good.replace("|A|", &format!("|B {}|", "0".repeat(4_097))),
    ];
    let mut inputs = vec![&b"nonsense"[..], b"c 5 0|A|1|0|1000", b""];
    inputs.extend(batches.iter().map(|b| b.as_bytes()));
    for input in inputs {
        for backend in [&store as &dyn StateBackend, &MemoryBackend::new()] {
            let err = backend
                .update_atomic(b"breaker", &BreakerStep, input)
                .await
                .expect_err("malformed input");
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidArgument,
                "{}: {err}",
                backend.name()
            );
        }
    }
    // A damaged state starts afresh on both.
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build()
        .expect("config");
    for backend in [&store as &dyn StateBackend, &MemoryBackend::new()] {
        backend
            .put(b"breaker", "b1 WHAT 1 2".into())
            .await
            .expect("put");
        let input = step_input(&config, "breaker", Event::Acquire, 0, 0);
        let out = backend
            .update_atomic(b"breaker", &BreakerStep, input.as_bytes())
            .await
            .expect("step");
        assert_eq!(&out[..], b"P0 -", "{}", backend.name());
        let ttl = backend.ttl(b"breaker").await.expect("ttl");
        assert!(
            matches!(ttl, statecraft::KeyTtl::ExpiresIn(_)),
            "{}: {ttl:?}",
            backend.name()
        );
        // An operator's setting does not expire.
        let input = step_input(&config, "breaker", Event::ForceOpen, 0, 0);
        backend
            .update_atomic(b"breaker", &BreakerStep, input.as_bytes())
            .await
            .expect("force open");
        let ttl = backend.ttl(b"breaker").await.expect("ttl");
        assert_eq!(ttl, statecraft::KeyTtl::Persistent, "{}", backend.name());
    }
}

#[tokio::test]
async fn peek_at_answers_the_store_time_and_the_state() {
    let store = redis(&format!("breaker_peek_{}:", std::process::id())).await;
    breaker::check_peek_at(&store).await;
    breaker::check_peek_at(&MemoryBackend::new()).await;
}

/// A server without functions (`FCALL` unknown, as before Redis 7): the
/// backend finds out on the first call and runs the step by EVALSHA, with
/// the same answers.
#[tokio::test]
async fn a_server_without_functions_runs_the_step_by_evalsha() {
    let server = RedisServer::start_with_args(&["--rename-command", "FCALL", "\"\""]);
    let store = redis_at(&server.url(), "old:", true).await;
    let config = BreakerConfig::builder()
        .consecutive_failures(2)
        .build()
        .expect("config");
    let fail = step_input(
        &config,
        "b",
        Event::Record {
            outcome: statecraft::breaker::Outcome::Failure,
            slow: false,
            probe: None,
        },
        0,
        0,
    );
    let mut answers = Vec::new();
    for _ in 0..2 {
        let out = store
            .update_atomic(b"b", &BreakerStep, fail.as_bytes())
            .await
            .expect("a step on a server without functions");
        answers.push(String::from_utf8_lossy(&out).into_owned());
    }
    assert_eq!(answers, ["D -", "D CLOSED>OPEN"]);
    assert!(
        !server.cli(&["FUNCTION", "LIST"]).contains("statecraft_"),
        "no function was loaded"
    );
}
