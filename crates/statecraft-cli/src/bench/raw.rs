//! `statecraft bench --with-raw`: the same operations through the engine or
//! client under each backend, with nothing of statecraft's in between, so
//! that users see on their own machine what statecraft costs them.
//!
//! The peers, each the plain way to do the operation without statecraft:
//! - `memory`: a `DashMap` with the memory backend's hasher (counters in a
//!   map of `i64`);
//! - `sled`: a sled database of its own in a temporary directory (for
//!   `sled:PATH`, beside PATH, on the same disk; counters as 8-byte
//!   big-endian integers, by `update_and_fetch`);
//! - `redb`: a redb database of its own (for `redb:PATH`, beside PATH),
//!   a read transaction per read and a write transaction per write,
//!   committed durably as redb does by default (statecraft's redb backend
//!   is durable too, but commits the writes waiting together at once);
//! - `redis://…`: one redis-rs multiplexed connection, cloned per task, on
//!   the same keys (`GET`, `SET`, `INCRBY`, `MGET`, `MSET`);
//! - `postgres://…`: one tokio-postgres client, shared by every task (its
//!   queries pipelined), with prepared statements on the same table: the
//!   backend's own read statement, a plain upsert, counters in a table of
//!   `int8`. One client against statecraft's pool: the peer reads as fast
//!   as PostgreSQL can pipeline, but its writes wait for each other (one
//!   server process runs them in turn).
//!
//! Each side's figures come from the same loop; the keys and values are
//! the same (on Redis and PostgreSQL the very same keys and rows).
//!
//! Stacks of layers, `null`, TLS and Cluster URLs have no raw peer.

use bytes::Bytes;
use dashmap::DashMap;
use statecraft::raw::MemoryHasher;
use tokio_postgres::{NoTls, Statement};

use super::{BenchOp, POSTGRES_TABLE, REDIS_PREFIX};

/// The raw engine or client under one backend.
pub(super) enum Raw {
    Memory {
        map: DashMap<Box<[u8]>, Bytes, MemoryHasher>,
        counters: DashMap<Box<[u8]>, i64, MemoryHasher>,
    },
    Sled {
        db: sled::Db,
        _dir: tempfile::TempDir,
    },
    Redb {
        db: redb::Database,
        _dir: tempfile::TempDir,
    },
    Redis(redis::aio::MultiplexedConnection),
    Postgres(Box<RawPostgres>),
}

/// One client and its prepared statements.
pub(super) struct RawPostgres {
    client: tokio_postgres::Client,
    get: Statement,
    put: Statement,
    increment: Statement,
    batch_get: Statement,
    batch_put: Statement,
}

/// The table of the PostgreSQL peer's counters (dropped at the end).
const COUNTERS: &str = "statecraft_bench_raw_counters";

