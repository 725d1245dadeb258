//! The health breaker of one fallback member: it opens after `failures`
//! failures within `window` (successes in between do not reset the count),
//! lets one probe through after a back-off that doubles with every
//! consecutive opening (up to a maximum), and closes only when the probe
//! succeeded and the outage's writes are settled.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When a member's breaker opens and probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failures that open the breaker…
    pub failures: u32,
    /// …within this long.
    pub window: Duration,
    /// How long the first opening lasts before a probe.
    pub open_for: Duration,
    /// The longest opening (each consecutive one doubles, up to this).
    pub max_open_for: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(500),
            max_open_for: Duration::from_secs(2),
        }
    }
}

/// A member's health as the events report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Calls go to it.
    Healthy,
    /// Calls skip it; a probe goes through after `retry_in`.
    Unhealthy {
        /// Until the next probe.
        retry_in: Duration,
    },
    /// One call is probing it.
    Probing,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32, since: Instant },
    Open { until: Instant, openings: u32 },
    HalfOpen { openings: u32 },
}

/// What [`Breaker::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Call,
    Probe,
    Skip,
}

/// One member's breaker.
#[derive(Debug)]
pub(super) struct Breaker {
    policy: HealthPolicy,
    state: Mutex<State>,
}

impl Breaker {
    pub(super) fn new(policy: HealthPolicy) -> Self {
        Breaker {
            policy,
            state: Mutex::new(State::Closed {
                failures: 0,
                since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go to this member now; the first call after an
    /// opening has elapsed becomes the probe.
    pub(super) fn admit(&self) -> (Admit, Option<Health>) {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => (Admit::Call, None),
            State::HalfOpen { .. } => (Admit::Skip, None),
            State::Open { until, openings } => {
                if Instant::now() >= until {
                    *state = State::HalfOpen { openings };
                    (Admit::Probe, Some(Health::Probing))
                } else {
                    (Admit::Skip, None)
                }
            }
        }
    }

    /// The probe succeeded and the outage is settled: close; returns the
    /// new health if it changed. (A plain call's success changes nothing: a
    /// call admitted before the breaker opened must not close it.)
    pub(super) fn close(&self) -> Option<Health> {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed {
            failures: 0,
            since: Instant::now(),
        };
        (!was_closed).then_some(Health::Healthy)
    }

    /// The member failed; returns the new health if it changed.
    pub(super) fn failure(&self) -> Option<Health> {
        let now = Instant::now();
        let mut state = self.lock();
        let opened = |openings: u32| {
            let doubling = 2u32.saturating_pow(openings.saturating_sub(1).min(30));
            let wait = self
                .policy
                .open_for
                .checked_mul(doubling)
                .unwrap_or(Duration::MAX)
                .min(self.policy.max_open_for);
            (
                State::Open {
                    until: now
                        .checked_add(wait)
                        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365)),
                    openings,
                },
                Health::Unhealthy { retry_in: wait },
            )
        };
        let (next, health) = match *state {
            State::Closed { failures, since } => {
                let (failures, since) = if now.duration_since(since) > self.policy.window {
                    (1, now)
                } else {
                    (failures + 1, since)
                };
                if failures >= self.policy.failures {
                    let (next, health) = opened(1);
                    (next, Some(health))
                } else {
                    (State::Closed { failures, since }, None)
                }
            }
            State::HalfOpen { openings } => {
                let (next, health) = opened(openings.saturating_add(1));
                (next, Some(health))
            }
            State::Open { .. } => (*state, None),
        };
        *state = next;
        health
    }

    /// A probe that ended without an answer (its future was dropped): the
    /// next call probes again.
    pub(super) fn abandon_probe(&self) {
        let mut state = self.lock();
        if let State::HalfOpen { openings } = *state {
            *state = State::Open {
                until: Instant::now(),
                openings,
            };
        }
    }

    /// The health now, for statistics.
    pub(super) fn health(&self) -> Health {
        match *self.lock() {
            State::Closed { .. } => Health::Healthy,
            State::HalfOpen { .. } => Health::Probing,
            State::Open { until, .. } => Health::Unhealthy {
                retry_in: until.saturating_duration_since(Instant::now()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            failures: 2,
            window: Duration::from_secs(1),
            open_for: Duration::from_millis(100),
            max_open_for: Duration::from_millis(250),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_probes_backs_off_and_closes() {
        let breaker = Breaker::new(policy());
        assert_eq!(breaker.failure(), None);
        let opened = breaker.failure();
        assert_eq!(
            opened,
            Some(Health::Unhealthy {
                retry_in: Duration::from_millis(100)
            })
        );
        assert_eq!(breaker.admit().0, Admit::Skip);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(breaker.admit(), (Admit::Probe, Some(Health::Probing)));
        assert_eq!(breaker.admit().0, Admit::Skip, "one probe at a time");
        assert_eq!(
            breaker.failure(),
            Some(Health::Unhealthy {
                retry_in: Duration::from_millis(200)
            })
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(breaker.admit().0, Admit::Probe);
        assert_eq!(
            breaker.failure(),
            Some(Health::Unhealthy {
                retry_in: Duration::from_millis(250)
            }),
            "capped"
        );
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(breaker.admit().0, Admit::Probe);
        assert_eq!(breaker.close(), Some(Health::Healthy));
        assert_eq!(breaker.admit().0, Admit::Call);
        assert_eq!(breaker.close(), None, "already closed");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up_and_abandoned_probes_retry() {
        let breaker = Breaker::new(policy());
        assert_eq!(breaker.failure(), None);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(breaker.failure(), None, "the first failure left the window");
        assert!(breaker.failure().is_some());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(breaker.admit().0, Admit::Probe);
        breaker.abandon_probe();
        assert_eq!(breaker.admit().0, Admit::Probe, "probed again at once");
    }
}
