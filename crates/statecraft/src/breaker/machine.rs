//! The breaker's state machine, written once: a pure function of the
//! stored state, an event, the store's time and a random number, that
//! every breaker (local, distributed, hybrid) runs — in memory, through a
//! store's compare-and-swap, or as a store's script.

use serde::{Deserialize, Serialize};

use super::config::{millis, BreakerConfig, CloseAfter};
use super::window::{Calls, Tally};

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Calls go through; results are counted.
    Closed,
    /// Calls are rejected until the opening ends.
    Open,
    /// A few probes go through; their results close or reopen it.
    HalfOpen,
    /// Held open by an operator until released.
    ForcedOpen,
    /// Every call goes through and nothing is counted.
    Disabled,
    /// Every call goes through; results are counted but never open it.
    MetricsOnly,
}

impl Phase {
    /// Every phase, in order of its code (`Phase::ALL[p as usize] == p`).
    pub const ALL: [Phase; 6] = [
        Phase::Closed,
        Phase::Open,
        Phase::HalfOpen,
        Phase::ForcedOpen,
        Phase::Disabled,
        Phase::MetricsOnly,
    ];

    /// The phase of a code (`p as u8`); an unknown code reads as closed.
    #[inline]
    pub(crate) fn from_code(code: u8) -> Phase {
        Phase::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Phase::Closed)
    }

    /// The phase [`as_str`](Self::as_str) names.
    pub fn named(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// A short, stable, uppercase name (`"CLOSED"`, `"HALF_OPEN"`, …), as
    /// stored in a readable column.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "CLOSED",
            Phase::Open => "OPEN",
            Phase::HalfOpen => "HALF_OPEN",
            Phase::ForcedOpen => "FORCED_OPEN",
            Phase::Disabled => "DISABLED",
            Phase::MetricsOnly => "METRICS_ONLY",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, as the breaker's classifier saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way that counts against the protected resource.
    Failure,
    /// It says nothing about the resource (a caller's mistake, say).
    Ignored,
}

impl Outcome {
    /// The default classification: an `Err` is a failure, an `Ok` a success.
    pub fn of<T, E>(result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// One step of the xorshift generator that draws the openings' jitter
/// (only its spread matters).
pub(crate) fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// What happens to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A caller asks whether it may call.
    Acquire,
    /// A call admitted earlier ended.
    Record {
        /// How it ended.
        outcome: Outcome,
        /// Whether it took the slow-call threshold or longer.
        slow: bool,
        /// For a half-open probe, the spell it was admitted in (when the
        /// spell began, as [`State::since`] says): a probe of an earlier
        /// spell, recorded late, changes nothing. `None` for other calls.
        probe: Option<u64>,
    },
    /// An operator holds the breaker open.
    ForceOpen,
    /// An operator closes it, forgetting its history.
    ForceClose,
    /// Back to a fresh closed breaker (the same as [`ForceClose`](Event::ForceClose)).
    Reset,
    /// Let everything through, count nothing.
    Disable,
    /// Let everything through, count, never open.
    MetricsOnly,
}

/// The answer to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The caller may call (as a half-open probe when `probe`).
    Permit {
        /// Whether the call is a probe (record it with `probe:
        /// Some(state.since)`, the spell it was admitted in).
        probe: bool,
    },
    /// The caller may not; try again after this many milliseconds (`None`:
    /// until an operator releases it).
    Reject {
        /// When trying again can help.
        retry_after_ms: Option<u64>,
    },
    /// A result or an operator's event was taken in.
    Done,
}

/// A change of phase an event caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The phase before.
    pub from: Phase,
    /// The phase after.
    pub to: Phase,
}

/// A breaker's whole state: what a store keeps under the breaker's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Where it is.
    pub phase: Phase,
    /// When it entered that phase (store milliseconds).
    pub since: u64,
    /// When an opening ends (store milliseconds; `Open` only).
    pub open_until: u64,
    /// Openings since it last closed (for the back-off).
    pub openings: u32,
    /// Failures in a row, while closed.
    pub consecutive_failures: u32,
    /// Probes admitted in this half-open spell.
    pub probes_admitted: u32,
    /// Their successes so far.
    pub probe_successes: u32,
    /// Their failures so far.
    pub probe_failures: u32,
    /// The calls the rates look at.
    pub calls: Calls,
}

