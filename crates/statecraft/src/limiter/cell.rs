//! The local limiters' cells: a limit's state in one atomic word (GCRA's
//! arrival time in 64 bits, the other algorithms' two or three figures in
//! 128), moved by one compare-and-swap per decision; and the quota in a
//! sequence lock, so that a change takes effect on the next decision
//! without a lock on the hot path.

use super::algorithm::{decide, gcra_of, Decision, LimitState};
use super::quota::{Algorithm, Quota};
use super::sync::{AtomicU128, AtomicU64, Mutex, Ordering};

/// No GCRA state yet (a written arrival time is always at least 1 µs).
const NO_TAT: u64 = 0;
/// No wide state yet.
const NO_STATE: u128 = u128::MAX;

/// One limit's state.
#[derive(Debug)]
pub(super) enum StateCell {
    /// GCRA's theoretical arrival time.
    Narrow(AtomicU64),
    /// The other algorithms' figures, packed (boxed, so that a cell is
    /// two words and a keyed limiter's entry small).
    Wide(Box<AtomicU128>),
}

impl StateCell {
    pub(super) fn new(algorithm: Algorithm) -> StateCell {
        match algorithm {
            Algorithm::Gcra => StateCell::Narrow(AtomicU64::new(NO_TAT)),
            _ => StateCell::Wide(Box::new(AtomicU128::new(NO_STATE))),
        }
    }

    /// Decides a request of `cost` at `now` and stores what it takes, by
    /// one compare-and-swap (again only if another decision got in
    /// between).
    #[inline]
    pub(super) fn decide(&self, quota: &Quota, cost: u64, now: u64) -> Decision {
        match self {
            StateCell::Narrow(tat) => {
                decide_narrow(tat, quota.interval_us(), quota.burst(), cost, now)
            }
            StateCell::Wide(cell) => decide_wide(cell, quota, cost, now),
        }
    }

    /// [`decide`](Self::decide) by the quota in `quota` as it is now (for
    /// GCRA only the two figures it reads).
    #[inline]
    pub(super) fn decide_by(&self, quota: &QuotaCell, cost: u64, now: u64) -> Decision {
        match self {
            StateCell::Narrow(tat) => {
                let [interval, burst] = quota.load_gcra();
                decide_narrow(tat, interval, burst, cost, now)
            }
            StateCell::Wide(cell) => decide_wide(cell, &quota.load(), cost, now),
        }
    }

    /// The state as it is now.
    pub(super) fn state(&self, algorithm: Algorithm) -> Option<LimitState> {
        match self {
            StateCell::Narrow(tat) => {
                let tat = tat.load(Ordering::Acquire);
                (tat != NO_TAT).then_some(LimitState::Gcra { tat_us: tat })
            }
            StateCell::Wide(cell) => unpack(algorithm, cell.load()),
        }
    }

    /// Forgets the state: the limit is whole again.
    pub(super) fn clear(&self) {
        match self {
            StateCell::Narrow(tat) => tat.store(NO_TAT, Ordering::Release),
            StateCell::Wide(cell) => cell.store(NO_STATE),
        }
    }
}

/// GCRA's decision on its one word: small enough to be inlined into the
/// caller, so that the figures a caller does not read (a remaining count
/// is a division) are left out of the compiled check.
#[inline(always)]
fn decide_narrow(tat: &AtomicU64, interval: u64, burst: u64, cost: u64, now: u64) -> Decision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let state = (current != NO_TAT).then_some(LimitState::Gcra { tat_us: current });
        let decided = gcra_of(interval, burst, state, cost, now);
        let Some(LimitState::Gcra { tat_us }) = decided.write else {
            return decided.decision;
        };
        match tat.compare_exchange_weak(current, tat_us, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decided.decision,
            Err(now_there) => current = now_there,
        }
    }
}

