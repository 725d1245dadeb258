//! [`MaintenanceTask`]: housekeeping a backend runs on request.

/// A housekeeping task for [`StateBackend::maintain`](crate::StateBackend::maintain).
///
/// Each backend runs the tasks that mean something for its store and answers
/// the others with an [`Unsupported`](crate::ErrorKind::Unsupported) error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MaintenanceTask {
    /// Physically removes expired entries now (memory, sled, PostgreSQL;
    /// Redis expires keys itself). Returns how many were removed.
    PurgeExpired,
    /// Writes buffered data to disk (sled). Returns the bytes flushed.
    Flush,
    /// Reclaims the space of dead rows (PostgreSQL `VACUUM`). Returns 0.
    Vacuum,
    /// Refreshes the planner's statistics (PostgreSQL `ANALYZE`). Returns 0.
    Analyze,
}

impl MaintenanceTask {
    /// A short, stable, lowercase name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceTask::PurgeExpired => "purge_expired",
            MaintenanceTask::Flush => "flush",
            MaintenanceTask::Vacuum => "vacuum",
            MaintenanceTask::Analyze => "analyze",
        }
    }
}
