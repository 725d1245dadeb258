//! The breaker's Lua copy (`src/breaker/step.lua`) against the Rust state
//! machine: random configurations and event sequences, at a clock the test
//! sets, through Redis's native path and through the memory backend's
//! (which runs the Rust function under the key's lock). Every answer and
//! every stored state must be the same.

use std::time::Duration;

use proptest::prelude::*;
use statecraft::breaker::{
    parse_step_output, step_input, BreakerConfig, BreakerStep, CloseAfter, Event, Outcome, Ratio,
    Window,
};
use statecraft::{Bytes, ErrorKind, MemoryBackend, RedisBackend, RedisConfig, StateBackend};
use statecraft_testkit::RedisServer;

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        (1u32..5, 1u32..4, 1u32..8, 0u8..5),
        (0u32..400, 1u32..4, any::<bool>(), 1u32..4),
    )
        .prop_filter_map(
            "valid",
            |((failures, probes, size, shape), (jitter, mult, fraction, wait))| {
                let close = match fraction {
                    true => CloseAfter::Fraction(Ratio::new(1, 2).ok()?),
                    false => CloseAfter::Successes(probes),
                };
                let builder = BreakerConfig::builder()
                    .open_for(Duration::from_millis(1_000))
                    .backoff(mult, Duration::from_millis(5_000))
                    .jitter(jitter)
                    .half_open(probes, close)
                    .half_open_max_wait(Duration::from_millis(1_000 * u64::from(wait)));
                let builder = match shape {
                    0 => builder.consecutive_failures(failures),
                    1 => builder.failure_limit(failures.min(size), size),
                    2 => builder
                        .failure_rate(1, 2)
                        .window(Window::Count(size + 1))
                        .min_calls(size),
                    3 => builder
                        .failures_within(failures, Duration::from_millis(2_000))
                        .slow_calls(Duration::from_millis(100), 2, 3),
                    _ => builder
                        .failure_rate(2, 3)
                        .window(Window::Time {
                            size: Duration::from_millis(3_000),
                            buckets: 3,
                        })
                        .min_calls(size),
                };
                builder.build().ok()
            },
        )
}

/// In generated events: a probe of the spell the stored breaker is in, or
/// of another one (a late result), resolved when the event runs.
const CURRENT: u64 = u64::MAX;
const STALE: u64 = u64::MAX - 1;

fn spells() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 3 => Just(Some(CURRENT)), 1 => Just(Some(STALE))]
}

/// `event` with a generated spell made real, from the stored state's
/// `since` (its third word).
fn resolve(event: Event, stored: Option<&[u8]>) -> Event {
    let since = stored
        .and_then(|raw| std::str::from_utf8(raw).ok())
        .and_then(|text| text.split(' ').nth(2)?.parse::<u64>().ok())
        .unwrap_or(0);
    match event {
        Event::Record {
            outcome,
            slow,
            probe: Some(spell),
        } => Event::Record {
            outcome,
            slow,
            probe: Some(match spell {
                CURRENT => since,
                STALE => since + 1,
                spell => spell,
            }),
        },
        event => event,
    }
}

fn event() -> impl Strategy<Value = Event> {
    let outcome = prop_oneof![3 => Just(Outcome::Success), 3 => Just(Outcome::Failure), 1 => Just(Outcome::Ignored)];
    prop_oneof![
        6 => Just(Event::Acquire),
        6 => (outcome, any::<bool>(), spells())
            .prop_map(|(outcome, slow, probe)| Event::Record { outcome, slow, probe }),
        1 => prop_oneof![
            Just(Event::ForceOpen),
            Just(Event::ForceClose),
            Just(Event::Reset),
            Just(Event::Disable),
            Just(Event::MetricsOnly)
        ],
    ]
}

/// A step's advance that moves the clock to the next whole second.
const ALIGN: u64 = u64::MAX;

fn steps() -> impl Strategy<Value = Vec<(Event, u64, u32)>> {
    // Whole buckets and windows too (after ALIGN, a jump to the next whole
    // second), so that calls land on the buckets' edges.
    let dt = prop_oneof![8 => 0u64..300, 1 => 0u64..6_000, 2 => prop::sample::select(vec![200u64, 1_000, 2_000, 3_000, ALIGN])];
    prop::collection::vec((event(), dt, any::<u32>()), 1..60)
}

async fn redis(prefix: &str) -> RedisBackend {
    let config = RedisConfig::builder()
        .url(RedisServer::shared().url())
        .key_prefix(prefix.to_string())
        .build()
        .expect("config");
    RedisBackend::new(config).await.expect("redis")
}

/// Runs the sequence on `store`: each answer (or error kind) and the
/// stored state after it.
async fn run(
    store: &dyn StateBackend,
    config: &BreakerConfig,
    steps: &[(Event, u64, u32)],
) -> Vec<(Result<Bytes, ErrorKind>, Option<Bytes>)> {
    let mut now = 1_733_000_000_000u64;
    let mut seen = Vec::new();
    for (event, dt, entropy) in steps {
        now = match *dt {
            ALIGN => now - now % 1_000 + 1_000,
            dt => now + dt,
        };
        let stored = store.get(b"breaker").await.expect("get");
        let event = resolve(*event, stored.as_deref());
        let input = step_input(config, event, *entropy, now);
        let answer = store
            .update_atomic(b"breaker", &BreakerStep, input.as_bytes())
            .await
            .map_err(|err| err.kind());
        if let Ok(raw) = &answer {
            parse_step_output(raw).expect("a step's output parses");
        }
        seen.push((answer, store.get(b"breaker").await.expect("get")));
    }
    seen
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
    for input in [&b"nonsense"[..], b"c 5 0|A|1|0|1000", b""] {
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
        let input = step_input(&config, Event::Acquire, 0, 0);
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
        let input = step_input(&config, Event::ForceOpen, 0, 0);
        backend
            .update_atomic(b"breaker", &BreakerStep, input.as_bytes())
            .await
            .expect("force open");
        let ttl = backend.ttl(b"breaker").await.expect("ttl");
        assert_eq!(ttl, statecraft::KeyTtl::Persistent, "{}", backend.name());
    }
}
