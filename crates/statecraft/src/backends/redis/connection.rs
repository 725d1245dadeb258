//! Connections: one kind-agnostic [`Conn`], the self-healing single-server
//! connection, the pool entry, and the client factory (TLS included).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::config::RedisConfig;

/// One connection of either kind, so that commands, pipelines and scripts
/// are written once.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// One multiplexed connection to a single server, replaced in the
/// background when it breaks. Requests never wait for the reconnect: while
/// it runs they fail fast on the broken connection (a temporary error that
/// the retry loop backs off from), so no caller hangs on a dead server.
pub(super) struct SingleConn {
    client: redis::Client,
    settings: redis::AsyncConnectionConfig,
    connect_timeout: Duration,
    pause: Duration,
    current: std::sync::RwLock<MultiplexedConnection>,
    reconnecting: std::sync::atomic::AtomicBool,
}

impl SingleConn {
    pub(super) async fn open(
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

    pub(super) fn get(&self) -> MultiplexedConnection {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts one background reconnect if `err` means the connection is gone.
    pub(super) fn on_error(self: &Arc<Self>, err: &RedisError) {
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
pub(super) enum Pooled {
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

#[cfg(feature = "redis-tls")]
pub(super) fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(not(feature = "redis-tls"))]
pub(super) fn install_crypto_provider() {}

pub(super) fn client_for(
    url: &str,
    config: &RedisConfig,
) -> std::result::Result<redis::Client, RedisError> {
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
