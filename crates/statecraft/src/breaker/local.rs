//! [`LocalBreaker`]: a breaker in this process. While closed, asking and
//! recording are a few atomic operations (no lock, no allocation); every
//! other decision takes a short lock and runs the state machine.

use std::sync::{Arc, PoisonError};

use super::sync::{AtomicU64, AtomicU8, Mutex, MutexGuard, Ordering};

use crate::backend::clock::{Clock, MonotonicClock};

use super::config::BreakerConfig;
use super::events::Observers;
use super::fast::FastWindow;
use super::machine::{
    enter, step, trips, xorshift, Decision, Event, Outcome, Phase, State, Transition,
};
use super::permit::{Permit, Rejected};

const fn code(phase: Phase) -> u8 {
    phase as u8
}

/// [`Phase::Closed`]'s code.
const CLOSED: u8 = code(Phase::Closed);

/// What a local breaker's permits and handles share.
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    pub(super) config: BreakerConfig,
    clock: Arc<dyn Clock>,
    /// The phase, mirrored from `state` for the lock-free paths.
    phase: AtomicU8,
    /// `state.open_until`, mirrored.
    open_until: AtomicU64,
    /// The window while CLOSED or METRICS_ONLY (`state.calls` is unused then).
    fast: FastWindow,
    state: Mutex<State>,
    entropy: AtomicU64,
    transitions: AtomicU64,
    rejections: AtomicU64,
    pub(super) observers: Observers,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn entropy(&self) -> u32 {
        let x = xorshift(self.entropy.load(Ordering::Relaxed));
        self.entropy.store(x, Ordering::Relaxed);
        (x >> 32) as u32
    }

    /// Publishes `state` to the lock-free paths after a step under the lock
    /// (the before-transition hooks first).
    fn mirror(&self, state: &State, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.observers.before(&t);
            if matches!(t.to, Phase::Closed | Phase::MetricsOnly)
                || matches!(t.from, Phase::Closed | Phase::MetricsOnly)
            {
                self.fast.reset();
            }
            self.transitions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(breaker = %self.name, from = %t.from, to = %t.to, "breaker transition");
        }
        self.open_until.store(state.open_until, Ordering::Release);
        self.phase.store(code(state.phase), Ordering::Release);
        if let Some(t) = transition {
            self.observers.moved(t);
        }
    }

    /// Runs `event` under the lock; also returns when the phase it left
    /// began (a probe's half-open spell).
    fn run(&self, event: Event) -> (Decision, Option<Transition>, u64) {
        let (decision, transition, since) = {
            let mut state = self.lock();
            let now = self.clock.now_millis();
            let before = state.phase;
            let taken = step(&self.config, &mut state, event, now, self.entropy());
            if matches!(event, Event::Reset | Event::ForceClose | Event::MetricsOnly)
                && before == state.phase
            {
                // Same phase, history forgotten all the same.
                self.fast.reset();
            }
            self.mirror(&state, taken.transition);
            (taken.decision, taken.transition, state.since)
        };
        if let Some(t) = transition {
            self.observers.after(t);
        }
        (decision, transition, since)
    }

    /// May a call go through now? A probe's permit names its spell.
    /// (Closed: one load.)
    #[inline]
    pub(super) fn acquire(&self) -> Result<Option<u64>, Rejected> {
        let phase = self.phase.load(Ordering::Acquire);
        if phase == CLOSED || phase == code(Phase::Disabled) || phase == code(Phase::MetricsOnly) {
            return Ok(None);
        }
        self.acquire_slow()
    }

    #[cold]
    #[inline(never)]
    fn acquire_slow(&self) -> Result<Option<u64>, Rejected> {
        if Phase::from_code(self.phase.load(Ordering::Acquire)) == Phase::Open {
            let now = self.clock.now_millis();
            let until = self.open_until.load(Ordering::Acquire);
            if now < until {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                self.observers.rejected(Some(until - now));
                return Err(Rejected::new(self.name.clone(), Some(until - now)));
            }
        }
        match self.run(Event::Acquire) {
            (Decision::Permit { probe }, _, spell) => Ok(probe.then_some(spell)),
            (Decision::Reject { retry_after_ms }, _, _) => {
                self.rejections.fetch_add(1, Ordering::Relaxed);
                self.observers.rejected(retry_after_ms);
                Err(Rejected::new(self.name.clone(), retry_after_ms))
            }
            (Decision::Done, _, _) => Ok(None),
        }
    }

    /// Records a call's result.
    #[inline]
    pub(super) fn record(&self, outcome: Outcome, slow: bool, probe: Option<u64>) {
        self.observers.recorded(outcome, slow);
        let phase = self.phase.load(Ordering::Acquire);
        // Closed, every result counts in the window (a late probe's too, as
        // the state machine counts it).
        if phase == CLOSED || phase == code(Phase::MetricsOnly) {
            if outcome == Outcome::Ignored {
                return;
            }
            let now = if self.fast.needs_time() {
                self.clock.now_millis()
            } else {
                0
            };
            let (consecutive, tally) = self.fast.record(now, outcome == Outcome::Failure, slow);
            if let Some(tally) = tally {
                if phase == CLOSED && trips(&self.config, consecutive, tally) {
                    self.trip();
                }
            }
            return;
        }
        self.record_slow(phase, outcome, slow, probe);
    }

    /// The phase, what is left of an opening, and the openings in a row.
    pub(super) fn snapshot(&self) -> (Phase, Option<u64>, u32) {
        let state = self.lock();
        let now = self.clock.now_millis();
        let remaining = (state.phase == Phase::Open).then(|| state.open_until.saturating_sub(now));
        (state.phase, remaining, state.openings)
    }

    /// Takes on an exported phase (see `export.rs`): a half-open breaker
    /// comes back as an ended opening, an opening no longer than this
    /// configuration's longest.
    pub(super) fn restore(&self, phase: Phase, open_remaining_ms: Option<u64>, openings: u32) {
        let transition = {
            let mut state = self.lock();
            let now = self.clock.now_millis();
            let from = state.phase;
            let mut fresh = State::new(&self.config, now);
            match phase {
                Phase::Open | Phase::HalfOpen => {
                    let longest = super::config::millis(self.config.max_open_for);
                    let left = match phase {
                        Phase::Open => open_remaining_ms.unwrap_or(0).min(longest),
                        _ => 0,
                    };
                    fresh.phase = Phase::Open;
                    fresh.openings = openings.max(1);
                    fresh.open_until = now.saturating_add(left);
                }
                Phase::Closed => {}
                Phase::ForcedOpen | Phase::Disabled | Phase::MetricsOnly => fresh.phase = phase,
            }
            *state = fresh;
            self.fast.reset();
            let transition = (from != state.phase).then_some(Transition {
                from,
                to: state.phase,
            });
            self.mirror(&state, transition);
            transition
        };
        if let Some(t) = transition {
            self.observers.after(t);
        }
    }

    /// Opens a closed breaker whose window tripped a rule.
    #[cold]
    #[inline(never)]
    fn trip(&self) {
        let transition = {
            let mut state = self.lock();
            if state.phase != Phase::Closed {
                return;
            }
            let now = self.clock.now_millis();
            let transition = enter(&self.config, &mut state, Phase::Open, now, self.entropy());
            self.mirror(&state, transition);
            transition
        };
        if let Some(t) = transition {
            self.observers.after(t);
        }
    }

    #[cold]
    #[inline(never)]
    fn record_slow(&self, phase: u8, outcome: Outcome, slow: bool, probe: Option<u64>) {
        if phase == code(Phase::Disabled) {
            return;
        }
        self.run(Event::Record {
            outcome,
            slow,
            probe,
        });
    }
}

