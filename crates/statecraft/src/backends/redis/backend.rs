//! [`RedisBackend`]: opening the connections, and the key checks and
//! slot grouping its operations share.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use redis::Script;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

use super::cluster::hash_slot;
use super::config::{RedisConfig, Target};
use super::connection::{client_for, install_crypto_provider, Pooled, SingleConn};
use super::errors::redis_error;
use super::inner::Inner;
use super::scripts::{CAS_SCRIPT, GET_WITH_TTL_SCRIPT, INCREMENT_SCRIPT};
use super::{CLUSTER_NAME, NAME};

/// A [`StateBackend`] over Redis or a Redis Cluster: every operation one
/// round trip, scripts called by SHA, `SCAN` (never `KEYS`) under an escaped
/// prefix, reconnecting multiplexed connections, retries only where the
/// request certainly did not run.
///
/// ```no_run
/// # async fn demo() -> statecraft::Result<()> {
/// use std::time::Duration;
/// use statecraft::{RedisBackend, RedisConfig, StateBackend};
/// let config = RedisConfig::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("optimizer:")
///     .default_ttl(Duration::from_secs(3600))
///     .pool_size(8)
///     .max_retries(3)
///     .build()?;
/// let redis = RedisBackend::new(config).await?;
/// redis.put(b"k", "v".into()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to `url` with the default configuration.
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        Self::new(RedisConfig::builder().url(url).build()?).await
    }

    /// Opens the configured connections and checks that the server answers.
    /// Must be called inside a Tokio runtime.
    pub async fn new(config: RedisConfig) -> Result<RedisBackend> {
        install_crypto_provider();
        let name = if config.is_cluster() {
            CLUSTER_NAME
        } else {
            NAME
        };
        let open = |err: Error| err.context(name, Operation::Open);
        let connect = async {
            let mut conns = Vec::with_capacity(config.pool_size);
            let pubsub_clients: Vec<redis::Client>;
            match &config.target {
                Target::Single(url) => {
                    let client = client_for(url, &config).map_err(redis_error)?;
                    for _ in 0..config.pool_size {
                        let single = SingleConn::open(client.clone(), &config)
                            .await
                            .map_err(redis_error)?;
                        conns.push(Pooled::Single(Arc::new(single)));
                    }
                    pubsub_clients = vec![client];
                }
                Target::Cluster(nodes) => {
                    // No retries inside redis-rs: it would send again a command
                    // that may have run (a second increment, a GETDEL whose
                    // value is lost). `Inner::run` retries what is safe.
                    let mut builder = redis::cluster::ClusterClient::builder(nodes.clone())
                        .retries(0)
                        .min_retry_wait(config.retry_base.as_millis() as u64)
                        .max_retry_wait(config.retry_max.as_millis() as u64)
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.response_timeout);
                    #[cfg(feature = "redis-tls")]
                    if let Some(pem) = &config.tls_root_cert {
                        builder = builder.certs(redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem.clone()),
                        });
                    }
                    let client = builder.build().map_err(redis_error)?;
                    for _ in 0..config.pool_size {
                        let conn = client.get_async_connection().await.map_err(redis_error)?;
                        conns.push(Pooled::Cluster(conn));
                    }
                    pubsub_clients = nodes
                        .iter()
                        .map(|node| client_for(node, &config))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(redis_error)?;
                }
            }
            Ok((conns, pubsub_clients))
        };
        let deadline = config.connect_timeout.saturating_mul(
            u32::try_from(config.pool_size)
                .unwrap_or(u32::MAX)
                .saturating_add(1),
        );
        let (conns, pubsub_clients) = match tokio::time::timeout(deadline, connect).await {
            Ok(result) => result.map_err(open)?,
            Err(_) => {
                return Err(open(Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to Redis took longer than {deadline:?}"),
                )))
            }
        };
        let functions = config.functions;
        let backend = RedisBackend {
            inner: Arc::new(Inner {
                name,
                conns,
                next_conn: AtomicUsize::new(0),
                pubsub_clients,
                config,
                stats: StatsRecorder::new(),
                retries: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                cas: Script::new(CAS_SCRIPT),
                increment: Script::new(INCREMENT_SCRIPT),
                get_with_ttl: Script::new(GET_WITH_TTL_SCRIPT),
                scripts: super::atomic::Scripts::new(functions),
                jitter: std::collections::hash_map::RandomState::new(),
                jitter_seq: AtomicU64::new(0),
            }),
        };
        crate::backends::anchor::spawn(Arc::downgrade(&backend.inner));
        backend.health_check().await.map_err(|err| {
            Error::new(err.kind(), "Redis did not answer PING")
                .temporary(err.is_temporary())
                .with_source(err)
                .context(name, Operation::Open)
        })?;
        Ok(backend)
    }

    /// The key prefix every key is stored under.
    pub fn key_prefix(&self) -> &[u8] {
        &self.inner.config.key_prefix
    }

    pub(super) fn check_key(&self, op: Operation, key: &[u8]) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        inner.config.limits.check_key(inner.name, op, key)?;
        Ok(inner.full_key(key))
    }

    pub(super) fn check_entry(&self, op: Operation, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        inner
            .config
            .limits
            .check_entry(inner.name, op, key, value)?;
        Ok(inner.full_key(key))
    }

    /// Groups indexes of `keys` by hash slot on a Cluster (one group on a
    /// single server), each group cut to the pipeline batch size.
    pub(super) fn groups(&self, keys: &[Vec<u8>]) -> Vec<Vec<usize>> {
        let batch = self.inner.config.pipeline_batch;
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if self.inner.config.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
            for (index, key) in keys.iter().enumerate() {
                by_slot.entry(hash_slot(key)).or_default().push(index);
            }
            for (_, indexes) in by_slot {
                groups.extend(indexes.chunks(batch).map(<[usize]>::to_vec));
            }
        } else {
            let all: Vec<usize> = (0..keys.len()).collect();
            groups.extend(all.chunks(batch).map(<[usize]>::to_vec));
        }
        groups
    }
}
