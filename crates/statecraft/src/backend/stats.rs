//! Snapshots of a backend's operation statistics.

use std::collections::BTreeMap;
use std::time::Duration;

/// A snapshot of a backend's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend these figures are for.
    pub backend: &'static str,
    /// Reads that found a value.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Writes, deletes and other operations that are not plain reads.
    pub writes: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Latency of a sample of the operations (one in [`SAMPLE_EVERY`](crate::raw::SAMPLE_EVERY)).
    pub latency: LatencySummary,
    /// Backend-specific figures, such as `size_on_disk_bytes` or `entries`.
    pub details: BTreeMap<String, u64>,
}

impl BackendStats {
    /// All operations counted.
    pub fn operations(&self) -> u64 {
        self.hits + self.misses + self.writes + self.errors
    }

    /// Hits over reads, or `None` before the first read.
    pub fn hit_rate(&self) -> Option<f64> {
        let reads = self.hits + self.misses;
        (reads > 0).then(|| self.hits as f64 / reads as f64)
    }
}

/// Percentiles of the sampled operation latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// How many operations were timed.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The slowest sample (to the histogram's resolution).
    pub max: Duration,
}
