//! The recorder backends keep their statistics in: striped counters and a
//! sampled latency histogram, so that recording costs one uncontended atomic
//! add per call.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::backend::options::KeyTtl;
use crate::backend::stats::{BackendStats, LatencySummary};

/// One operation in this many (per thread) is timed.
pub const SAMPLE_EVERY: u32 = 64;

const STRIPES: usize = 16;
const SUB_BUCKET_BITS: u32 = 3;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const LINEAR: usize = 2 * SUB_BUCKETS;
const BUCKETS: usize = LINEAR + (64 - SUB_BUCKET_BITS as usize - 1) * SUB_BUCKETS;

#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    scans: AtomicU64,
    errors: AtomicU64,
}

/// How an operation ended, for [`StatsRecorder::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A read that found a value.
    Hit,
    /// A read that found nothing.
    Miss,
    /// A write (or delete, or other change).
    Write,
    /// A listing or a count.
    Scan,
    /// A failed operation.
    Error,
}

/// A started measurement; pass it back to [`StatsRecorder::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Timer {
    started: Option<Instant>,
    stripe: usize,
}

/// The recorder backends keep their statistics in.
pub struct StatsRecorder {
    stripes: Box<[Stripe]>,
    histogram: Box<[AtomicU64]>,
}

thread_local! {
    static THREAD_SLOT: (usize, Cell<u32>) = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES, Cell::new(0))
    };
}

impl Default for StatsRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        StatsRecorder {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Starts measuring an operation; only one in [`SAMPLE_EVERY`] reads the clock.
    #[inline]
    pub fn start(&self) -> Timer {
        let (stripe, sample) = THREAD_SLOT.with(|(stripe, tick)| {
            let n = tick.get().wrapping_add(1);
            tick.set(n);
            (*stripe, n % SAMPLE_EVERY == 0)
        });
        Timer {
            started: sample.then(Instant::now),
            stripe,
        }
    }

    /// Records how an operation started with [`start`](Self::start) ended.
    #[inline]
    pub fn finish(&self, timer: Timer, outcome: Outcome) {
        let stripe = &self.stripes[timer.stripe % STRIPES];
        let counter = match outcome {
            Outcome::Hit => &stripe.hits,
            Outcome::Miss => &stripe.misses,
            Outcome::Write => &stripe.writes,
            Outcome::Scan => &stripe.scans,
            Outcome::Error => &stripe.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.time(timer);
    }

    #[inline]
    fn time(&self, timer: Timer) {
        if let Some(started) = timer.started {
            self.record_latency(started.elapsed());
        }
    }

    /// Counts one `outcome` without timing it (a figure a layer keeps of
    /// its own, such as its cache's hits).
    #[inline]
    pub fn count(&self, outcome: Outcome) {
        let stripe = THREAD_SLOT.with(|(stripe, _)| *stripe);
        let stripe = &self.stripes[stripe % STRIPES];
        let counter = match outcome {
            Outcome::Hit => &stripe.hits,
            Outcome::Miss => &stripe.misses,
            Outcome::Write => &stripe.writes,
            Outcome::Scan => &stripe.scans,
            Outcome::Error => &stripe.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a read's result (its hits and misses, see [`Found`]) and
    /// passes it through.
    #[inline]
    pub fn read<T: Found>(&self, timer: Timer, result: crate::Result<T>) -> crate::Result<T> {
        match &result {
            Ok(found) => {
                let (hits, misses) = found.tally();
                let stripe = &self.stripes[timer.stripe % STRIPES];
                if hits > 0 {
                    stripe.hits.fetch_add(hits, Ordering::Relaxed);
                }
                if misses > 0 {
                    stripe.misses.fetch_add(misses, Ordering::Relaxed);
                }
                self.time(timer);
            }
            Err(_) => self.finish(timer, Outcome::Error),
        }
        result
    }

    /// Records a write's result and passes it through.
    #[inline]
    pub fn write<T>(&self, timer: Timer, result: crate::Result<T>) -> crate::Result<T> {
        self.settle(timer, Outcome::Write, result)
    }

    /// Records a listing's or a count's result and passes it through.
    #[inline]
    pub fn scan<T>(&self, timer: Timer, result: crate::Result<T>) -> crate::Result<T> {
        self.settle(timer, Outcome::Scan, result)
    }

    #[inline]
    fn settle<T>(&self, timer: Timer, ok: Outcome, result: crate::Result<T>) -> crate::Result<T> {
        self.finish(timer, if result.is_ok() { ok } else { Outcome::Error });
        result
    }

    /// Adds one latency measurement to the histogram.
    pub fn record_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the counters and latency percentiles.
    pub fn snapshot(&self, backend: &'static str) -> BackendStats {
        let mut stats = BackendStats {
            backend,
            ..BackendStats::default()
        };
        for stripe in self.stripes.iter() {
            stats.hits += stripe.hits.load(Ordering::Relaxed);
            stats.misses += stripe.misses.load(Ordering::Relaxed);
            stats.writes += stripe.writes.load(Ordering::Relaxed);
            stats.scans += stripe.scans.load(Ordering::Relaxed);
            stats.errors += stripe.errors.load(Ordering::Relaxed);
        }
        let counts: Vec<u64> = self
            .histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let samples: u64 = counts.iter().sum();
        let percentile = |q: f64| -> Duration {
            if samples == 0 {
                return Duration::ZERO;
            }
            let rank = ((samples as f64 * q).ceil() as u64).max(1);
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Duration::from_nanos(bucket_upper(bucket));
                }
            }
            Duration::from_nanos(bucket_upper(BUCKETS - 1))
        };
        stats.latency = LatencySummary {
            samples,
            p50: percentile(0.50),
            p90: percentile(0.90),
            p99: percentile(0.99),
            max: percentile(1.0),
        };
        stats
    }
}

impl fmt::Debug for StatsRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsRecorder").finish_non_exhaustive()
    }
}

