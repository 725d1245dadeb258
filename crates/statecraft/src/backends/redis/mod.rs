//! [`RedisBackend`]: fast shared state in Redis, single node or Cluster.
//!
//! Every contract operation is one round trip: `SET … NX PX`, `GETDEL`,
//! `PTTL`, `MGET`, pipelined `SET … PX`, and server-side scripts (called by
//! SHA, loaded again on `NOSCRIPT`) for compare-and-swap and increment-with-
//! TTL. Scripts get keys only through `KEYS[]` and values only through
//! `ARGV`, and touch one key each, so they run unchanged on a Cluster.
//! Listing, counting and clearing walk `SCAN` with the key prefix's glob
//! metacharacters escaped; `KEYS`, `FLUSHDB` and `FLUSHALL` are never sent,
//! and nothing outside the prefix is touched.
//!
//! A backend holds `pool_size` multiplexed connections (each pipelines any
//! number of concurrent requests) and reconnects on its own after the server
//! comes back. Every round trip has a deadline; temporary failures are
//! retried with exponential backoff and full jitter — always for reads and
//! idempotent writes, and for the rest only when the request certainly never
//! reached the server.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, ServerErrorKind, Value};

use crate::backend::capabilities::Capabilities;
use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::limits::Limits;
use crate::backend::options::{CasOutcome, HealthReport, KeyPage, KeyTtl, PutOptions};
use crate::backend::pubsub::{Message, PubSub, Subscription};
use crate::backend::stats::BackendStats;
use crate::backend::StateBackend;
use crate::raw::recorder::StatsRecorder;

const NAME: &str = "redis";
const CLUSTER_NAME: &str = "redis_cluster";

/// Where the backend connects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// One server: a `redis://` or `rediss://` URL.
    Single(String),
    /// Cluster seed nodes, each a `redis://` or `rediss://` URL.
    Cluster(Vec<String>),
}

