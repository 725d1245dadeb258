//! The conformance suite run against the memory, sled and redb backends, directly,
//! through `Namespaced`, through the operation layers, and through a wrapper
//! that leaves every provided method to the trait's defaults. Select it with
//! `cargo test conformance`.

use std::sync::Arc;
use std::time::Duration;

use statecraft::{
    Cached, Fallback, Limits, ManualClock, MemoryBackend, Metrics, Namespaced, Retry, RetryPolicy,
    SledBackend, StateBackend, Tiered, Timeout,
};
use statecraft_testkit::{
    Fixture, FixtureFuture, ProvidedDefaults, TimeControl, FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE,
};

const NAMESPACE: &[u8] = b"tenant-7:";

fn limits() -> Limits {
    Limits::new(FIXTURE_MAX_KEY, FIXTURE_MAX_VALUE)
}

fn memory(clock: &ManualClock) -> MemoryBackend {
    MemoryBackend::builder()
        .clock(clock.clone())
        .limits(limits())
        .sweep_interval(None)
        .build()
}

fn sled(clock: &ManualClock) -> (SledBackend, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = SledBackend::builder()
        .path(dir.path())
        .clock(clock.clone())
        .limits(limits())
        .flush_every(None)
        .sweep_interval(None)
        .open()
        .expect("sled opens in a fresh directory");
    (backend, dir)
}

/// A redb database in a temporary directory; `durable`: every commit on
/// disk (the default), else commits made durable on flush only.
#[cfg(feature = "redb")]
fn redb(clock: &ManualClock, durable: bool) -> (statecraft::RedbBackend, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = statecraft::RedbBackend::builder()
        .path(dir.path().join("db.redb"))
        .clock(clock.clone())
        .limits(limits())
        .durable_commits(durable)
        .flush_every(None)
        .sweep_interval(None)
        .open()
        .expect("redb opens in a fresh directory");
    (backend, dir)
}

fn fixture(backend: Arc<dyn StateBackend>, clock: ManualClock, namespaced: bool) -> Fixture {
    let max_key = if namespaced {
        FIXTURE_MAX_KEY - NAMESPACE.len()
    } else {
        FIXTURE_MAX_KEY
    };
    Fixture::new(
        backend,
        TimeControl::Manual(clock),
        max_key,
        FIXTURE_MAX_VALUE,
    )
}

fn memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        fixture(Arc::new(memory(&clock)), clock, false)
    })
}

fn namespaced_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let inner = Arc::new(memory(&clock));
        // A neighbour outside the namespace that must stay invisible.
        inner
            .put(b"tenant-8:k", "other".into())
            .await
            .expect("seed neighbour");
        let view = Namespaced::new(inner, NAMESPACE);
        fixture(Arc::new(view), clock, true)
    })
}

fn sled_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = sled(&clock);
        fixture(Arc::new(backend), clock, false).with_guard(dir)
    })
}

fn namespaced_sled_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = sled(&clock);
        backend
            .put(b"tenant-6:k", "other".into())
            .await
            .expect("seed neighbour");
        let view = Namespaced::new(Arc::new(backend), NAMESPACE);
        fixture(Arc::new(view), clock, true).with_guard(dir)
    })
}

#[cfg(feature = "redb")]
fn redb_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = redb(&clock, true);
        fixture(Arc::new(backend), clock, false).with_guard(dir)
    })
}

#[cfg(feature = "redb")]
fn buffered_redb_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = redb(&clock, false);
        fixture(Arc::new(backend), clock, false).with_guard(dir)
    })
}

#[cfg(feature = "redb")]
fn namespaced_redb_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = redb(&clock, true);
        backend
            .put(b"tenant-6:k", "other".into())
            .await
            .expect("seed neighbour");
        let view = Namespaced::new(Arc::new(backend), NAMESPACE);
        fixture(Arc::new(view), clock, true).with_guard(dir)
    })
}

fn provided_defaults_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        fixture(Arc::new(ProvidedDefaults(memory(&clock))), clock, false)
    })
}

fn layered_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let timed = Timeout::new(memory(&clock), Duration::from_secs(5));
        let retried = Retry::new(timed, RetryPolicy::new());
        fixture(Arc::new(Metrics::new(retried, "conformance")), clock, false)
    })
}

fn cached_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let cached = Cached::builder(memory(&clock))
            .clock(clock.clone())
            .build()
            .await
            .expect("cached");
        fixture(Arc::new(cached), clock, false)
    })
}

fn cached_namespaced_sled_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let (backend, dir) = sled(&clock);
        let view = Namespaced::new(backend, NAMESPACE);
        let cached = Cached::builder(view)
            .clock(clock.clone())
            .max_bytes(8 << 20)
            .build()
            .await
            .expect("cached");
        fixture(Arc::new(cached), clock, true).with_guard(dir)
    })
}

fn fallback_memory_null_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let chain = Fallback::builder()
            .member(memory(&clock), Duration::from_secs(5))
            .member(statecraft::NullBackend::new(), Duration::from_secs(1))
            .build()
            .expect("chain");
        fixture(Arc::new(chain), clock, false)
    })
}

fn tiered_memory_memory_fixture() -> FixtureFuture {
    Box::pin(async {
        let clock = ManualClock::starting_now();
        let tiers = Tiered::builder()
            .tier(memory(&clock), Duration::from_secs(30))
            .last(memory(&clock))
            .build()
            .expect("tiers");
        fixture(Arc::new(tiers), clock, false)
    })
}

mod conformance {
    mod memory {
        statecraft_testkit::conformance_tests!(super::super::memory_fixture);
    }
    mod namespaced_memory {
        statecraft_testkit::conformance_tests!(super::super::namespaced_memory_fixture);
    }
    mod sled {
        statecraft_testkit::conformance_tests!(super::super::sled_fixture);
    }
    mod namespaced_sled {
        statecraft_testkit::conformance_tests!(super::super::namespaced_sled_fixture);
    }
    #[cfg(feature = "redb")]
    mod redb {
        statecraft_testkit::conformance_tests!(super::super::redb_fixture);
    }
    #[cfg(feature = "redb")]
    mod buffered_redb {
        statecraft_testkit::conformance_tests!(super::super::buffered_redb_fixture);
    }
    #[cfg(feature = "redb")]
    mod namespaced_redb {
        statecraft_testkit::conformance_tests!(super::super::namespaced_redb_fixture);
    }
    mod provided_defaults_memory {
        statecraft_testkit::conformance_tests!(
            super::super::provided_defaults_memory_fixture,
            provided_defaults
        );
    }
    mod cached_memory {
        statecraft_testkit::conformance_tests!(super::super::cached_memory_fixture);
    }
    mod cached_namespaced_sled {
        statecraft_testkit::conformance_tests!(super::super::cached_namespaced_sled_fixture);
    }
    mod fallback_memory_null {
        statecraft_testkit::conformance_tests!(super::super::fallback_memory_null_fixture);
    }
    mod tiered_memory_memory {
        statecraft_testkit::conformance_tests!(super::super::tiered_memory_memory_fixture);
    }
    mod metrics_retry_timeout_memory {
        statecraft_testkit::conformance_tests!(super::super::layered_memory_fixture);
    }
}
