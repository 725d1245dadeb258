//! Test support for statecraft: the conformance suite that every backend and
//! every layer must pass.
//!
//! A backend's test file builds a [`Fixture`] and expands
//! [`conformance_tests!`] inside `mod conformance { mod <backend> { … } }`, so
//! that `cargo test conformance` selects every case and each test's name says
//! which backend it ran on (`conformance::sled::ttl_expires`).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use statecraft::{ManualClock, StateBackend};

pub mod atomic;
pub mod conformance;
pub mod defaults;
pub mod proxy;
pub mod servers;
pub mod switch;

pub use atomic::{BoundedCounter, BOUNDED_COUNTER_TTL};
pub use defaults::ProvidedDefaults;
pub use proxy::{Fault, FaultProxy};
pub use servers::{PostgresServer, RedisCluster, RedisServer, TlsRedisServer};
pub use switch::Switch;

/// How a fixture's time moves forward.
#[derive(Debug, Clone)]
pub enum TimeControl {
    /// The backend reads this clock; advancing it is instant.
    Manual(ManualClock),
    /// The backend reads real time (a remote server); advancing sleeps.
    Real,
}

/// A backend under test plus what the suite needs to know about it.
pub struct Fixture {
    /// The backend (or layer) under test, empty.
    pub backend: Arc<dyn StateBackend>,
    /// How to make time pass for TTL tests.
    pub time: TimeControl,
    /// The longest key the fixture accepts (as seen through any namespace).
    pub max_key_len: usize,
    /// The longest value the fixture accepts.
    pub max_value_len: usize,
    guard: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fixture")
            .field("backend", &self.backend)
            .field("time", &self.time)
            .field("max_key_len", &self.max_key_len)
            .field("max_value_len", &self.max_value_len)
            .finish_non_exhaustive()
    }
}

/// The key and value limits fixtures should configure, so that the suite's
/// 1 MiB values fit and its oversized ones do not.
pub const FIXTURE_MAX_KEY: usize = 512;
/// See [`FIXTURE_MAX_KEY`].
pub const FIXTURE_MAX_VALUE: usize = 2 << 20;

impl Fixture {
    /// A fixture for `backend` with the given time control and limits.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        time: TimeControl,
        max_key_len: usize,
        max_value_len: usize,
    ) -> Self {
        Fixture {
            backend,
            time,
            max_key_len,
            max_value_len,
            guard: None,
        }
    }

    /// Keeps `guard` (a temporary directory, a server) alive as long as the fixture.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Lets `by` pass for the backend.
    pub async fn advance(&self, by: Duration) {
        match &self.time {
            TimeControl::Manual(clock) => clock.advance(by),
            TimeControl::Real => tokio::time::sleep(by).await,
        }
    }
}

/// A boxed future producing a fixture, as the macro's factory returns.
pub type FixtureFuture = Pin<Box<dyn Future<Output = Fixture> + Send>>;

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$factory()` (a `fn() -> FixtureFuture`) for a fresh, empty fixture.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@all $factory; stats_count_alike);
    };
    // For a wrapper that leaves every provided method to the trait's
    // defaults: those compose the required methods, so the statistics it
    // reports (its inner backend's) count the composed operations.
    ($factory:expr, provided_defaults) => {
        $crate::conformance_tests!(@all $factory;);
    };
    (@all $factory:expr; $($extra:ident),*) => {
        $crate::conformance_tests!(@cases $factory;
            get_missing_key, put_then_get, overwrite_replaces_value_and_ttl, empty_value_is_not_missing,
            binary_keys_round_trip, large_value_round_trip, delete_removes,
            list_keys_matches_prefix_only, list_keys_paginates, key_stream_lists_everything,
            count_and_clear, ttl_expires, ttl_reads_back, set_if_not_exists_only_once,
            get_and_delete_takes_value, compare_and_swap_contract, compare_and_swap_with_ttl,
            increment_contract, increment_ttl_on_create_only, increment_rejects_non_integer,
            increment_rejects_overflow, batch_operations, batch_put_with_ttl,
            size_limits_are_typed_errors, concurrent_increments_are_exact,
            concurrent_cas_increments_lose_nothing, health_and_stats,
            capabilities_match_behaviour, get_with_ttl_reads_both, atomic_update_contract,
            concurrent_atomic_updates_are_exact, $($extra),*
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let fixture = ($factory)().await;
                $crate::conformance::$case(&fixture).await;
            }
        )*
    };
}