/// How a [`RedisBackend`] connects and behaves; build it with
/// [`RedisConfig::builder`].
#[derive(Clone)]
pub struct RedisConfig {
    target: Target,
    key_prefix: Bytes,
    default_ttl: Option<Duration>,
    pool_size: usize,
    max_retries: u32,
    retry_base: Duration,
    retry_max: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
    pipeline_batch: usize,
    limits: Limits,
    tls_root_cert: Option<Vec<u8>>,
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
    /// 1 s per round trip, 1,000 commands per pipeline.
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

/// One connection of either kind, so that commands, pipelines and scripts
/// are written once.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One multiplexed connection to a single server, replaced in the
/// background when it breaks. Requests never wait for the reconnect: while
/// it runs they fail fast on the broken connection (a temporary error that
/// the retry loop backs off from), so no caller hangs on a dead server.
struct SingleConn {
    client: redis::Client,
    settings: redis::AsyncConnectionConfig,
    connect_timeout: Duration,
    pause: Duration,
    current: std::sync::RwLock<MultiplexedConnection>,
    reconnecting: std::sync::atomic::AtomicBool,
}

impl SingleConn {
    async fn open(
        client: redis::Client,
        config: &RedisConfig,
    ) -> std::result::Result<SingleConn, RedisError> {
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&settings)
            .await?;
        Ok(SingleConn {
            client,
            settings,
            connect_timeout: config.connect_timeout,
            pause: config.retry_base,
            current: std::sync::RwLock::new(conn),
            reconnecting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn get(&self) -> MultiplexedConnection {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts one background reconnect if `err` means the connection is gone.
    fn on_error(self: &Arc<Self>, err: &RedisError) {
        // A timeout counts too: a connection whose peer vanished without a
        // reset (a half-open TCP connection) only ever times out.
        let broken = err.is_timeout()
            || err.is_connection_dropped()
            || err.kind() == redis::ErrorKind::Io
            || matches!(
                err.kind(),
                redis::ErrorKind::Server(ServerErrorKind::ReadOnly)
            );
        if !broken || self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Clears the flag however the task ends (even if its runtime
        /// shuts down mid-way), so that a later error can try again.
        struct Done(Arc<SingleConn>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.reconnecting.store(false, Ordering::Release);
            }
        }
        let done = Done(Arc::clone(self));
        tokio::spawn(async move {
            let this = &done.0;
            let attempt = this
                .client
                .get_multiplexed_async_connection_with_config(&this.settings);
            match tokio::time::timeout(this.connect_timeout, attempt).await {
                Ok(Ok(conn)) => {
                    *this
                        .current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
                    tracing::info!("reconnected to Redis");
                }
                _ => {
                    // Keep the attempts of a dead server spaced out.
                    tokio::time::sleep(this.pause).await;
                }
            }
        });
    }
}

/// A pooled connection.
#[derive(Clone)]
enum Pooled {
    Single(Arc<SingleConn>),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Compare-and-swap on one key. ARGV: expected-present flag, expected,
/// new-present flag, new, TTL in ms (0: none). Returns `{1}` when swapped,
/// `{0}` or `{0, current}` on conflict.
const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then
    if cur then return {0, cur} end
    return {0}
  end
elseif cur then
  return {0, cur}
end
if ARGV[3] == '1' then
  if ARGV[5] ~= '0' then
    redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('SET', KEYS[1], ARGV[4])
  end
else
  redis.call('DEL', KEYS[1])
end
return {1}
";

/// Increment with a TTL set only when the key is created. The result is
/// read back as a string: Lua numbers are doubles and would round it.
const INCREMENT_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('GET', KEYS[1])
";

/// Whether a retry is safe after the request may have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

fn redis_error(err: RedisError) -> Error {
    let (kind, temporary, message) = if err.is_timeout() {
        (ErrorKind::Timeout, true, "Redis did not answer in time")
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        (
            ErrorKind::Unavailable,
            true,
            "the connection to Redis failed",
        )
    } else {
        match err.kind() {
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                // A replica now (after a failover): the next connection may
                // reach the new primary.
                | ServerErrorKind::ReadOnly
                // Redirections left over once the client's own retries are
                // spent: the slot's node is down or the slots are moving.
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            )
            | redis::ErrorKind::ClusterConnectionNotFound => {
                (ErrorKind::Unavailable, true, "Redis is not ready")
            }
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => (
                ErrorKind::Corrupt,
                false,
                "Redis answered with an unexpected reply",
            ),
            redis::ErrorKind::InvalidClientConfig => {
                (ErrorKind::Config, false, "the Redis client configuration is invalid")
            }
            _ if err.code() == Some("WRONGTYPE") => (
                ErrorKind::Backend,
                false,
                "the key holds a Redis type other than a string",
            ),
            _ => (ErrorKind::Backend, false, "Redis refused the command"),
        }
    };
    Error::new(kind, message)
        .temporary(temporary)
        .with_source(err)
}

/// Whether `err` proves the server did not run the command: the connection
/// was refused, or the server answered that it would not (loading, a slot
/// elsewhere, the cluster down, a read-only replica). Only then may an
/// operation that is not idempotent be sent again.
fn not_executed(err: &RedisError) -> bool {
    err.is_connection_refusal()
        || matches!(
            err.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
        )
}

fn increment_error(err: RedisError) -> Error {
    let detail = err.detail().unwrap_or_default().to_string();
    if detail.contains("not an integer") {
        Error::new(
            ErrorKind::NotAnInteger,
            "the stored value is not a decimal 64-bit integer",
        )
    } else if detail.contains("overflow") {
        Error::new(ErrorKind::Overflow, "the sum overflows a 64-bit integer")
    } else {
        redis_error(err)
    }
}

/// The TTL argument of a write, in whole milliseconds rounded up (never 0,
/// which would mean "no TTL").
fn ttl_millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| {
        u64::try_from(ttl.as_nanos().div_ceil(1_000_000).max(1))
            .unwrap_or(MAX_TTL_MS)
            .min(MAX_TTL_MS)
    })
}

/// The longest TTL written: 100 years (Redis rejects an expiry that
/// overflows its millisecond clock); longer ones are cut to it.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Escapes Redis glob metacharacters so that `prefix` matches only itself.
fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(prefix.len() + 8);
    for &byte in prefix {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\' | b'^' | b'-') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern.push(b'*');
    pattern
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of the key or of its
/// `{hash tag}`, modulo 16384).
fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A listing cursor: the node being scanned (empty for one server), its
/// SCAN cursor, and keys already fetched that did not fit the last page.
#[derive(Debug, Default, PartialEq, Eq)]
struct ListCursor {
    node: String,
    scan: u64,
    leftover: Vec<Bytes>,
}

impl ListCursor {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + self.node.len());
        out.push(1u8);
        out.extend_from_slice(&(self.node.len() as u32).to_be_bytes());
        out.extend_from_slice(self.node.as_bytes());
        out.extend_from_slice(&self.scan.to_be_bytes());
        for key in &self.leftover {
            out.extend_from_slice(&(key.len() as u32).to_be_bytes());
            out.extend_from_slice(key);
        }
        Bytes::from(out)
    }

