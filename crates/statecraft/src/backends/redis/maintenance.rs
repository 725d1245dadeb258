//! [`RedisBackend`]'s extras beyond the contract: memory usage,
//! checkpoint and restore, and the server figures of its statistics.

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::Value;

use crate::backend::error::{Error, ErrorKind, Operation, Result};

use super::backend::RedisBackend;
use super::connection::Conn;
use super::errors::{redis_error, Idempotent};

impl RedisBackend {
    /// Bytes Redis uses for `key` and its value (`MEMORY USAGE`), or `None`
    /// when the key does not exist.
    pub async fn memory_usage(&self, key: &[u8]) -> Result<Option<u64>> {
        let inner = &*self.inner;
        inner
            .config
            .limits
            .check_key(inner.name, Operation::Stats, key)?;
        let full = inner.full_key(key);
        inner
            .run(Operation::Stats, Some(key), Idempotent::Yes, |mut conn| {
                let full = &full;
                async move {
                    redis::cmd("MEMORY")
                        .arg("USAGE")
                        .arg(full.as_slice())
                        .query_async::<Option<u64>>(&mut conn)
                        .await
                        .map_err(redis_error)
                }
            })
            .await
    }

    /// Writes every key under `prefix` to a portable checkpoint file that any
    /// backend can [`restore`](Self::restore); returns the entry count.
    pub async fn checkpoint(
        &self,
        prefix: &[u8],
        path: impl AsRef<std::path::Path>,
    ) -> Result<u64> {
        let io = |what: &str, err: std::io::Error| {
            Error::new(ErrorKind::Io, format!("{what} the checkpoint file failed"))
                .with_source(err)
                .context(self.inner.name, Operation::Checkpoint)
        };
        // Written beside the target and renamed over it once complete, so a
        // failed export never replaces a good checkpoint with a partial one.
        let path = path.as_ref();
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let file = std::fs::File::create(&partial).map_err(|err| io("creating", err))?;
        let mut out = std::io::BufWriter::new(file);
        let count = match crate::backend::checkpoint::export(self, prefix, &mut out).await {
            Ok(count) => count,
            Err(err) => {
                drop(out);
                let _ = std::fs::remove_file(&partial);
                return Err(err);
            }
        };
        out.into_inner()
            .map_err(|err| err.into_error())
            .and_then(|file| file.sync_all())
            .map_err(|err| io("writing", err))?;
        std::fs::rename(&partial, path).map_err(|err| io("renaming", err))?;
        Ok(count)
    }

    /// Restores a checkpoint file written by any backend; returns the entry
    /// count.
    pub async fn restore(&self, path: impl AsRef<std::path::Path>) -> Result<u64> {
        let file = std::fs::File::open(path.as_ref()).map_err(|err| {
            Error::new(ErrorKind::Io, "opening the checkpoint file failed")
                .with_source(err)
                .context(self.inner.name, Operation::Restore)
        })?;
        crate::backend::checkpoint::restore(self, &mut std::io::BufReader::new(file)).await
    }

    pub(super) async fn server_figures(&self) -> Result<Vec<(String, u64)>> {
        let inner = &*self.inner;
        inner
            .run(Operation::Stats, None, Idempotent::Yes, |conn| async move {
                let texts: Vec<String> = match conn {
                    Conn::Single(mut single) => vec![redis::cmd("INFO")
                        .arg("memory")
                        .query_async::<String>(&mut single)
                        .await
                        .map_err(redis_error)?],
                    Conn::Cluster(mut cluster) => {
                        let reply = cluster
                            .route_command(
                                {
                                    let mut cmd = redis::cmd("INFO");
                                    cmd.arg("memory");
                                    cmd
                                },
                                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                            )
                            .await
                            .map_err(redis_error)?;
                        let Value::Map(entries) = reply else {
                            return Err(Error::new(
                                ErrorKind::Corrupt,
                                "INFO did not answer per node",
                            ));
                        };
                        let mut texts = Vec::with_capacity(entries.len());
                        for (_, value) in entries {
                            let value = value.extract_error().map_err(redis_error)?;
                            texts.push(
                                redis::from_redis_value::<String>(value)
                                    .map_err(|err| redis_error(err.into()))?,
                            );
                        }
                        texts
                    }
                };
                let mut used = 0u64;
                for text in &texts {
                    for line in text.lines() {
                        if let Some(bytes) = line.strip_prefix("used_memory:") {
                            used += bytes.trim().parse::<u64>().unwrap_or(0);
                        }
                    }
                }
                Ok(vec![
                    ("used_memory_bytes".to_string(), used),
                    ("nodes".to_string(), texts.len() as u64),
                ])
            })
            .await
    }
}