impl Raw {
    /// The peer of the backend `spec` opens, `None` when it has none.
    pub(super) async fn open(spec: &str) -> Result<Option<Raw>, String> {
        if spec == "memory" {
            return Ok(Some(Raw::Memory {
                map: DashMap::with_hasher(MemoryHasher::default()),
                counters: DashMap::with_hasher(MemoryHasher::default()),
            }));
        }
        if spec == "sled" || spec.starts_with("sled:") {
            let dir = beside(spec.strip_prefix("sled:"))?;
            let db = sled::open(dir.path()).map_err(|e| format!("raw sled: {e}"))?;
            return Ok(Some(Raw::Sled { db, _dir: dir }));
        }
        if spec == "redb" || spec.starts_with("redb:") {
            let dir = beside(spec.strip_prefix("redb:"))?;
            let db = redb::Database::create(dir.path().join("raw.redb"))
                .map_err(|e| format!("raw redb: {e}"))?;
            let txn = db.begin_write().map_err(|e| format!("raw redb: {e}"))?;
            txn.open_table(REDB_DATA)
                .and(txn.open_table(REDB_COUNTERS))
                .map_err(|e| format!("raw redb: {e}"))?;
            txn.commit().map_err(|e| format!("raw redb: {e}"))?;
            return Ok(Some(Raw::Redb { db, _dir: dir }));
        }
        if spec.starts_with("redis://") {
            let client = redis::Client::open(spec).map_err(|e| format!("raw redis: {e}"))?;
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("raw redis: {e}"))?;
            return Ok(Some(Raw::Redis(conn)));
        }
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Some(Raw::Postgres(Box::new(
                RawPostgres::open(spec).await?,
            ))));
        }
        Ok(None)
    }

    /// Whether the peer runs `op` (the L1 cases are a stack's).
    pub(super) fn runs(op: BenchOp) -> bool {
        !matches!(op, BenchOp::GetHit | BenchOp::GetMiss)
    }

    /// Loads `keys` with `value`, as the statecraft side was.
    pub(super) async fn prefill(&self, keys: &[Bytes], value: &Bytes) -> Result<(), String> {
        for chunk in keys.chunks(1_000) {
            let entries: Vec<(Bytes, Bytes)> =
                chunk.iter().map(|k| (k.clone(), value.clone())).collect();
            self.call(Call::BatchPut(entries))
                .await
                .map_err(|e| format!("loading keys into the raw peer: {e}"))?;
        }
        Ok(())
    }

    /// One call of the operation.
    pub(super) async fn call(&self, call: Call<'_>) -> Result<(), String> {
        match self {
            Raw::Memory { map, counters } => {
                match call {
                    Call::Get(key) => drop(map.get(key).map(|v| v.value().clone())),
                    Call::Put(key, value) => drop(map.insert(Box::from(key), value.clone())),
                    // The key allocated only for a new counter.
                    Call::Increment(key) => match counters.get_mut(key) {
                        Some(mut n) => *n += 1,
                        None => *counters.entry(Box::from(key)).or_insert(0) += 1,
                    },
                    Call::BatchGet(keys) => {
                        for key in keys {
                            drop(map.get(&key[..]).map(|v| v.value().clone()));
                        }
                    }
                    Call::BatchPut(entries) => {
                        for (key, value) in entries {
                            map.insert(Box::from(&key[..]), value);
                        }
                    }
                }
                Ok(())
            }
            Raw::Sled { db, .. } => sled_call(db, call).map_err(|e| e.to_string()),
            Raw::Redb { db, .. } => redb_call(db, call).map_err(|e| e.to_string()),
            Raw::Redis(conn) => redis_call(conn.clone(), call)
                .await
                .map_err(|e| e.to_string()),
            Raw::Postgres(pg) => pg.call(call).await.map_err(|e| e.to_string()),
        }
    }

    /// Removes what only the peer wrote (the statecraft side's clear takes
    /// the shared keys and rows).
    pub(super) async fn clear(&self) -> Result<(), String> {
        if let Raw::Postgres(pg) = self {
            pg.client
                .batch_execute(&format!("DROP TABLE IF EXISTS {COUNTERS}"))
                .await
                .map_err(|e| format!("dropping {COUNTERS}: {e}"))?;
        }
        Ok(())
    }
}

/// What one call does, its keys picked by the task.
pub(super) enum Call<'a> {
    Get(&'a [u8]),
    Put(&'a [u8], &'a Bytes),
    Increment(&'a [u8]),
    BatchGet(&'a [Bytes]),
    BatchPut(Vec<(Bytes, Bytes)>),
}

fn sled_call(db: &sled::Db, call: Call<'_>) -> sled::Result<()> {
    match call {
        Call::Get(key) => drop(db.get(key)?),
        Call::Put(key, value) => drop(db.insert(key, value.as_ref())?),
        Call::Increment(key) => drop(db.update_and_fetch(key, |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, i64::from_be_bytes);
            Some(n.wrapping_add(1).to_be_bytes().to_vec())
        })?),
        Call::BatchGet(keys) => {
            for key in keys {
                drop(db.get(key)?);
            }
        }
        Call::BatchPut(entries) => {
            let mut batch = sled::Batch::default();
            for (key, value) in entries {
                batch.insert(key.as_ref(), value.as_ref());
            }
            db.apply_batch(batch)?;
        }
    }
    Ok(())
}

/// A temporary directory beside `path` (on the same disk), or in the
/// system's temporary directory.
fn beside(path: Option<&str>) -> Result<tempfile::TempDir, String> {
    match path {
        Some(path) => {
            let path = std::path::Path::new(path);
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            tempfile::tempdir_in(parent.unwrap_or(std::path::Path::new(".")))
        }
        None => tempfile::tempdir(),
    }
    .map_err(|e| format!("cannot create a temporary directory: {e}"))
}

const REDB_DATA: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("data");
const REDB_COUNTERS: redb::TableDefinition<'static, &'static [u8], i64> =
    redb::TableDefinition::new("counters");

/// redb the plain way: a read transaction per read, a write transaction
/// per write, committed durably (redb's default).
fn redb_call(db: &redb::Database, call: Call<'_>) -> Result<(), redb::Error> {
    use redb::{ReadableDatabase as _, ReadableTable as _};
    match call {
        Call::Get(key) => {
            let txn = db.begin_read()?;
            drop(
                txn.open_table(REDB_DATA)?
                    .get(key)?
                    .map(|v| v.value().to_vec()),
            );
        }
        Call::BatchGet(keys) => {
            let txn = db.begin_read()?;
            let table = txn.open_table(REDB_DATA)?;
            for key in keys {
                drop(table.get(&key[..])?.map(|v| v.value().to_vec()));
            }
        }
        Call::Put(key, value) => {
            let txn = db.begin_write()?;
            txn.open_table(REDB_DATA)?.insert(key, value.as_ref())?;
            txn.commit()?;
        }
        Call::Increment(key) => {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(REDB_COUNTERS)?;
                let n = table.get(key)?.map_or(0, |v| v.value());
                table.insert(key, n.wrapping_add(1))?;
            }
            txn.commit()?;
        }
        Call::BatchPut(entries) => {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(REDB_DATA)?;
                for (key, value) in &entries {
                    table.insert(&key[..], value.as_ref())?;
                }
            }
            txn.commit()?;
        }
    }
    Ok(())
}

