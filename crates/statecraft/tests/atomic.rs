//! `update_atomic`'s native paths against the pure function they copy: the
//! Redis Lua copy of the testkit's `BoundedCounter` must decide what its
//! Rust `apply` decides, on random sequences of inputs (differential
//! property test); the update runs as one write through a layered stack.

use std::time::Duration;

use proptest::prelude::*;
use statecraft::{
    Bytes, ErrorKind, Fallback, MemoryBackend, Metrics, Namespaced, RedisBackend, RedisConfig,
    Retry, RetryPolicy, StateBackend, Timeout,
};
use statecraft_testkit::{BoundedCounter, RedisServer};

/// One step of a sequence: an update of key `key` with `input`, or a raw
/// put that corrupts the key.
#[derive(Debug, Clone)]
enum Step {
    Update { key: u8, input: String },
    Corrupt { key: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    let input = prop_oneof![
        4 => (0u64..6).prop_map(|n| n.to_string()),
        1 => Just("reset".to_string()),
        1 => Just("007".to_string()),
        1 => Just("-1".to_string()),
        1 => Just("2.5".to_string()),
        1 => Just(String::new()),
        1 => Just("9999999999999999".to_string()),
    ];
    prop_oneof![
        12 => (0u8..3, input).prop_map(|(key, input)| Step::Update { key, input }),
        1 => (0u8..3).prop_map(|key| Step::Corrupt { key }),
    ]
}

/// What a backend answered: the output, or the error's kind.
type Answer = Result<Bytes, ErrorKind>;

async fn run(backend: &dyn StateBackend, steps: &[Step]) -> (Vec<Answer>, Vec<Option<Bytes>>) {
    let key = |k: u8| format!("key{k}").into_bytes();
    let mut answers = Vec::new();
    for step in steps {
        match step {
            Step::Update { key: k, input } => answers.push(
                backend
                    .update_atomic(&key(*k), &BoundedCounter, input.as_bytes())
                    .await
                    .map_err(|err| err.kind()),
            ),
            Step::Corrupt { key: k } => backend.put(&key(*k), "x1".into()).await.expect("put"),
        }
    }
    let mut finals = Vec::new();
    for k in 0..3 {
        finals.push(backend.get(&key(k)).await.expect("get"));
    }
    (answers, finals)
}

async fn redis(prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(prefix.to_string())
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn redis_script_decides_as_the_rust_function(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (native, reference) = runtime.block_on(async {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("atomic_{}_{n}:", std::process::id());
            let store = redis(&prefix).await;
            let native = run(&store, &steps).await;
            store.clear().await.expect("clear");
            (native, run(&MemoryBackend::new(), &steps).await)
        });
        prop_assert_eq!(native, reference);
    }
}

/// The native path is one write in the store's statistics; the provided
/// compare-and-swap path (an update without a script) is a read and a swap.
#[tokio::test]
async fn the_redis_update_is_one_round_trip() {
    let store = redis(&format!("atomic_rt_{}:", std::process::id())).await;
    let before = store.stats().await.expect("stats");
    let out = store
        .update_atomic(b"k", &BoundedCounter, b"3")
        .await
        .expect("update");
    assert_eq!(&out[..], b"admitted 1");
    let after = store.stats().await.expect("stats");
    assert_eq!(after.writes - before.writes, 1, "one scripted write");
    assert_eq!(
        after.hits + after.misses,
        before.hits + before.misses,
        "no read first"
    );

    #[derive(Debug)]
    struct NoScript;
    impl statecraft::AtomicUpdate for NoScript {
        fn name(&self) -> &'static str {
            "no_script"
        }
        fn apply(
            &self,
            current: Option<&[u8]>,
            input: &[u8],
            now: u64,
        ) -> statecraft::Result<statecraft::AtomicStep> {
            BoundedCounter.apply(current, input, now)
        }
    }
    let before = store.stats().await.expect("stats");
    let out = store
        .update_atomic(b"k", &NoScript, b"3")
        .await
        .expect("update");
    assert_eq!(&out[..], b"admitted 2");
    let after = store.stats().await.expect("stats");
    assert_eq!(after.hits - before.hits, 1, "read first");
    assert_eq!(after.writes - before.writes, 1, "then swapped");
}

/// Through Metrics, Retry, Timeout, Namespaced and Fallback the update
/// still reaches Redis's native path, under the namespace's key.
#[tokio::test]
async fn layers_forward_the_update_to_the_native_path() {
    let prefix = format!("atomic_layers_{}:", std::process::id());
    let store = redis(&prefix).await;
    let stack = Fallback::builder()
        .member(
            Metrics::new(
                Retry::new(
                    Timeout::new(
                        Namespaced::new(store.clone(), "ns/"),
                        Duration::from_secs(2),
                    ),
                    RetryPolicy::new(),
                ),
                "atomic",
            ),
            Duration::from_secs(2),
        )
        .member(MemoryBackend::new(), Duration::from_millis(100))
        .build()
        .expect("chain");
    let before = store.stats().await.expect("stats");
    for want in ["admitted 1", "denied 1"] {
        let out = stack
            .update_atomic(b"k", &BoundedCounter, b"1")
            .await
            .expect("update");
        assert_eq!(out, Bytes::from(want));
    }
    let after = store.stats().await.expect("stats");
    assert_eq!(
        after.writes - before.writes,
        2,
        "two scripted writes, no reads"
    );
    assert_eq!(after.hits + after.misses, before.hits + before.misses);
    assert_eq!(
        store.get(b"ns/k").await.expect("get"),
        Some(Bytes::from("1"))
    );
}
