//! Snapshots of a backend's operation statistics.

use std::collections::BTreeMap;
use std::time::Duration;

/// A snapshot of a backend's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendStats {
    /// The backend these figures are for.
    pub backend: &'static str,
    /// Keys read that were found: one per key of `get`, `contains`, `ttl`,
    /// `get_and_delete` and `batch_get`.
    pub hits: u64,
    /// Keys read that were not found, counted as `hits` are.
    pub misses: u64,
    /// Writes: `put`, `delete`, `clear`, `set_if_not_exists`,
    /// `compare_and_swap` (whatever its outcome), `increment`, and one per
    /// `batch_put`, `batch_delete` and `transaction`.
    pub writes: u64,
    /// Listings (one per page) and counts.
    pub scans: u64,
    /// Operations that returned an error (each counted here only).
    pub errors: u64,
    /// Latency of a sample of the operations (one in [`SAMPLE_EVERY`](crate::raw::SAMPLE_EVERY)).
    pub latency: LatencySummary,
    /// Backend-specific figures, such as `size_on_disk_bytes` or `entries`.
    pub details: BTreeMap<String, u64>,
}

impl BackendStats {
    /// All operations counted (a batch read counts once per key).
    pub fn operations(&self) -> u64 {
        self.hits + self.misses + self.writes + self.scans + self.errors
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
