//! [`RedisConfig`] and its builder: URL parsing and validation.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;

use super::{CLUSTER_NAME, NAME};

/// Where the backend connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// One server: a `redis://` or `rediss://` URL.
    Single(String),
    /// Cluster seed nodes, each a `redis://` or `rediss://` URL.
    Cluster(Vec<String>),
}

/// How a [`RedisBackend`](super::RedisBackend) connects and behaves; build it with
/// [`RedisConfig::builder`].
#[derive(Clone)]
pub struct RedisConfig {
    pub(super) target: Target,
    pub(super) key_prefix: Bytes,
    pub(super) default_ttl: Option<Duration>,
    pub(super) pool_size: usize,
    pub(super) max_retries: u32,
    pub(super) retry_base: Duration,
    pub(super) retry_max: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) pipeline_batch: usize,
    pub(super) limits: Limits,
    pub(super) tls_root_cert: Option<Vec<u8>>,
    pub(super) functions: bool,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may hold passwords: show hosts only.
        let hosts: Vec<String> = match &self.target {
            Target::Single(url) => vec![redact(url)],
            Target::Cluster(nodes) => nodes.iter().map(|url| redact(url)).collect(),
        };
        f.debug_struct("RedisConfig")
            .field("hosts", &hosts)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .field("default_ttl", &self.default_ttl)
            .field("pool_size", &self.pool_size)
            .field("max_retries", &self.max_retries)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("pipeline_batch", &self.pipeline_batch)
            .finish_non_exhaustive()
    }
}

/// A URL without its user information.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl RedisConfig {
    /// A builder with the defaults: no key prefix, no default TTL, 1
    /// multiplexed connection, 3 retries backing off from 10 ms to 1 s, 1 s to connect,
    /// 1 s per round trip, 1,000 commands per pipeline, server functions on.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder {
            url: None,
            config: RedisConfig {
                target: Target::Single(String::new()),
                key_prefix: Bytes::new(),
                default_ttl: None,
                pool_size: 1,
                max_retries: 3,
                retry_base: Duration::from_millis(10),
                retry_max: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                pipeline_batch: 1000,
                limits: Limits::default(),
                tls_root_cert: None,
                functions: true,
            },
        }
    }

    /// Whether this configuration is for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }
}

/// Builds a [`RedisConfig`].
#[derive(Debug, Clone)]
pub struct RedisConfigBuilder {
    url: Option<String>,
    config: RedisConfig,
}

impl RedisConfigBuilder {
    /// Where to connect:
    ///
    /// - `redis://[user:password@]host[:port][/db]` — one server;
    /// - `rediss://…` — one server over TLS (feature `redis-tls`);
    /// - `redis+cluster://host:port[,host:port…]` — a Redis Cluster, given
    ///   one or more seed nodes (`rediss+cluster://` for TLS).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A Redis Cluster from seed node URLs (`redis://host:port`).
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.url = None;
        self.config.target = Target::Cluster(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Prepended to every key, so that several applications share a server
    /// without seeing each other's keys. Listing, counting and clearing stay
    /// within it.
    pub fn key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.config.key_prefix = prefix.into();
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = Some(ttl);
        self
    }

