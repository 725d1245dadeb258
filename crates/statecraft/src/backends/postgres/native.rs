//! Native atomic updates: an [`AtomicUpdate`]'s own PostgreSQL objects,
//! installed once per backend, and its one statement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio_postgres::error::SqlState;

use crate::backend::atomic::{AtomicUpdate, PostgresNative};
use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::backend::PostgresBackend;
use super::config::quoted;
use super::errors::{corrupt, pg_error};
use super::migrations::MIGRATION_LOCK;
use super::pool::Inner;

/// The updates set up on this backend so far: their statements, with the
/// table's names in place, by the update's name.
#[derive(Debug)]
pub(super) struct Natives {
    set_up: Mutex<HashMap<&'static str, Statements>>,
    /// Held while one update is set up, with the set-ups done again
    /// (objects found gone) so far and when the last was.
    setting_up: tokio::sync::Mutex<Repairs>,
    /// One native call at a time per lane (a key's hash picks its lane):
    /// the calls of one process on one hot key wait here, one after
    /// another, rather than as many server backends queued on the key's
    /// row lock — which, many deep on two cores, stalls the server for
    /// hundreds of milliseconds at a time.
    lanes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Purge statements of state kept outside any update's table.
    extra_purges: Mutex<Vec<Arc<str>>>,
}

/// How many lanes native calls go through.
const LANES: usize = 256;

impl Default for Natives {
    fn default() -> Self {
        Natives {
            set_up: Mutex::default(),
            setting_up: tokio::sync::Mutex::new(Repairs {
                done: 0,
                last: None,
            }),
            lanes: (0..LANES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            extra_purges: Mutex::default(),
        }
    }
}

/// The set-ups done again because objects were found gone.
#[derive(Debug)]
struct Repairs {
    done: u64,
    /// The last one, unless a call then ran.
    last: Option<std::time::Instant>,
}

/// After a set-up done again that did not help (the call failed again),
/// none for this long: a statement that keeps failing as if its objects
/// were gone runs no DDL at every call.
const REPAIR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Statements {
    call: Arc<str>,
    purge: Option<Arc<str>>,
}

impl Natives {
    /// The lane of `key`.
    fn lane(&self, key: &[u8]) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        let at = self.hasher.hash_one(key) as usize % self.lanes.len();
        &self.lanes[at]
    }

    fn get(&self, name: &str) -> Option<Arc<str>> {
        self.set_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|s| s.call.clone())
    }

    /// Forgets that `name` was set up (its objects were found gone).
    fn forget(&self, name: &str) {
        self.set_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    fn insert(&self, name: &'static str, statements: Statements) {
        self.set_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, statements);
    }

    /// Adds `purge` (once) to the statements the purge task runs: the
    /// clean-up of state kept outside the updates' own tables.
    pub(super) fn add_purge(&self, purge: String) {
        let mut extra = self
            .extra_purges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !extra.iter().any(|known| **known == *purge) {
            extra.push(Arc::from(purge));
        }
    }

    /// The purge statements of the updates set up so far, and the others
    /// added.
    pub(super) fn purges(&self) -> Vec<Arc<str>> {
        let mut purges: Vec<Arc<str>> = self
            .set_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|s| s.purge.clone())
            .collect();
        purges.extend(
            self.extra_purges
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        purges
    }
}

/// A short version of `setup`.
fn version(setup: &str) -> String {
    crate::backend::atomic::source_version(setup)
}

