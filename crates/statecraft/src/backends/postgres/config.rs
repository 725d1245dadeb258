//! [`PostgresConfig`] and its builder, and the table-name checks.

use std::time::Duration;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::limits::Limits;

#[cfg(doc)]
use super::backend::PostgresBackend;
use super::NAME;

/// How a [`PostgresBackend`] connects and behaves; build it with
/// [`PostgresConfig::builder`].
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub(super) url: String,
    pub(super) table: String,
    pub(super) pool_size: usize,
    pub(super) read_connections: usize,
    pub(super) acquire_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) operation_timeout: Duration,
    pub(super) purge_interval: Option<Duration>,
    pub(super) default_ttl: Option<Duration>,
    pub(super) limits: Limits,
    pub(super) migrate: bool,
}

impl PostgresConfig {
    /// A builder with the defaults: table `statecraft_state`, 16 pooled
    /// connections and 2 shared ones for point reads, 5 s to acquire or open a connection, 5 s per operation, expired rows
    /// purged every 60 s, no default TTL.
    pub fn builder() -> PostgresConfigBuilder {
        PostgresConfigBuilder {
            config: PostgresConfig {
                url: String::new(),
                table: "statecraft_state".into(),
                pool_size: 16,
                read_connections: 2,
                acquire_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                operation_timeout: Duration::from_secs(5),
                purge_interval: Some(Duration::from_secs(60)),
                default_ttl: None,
                limits: Limits::default(),
                migrate: true,
            },
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// Builds a [`PostgresConfig`].
#[derive(Debug, Clone)]
pub struct PostgresConfigBuilder {
    config: PostgresConfig,
}

impl PostgresConfigBuilder {
    /// Whether connecting runs the pending migrations (default true).
    /// `false`: the table must exist already (an operator's tool that
    /// must not create one by a mistyped name); connecting fails if not.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.config.migrate = migrate;
        self
    }

    /// The connection string: `postgres://user:password@host:port/database`
    /// or the `key=value` form libpq accepts.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// The table to keep state in: a lowercase SQL identifier
    /// (`[a-z_][a-z0-9_]*`, at most 50 bytes), optionally `schema.table`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.config.table = table.into();
        self
    }

    /// The largest number of pooled connections. (An instance opens at most
    /// this many, plus [`read_connections`](Self::read_connections), plus
    /// one for each LISTEN subscription.)
    pub fn pool_size(mut self, size: usize) -> Self {
        self.config.pool_size = size;
        self
    }

    /// How many connections, besides the pool, the point reads (`get`,
    /// `get_with_ttl`, `ttl`) share, each read pipelined behind the others
    /// on one of them in turn (default 2, at most 64). `0`: reads take a
    /// pooled connection like every other operation. Writes never share a
    /// connection: one waiting for a row lock would hold up every
    /// statement behind it.
    pub fn read_connections(mut self, count: usize) -> Self {
        self.config.read_connections = count;
        self
    }

    /// How long an operation waits for a free pooled connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.config.acquire_timeout = timeout;
        self
    }

    /// How long opening a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The deadline of one operation, waiting for a connection included.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.config.operation_timeout = timeout;
        self
    }

    /// How often expired rows are deleted (`None`: only by
    /// [`PostgresBackend::purge_expired`]).
    pub fn purge_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.purge_interval = interval;
        self
    }

    /// The TTL of writes that do not give one.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<PostgresConfig> {
        let config = self.config;
        let invalid = |message: String| {
            Err(Error::new(ErrorKind::Config, message)
                .with_backend(NAME)
                .with_operation(Operation::Open))
        };
        if config.url.is_empty() {
            return invalid("a PostgreSQL connection string is required".into());
        }
        validate_table(&config.table)?;
        if config.pool_size == 0 {
            return invalid("pool_size must be at least 1".into());
        }
        if config.read_connections > 64 {
            return invalid(format!(
                "read_connections is at most 64, not {}",
                config.read_connections
            ));
        }
        for (name, value) in [
            ("acquire_timeout", config.acquire_timeout),
            ("connect_timeout", config.connect_timeout),
            ("operation_timeout", config.operation_timeout),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be above zero"));
            }
        }
        if config.purge_interval.is_some_and(|d| d.is_zero()) {
            return invalid("purge_interval must be above zero".into());
        }
        Ok(config)
    }
}

/// Accepts `table` or `schema.table`, each part a lowercase identifier, so
/// that a table name can never carry SQL.
fn validate_table(table: &str) -> Result<()> {
    let parts: Vec<&str> = table.split('.').collect();
    let valid_part = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some('a'..='z' | '_'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
            && part.len() <= 50
    };
    if parts.len() > 2 || !parts.iter().all(|part| valid_part(part)) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "table name {table:?} is not a lowercase SQL identifier \
                 ([a-z_][a-z0-9_]*, at most 50 bytes, optionally schema.table)"
            ),
        )
        .with_backend(NAME)
        .with_operation(Operation::Open));
    }
    Ok(())
}

/// Wraps each part of a validated name in double quotes.
pub(super) fn quoted(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_identifiers() {
        for good in ["state", "_s1", "app.state_v2"] {
            assert!(validate_table(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "State",
            "1state",
            "state; DROP TABLE x",
            "a.b.c",
            "st\"ate",
            "state-x",
            &"x".repeat(51),
        ] {
            let err = validate_table(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::Config), "{bad:?}");
        }
    }
}