impl State {
    /// A fresh closed breaker at `now`.
    pub fn new(config: &BreakerConfig, now: u64) -> State {
        State {
            phase: Phase::Closed,
            since: now,
            open_until: 0,
            openings: 0,
            consecutive_failures: 0,
            probes_admitted: 0,
            probe_successes: 0,
            probe_failures: 0,
            calls: Calls::empty(config),
        }
    }
}

/// What [`step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The answer.
    pub decision: Decision,
    /// The phase change it caused, if any.
    pub transition: Option<Transition>,
}

/// How long opening number `openings` (1 for the first since the breaker
/// closed) lasts, in milliseconds: `open_for × multiplier^(openings − 1)`
/// up to the longest, spread by the jitter using `entropy`.
pub fn open_duration(config: &BreakerConfig, openings: u32, entropy: u32) -> u64 {
    let base = millis(config.open_for);
    let most = millis(config.max_open_for);
    let mut length = base;
    // 64 rounds pass any longest opening (≤ 2^40 ms) for a multiplier ≥ 2;
    // with 1 the length never changes: the cap changes nothing but the cost.
    for _ in 1..openings.min(64) {
        length = length.saturating_mul(u64::from(config.backoff_multiplier));
        if length >= most {
            break;
        }
    }
    let length = length.min(most);
    if config.jitter_permille == 0 {
        return length;
    }
    let spread = length.saturating_mul(u64::from(config.jitter_permille)) / 1000;
    // An offset in [-spread, +spread], from entropy.
    let offset = u64::from(entropy) % (spread.saturating_mul(2).saturating_add(1));
    (length.saturating_add(offset).saturating_sub(spread)).max(1)
}

/// Whether a closed breaker with `consecutive` failures in a row and
/// `tally` in its window opens: the rules of `config`, in one place.
pub(crate) fn trips(config: &BreakerConfig, consecutive: u32, tally: Tally) -> bool {
    let enough = tally.calls >= u64::from(config.min_calls);
    config
        .consecutive_failures
        .is_some_and(|n| consecutive >= n)
        || config
            .failures_in_window
            .is_some_and(|n| tally.failures >= u64::from(n))
        || (enough
            && config
                .failure_rate
                .is_some_and(|r| r.reached(tally.failures, tally.calls)))
        || (enough
            && config
                .slow_rate
                .is_some_and(|r| r.reached(tally.slow, tally.calls)))
}

/// Moves `state` to `phase` at `now`, starting it afresh as that phase
/// needs; returns the transition.
pub(crate) fn enter(
    config: &BreakerConfig,
    state: &mut State,
    phase: Phase,
    now: u64,
    entropy: u32,
) -> Option<Transition> {
    let from = state.phase;
    match phase {
        Phase::Open => {
            state.openings = state.openings.saturating_add(1);
            state.open_until = now.saturating_add(open_duration(config, state.openings, entropy));
        }
        Phase::Closed | Phase::Disabled | Phase::MetricsOnly => {
            state.openings = 0;
            state.open_until = 0;
        }
        Phase::HalfOpen | Phase::ForcedOpen => {}
    }
    if phase != Phase::HalfOpen {
        state.calls = Calls::empty(config);
        state.consecutive_failures = 0;
    }
    state.probes_admitted = 0;
    state.probe_successes = 0;
    state.probe_failures = 0;
    state.phase = phase;
    state.since = now;
    (from != phase).then_some(Transition { from, to: phase })
}

