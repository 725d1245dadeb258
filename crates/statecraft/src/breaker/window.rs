//! The calls a breaker remembers: the last N outcomes, or per-bucket counts
//! of the last T. Plain data, so that the same state is kept in memory, in a
//! store's value, and (later) in a script.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::config::{millis, BreakerConfig, Window};

/// What the window holds of the calls it covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Calls recorded (ignored ones are not).
    pub calls: u64,
    /// Of them, failures.
    pub failures: u64,
    /// Of them, slow ones (successes or failures).
    pub slow: u64,
}

/// One time bucket: its start (milliseconds of the store's clock, a
/// multiple of the bucket length) and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// The bucket's first millisecond.
    pub start: u64,
    /// Calls in it.
    pub calls: u64,
    /// Failures among them.
    pub failures: u64,
    /// Slow calls among them.
    pub slow: u64,
}

/// The remembered calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Calls {
    /// The last calls' outcomes, oldest first: bit 0 failure, bit 1 slow.
    Count {
        /// The outcomes.
        outcomes: VecDeque<u8>,
        /// Their tally, kept as they come and go.
        failures: u64,
        /// Slow ones among them.
        slow: u64,
    },
    /// Buckets, oldest first, none older than the window.
    Time {
        /// The buckets with calls in them.
        buckets: VecDeque<Bucket>,
    },
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

impl Calls {
    /// An empty window of the configured kind.
    pub fn empty(config: &BreakerConfig) -> Calls {
        match config.window {
            Window::Count(_) => Calls::Count {
                outcomes: VecDeque::new(),
                failures: 0,
                slow: 0,
            },
            Window::Time { .. } => Calls::Time {
                buckets: VecDeque::new(),
            },
        }
    }

    /// Whether this window is of the kind `config` asks for (a state
    /// written under another configuration starts afresh).
    pub fn fits(&self, config: &BreakerConfig) -> bool {
        match (self, config.window) {
            (Calls::Count { outcomes, .. }, Window::Count(size)) => outcomes.len() <= size as usize,
            (Calls::Time { buckets }, Window::Time { buckets: most, .. }) => {
                let bucket = config.bucket_ms();
                buckets.len() <= most as usize + 1
                    && buckets.iter().all(|b| bucket > 0 && b.start % bucket == 0)
            }
            _ => false,
        }
    }

    /// Drops the time buckets that have left the window at `now`.
    fn expire(&mut self, config: &BreakerConfig, now: u64) {
        if let (Calls::Time { buckets }, Window::Time { size, .. }) = (self, config.window) {
            let horizon = now.saturating_sub(millis(size));
            while buckets
                .front()
                .is_some_and(|b| b.start.saturating_add(config.bucket_ms()) <= horizon)
            {
                buckets.pop_front();
            }
        }
    }

    /// Records one call at `now`.
    pub fn record(&mut self, config: &BreakerConfig, now: u64, failed: bool, slow: bool) {
        self.expire(config, now);
        match (&mut *self, config.window) {
            (
                Calls::Count {
                    outcomes,
                    failures,
                    slow: slow_calls,
                },
                Window::Count(size),
            ) => {
                let code = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
                outcomes.push_back(code);
                *failures += u64::from(failed);
                *slow_calls += u64::from(slow);
                while outcomes.len() > size as usize {
                    if let Some(old) = outcomes.pop_front() {
                        *failures -= u64::from(old & FAILED != 0);
                        *slow_calls -= u64::from(old & SLOW != 0);
                    }
                }
            }
            (Calls::Time { buckets }, Window::Time { .. }) => {
                let length = config.bucket_ms().max(1);
                let start = now - now % length;
                match buckets.back_mut() {
                    // A clock that went back (a store failover) counts in
                    // the newest bucket rather than out of order.
                    Some(last) if last.start >= start => {
                        last.calls += 1;
                        last.failures += u64::from(failed);
                        last.slow += u64::from(slow);
                    }
                    _ => buckets.push_back(Bucket {
                        start,
                        calls: 1,
                        failures: u64::from(failed),
                        slow: u64::from(slow),
                    }),
                }
            }
            _ => {
                *self = Calls::empty(config);
                self.record(config, now, failed, slow);
            }
        }
    }

    /// What the window holds at `now`.
    pub fn tally(&mut self, config: &BreakerConfig, now: u64) -> Tally {
        self.expire(config, now);
        match self {
            Calls::Count {
                outcomes,
                failures,
                slow,
            } => Tally {
                calls: outcomes.len() as u64,
                failures: *failures,
                slow: *slow,
            },
            Calls::Time { buckets } => buckets.iter().fold(Tally::default(), |t, b| Tally {
                calls: t.calls + b.calls,
                failures: t.failures + b.failures,
                slow: t.slow + b.slow,
            }),
        }
    }
}