    /// How many multiplexed connections to open (default 1). Each carries
    /// any number of concurrent requests, pipelined: one connection batches
    /// the most requests per system call, and measured best on a 2-core
    /// machine (BENCHMARKS.md); more spread the socket work over threads
    /// when the client has cores to spare.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.config.pool_size = connections;
        self
    }

    /// How many times a failed round trip is retried (0: never).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.config.max_retries = retries;
        self
    }

    /// The backoff before retry `n` is a random time up to
    /// `min(max, base × 2ⁿ)` ("full jitter").
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.retry_base = base;
        self.config.retry_max = max;
        self
    }

    /// How long opening a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The deadline of one round trip (each retry gets its own).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self
    }

    /// The most commands sent in one pipeline by batch operations.
    pub fn pipeline_batch_size(mut self, commands: usize) -> Self {
        self.config.pipeline_batch = commands;
        self
    }

    /// Key and value size limits (Redis itself takes up to 512 MiB).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// PEM certificates to trust for `rediss://` instead of the system's.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.tls_root_cert = Some(pem.into());
        self
    }

    /// Whether native atomic updates that come as a library
    /// ([`AtomicUpdate::redis_function`](crate::backend::atomic::AtomicUpdate::redis_function))
    /// are loaded once as a Redis Function and called by `FCALL` (on by
    /// default; Redis 7 or later, found out on the first call: an older
    /// server runs them by `EVALSHA`). Off, they always run by `EVALSHA`,
    /// which sets the library up again on every call.
    pub fn server_functions(mut self, on: bool) -> Self {
        self.config.functions = on;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<RedisConfig> {
        let mut config = self.config;
        let invalid = |message: String| {
            Err(Error::new(ErrorKind::Config, message)
                .with_backend(NAME)
                .with_operation(Operation::Open))
        };
        if let Some(url) = self.url {
            config.target = parse_url(&url)?;
        }
        let urls = match &config.target {
            Target::Single(url) => std::slice::from_ref(url),
            Target::Cluster(nodes) => nodes.as_slice(),
        };
        if urls.is_empty() || urls.iter().any(|url| url.is_empty()) {
            return invalid("a Redis URL is required".into());
        }
        for url in urls {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return invalid(format!(
                    "{} is not a redis:// or rediss:// URL",
                    redact(url)
                ));
            }
            if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
                return invalid("rediss:// (TLS) needs statecraft's `redis-tls` feature".into());
            }
        }
        if config.pool_size == 0 {
            return invalid("pool_size must be at least 1".into());
        }
        if config.pipeline_batch == 0 {
            return invalid("pipeline_batch_size must be at least 1".into());
        }
        if config.connect_timeout.is_zero() || config.response_timeout.is_zero() {
            return invalid("timeouts must be above zero".into());
        }
        if config.retry_base > config.retry_max {
            return invalid("the retry backoff base is above its maximum".into());
        }
        Ok(config)
    }
}

/// `redis://`, `rediss://`, `redis+cluster://a,b`, `rediss+cluster://a,b`.
fn parse_url(url: &str) -> Result<Target> {
    for (scheme, node_scheme) in [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ] {
        if let Some(rest) = url.strip_prefix(scheme) {
            // User information, if any, applies to every node.
            let (userinfo, hosts) = match rest.rfind('@') {
                Some(at) => (&rest[..=at], &rest[at + 1..]),
                None => ("", rest),
            };
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|host| !host.is_empty())
                .map(|host| format!("{node_scheme}{userinfo}{host}"))
                .collect();
            if nodes.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{scheme} needs at least one host:port"),
                )
                .with_backend(CLUSTER_NAME)
                .with_operation(Operation::Open));
            }
            return Ok(Target::Cluster(nodes));
        }
    }
    Ok(Target::Single(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node() {
        let target = parse_url("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001").ok();
        assert_eq!(
            target,
            Some(Target::Cluster(vec![
                "redis://:pw@127.0.0.1:7000".into(),
                "redis://:pw@127.0.0.1:7001".into()
            ]))
        );
        assert!(parse_url("redis+cluster://").is_err());
        assert_eq!(redact("redis://user:secret@host:1"), "redis://host:1");
    }

    #[test]
    fn bad_configs_are_config_errors() {
        let kind = |b: RedisConfigBuilder| b.build().err().map(|e| e.kind());
        assert_eq!(kind(RedisConfig::builder()), Some(ErrorKind::Config));
        assert_eq!(
            kind(RedisConfig::builder().url("http://x")),
            Some(ErrorKind::Config)
        );
        assert_eq!(
            kind(RedisConfig::builder().url("redis://x").pool_size(0)),
            Some(ErrorKind::Config)
        );
        assert!(RedisConfig::builder().url("redis://x").build().is_ok());
    }
}
