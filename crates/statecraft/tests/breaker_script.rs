//! The breaker's Lua copy (`src/breaker/step.lua`) against the Rust state
//! machine: random configurations and event sequences, at a clock the test
//! sets, through Redis's native path and through the memory backend's
//! (which runs the Rust function under the key's lock). Every answer and
//! every stored state must be the same.

#[path = "support/breaker.rs"]
mod breaker;

use breaker::{config, run, steps};
use proptest::prelude::*;
use statecraft::breaker::{step_input, BreakerConfig, BreakerStep, Event};
use statecraft::{ErrorKind, MemoryBackend, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

async fn redis(prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(prefix.to_string())
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn the_lua_step_decides_as_the_rust_step(config in config(), steps in steps()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (native, reference) = runtime.block_on(async {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let store = redis(&format!("breaker_diff_{}_{n}:", std::process::id())).await;
            let native = run(&store, &config, &steps).await;
            store.clear().await.expect("clear");
            (native, run(&MemoryBackend::new(), &config, &steps).await)
        });
        prop_assert_eq!(native, reference);
    }
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
