//! Purging expired rows, `VACUUM` and `ANALYZE`.

use std::sync::Weak;
use std::time::Duration;

use crate::backend::error::{Operation, Result};

use super::backend::PostgresBackend;
use super::config::quoted;
use super::errors::pg_error;
use super::pool::Inner;

impl Inner {
    async fn purge(&self) -> Result<u64> {
        let mut client = self.client().await?;
        let mut purged = 0;
        loop {
            let n = client
                .execute(self.sql.purge.as_str(), &[])
                .await
                .map_err(pg_error)?;
            purged += n;
            if n < 10_000 {
                break;
            }
        }
        // The native updates' own tables (a breaker's row, say).
        for sql in self.natives.purges() {
            purged += client.execute(&sql, &[]).await.map_err(pg_error)?;
        }
        Ok(purged)
    }
}

impl PostgresBackend {
    /// Deletes expired rows now (also those of the native atomic updates'
    /// tables set up so far); returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.run(Operation::Maintenance, None, inner.purge()).await
    }

    /// `VACUUM (ANALYZE)` the table, reclaiming dead rows' space for reuse.
    pub async fn vacuum(&self) -> Result<()> {
        self.maintenance("VACUUM (ANALYZE)").await
    }

    /// `ANALYZE` the table, refreshing the planner's statistics.
    pub async fn analyze(&self) -> Result<()> {
        self.maintenance("ANALYZE").await
    }

    async fn maintenance(&self, command: &str) -> Result<()> {
        let inner = &self.inner;
        let sql = format!("{command} {}", quoted(&inner.config.table));
        inner
            .run(Operation::Maintenance, None, async {
                let mut client = inner.client().await?;
                client.batch_execute(&sql).await.map_err(pg_error)
            })
            .await
    }
}

pub(super) async fn purge_loop(inner: Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(err) = inner.purge().await {
            tracing::warn!(error = %err, "purging expired rows failed");
        }
    }
}
