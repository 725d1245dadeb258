//! What a [`LocalBreaker`](super::LocalBreaker) tells the world: hooks run
//! on every transition (before and after it takes effect), a stream of
//! [`BreakerEvent`]s (transitions, rejections, slow calls), and, once
//! switched on, per-breaker metrics through the `metrics` crate.
//!
//! None of it costs the closed path anything until it is used: the hooks
//! and the stream are read only when the phase changes or a call is
//! rejected or slow, and the metrics are one check of a set-once cell.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;

use super::machine::{Outcome, Phase, Transition};

/// Something a breaker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerEvent {
    /// It moved from one phase to another.
    Transition {
        /// The breaker's name.
        breaker: Arc<str>,
        /// From where to where.
        transition: Transition,
    },
    /// It rejected a call.
    Rejected {
        /// The breaker's name.
        breaker: Arc<str>,
        /// When trying again can help (`None`: held open).
        retry_after: Option<Duration>,
    },
    /// A call took at least the slow-call threshold.
    SlowCall {
        /// The breaker's name.
        breaker: Arc<str>,
    },
    /// A hybrid breaker's store stopped answering: it decides on its own
    /// evidence until the store is back.
    StoreUnavailable {
        /// The breaker's name.
        breaker: Arc<str>,
        /// What the store said.
        error: String,
    },
    /// A hybrid breaker's store answers again; it follows the shared state.
    StoreRecovered {
        /// The breaker's name.
        breaker: Arc<str>,
    },
}

type Hook = Arc<dyn Fn(&Transition) + Send + Sync>;

/// How many events a slow subscriber may fall behind before it misses
/// some (it then reads `RecvError::Lagged` with the count).
pub const EVENT_BUFFER: usize = 1_024;

/// The observers of one breaker.
pub(super) struct Observers {
    name: Arc<str>,
    before: RwLock<Vec<Hook>>,
    after: RwLock<Vec<Hook>>,
    events: OnceLock<broadcast::Sender<BreakerEvent>>,
    metrics: OnceLock<Metrics>,
}

impl Observers {
    pub(super) fn new(name: Arc<str>) -> Observers {
        Observers {
            name,
            before: RwLock::default(),
            after: RwLock::default(),
            events: OnceLock::new(),
            metrics: OnceLock::new(),
        }
    }

    pub(super) fn add_before(&self, hook: Hook) {
        self.before
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    pub(super) fn add_after(&self, hook: Hook) {
        self.after
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.events
            .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    pub(super) fn enable_metrics(&self, phase: Phase) {
        let metrics = self.metrics.get_or_init(|| Metrics::new(&self.name));
        metrics.state.set(f64::from(phase as u8));
    }

    /// Sends `event` to the stream's subscribers, if any.
    pub(super) fn emit(&self, event: impl FnOnce() -> BreakerEvent) {
        self.send(event);
    }

    fn send(&self, event: impl FnOnce() -> BreakerEvent) {
        if let Some(sender) = self.events.get() {
            if sender.receiver_count() > 0 {
                // No receiver left between the check and the send: nothing lost.
                let _ = sender.send(event());
            }
        }
    }

    /// Before `transition` takes effect (under the breaker's lock).
    pub(super) fn before(&self, transition: &Transition) {
        let hooks = self
            .before
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.run_hooks(&hooks, transition);
    }

    /// As `transition` takes effect (under the breaker's lock, so that the
    /// gauge and the stream see transitions in their order).
    pub(super) fn moved(&self, transition: Transition) {
        if let Some(metrics) = self.metrics.get() {
            metrics.state.set(f64::from(transition.to as u8));
            metrics.transitions.increment(1);
        }
        self.send(|| BreakerEvent::Transition {
            breaker: self.name.clone(),
            transition,
        });
    }

    /// After `transition` took effect (the lock released: a hook may call
    /// the breaker; hooks of transitions close together may interleave).
    pub(super) fn after(&self, transition: Transition) {
        let hooks = self
            .after
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.run_hooks(&hooks, &transition);
    }

    /// Runs `hooks`; one that panics is logged, and the breaker goes on.
    fn run_hooks(&self, hooks: &[Hook], transition: &Transition) {
        for hook in hooks {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(transition)));
            if ran.is_err() {
                tracing::error!(breaker = %self.name, ?transition, "a breaker hook panicked");
            }
        }
    }