    fn decode(raw: &[u8]) -> Result<ListCursor> {
        fn take<'a>(raw: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if raw.len() < n {
                return None;
            }
            let (head, tail) = raw.split_at(n);
            *raw = tail;
            Some(head)
        }
        fn u32_at(raw: &mut &[u8]) -> Option<usize> {
            take(raw, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        let parse = |mut raw: &[u8]| -> Option<ListCursor> {
            if take(&mut raw, 1)? != [1u8] {
                return None;
            }
            let node_len = u32_at(&mut raw)?;
            let node = String::from_utf8(take(&mut raw, node_len)?.to_vec()).ok()?;
            let scan = u64::from_be_bytes(take(&mut raw, 8)?.try_into().ok()?);
            let mut leftover = Vec::new();
            while !raw.is_empty() {
                let len = u32_at(&mut raw)?;
                leftover.push(Bytes::copy_from_slice(take(&mut raw, len)?));
            }
            Some(ListCursor {
                node,
                scan,
                leftover,
            })
        };
        parse(raw).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                "the listing cursor was not made by this backend",
            )
        })
    }
}

/// SCAN calls one `list_keys_page` makes at most before returning a short
/// page (the contract allows short pages; this bounds one call's latency).
const SCANS_PER_PAGE: usize = 16;

struct Inner {
    name: &'static str,
    conns: Vec<Pooled>,
    next_conn: AtomicUsize,
    /// A client for dedicated pub/sub connections.
    /// Clients for dedicated pub/sub connections: the server, or each
    /// Cluster seed node in turn.
    pubsub_clients: Vec<redis::Client>,
    config: RedisConfig,
    stats: StatsRecorder,
    retries: AtomicU64,
    timeouts: AtomicU64,
    cas: Script,
    increment: Script,
    jitter: std::collections::hash_map::RandomState,
    jitter_seq: AtomicU64,
}

impl Inner {
    fn conn(&self) -> (Conn, Option<&Arc<SingleConn>>) {
        let at = match self.conns.len() {
            1 => 0,
            n => self.next_conn.fetch_add(1, Ordering::Relaxed) % n,
        };
        match &self.conns[at] {
            Pooled::Single(single) => (Conn::Single(single.get()), Some(single)),
            Pooled::Cluster(cluster) => (Conn::Cluster(cluster.clone()), None),
        }
    }

