//! The window of a local breaker while it is closed, in atomics: the same
//! calls and tallies as [`Calls`](super::window::Calls), kept without a
//! lock so that recording a call costs a few atomic adds. Exact when calls
//! are recorded one at a time (the differential test checks it against the
//! state machine); under contention a record may briefly count in the
//! wrong slot, never lost from the sums of slots it landed in.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::config::{millis, BreakerConfig, Window};
use super::window::Tally;

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// One time bucket's counts, tagged with its start.
#[derive(Default)]
struct Slot {
    /// The bucket's start + 1 (0: never used).
    start: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

enum Kind {
    Count {
        ring: Box<[AtomicU8]>,
        head: AtomicU64,
        failures: AtomicU64,
        slow: AtomicU64,
    },
    Time {
        slots: Box<[Slot]>,
        /// The newest bucket's start + 1.
        newest: AtomicU64,
        length: u64,
        size: u64,
    },
}

/// A closed breaker's calls and failures in a row.
pub(super) struct FastWindow {
    kind: Kind,
    consecutive: AtomicU32,
}

impl FastWindow {
    pub(super) fn new(config: &BreakerConfig) -> FastWindow {
        let kind = match config.window() {
            Window::Count(n) => Kind::Count {
                ring: (0..n).map(|_| AtomicU8::new(0)).collect(),
                head: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                slow: AtomicU64::new(0),
            },
            Window::Time { size, buckets } => Kind::Time {
                // One more than the window's buckets: the oldest one may
                // still overlap the window while the newest fills.
                slots: (0..=buckets).map(|_| Slot::default()).collect(),
                newest: AtomicU64::new(0),
                length: config.bucket_ms().max(1),
                size: millis(size),
            },
        };
        FastWindow {
            kind,
            consecutive: AtomicU32::new(0),
        }
    }

    /// Whether recording needs the time.
    pub(super) fn needs_time(&self) -> bool {
        matches!(self.kind, Kind::Time { .. })
    }

    /// Forgets everything (the breaker left or re-entered CLOSED).
    pub(super) fn reset(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        match &self.kind {
            Kind::Count {
                ring,
                head,
                failures,
                slow,
            } => {
                for slot in ring.iter() {
                    slot.store(0, Ordering::Relaxed);
                }
                head.store(0, Ordering::Relaxed);
                failures.store(0, Ordering::Relaxed);
                slow.store(0, Ordering::Relaxed);
            }
            Kind::Time { slots, newest, .. } => {
                for slot in slots.iter() {
                    slot.start.store(0, Ordering::Relaxed);
                }
                newest.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records one call at `now` (ignored for count windows); returns the
    /// failures in a row and the window's tally after it.
    #[inline]
    pub(super) fn record(&self, now: u64, failed: bool, slow: bool) -> (u32, Tally) {
        let consecutive = if failed {
            self.consecutive
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            self.consecutive.store(0, Ordering::Relaxed);
            0
        };
        let tally = match &self.kind {
            Kind::Count {
                ring,
                head,
                failures,
                slow: slow_calls,
            } => {
                let at = head.fetch_add(1, Ordering::Relaxed);
                let code = (u8::from(failed) * FAILED) | (u8::from(slow) * SLOW);
                // Add first, then take the replaced call away: the sums
                // never dip below what the ring holds.
                if failed {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if slow {
                    slow_calls.fetch_add(1, Ordering::Relaxed);
                }
                let old = ring[(at % ring.len() as u64) as usize].swap(code, Ordering::Relaxed);
                let (mut f, mut s) = (
                    failures.load(Ordering::Relaxed),
                    slow_calls.load(Ordering::Relaxed),
                );
                if at >= ring.len() as u64 {
                    if old & FAILED != 0 {
                        f = failures.fetch_sub(1, Ordering::Relaxed) - 1;
                    }
                    if old & SLOW != 0 {
                        s = slow_calls.fetch_sub(1, Ordering::Relaxed) - 1;
                    }
                }
                Tally {
                    calls: (at + 1).min(ring.len() as u64),
                    failures: f,
                    slow: s,
                }
            }
            Kind::Time { .. } => {
                self.record_at(now, failed, slow);
                self.time_tally(now)
            }
        };
        (consecutive, tally)
    }

    fn record_at(&self, now: u64, failed: bool, slow: bool) {
        let Kind::Time {
            slots,
            newest,
            length,
            ..
        } = &self.kind
        else {
            return;
        };
        let start = now - now % length;
        // A clock that went back counts in the newest bucket.
        let tag = newest.fetch_max(start + 1, Ordering::AcqRel).max(start + 1);
        let slot = &slots[((tag - 1) / length % slots.len() as u64) as usize];
        let seen = slot.start.load(Ordering::Acquire);
        if seen != tag
            && slot
                .start
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.calls.store(0, Ordering::Relaxed);
            slot.failures.store(0, Ordering::Relaxed);
            slot.slow.store(0, Ordering::Relaxed);
        }
        slot.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            slot.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn time_tally(&self, now: u64) -> Tally {
        let Kind::Time {
            slots,
            length,
            size,
            newest,
        } = &self.kind
        else {
            return Tally::default();
        };
        let horizon = now.saturating_sub(*size);
        let newest = newest.load(Ordering::Acquire);
        slots.iter().fold(Tally::default(), |t, slot| {
            let tag = slot.start.load(Ordering::Acquire);
            let start = tag.wrapping_sub(1);
            if tag == 0 || tag > newest || start.saturating_add(*length) <= horizon {
                return t;
            }
            Tally {
                calls: t.calls + slot.calls.load(Ordering::Relaxed),
                failures: t.failures + slot.failures.load(Ordering::Relaxed),
                slow: t.slow + slot.slow.load(Ordering::Relaxed),
            }
        })
    }
}