    pub(super) fn rejected(&self, retry_after_ms: Option<u64>) {
        if let Some(metrics) = self.metrics.get() {
            metrics.rejected.increment(1);
        }
        self.send(|| BreakerEvent::Rejected {
            breaker: self.name.clone(),
            retry_after: retry_after_ms.map(Duration::from_millis),
        });
    }

    /// A result recorded (`slow`: it took the slow-call threshold or more).
    #[inline]
    pub(super) fn recorded(&self, outcome: Outcome, slow: bool) {
        if let Some(metrics) = self.metrics.get() {
            metrics.count(outcome, slow);
        }
        if slow {
            self.send(|| BreakerEvent::SlowCall {
                breaker: self.name.clone(),
            });
        }
    }
}

/// The hooks and the event stream of a breaker type whose observers
/// `$observers` reaches (from `$this`, the breaker).
macro_rules! observable {
    ($ty:ty, $this:ident => $observers:expr) => {
        impl $ty {
            /// Runs `hook` after every transition this breaker makes or
            /// learns of, once it has taken effect (the breaker may be
            /// called from it).
            pub fn on_transition(
                &self,
                hook: impl Fn(&$crate::breaker::Transition) + Send + Sync + 'static,
            ) {
                let $this = self;
                $observers.add_after(std::sync::Arc::new(hook));
            }

            /// Runs `hook` each time the breaker opens (by a rule, or from
            /// half-open).
            pub fn on_open(&self, hook: impl Fn() + Send + Sync + 'static) {
                self.on_entering($crate::breaker::Phase::Open, hook);
            }

            /// Runs `hook` each time the breaker closes.
            pub fn on_close(&self, hook: impl Fn() + Send + Sync + 'static) {
                self.on_entering($crate::breaker::Phase::Closed, hook);
            }

            /// Runs `hook` each time the breaker goes half-open.
            pub fn on_half_open(&self, hook: impl Fn() + Send + Sync + 'static) {
                self.on_entering($crate::breaker::Phase::HalfOpen, hook);
            }

            fn on_entering(
                &self,
                phase: $crate::breaker::Phase,
                hook: impl Fn() + Send + Sync + 'static,
            ) {
                self.on_transition(move |t| {
                    if t.to == phase {
                        hook();
                    }
                });
            }

            /// A stream of what the breaker does from now on: transitions,
            /// rejections and slow calls. A subscriber more than
            /// [`EVENT_BUFFER`]($crate::breaker::EVENT_BUFFER) events behind
            /// misses the oldest (and is told how many).
            pub fn events(
                &self,
            ) -> tokio::sync::broadcast::Receiver<$crate::breaker::BreakerEvent> {
                let $this = self;
                $observers.subscribe()
            }
        }
    };
}
pub(super) use observable;

/// The metrics of one breaker, labelled `breaker = <name>`:
/// `statecraft_breaker_calls_total` by `outcome` (success, failure,
/// ignored, rejected), `statecraft_breaker_slow_calls_total`,
/// `statecraft_breaker_transitions_total` and the gauge
/// `statecraft_breaker_state` (0 closed, 1 open, 2 half-open, 3 forced
/// open, 4 disabled, 5 metrics only).
struct Metrics {
    success: metrics::Counter,
    failure: metrics::Counter,
    ignored: metrics::Counter,
    rejected: metrics::Counter,
    slow: metrics::Counter,
    transitions: metrics::Counter,
    state: metrics::Gauge,
}

impl Metrics {
    fn new(name: &Arc<str>) -> Metrics {
        let breaker = name.to_string();
        let calls = |outcome: &'static str| {
            metrics::counter!("statecraft_breaker_calls_total",
                "breaker" => breaker.clone(), "outcome" => outcome)
        };
        Metrics {
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            slow: metrics::counter!("statecraft_breaker_slow_calls_total", "breaker" => breaker.clone()),
            transitions: metrics::counter!("statecraft_breaker_transitions_total", "breaker" => breaker.clone()),
            state: metrics::gauge!("statecraft_breaker_state", "breaker" => breaker),
        }
    }

    fn count(&self, outcome: Outcome, slow: bool) {
        match outcome {
            Outcome::Success => self.success.increment(1),
            Outcome::Failure => self.failure.increment(1),
            Outcome::Ignored => self.ignored.increment(1),
        }
        if slow {
            self.slow.increment(1);
        }
    }
}