/// `sql` with every `@name@` replaced by the identifier `"<table>_name"`,
/// every `@name#@` by `"<table>_name_<version>"` (schema-qualified as
/// `table` is), and `@table@` by the backend's table itself.
pub(super) fn expand(sql: &str, table: &str, version: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let word = after.find('@').map(|end| &after[..end]).filter(|w| {
            let name = w.strip_suffix('#').unwrap_or(w);
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        match word {
            Some(word) => {
                let name = match word.strip_suffix('#') {
                    Some(name) => format!("{table}_{name}_{version}"),
                    None if word == "table" => table.to_owned(),
                    None => format!("{table}_{word}"),
                };
                out.push_str(&quoted(&name));
                rest = &after[word.len() + 1..];
            }
            None => {
                out.push('@');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

impl Inner {
    /// Runs `update` by its native copy, setting it up first if this
    /// backend has not yet.
    pub(super) async fn run_native(
        &self,
        update: &dyn AtomicUpdate,
        native: PostgresNative,
        key: &[u8],
        input: &[u8],
    ) -> Result<Bytes> {
        let default_ttl = self
            .config
            .default_ttl
            .map_or(0, |ttl| i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let _lane = self.natives.lane(key).lock().await;
        let repairs = self.natives.setting_up.lock().await.done;
        let mut again = false;
        loop {
            let call = self.set_up(update.name(), native).await?;
            let mut client = self.client().await?;
            let Some(answer) = client.call_native(&call, key, input, default_ttl).await else {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "{}: a native PostgreSQL update takes UTF-8 input",
                        update.name()
                    ),
                ));
            };
            match answer {
                Ok(row) => {
                    if again {
                        // The set-up helped: the next loss is repaired at once.
                        self.natives.setting_up.lock().await.last = None;
                    }
                    let output: String = row.try_get(0).map_err(corrupt)?;
                    return Ok(Bytes::from(output));
                }
                // Its table, a column or a function is gone (an operator
                // dropped it, a restore without it): the statement did not
                // run, so it is set up again (unless that was done since
                // this call began, or did not help within REPAIR_EVERY) and
                // run once more.
                Err(err) if !again && gone(&err) => {
                    drop(client);
                    self.repair(update.name(), native, repairs, &err).await?;
                    again = true;
                }
                Err(err) => return Err(native_error(err)),
            }
        }
    }

    /// The keys `update` holds live state for under `prefix`, by its
    /// native `keys` statement (set up first if need be).
    pub(super) async fn native_keys(
        &self,
        update: &dyn AtomicUpdate,
        prefix: &[u8],
    ) -> Result<Vec<Bytes>> {
        let (Some(native), Some(keys)) =
            (update.postgres(), update.postgres().and_then(|n| n.keys))
        else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: no native PostgreSQL listing", update.name()),
            ));
        };
        self.set_up(update.name(), native).await?;
        let sql = expand(keys, &self.config.table, &version(native.setup));
        let mut client = self.client().await?;
        let rows = client.query(&sql, &[&prefix]).await.map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<_, Vec<u8>>(0)
                    .map(Bytes::from)
                    .map_err(corrupt)
            })
            .collect()
    }

    /// The update's statement, once its objects exist: set up by this
    /// backend once (one set-up at a time), skipped where this version's
    /// function exists already.
    async fn set_up(&self, name: &'static str, native: PostgresNative) -> Result<Arc<str>> {
        if let Some(call) = self.natives.get(name) {
            return Ok(call);
        }
        let _one_at_a_time = self.natives.setting_up.lock().await;
        if let Some(call) = self.natives.get(name) {
            return Ok(call);
        }
        self.install(name, native, false).await
    }

    /// Sets `name` up again after a call found its objects gone (`err`),
    /// unless another did since `seen` set-ups were done again, or one that
    /// did not help was done within [`REPAIR_EVERY`].
    async fn repair(
        &self,
        name: &'static str,
        native: PostgresNative,
        seen: u64,
        err: &tokio_postgres::Error,
    ) -> Result<()> {
        let mut repairs = self.natives.setting_up.lock().await;
        let recent = repairs.last.is_some_and(|at| at.elapsed() < REPAIR_EVERY);
        if repairs.done != seen || recent {
            return Ok(());
        }
        tracing::warn!(
            update = name,
            error = %err,
            "a native PostgreSQL update's objects are gone: setting them up again"
        );
        self.natives.forget(name);
        repairs.done += 1;
        repairs.last = Some(std::time::Instant::now());
        self.install(name, native, true).await.map(drop)
    }

    /// Sets `name` up (the caller holds `setting_up`): where this version's
    /// function is missing, or whatever is there when `again`.
    async fn install(
        &self,
        name: &'static str,
        native: PostgresNative,
        again: bool,
    ) -> Result<Arc<str>> {
        let table = self.config.table.as_str();
        let version = version(native.setup);
        let function = expand(native.function, table, &version);
        let mut client = self.client().await?;
        let present: bool = client
            .query_one("SELECT to_regproc($1) IS NOT NULL", &[&function])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(pg_error)?;
        if again || !present {
            let mut client = client.into_object();
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(pg_error)?;
            // Another process may have set it up while this one waited for
            // the lock: set up again, its `CREATE INDEX` would wait for
            // every write in flight on the table and hold up the ones
            // after it.
            let done: bool = tx
                .query_one("SELECT to_regproc($1) IS NOT NULL", &[&function])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(pg_error)?;
            if again || !done {
                tx.batch_execute(&expand(native.setup, table, &version))
                    .await
                    .map_err(pg_error)?;
                tracing::info!(table, update = name, %version, "set up a native PostgreSQL update");
            }
            tx.commit().await.map_err(pg_error)?;
        }
        let call: Arc<str> = Arc::from(expand(native.call, table, &version));
        let purge = native
            .purge
            .map(|sql| Arc::from(expand(sql, table, &version)));
        self.natives.insert(
            name,
            Statements {
                call: call.clone(),
                purge,
            },
        );
        Ok(call)
    }
}

impl PostgresBackend {
    /// The keys a native atomic update (a breaker's step, say) holds live
    /// state for under `prefix`, in key order: such state lives in the
    /// update's own table, which [`list_keys`](crate::StateBackend::list_keys)
    /// does not see.
    pub async fn native_keys(
        &self,
        update: &dyn AtomicUpdate,
        prefix: &[u8],
    ) -> Result<Vec<Bytes>> {
        let inner = &self.inner;
        inner
            .run(Operation::ListKeys, None, inner.native_keys(update, prefix))
            .await
    }
}

/// Whether `err` says a table, column or function the statement names is
/// gone.
fn gone(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| {
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNDEFINED_FUNCTION,
        ]
        .contains(db.code())
    })
}

/// A native statement's error: its own "bad input" is the caller's.
fn native_error(err: tokio_postgres::Error) -> Error {
    match err.as_db_error() {
        Some(db) if *db.code() == SqlState::INVALID_PARAMETER_VALUE => {
            let message = db.message();
            let message = message
                .strip_prefix("statecraft:invalid_argument ")
                .unwrap_or(message);
            Error::new(ErrorKind::InvalidArgument, message.to_string())
        }
        _ => pg_error(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_the_tables_identifiers() {
        assert_eq!(
            expand("SELECT @step#@($1) FROM @rows@;", "state", "v1"),
            "SELECT \"state_step_v1\"($1) FROM \"state_rows\";"
        );
        assert_eq!(
            expand("@step@ a@b c@", "app.state", "v1"),
            "\"app\".\"state_step\" a@b c@"
        );
        assert_eq!(expand("x @ y @@ @Up@ @#@", "t", "v1"), "x @ y @@ @Up@ @#@");
        assert_eq!(
            expand("UPDATE @table@ SET v = @f#@(v)", "app.state", "v1"),
            "UPDATE \"app\".\"state\" SET v = \"app\".\"state_f_v1\"(v)"
        );
        assert_ne!(version("a"), version("b"));
        assert_eq!(version("a").len(), 8);
    }
}