    /// Counts `work` in the statistics as a write.
    async fn counted_write<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let timer = self.stats.start();
        let result = work.await;
        self.stats.write(timer, result)
    }

    /// Counts `work` in the statistics as a hit or a miss.
    async fn counted_read<T>(
        &self,
        work: impl Future<Output = Result<Option<T>>>,
    ) -> Result<Option<T>> {
        let timer = self.stats.start();
        let result = work.await;
        self.stats.read(timer, result)
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.config.key_prefix.len() + key.len());
        full.extend_from_slice(&self.config.key_prefix);
        full.extend_from_slice(key);
        full
    }

    fn ttl_or_default(&self, ttl: Option<Duration>) -> Option<u64> {
        ttl_millis(ttl.or(self.config.default_ttl))
    }

    /// A random backoff for retry `attempt` (0-based): up to
    /// `min(max, base × 2^attempt)`.
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .config
            .retry_base
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.config.retry_max);
        let mut hasher = self.jitter.build_hasher();
        hasher.write_u64(self.jitter_seq.fetch_add(1, Ordering::Relaxed));
        let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(fraction)
    }

    /// Runs `attempt` with the round-trip deadline, retrying temporary
    /// failures as [`Idempotent`] allows, and adds the error context.
    async fn run<T, F, Fut>(
        &self,
        op: Operation,
        key: Option<&[u8]>,
        idempotent: Idempotent,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = std::result::Result<T, Error>>,
    {
        let mut tries = 0u32;
        loop {
            let (conn, single) = self.conn();
            // A single server's connection enforces the response timeout on
            // every request itself (and never waits for a reconnect), so a
            // second timer is only needed for the Cluster client, whose
            // internal retries and slot refreshes could run longer.
            let outcome = if single.is_some() {
                attempt(conn).await
            } else {
                match tokio::time::timeout(self.config.response_timeout, attempt(conn)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no answer within the response timeout of {:?}",
                            self.config.response_timeout
                        ),
                    )),
                }
            };
            if outcome
                .as_ref()
                .is_err_and(|err| err.kind() == ErrorKind::Timeout)
            {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let cause = std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<RedisError>());
            if let (Some(single), Some(cause)) = (single, cause) {
                single.on_error(cause);
            }
            let never_sent =
                err.kind() == ErrorKind::Unavailable && cause.is_some_and(not_executed);
            let retry = err.is_temporary()
                && tries < self.config.max_retries
                && (idempotent == Idempotent::Yes || never_sent);
            if !retry {
                let err = err.context(self.name, op);
                return Err(match key {
                    Some(key) => err.with_key(key),
                    None => err,
                });
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.backoff(tries)).await;
            tries += 1;
        }
    }

    /// The primaries of the cluster as `host:port`, sorted.
    async fn cluster_nodes(&self, conn: &mut ClusterConnection) -> Result<Vec<(String, u16)>> {
        let reply = conn
            .route_command(
                redis::cmd("PING"),
                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
            )
            .await
            .map_err(redis_error)?;
        let Value::Map(entries) = reply else {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "the cluster did not list its primaries",
            ));
        };
        let mut nodes = Vec::with_capacity(entries.len());
        for (address, _) in entries {
            let address: String =
                redis::from_redis_value(address).map_err(|err| redis_error(err.into()))?;
            let (host, port) = address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    Error::new(ErrorKind::Corrupt, format!("bad node address {address}"))
                })?;
            nodes.push((host, port));
        }
        // Listing walks nodes in the order of their "host:port" names, and
        // cursors compare those names: sort by the very same strings.
        nodes.sort_by_cached_key(|(host, port)| format!("{host}:{port}"));
        Ok(nodes)
    }

    /// One SCAN step on `node` (ignored on a single server).
    async fn scan(
        &self,
        conn: &mut Conn,
        node: Option<&(String, u16)>,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .arg("TYPE")
            .arg("string");
        match (conn, node) {
            (Conn::Cluster(cluster), Some((host, port))) => {
                let reply = cluster
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await
                    .and_then(|value| value.extract_error())
                    .map_err(redis_error)?;
                redis::from_redis_value(reply).map_err(|err| redis_error(err.into()))
            }
            (conn, _) => cmd.query_async(conn).await.map_err(redis_error),
        }
    }

    /// One page of keys under the backend prefix + `prefix`.
    async fn list_page(
        &self,
        conn: &mut Conn,
        prefix: &[u8],
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<KeyPage> {
        let full_prefix = self.full_key(prefix);
        let pattern = glob_escape(&full_prefix);
        let strip = self.config.key_prefix.len();
        let nodes = match conn {
            Conn::Cluster(cluster) => self.cluster_nodes(cluster).await?,
            Conn::Single(_) => Vec::new(),
        };
        let mut state = match cursor {
            Some(raw) => ListCursor::decode(raw)?,
            None => ListCursor {
                node: nodes
                    .first()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .unwrap_or_default(),
                ..ListCursor::default()
            },
        };
        let mut keys: Vec<Bytes> = Vec::new();
        let take = |state: &mut ListCursor, keys: &mut Vec<Bytes>| {
            let room = limit.saturating_sub(keys.len()).min(state.leftover.len());
            keys.extend(state.leftover.drain(..room));
        };
        take(&mut state, &mut keys);
        let mut done = false;
        let mut scans = 0;
        while keys.len() < limit && state.leftover.is_empty() && scans < SCANS_PER_PAGE {
            let node = if nodes.is_empty() {
                None
            } else {
                // The node the cursor names, or the next one in order if it
                // left the cluster.
                let found = nodes.iter().find(|(h, p)| format!("{h}:{p}") >= state.node);
                match found {
                    Some(node) => {
                        let name = format!("{}:{}", node.0, node.1);
                        if name != state.node {
                            state.node = name;
                            state.scan = 0;
                        }
                        Some(node)
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            };
            let count = (limit - keys.len()).clamp(10, 1000);
            let (next, found) = self.scan(conn, node, state.scan, &pattern, count).await?;
            scans += 1;
            state.leftover.extend(
                found
                    .into_iter()
                    .filter(|key| key.starts_with(&full_prefix))
                    .map(|key| Bytes::copy_from_slice(&key[strip..])),
            );
            take(&mut state, &mut keys);
            if next == 0 {
                match node {
                    None => {
                        done = true;
                        break;
                    }
                    Some((host, port)) => {
                        let current = format!("{host}:{port}");
                        match nodes.iter().find(|(h, p)| format!("{h}:{p}") > current) {
                            Some((h, p)) => {
                                state.node = format!("{h}:{p}");
                                state.scan = 0;
                            }
                            None => {
                                done = true;
                                break;
                            }
                        }
                    }
                }
            } else {
                state.scan = next;
            }
        }
        let next = (!done || !state.leftover.is_empty()).then(|| state.encode());
        Ok(KeyPage { keys, next })
    }
}

/// A [`StateBackend`] over Redis or a Redis Cluster; see the
/// [module docs](self).
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
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis-tls")]
fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(not(feature = "redis-tls"))]
fn install_crypto_provider() {}

fn client_for(url: &str, config: &RedisConfig) -> std::result::Result<redis::Client, RedisError> {
    #[cfg(feature = "redis-tls")]
    if let (Some(pem), true) = (&config.tls_root_cert, url.starts_with("rediss://")) {
        return redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        );
    }
    let _ = config;
    redis::Client::open(url)
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

    async fn server_figures(&self) -> Result<Vec<(String, u64)>> {
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

    fn check_key(&self, op: Operation, key: &[u8]) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        inner.config.limits.check_key(inner.name, op, key)?;
        Ok(inner.full_key(key))
    }

    fn check_entry(&self, op: Operation, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
        let inner = &*self.inner;
        inner
            .config
            .limits
            .check_entry(inner.name, op, key, value)?;
        Ok(inner.full_key(key))
    }

    /// Groups indexes of `keys` by hash slot on a Cluster (one group on a
    /// single server), each group cut to the pipeline batch size.
    fn groups(&self, keys: &[Vec<u8>]) -> Vec<Vec<usize>> {
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

impl StateBackend for RedisBackend {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            distributed: true,
            native_ttl: true,
            transactions: false,
            pubsub: true,
            ordered_listing: false,
            atomic_batch: false,
        }
    }

    fn get<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::Get, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Get,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        redis::cmd("GET")
                            .arg(full.as_slice())
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                            .map(|value| value.map(Bytes::from))
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn put_with<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_entry(Operation::Put, key, &value)?;
            let ttl = ttl_millis(options.resolve_ttl(inner.config.default_ttl));
            let (full, value) = (&full, &value);
            inner
                .run(
                    Operation::Put,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(full.as_slice()).arg(value.as_ref());
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.exec_async(&mut conn).await.map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_key(Operation::Delete, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Delete,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("DEL")
                            .arg(full.as_slice())
                            .query_async::<u64>(&mut conn)
                            .await
                            .map(|n| n > 0)
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn ttl<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, KeyTtl> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_key(Operation::Ttl, key)?;
            let full = &full;
            inner
                .run(
                    Operation::Ttl,
                    Some(key),
                    Idempotent::Yes,
                    |mut conn| async move {
                        let ms = redis::cmd("PTTL")
                            .arg(full.as_slice())
                            .query_async::<i64>(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        Ok(match ms {
                            -2 => KeyTtl::Missing,
                            -1 => KeyTtl::Persistent,
                            ms => KeyTtl::ExpiresIn(Duration::from_millis(
                                u64::try_from(ms).unwrap_or(0),
                            )),
                        })
                    },
                )
                .await
        }))
    }

    fn list_keys_page<'a>(
        &'a self,
        prefix: &'a [u8],
        cursor: Option<&'a [u8]>,
        limit: usize,
    ) -> StateFuture<'a, KeyPage> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            if limit == 0 {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "a page holds at least one key",
                )
                .context(inner.name, Operation::ListKeys));
            }
            inner
                    .run(
                        Operation::ListKeys,
                        Some(prefix),
                        Idempotent::Yes,
                        |mut conn| async move {
                            inner.list_page(&mut conn, prefix, cursor, limit).await
                        },
                    )
                    .await
        }))
    }

    fn count(&self) -> StateFuture<'_, u64> {
        StateFuture::new(async move {
            let mut seen = std::collections::HashSet::new();
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .list_keys_page(b"", cursor.as_deref(), crate::backend::LIST_PAGE)
                    .await
                    .map_err(|err| err.with_operation(Operation::Count))?;
                seen.extend(page.keys);
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(seen.len() as u64),
                }
            }
        })
    }

    fn clear(&self) -> StateFuture<'_, ()> {
        StateFuture::new(async move {
            let mut cursor: Option<Bytes> = None;
            loop {
                let page = self
                    .list_keys_page(b"", cursor.as_deref(), crate::backend::LIST_PAGE)
                    .await
                    .map_err(|err| err.with_operation(Operation::Clear))?;
                if !page.keys.is_empty() {
                    self.batch_delete(&page.keys)
                        .await
                        .map_err(|err| err.with_operation(Operation::Clear))?;
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(()),
                }
            }
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a [u8],
        expected: Option<&'a [u8]>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, CasOutcome> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = match &new {
                Some(value) => self.check_entry(Operation::CompareAndSwap, key, value)?,
                None => self.check_key(Operation::CompareAndSwap, key)?,
            };
            let ttl = inner.ttl_or_default(ttl).unwrap_or(0);
            let mut invocation = inner.cas.prepare_invoke();
            invocation
                .key(full.as_slice())
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(if new.is_some() { "1" } else { "0" })
                .arg(new.as_deref().unwrap_or_default())
                .arg(ttl);
            let invocation = &invocation;
            inner
                .run(
                    Operation::CompareAndSwap,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let reply: Vec<Value> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(redis_error)?;
                        let mut reply = reply.into_iter();
                        let swapped: i64 = reply
                            .next()
                            .map(redis::from_redis_value)
                            .transpose()
                            .map_err(|err| redis_error(err.into()))?
                            .unwrap_or(0);
                        if swapped == 1 {
                            return Ok(CasOutcome::Swapped);
                        }
                        let current: Option<Vec<u8>> = reply
                            .next()
                            .map(redis::from_redis_value)
                            .transpose()
                            .map_err(|err| redis_error(err.into()))?;
                        Ok(CasOutcome::Conflict(current.map(Bytes::from)))
                    },
                )
                .await
        }))
    }

    fn health_check(&self) -> StateFuture<'_, HealthReport> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(
                    Operation::HealthCheck,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        let started = Instant::now();
                        match conn {
                            Conn::Single(mut single) => {
                                redis::cmd("PING")
                                    .exec_async(&mut single)
                                    .await
                                    .map_err(redis_error)?;
                            }
                            Conn::Cluster(mut cluster) => {
                                let reply = cluster
                                    .route_command(
                                        redis::cmd("PING"),
                                        RoutingInfo::MultiNode((
                                            MultipleNodeRoutingInfo::AllMasters,
                                            None,
                                        )),
                                    )
                                    .await
                                    .map_err(redis_error)?;
                                if let Value::Map(entries) = reply {
                                    for (_, value) in entries {
                                        value.extract_error().map_err(redis_error)?;
                                    }
                                }
                            }
                        }
                        Ok(HealthReport::new(inner.name, started.elapsed()))
                    },
                )
                .await
        })
    }

    fn stats(&self) -> StateFuture<'_, BackendStats> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let mut stats = inner.stats.snapshot(inner.name);
            for (name, value) in self.server_figures().await? {
                stats.details.insert(name, value);
            }
            stats
                .details
                .insert("pool_connections".into(), inner.conns.len() as u64);
            stats
                .details
                .insert("retries".into(), inner.retries.load(Ordering::Relaxed));
            stats
                .details
                .insert("timeouts".into(), inner.timeouts.load(Ordering::Relaxed));
            Ok(stats)
        })
    }

    fn batch_get<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, Vec<Option<Bytes>>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full: Vec<Vec<u8>> = keys
                .iter()
                .map(|key| self.check_key(Operation::BatchGet, key))
                .collect::<Result<_>>()?;
            if full.is_empty() {
                return Ok(Vec::new());
            }
            let groups = self.groups(&full);
            let (full, groups) = (&full, &groups);
            let fetched = inner
                .run(
                    Operation::BatchGet,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        try_join_all(groups.iter().map(|group| {
                            let mut conn = conn.clone();
                            async move {
                                let mut cmd = redis::cmd("MGET");
                                for &index in group {
                                    cmd.arg(full[index].as_slice());
                                }
                                cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                                    .await
                                    .map_err(redis_error)
                            }
                        }))
                        .await
                    },
                )
                .await?;
            let mut values = vec![None; full.len()];
            for (group, found) in groups.iter().zip(fetched) {
                for (&index, value) in group.iter().zip(found) {
                    values[index] = value.map(Bytes::from);
                }
            }
            Ok(values)
        }))
    }

    fn batch_put<'a>(
        &'a self,
        entries: Vec<(Bytes, Bytes)>,
        options: PutOptions,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full: Vec<Vec<u8>> = entries
                .iter()
                .map(|(key, value)| self.check_entry(Operation::BatchPut, key, value))
                .collect::<Result<_>>()?;
            if full.is_empty() {
                return Ok(());
            }
            let ttl = ttl_millis(options.resolve_ttl(inner.config.default_ttl));
            let groups = self.groups(&full);
            // Within a group the pipeline keeps the caller's order, so the
            // last write of a repeated key wins, as it would one by one.
            let pipelines: Vec<Pipeline> = groups
                .iter()
                .map(|group| {
                    let mut pipe = redis::pipe();
                    for &index in group {
                        let cmd = pipe
                            .cmd("SET")
                            .arg(full[index].as_slice())
                            .arg(entries[index].1.as_ref());
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.ignore();
                    }
                    pipe
                })
                .collect();
            let pipelines = &pipelines;
            inner
                .run(
                    Operation::BatchPut,
                    None,
                    Idempotent::Yes,
                    |conn| async move {
                        try_join_all(pipelines.iter().map(|pipe| {
                            let mut conn = conn.clone();
                            async move { pipe.exec_async(&mut conn).await.map_err(redis_error) }
                        }))
                        .await
                        .map(drop)
                    },
                )
                .await
        }))
    }

    fn batch_delete<'a>(&'a self, keys: &'a [Bytes]) -> StateFuture<'a, u64> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full: Vec<Vec<u8>> = keys
                .iter()
                .map(|key| self.check_key(Operation::BatchDelete, key))
                .collect::<Result<_>>()?;
            if full.is_empty() {
                return Ok(0);
            }
            let groups = self.groups(&full);
            let (full, groups) = (&full, &groups);
            inner
                .run(
                    Operation::BatchDelete,
                    None,
                    Idempotent::No,
                    |conn| async move {
                        let counts = try_join_all(groups.iter().map(|group| {
                            let mut conn = conn.clone();
                            async move {
                                let mut cmd = redis::cmd("DEL");
                                for &index in group {
                                    cmd.arg(full[index].as_slice());
                                }
                                cmd.query_async::<u64>(&mut conn).await.map_err(redis_error)
                            }
                        }))
                        .await?;
                        Ok(counts.into_iter().sum())
                    },
                )
                .await
        }))
    }

    fn set_if_not_exists<'a>(
        &'a self,
        key: &'a [u8],
        value: Bytes,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, bool> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_entry(Operation::SetIfNotExists, key, &value)?;
            let ttl = inner.ttl_or_default(ttl);
            let (full, value) = (&full, &value);
            inner
                .run(
                    Operation::SetIfNotExists,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(full.as_slice()).arg(value.as_ref()).arg("NX");
                        if let Some(ms) = ttl {
                            cmd.arg("PX").arg(ms);
                        }
                        cmd.query_async::<Option<String>>(&mut conn)
                            .await
                            .map(|reply| reply.is_some())
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn get_and_delete<'a>(&'a self, key: &'a [u8]) -> StateFuture<'a, Option<Bytes>> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_read(async move {
            let full = self.check_key(Operation::GetAndDelete, key)?;
            let full = &full;
            inner
                .run(
                    Operation::GetAndDelete,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("GETDEL")
                            .arg(full.as_slice())
                            .query_async::<Option<Vec<u8>>>(&mut conn)
                            .await
                            .map(|value| value.map(Bytes::from))
                            .map_err(redis_error)
                    },
                )
                .await
        }))
    }

    fn increment<'a>(
        &'a self,
        key: &'a [u8],
        delta: i64,
        ttl: Option<Duration>,
    ) -> StateFuture<'a, i64> {
        let inner = &*self.inner;
        StateFuture::new(inner.counted_write(async move {
            let full = self.check_key(Operation::Increment, key)?;
            let ttl = inner.ttl_or_default(ttl).unwrap_or(0);
            let mut invocation = inner.increment.prepare_invoke();
            invocation.key(full.as_slice()).arg(delta).arg(ttl);
            let invocation = &invocation;
            inner
                .run(
                    Operation::Increment,
                    Some(key),
                    Idempotent::No,
                    |mut conn| async move {
                        let raw: Vec<u8> = invocation
                            .invoke_async(&mut conn)
                            .await
                            .map_err(increment_error)?;
                        crate::raw::counter::parse_counter(&raw)
                    },
                )
                .await
        }))
    }
}

