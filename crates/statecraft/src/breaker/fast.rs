//! The window of a local breaker while it is closed, in atomics: the same
//! calls and tallies as [`Calls`](super::window::Calls), kept without a
//! lock. A count window writes nothing shared for a success once it has
//! filled: calls are counted in per-thread stripes, and only failures and
//! slow calls (rare while closed) note their position in a shared ring, so
//! threads do not contend on the hot path. Exact when calls are recorded
//! one at a time (the differential test checks it against the state
//! machine); under contention a position may be off by the calls in flight.

use std::cell::Cell;
use std::sync::atomic::AtomicUsize;

use super::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::config::{millis, BreakerConfig, Window};
use super::window::Tally;

/// Call counters per thread stripe (a power of two).
pub(super) const STRIPES: usize = 16;

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe.
#[inline]
pub(super) fn stripe() -> usize {
    STRIPE.with(|slot| {
        let mut at = slot.get();
        if at == usize::MAX {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            at = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % STRIPES;
            slot.set(at);
        }
        at
    })
}

/// A counter on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// Positions (1-based call numbers since the last reset) of the failures
/// or slow calls among the last `size` calls: slot `p % size` holds `p`.
struct Marks(Box<[AtomicU64]>);

impl Marks {
    fn new(size: usize) -> Marks {
        Marks((0..size).map(|_| AtomicU64::new(0)).collect())
    }

    fn mark(&self, position: u64) {
        self.0[(position % self.0.len() as u64) as usize].store(position, Ordering::Relaxed);
    }

    /// The marks among calls `(total − size, total]`.
    fn within(&self, total: u64) -> u64 {
        let oldest = total.saturating_sub(self.0.len() as u64);
        self.0
            .iter()
            .filter(|p| {
                let p = p.load(Ordering::Relaxed);
                p > oldest && p <= total
            })
            .count() as u64
    }

    fn reset(&self) {
        for slot in self.0.iter() {
            slot.store(0, Ordering::Relaxed);
        }
    }
}

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
        size: u64,
        calls: Box<[Padded]>,
        failures: Marks,
        slow: Marks,
        /// Set once `size` calls were counted: a success can no longer
        /// bring a rate over its minimum of calls.
        full: AtomicBool,
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
                size: u64::from(n),
                calls: (0..STRIPES).map(|_| Padded::default()).collect(),
                failures: Marks::new(n as usize),
                slow: Marks::new(n as usize),
                full: AtomicBool::new(false),
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
                calls,
                failures,
                slow,
                full,
                ..
            } => {
                for stripe in calls.iter() {
                    stripe.0.store(0, Ordering::Relaxed);
                }
                failures.reset();
                slow.reset();
                full.store(false, Ordering::Relaxed);
            }
            Kind::Time { slots, newest, .. } => {
                for slot in slots.iter() {
                    slot.start.store(0, Ordering::Relaxed);
                }
                newest.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records one call at `now` (unused by count windows); returns the
    /// failures in a row and, when a rule could trip on this call, the
    /// window's tally after it (`None`: nothing can have tripped).
    #[inline]
    pub(super) fn record(&self, now: u64, failed: bool, slow: bool) -> (u32, Option<Tally>) {
        let consecutive = if failed {
            self.consecutive
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            // Read first: a store would bounce the line between threads.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        };
        let tally = match &self.kind {
            Kind::Count {
                size,
                calls,
                failures,
                slow: slow_marks,
                full,
            } => {
                // An atomic add on this thread's own line: uncontended, and
                // exact when threads share a stripe.
                calls[stripe()].0.fetch_add(1, Ordering::Relaxed);
                // A plain success once the window is full lowers every
                // rate: no rule can trip on it.
                if !failed && !slow && full.load(Ordering::Relaxed) {
                    return (consecutive, None);
                }
                let total: u64 = calls.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
                if failed {
                    failures.mark(total);
                }
                if slow {
                    slow_marks.mark(total);
                }
                if total >= *size {
                    full.store(true, Ordering::Relaxed);
                }
                Tally {
                    calls: total.min(*size),
                    failures: failures.within(total),
                    slow: slow_marks.within(total),
                }
            }
            Kind::Time { .. } => {
                self.record_at(now, failed, slow);
                self.time_tally(now)
            }
        };
        (consecutive, Some(tally))
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