/// Runs `event` on `state` at the store's time `now` (milliseconds), with
/// `entropy` a random number for the opening's jitter. The one place where
/// a breaker decides.
pub fn step(
    config: &BreakerConfig,
    state: &mut State,
    event: Event,
    now: u64,
    entropy: u32,
) -> Step {
    if !state.calls.fits(config) {
        state.calls = Calls::empty(config);
    }
    let done = |transition| Step {
        decision: Decision::Done,
        transition,
    };
    match event {
        Event::ForceOpen => return done(enter(config, state, Phase::ForcedOpen, now, entropy)),
        Event::ForceClose | Event::Reset => {
            let transition = enter(config, state, Phase::Closed, now, entropy);
            return done(transition);
        }
        Event::Disable => return done(enter(config, state, Phase::Disabled, now, entropy)),
        Event::MetricsOnly => return done(enter(config, state, Phase::MetricsOnly, now, entropy)),
        Event::Acquire | Event::Record { .. } => {}
    }
    // An opening that has ended becomes a half-open spell at the next
    // acquire; a spell whose probes did not settle in time opens again.
    let mut transition = None;
    if state.phase == Phase::Open && event == Event::Acquire && now >= state.open_until {
        transition = enter(config, state, Phase::HalfOpen, now, entropy);
    }
    if state.phase == Phase::HalfOpen
        && now
            >= state
                .since
                .saturating_add(millis(config.half_open_max_wait))
    {
        let reopened = enter(config, state, Phase::Open, now, entropy);
        transition = merge(transition, reopened);
    }
    let decision = match (state.phase, event) {
        (Phase::Closed | Phase::Disabled | Phase::MetricsOnly, Event::Acquire) => {
            Decision::Permit { probe: false }
        }
        (Phase::Open, Event::Acquire) => Decision::Reject {
            retry_after_ms: Some(state.open_until.saturating_sub(now).max(1)),
        },
        (Phase::ForcedOpen, Event::Acquire) => Decision::Reject {
            retry_after_ms: None,
        },
        (Phase::HalfOpen, Event::Acquire) => {
            if state.probes_admitted < config.probes {
                state.probes_admitted += 1;
                Decision::Permit { probe: true }
            } else {
                let ends = state
                    .since
                    .saturating_add(millis(config.half_open_max_wait));
                Decision::Reject {
                    retry_after_ms: Some(ends.saturating_sub(now).max(1)),
                }
            }
        }
        (Phase::Closed | Phase::MetricsOnly, Event::Record { outcome, slow, .. }) => {
            if outcome != Outcome::Ignored {
                let failed = outcome == Outcome::Failure;
                state.consecutive_failures = match failed {
                    true => state.consecutive_failures.saturating_add(1),
                    false => 0,
                };
                state.calls.record(config, now, failed, slow);
                let tally = state.calls.tally(config, now);
                if state.phase == Phase::Closed && trips(config, state.consecutive_failures, tally)
                {
                    transition = merge(transition, enter(config, state, Phase::Open, now, entropy));
                }
            }
            Decision::Done
        }
        (
            Phase::HalfOpen,
            Event::Record {
                outcome,
                probe: Some(spell),
                ..
            },
        ) if spell == state.since => {
            let next = probe_result(config, state, outcome);
            if let Some(phase) = next {
                transition = merge(transition, enter(config, state, phase, now, entropy));
            }
            Decision::Done
        }
        // Late results (a call admitted before the breaker opened, a probe
        // of an earlier spell) and results while disabled change nothing.
        (_, Event::Record { .. }) => Decision::Done,
        (_, _) => Decision::Done,
    };
    Step {
        decision,
        transition,
    }
}

/// A probe's result in a half-open spell: the phase it leads to, if any.
fn probe_result(config: &BreakerConfig, state: &mut State, outcome: Outcome) -> Option<Phase> {
    let probes = config.probes;
    match outcome {
        Outcome::Ignored => {
            // Its slot goes back to the next caller.
            state.probes_admitted = state.probes_admitted.saturating_sub(1);
            None
        }
        Outcome::Success => {
            state.probe_successes = state.probe_successes.saturating_add(1);
            let closes = match config.close_after {
                CloseAfter::Successes(n) => state.probe_successes >= n,
                CloseAfter::Fraction(r) => {
                    r.reached(u64::from(state.probe_successes), u64::from(probes))
                }
            };
            closes.then_some(Phase::Closed)
        }
        Outcome::Failure => {
            state.probe_failures = state.probe_failures.saturating_add(1);
            let reopens = match config.close_after {
                CloseAfter::Successes(_) => true,
                CloseAfter::Fraction(r) => {
                    let best = u64::from(probes.saturating_sub(state.probe_failures));
                    !r.reached(best, u64::from(probes))
                }
            };
            reopens.then_some(Phase::Open)
        }
    }
}

/// Two transitions in one step (OPEN → HALF_OPEN → OPEN) as one.
pub(crate) fn merge(first: Option<Transition>, second: Option<Transition>) -> Option<Transition> {
    match (first, second) {
        (Some(a), Some(b)) => (a.from != b.to).then_some(Transition {
            from: a.from,
            to: b.to,
        }),
        (a, b) => b.or(a),
    }
}