/// The statecraft side's key of `key` (under the bench's prefix).
fn redis_key(key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(REDIS_PREFIX.len() + key.len());
    full.extend_from_slice(REDIS_PREFIX.as_bytes());
    full.extend_from_slice(key);
    full
}

async fn redis_call(
    mut conn: redis::aio::MultiplexedConnection,
    call: Call<'_>,
) -> redis::RedisResult<()> {
    match call {
        Call::Get(key) => {
            let _: Option<Vec<u8>> = redis::cmd("GET")
                .arg(redis_key(key))
                .query_async(&mut conn)
                .await?;
        }
        Call::Put(key, value) => {
            redis::cmd("SET")
                .arg(redis_key(key))
                .arg(value.as_ref())
                .exec_async(&mut conn)
                .await?;
        }
        Call::Increment(key) => {
            let _: i64 = redis::cmd("INCRBY")
                .arg(redis_key(key))
                .arg(1)
                .query_async(&mut conn)
                .await?;
        }
        Call::BatchGet(keys) => {
            let mut mget = redis::cmd("MGET");
            for key in keys {
                mget.arg(redis_key(key));
            }
            let _: Vec<Option<Vec<u8>>> = mget.query_async(&mut conn).await?;
        }
        Call::BatchPut(entries) => {
            let mut mset = redis::cmd("MSET");
            for (key, value) in &entries {
                mset.arg(redis_key(key)).arg(value.as_ref());
            }
            mset.exec_async(&mut conn).await?;
        }
    }
    Ok(())
}

impl RawPostgres {
    async fn open(url: &str) -> Result<RawPostgres, String> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| format!("raw postgres: {e}"))?;
        tokio::spawn(connection);
        let t = format!("\"{POSTGRES_TABLE}\"");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {COUNTERS} (key bytea PRIMARY KEY, n int8 NOT NULL)"
            ))
            .await
            .map_err(|e| format!("raw postgres: creating {COUNTERS}: {e}"))?;
        let prepare = |sql: String| {
            let client = &client;
            async move {
                client
                    .prepare(&sql)
                    .await
                    .map_err(|e| format!("raw postgres: preparing {sql:?}: {e}"))
            }
        };
        let upsert = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
                      expires_at = EXCLUDED.expires_at";
        let get = prepare(format!(
            "SELECT value FROM {t} WHERE key = $1 AND (expires_at IS NULL OR expires_at > now())"
        ))
        .await?;
        let put = prepare(format!(
            "INSERT INTO {t} (key, value, expires_at) VALUES ($1, $2, NULL) {upsert}"
        ))
        .await?;
        let increment = prepare(format!(
            "INSERT INTO {COUNTERS} AS c (key, n) VALUES ($1, 1) \
             ON CONFLICT (key) DO UPDATE SET n = c.n + 1 RETURNING n"
        ))
        .await?;
        let batch_get = prepare(format!(
            "SELECT key, value FROM {t} WHERE key = ANY($1) \
             AND (expires_at IS NULL OR expires_at > now())"
        ))
        .await?;
        // A key twice in one batch: one of its values (an upsert may not
        // touch a row twice).
        let batch_put = prepare(format!(
            "INSERT INTO {t} (key, value, expires_at) \
             SELECT DISTINCT ON (k) k, v, NULL::timestamptz \
             FROM unnest($1::bytea[], $2::bytea[]) AS u(k, v) ORDER BY k {upsert}"
        ))
        .await?;
        Ok(RawPostgres {
            client,
            get,
            put,
            increment,
            batch_get,
            batch_put,
        })
    }

    async fn call(&self, call: Call<'_>) -> Result<(), tokio_postgres::Error> {
        let client = &self.client;
        match call {
            Call::Get(key) => drop(client.query_opt(&self.get, &[&key]).await?),
            Call::Put(key, value) => {
                client.execute(&self.put, &[&key, &&value[..]]).await?;
            }
            Call::Increment(key) => drop(client.query_one(&self.increment, &[&key]).await?),
            Call::BatchGet(keys) => {
                let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                drop(client.query(&self.batch_get, &[&keys]).await?);
            }
            Call::BatchPut(entries) => {
                let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| &k[..]).collect();
                let values: Vec<&[u8]> = entries.iter().map(|(_, v)| &v[..]).collect();
                client.execute(&self.batch_put, &[&keys, &values]).await?;
            }
        }
        Ok(())
    }
}