/// A circuit breaker local to this process.
///
/// ```
/// use std::time::Duration;
/// use statecraft::breaker::{BreakerConfig, LocalBreaker, Phase};
///
/// let breaker = LocalBreaker::new("payments", BreakerConfig::builder().consecutive_failures(2).build()?);
/// for _ in 0..2 {
///     let permit = breaker.acquire().expect("closed");
///     permit.failure();
/// }
/// assert_eq!(breaker.phase(), Phase::Open);
/// let rejected = breaker.acquire().unwrap_err();
/// assert!(rejected.retry_after() <= Some(Duration::from_secs(30)));
/// # Ok::<(), statecraft::Error>(())
/// ```
#[derive(Clone)]
pub struct LocalBreaker {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for LocalBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBreaker")
            .field("name", &self.shared.name)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl LocalBreaker {
    /// A closed breaker named `name` (for errors, logs and metrics).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> LocalBreaker {
        Self::with_clock(name, config, MonotonicClock::new())
    }

    /// The same, reading `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(
        name: impl Into<String>,
        config: BreakerConfig,
        clock: impl Clock + 'static,
    ) -> LocalBreaker {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let now = clock.now_millis();
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(now);
            hasher.finish() | 1
        };
        let name: Arc<str> = Arc::from(name.into());
        LocalBreaker {
            shared: Arc::new(Shared {
                observers: Observers::new(name.clone()),
                name,
                fast: FastWindow::new(&config),
                state: Mutex::new(State::new(&config, now)),
                config,
                clock,
                phase: AtomicU8::new(code(Phase::Closed)),
                open_until: AtomicU64::new(0),
                entropy: AtomicU64::new(seed),
                transitions: AtomicU64::new(0),
                rejections: AtomicU64::new(0),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where it is now.
    #[inline]
    pub fn phase(&self) -> Phase {
        Phase::from_code(self.shared.phase.load(Ordering::Acquire))
    }

    /// Asks to make a call: a permit that records the call's result (a
    /// failure if it is dropped unfinished), or why not and for how long.
    #[inline]
    pub fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        let probe = self.shared.acquire()?;
        Ok(Permit::new(&self.shared, probe))
    }

    /// Runs `call` if the breaker lets it through and records its result:
    /// an `Err` is a failure, an `Ok` a success (see [`call_with`](Self::call_with)
    /// to classify them otherwise).
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, super::permit::CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.call_with(Outcome::of::<T, E>, call).await
    }

    /// [`call`](Self::call) with `classify` deciding which results count
    /// as failures and which are ignored.
    pub async fn call_with<T, E, F, Fut, C>(
        &self,
        classify: C,
        call: F,
    ) -> Result<T, super::permit::CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Outcome,
    {
        let permit = self.acquire().map_err(super::permit::CallError::Rejected)?;
        let result = call().await;
        permit.record(classify(&result));
        result.map_err(super::permit::CallError::Failed)
    }

    /// Holds the breaker open until [`force_close`](Self::force_close) or
    /// [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared.run(Event::ForceOpen);
    }

    /// Closes it, forgetting its history.
    pub fn force_close(&self) {
        self.shared.run(Event::ForceClose);
    }

    /// Back to a fresh closed breaker.
    pub fn reset(&self) {
        self.shared.run(Event::Reset);
    }

    /// Lets every call through and counts nothing.
    pub fn disable(&self) {
        self.shared.run(Event::Disable);
    }

    /// Lets every call through, counts, never opens.
    pub fn metrics_only(&self) {
        self.shared.run(Event::MetricsOnly);
    }

    /// Runs `hook` on every transition before it takes effect: no caller
    /// sees the new phase until it returns. It runs under the breaker's
    /// lock, so it must not call this breaker (that would deadlock) and
    /// should be quick.
    pub fn before_transition(&self, hook: impl Fn(&Transition) + Send + Sync + 'static) {
        self.shared.observers.add_before(Arc::new(hook));
    }

    /// Reports this breaker's calls by outcome, slow calls, transitions
    /// and state through the `metrics` crate (see the
    /// [`events`](super::events) module for the names). Off until called:
    /// each recorded call then also increments a counter.
    pub fn with_metrics(self) -> Self {
        self.shared.observers.enable_metrics(self.phase());
        self
    }

    /// Transitions and rejections so far.
    pub fn figures(&self) -> (u64, u64) {
        (
            self.shared.transitions.load(Ordering::Relaxed),
            self.shared.rejections.load(Ordering::Relaxed),
        )
    }
}

super::events::observable!(LocalBreaker, this => this.shared.observers);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_codes_index_the_table() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_code(code(phase)), phase);
        }
    }
}