/// Log-linear buckets: exact below 16 ns, then 8 sub-buckets per power of two
/// (at most 12.5% relative error).
fn bucket_of(nanos: u64) -> usize {
    if nanos < LINEAR as u64 {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros();
    let sub = ((nanos >> (exponent - SUB_BUCKET_BITS)) as usize) & (SUB_BUCKETS - 1);
    LINEAR + (exponent as usize - SUB_BUCKET_BITS as usize - 1) * SUB_BUCKETS + sub
}

/// The largest value that falls in `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    if bucket < LINEAR {
        return bucket as u64;
    }
    let index = bucket - LINEAR;
    let exponent = (index / SUB_BUCKETS) as u32 + SUB_BUCKET_BITS + 1;
    let sub = (index % SUB_BUCKETS) as u64;
    let width = 1u64 << (exponent - SUB_BUCKET_BITS);
    let lower = (1u64 << exponent) + sub * width;
    lower.saturating_add(width - 1)
}

/// What a read found, as hits and misses for [`StatsRecorder::read`]: one
/// per key read (`Option` and `bool`: found or not; a [`KeyTtl`]: the key
/// exists or not; a batch: one per key).
pub trait Found {
    /// `(hits, misses)`.
    fn tally(&self) -> (u64, u64);
}

impl<T> Found for Option<T> {
    #[inline]
    fn tally(&self) -> (u64, u64) {
        if self.is_some() {
            (1, 0)
        } else {
            (0, 1)
        }
    }
}

impl Found for bool {
    #[inline]
    fn tally(&self) -> (u64, u64) {
        if *self {
            (1, 0)
        } else {
            (0, 1)
        }
    }
}

impl Found for KeyTtl {
    #[inline]
    fn tally(&self) -> (u64, u64) {
        (*self != KeyTtl::Missing).tally()
    }
}

impl<T> Found for Vec<Option<T>> {
    fn tally(&self) -> (u64, u64) {
        let hits = self.iter().filter(|value| value.is_some()).count() as u64;
        (hits, self.len() as u64 - hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for nanos in [0, 1, 15, 16, 17, 31, 32, 1_000, 65_535, 1 << 40, u64::MAX] {
            let bucket = bucket_of(nanos);
            assert!(bucket < BUCKETS, "{nanos} -> {bucket}");
            assert!(bucket >= last, "{nanos} went backwards");
            assert!(bucket_upper(bucket) >= nanos, "{nanos} above its bucket");
            last = bucket;
        }
        assert!(bucket_upper(bucket_of(1_000)) < 1_130);
    }

    #[test]
    fn snapshot_counts_outcomes_and_percentiles() {
        let stats = StatsRecorder::new();
        for _ in 0..10 {
            stats.finish(
                Timer {
                    started: None,
                    stripe: 0,
                },
                Outcome::Hit,
            );
        }
        stats.finish(
            Timer {
                started: None,
                stripe: 0,
            },
            Outcome::Miss,
        );
        stats.finish(
            Timer {
                started: None,
                stripe: 0,
            },
            Outcome::Error,
        );
        for micros in 1..=100 {
            stats.record_latency(Duration::from_micros(micros));
        }
        let snap = stats.snapshot("test");
        assert_eq!(
            (snap.hits, snap.misses, snap.errors, snap.writes),
            (10, 1, 1, 0)
        );
        assert_eq!(snap.operations(), 12);
        assert_eq!(snap.latency.samples, 100);
        let p50 = snap.latency.p50.as_micros();
        assert!((50..=57).contains(&p50), "p50 {p50}");
        let p99 = snap.latency.p99.as_micros();
        assert!((99..=112).contains(&p99), "p99 {p99}");
    }
}
