//! Circuit breakers: one state machine ([`step`]), written once as a pure
//! function of the stored state, an event and the store's time, that every
//! breaker runs.
//!
//! A breaker is [`Phase::Closed`] while calls go well, [`Phase::Open`]
//! (rejecting, with a "retry after") once a rule of its
//! [`BreakerConfig`] says the protected resource is failing, and
//! [`Phase::HalfOpen`] when the opening ends: at most
//! [`probes`](BreakerConfigBuilder::half_open) calls go through, and their
//! results close it or open it again (for longer, with the back-off). An
//! operator can hold it open ([`Phase::ForcedOpen`]), switch it off
//! ([`Phase::Disabled`]) or let it only count ([`Phase::MetricsOnly`]).
//!
//! ```
//! use std::time::Duration;
//! use statecraft::breaker::{step, BreakerConfig, Decision, Event, Outcome, Phase, State};
//!
//! let config = BreakerConfig::builder()
//!     .consecutive_failures(2)
//!     .open_for(Duration::from_secs(10))
//!     .build()?;
//! let mut state = State::new(&config, 0);
//! let failed = Event::Record { outcome: Outcome::Failure, slow: false, probe: None };
//! step(&config, &mut state, failed, 1, 0);
//! step(&config, &mut state, failed, 2, 0);
//! assert_eq!(state.phase, Phase::Open);
//! let asked = step(&config, &mut state, Event::Acquire, 3, 0);
//! assert_eq!(asked.decision, Decision::Reject { retry_after_ms: Some(9_999) });
//! // Ten seconds later one probe goes through.
//! let asked = step(&config, &mut state, Event::Acquire, 10_002, 0);
//! assert_eq!(asked.decision, Decision::Permit { probe: true });
//! # Ok::<(), statecraft::Error>(())
//! ```
//!
//! Time is milliseconds of whichever clock decides: the process's for a
//! local breaker, the store's for a shared one (so that the instances'
//! clocks do not matter). Randomness (the opening's jitter) is an argument
//! too, so that a store's copy of [`step`] decides exactly the same.

mod config;
mod distributed;
pub mod events;
mod export;
mod fast;
mod hybrid;
#[cfg(feature = "tower")]
mod layer;
mod local;
mod machine;
mod permit;
mod registry;
mod shared;
#[cfg(all(test, shuttle))]
mod shuttle_tests;
mod sync;
mod window;
mod wire;

#[cfg(test)]
mod local_tests;
#[cfg(test)]
mod tests;

pub use config::{BreakerConfig, BreakerConfigBuilder, CloseAfter, Ratio, Window};
pub use distributed::{DistributedBreaker, DistributedPermit, StoreDown};
pub use events::{BreakerEvent, EVENT_BUFFER};
pub use export::ExportedBreaker;
pub use hybrid::{HybridBreaker, HybridConfig, HybridPermit, HybridStats};
#[cfg(feature = "tower")]
pub use layer::{BreakerLayer, BreakerService, Classify, ErrorsFail, Guard};
pub use local::LocalBreaker;
pub use machine::{open_duration, step, Decision, Event, Outcome, Phase, State, Step, Transition};
pub use permit::{CallError, Permit, Rejected};
pub use registry::BreakerRegistry;
pub use shared::{
    batch_input, decode_state, parse_peek_at, parse_step_output, state_ttl, step_input,
    BreakerStep, MAX_BATCH, PEEK, PEEK_AT,
};
pub use window::{Bucket, Calls, Tally};