impl PubSub for RedisBackend {
    /// `PUBLISH` (on a Cluster it reaches subscribers on every node).
    fn publish<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let payload = &payload;
            inner
                .run(
                    Operation::Publish,
                    Some(channel.as_bytes()),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(payload.as_ref())
                            .exec_async(&mut conn)
                            .await
                            .map_err(redis_error)
                    },
                )
                .await
        })
    }

    /// `SUBSCRIBE` on a dedicated connection that the subscription owns
    /// (on a Cluster, to the first seed node that answers; a classic
    /// `PUBLISH` reaches subscribers on every node). Connecting and
    /// subscribing are bounded by the connect plus response timeouts. When
    /// the connection is lost the subscription yields one
    /// [`ErrorKind::Unavailable`] error and ends: subscribe again.
    fn subscribe<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let deadline = inner.config.connect_timeout + inner.config.response_timeout;
            let mut last_error = None;
            for client in &inner.pubsub_clients {
                let attempt = async {
                    let mut pubsub = client.get_async_pubsub().await.map_err(redis_error)?;
                    pubsub.subscribe(channel).await.map_err(redis_error)?;
                    Ok::<_, Error>(pubsub)
                };
                let outcome = match tokio::time::timeout(deadline, attempt).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("subscribing took longer than {deadline:?}"),
                    )),
                };
                match outcome {
                    Ok(pubsub) => {
                        let name = inner.name;
                        let messages = pubsub
                            .into_on_message()
                            .map(|message| {
                                Ok(Message {
                                    channel: message.get_channel_name().to_string(),
                                    payload: Bytes::copy_from_slice(message.get_payload_bytes()),
                                })
                            })
                            .chain(futures_util::stream::once(async move {
                                Err(Error::new(
                                    ErrorKind::Unavailable,
                                    "the subscription's connection was lost",
                                )
                                .context(name, Operation::Subscribe))
                            }));
                        return Ok(Subscription::new(messages));
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            let err = last_error
                .unwrap_or_else(|| Error::new(ErrorKind::Config, "no Redis node to subscribe on"));
            Err(err
                .context(inner.name, Operation::Subscribe)
                .with_key(channel.as_bytes()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\*".to_vec());
        assert_eq!(glob_escape(b""), b"*".to_vec());
    }

    #[test]
    fn hash_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"{}x"), hash_slot(b"{}x"));
        assert_eq!(hash_slot(b""), 0);
    }

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
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = ListCursor {
            node: "127.0.0.1:7000".into(),
            scan: 42,
            leftover: vec![Bytes::from_static(b"a"), Bytes::from_static(b"")],
        };
        assert_eq!(ListCursor::decode(&cursor.encode()).ok(), Some(cursor));
        let err = ListCursor::decode(b"\x02junk").err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::InvalidArgument));
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
