//! The schema's versioned migrations, run under an advisory lock.

use crate::backend::error::Result;

use super::config::quoted;
use super::errors::{corrupt, pg_error};
use super::pool::Inner;

/// The schema, one migration per version; each runs once per table.
fn migrations(table: &str) -> Vec<String> {
    let t = quoted(table);
    let index = format!("\"{}_expires_idx\"", table.replace('.', "_"));
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {t} (\
             key bytea PRIMARY KEY, \
             value bytea NOT NULL, \
             expires_at timestamptz); \
         CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) \
             WHERE expires_at IS NOT NULL"
    )]
}

/// The advisory lock every migrating instance takes first.
pub(super) const MIGRATION_LOCK: i64 = 0x5354_4154_4543_5246; // "STATECRF"

pub(super) async fn migrate(inner: &Inner) -> Result<()> {
    let mut client = inner.client().await?.into_object();
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS statecraft_migrations (\
             table_name text NOT NULL, \
             version int4 NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (table_name, version))",
    )
    .await
    .map_err(pg_error)?;
    let table = inner.config.table.as_str();
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM statecraft_migrations WHERE table_name = $1",
            &[&table],
        )
        .await
        .map_err(pg_error)?;
    let applied: i32 = row.try_get(0).map_err(corrupt)?;
    for (index, sql) in migrations(table).iter().enumerate() {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        if version <= applied {
            continue;
        }
        tx.batch_execute(sql).await.map_err(pg_error)?;
        tx.execute(
            "INSERT INTO statecraft_migrations (table_name, version) VALUES ($1, $2)",
            &[&table, &version],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(table, version, "applied statecraft migration");
    }
    tx.commit().await.map_err(pg_error)
}