/// The other algorithms' decision on their 128-bit word.
#[inline]
fn decide_wide(cell: &AtomicU128, quota: &Quota, cost: u64, now: u64) -> Decision {
    let mut current = cell.load();
    loop {
        let decided = decide(quota, unpack(quota.algorithm(), current), cost, now);
        let Some(write) = decided.write else {
            return decided.decision;
        };
        match cell.compare_exchange(current, pack(write)) {
            Ok(_) => return decided.decision,
            Err(now_there) => current = now_there,
        }
    }
}

/// Packs a non-GCRA state into 128 bits (a sliding window's counts are
/// below 2^32, by [`Quota`]'s rules).
#[inline]
fn pack(state: LimitState) -> u128 {
    let (high, low) = match state {
        LimitState::Gcra { tat_us } => (0, u128::from(tat_us)),
        LimitState::TokenBucket { level, at_us } => (level, u128::from(at_us)),
        LimitState::SlidingWindow {
            start_us,
            previous,
            current,
        } => (
            start_us,
            u128::from(previous) << 32 | u128::from(current & 0xffff_ffff),
        ),
        LimitState::FixedWindow { start_us, used } => (start_us, u128::from(used)),
    };
    u128::from(high) << 64 | low
}

#[inline]
fn unpack(algorithm: Algorithm, packed: u128) -> Option<LimitState> {
    if packed == NO_STATE {
        return None;
    }
    let high = (packed >> 64) as u64;
    let low = packed as u64;
    Some(match algorithm {
        Algorithm::Gcra => LimitState::Gcra { tat_us: low },
        Algorithm::TokenBucket => LimitState::TokenBucket {
            level: high,
            at_us: low,
        },
        Algorithm::SlidingWindow => LimitState::SlidingWindow {
            start_us: high,
            previous: low >> 32,
            current: low & 0xffff_ffff,
        },
        Algorithm::FixedWindow => LimitState::FixedWindow {
            start_us: high,
            used: low,
        },
    })
}

/// A quota readers load without a lock: a sequence number, odd while a
/// writer changes the words, read before and after them.
#[derive(Debug)]
pub(super) struct QuotaCell {
    sequence: AtomicU64,
    words: [AtomicU64; 5],
    writer: Mutex<()>,
}

impl QuotaCell {
    pub(super) fn new(quota: Quota) -> QuotaCell {
        let words = quota.to_words();
        QuotaCell {
            sequence: AtomicU64::new(0),
            words: words.map(AtomicU64::new),
            writer: Mutex::new(()),
        }
    }

    /// The quota as the last finished [`store`](Self::store) left it.
    #[inline]
    pub(super) fn load(&self) -> Quota {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            let words = [
                self.words[0].load(Ordering::Acquire),
                self.words[1].load(Ordering::Acquire),
                self.words[2].load(Ordering::Acquire),
                self.words[3].load(Ordering::Acquire),
                self.words[4].load(Ordering::Acquire),
            ];
            let after = self.sequence.load(Ordering::Acquire);
            if before == after && before % 2 == 0 {
                return Quota::from_words(words);
            }
            std::hint::spin_loop();
        }
    }

    /// GCRA's two figures of the quota (its interval and burst, µs and
    /// permits), read as [`load`](Self::load) reads the whole.
    #[inline]
    pub(super) fn load_gcra(&self) -> [u64; 2] {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            let figures = [
                self.words[Quota::INTERVAL_WORD].load(Ordering::Acquire),
                self.words[Quota::BURST_WORD].load(Ordering::Acquire),
            ];
            let after = self.sequence.load(Ordering::Acquire);
            if before == after && before % 2 == 0 {
                return figures;
            }
            std::hint::spin_loop();
        }
    }

    /// Replaces the quota; readers see the old one or the new one whole.
    pub(super) fn store(&self, quota: Quota) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let words = quota.to_words();
        let sequence = self.sequence.load(Ordering::Acquire);
        self.sequence.store(sequence + 1, Ordering::Release);
        for (cell, word) in self.words.iter().zip(words) {
            cell.store(word, Ordering::Release);
        }
        self.sequence.store(sequence + 2, Ordering::Release);
    }
}
