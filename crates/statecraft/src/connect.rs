//! [`connect`]: a backend, or a stack of layers over backends, from a
//! string (an environment variable, a config file, a command-line flag).
//!
//! # Spelling
//!
//! | spec | what it opens |
//! |---|---|
//! | `memory` | a [`MemoryBackend`] |
//! | `null` | a [`NullBackend`] |
//! | `sled:PATH` | a [`SledBackend`](crate::SledBackend) at `PATH` (feature `sled`) |
//! | `redb:PATH` | a [`RedbBackend`](crate::RedbBackend) in the file `PATH` (feature `redb`) |
//! | `redis://HOST:PORT[/DB]`, `rediss://…` | a [`RedisBackend`](crate::RedisBackend) (feature `redis`) |
//! | `redis+cluster://HOST:PORT,HOST:PORT…` | a Redis Cluster from seed nodes |
//! | `postgres://USER@HOST:PORT/DB`, `postgresql://…` | a [`PostgresBackend`](crate::PostgresBackend) (feature `postgres`) |
//! | `cached(SPEC[, ttl=30s][, entries=N][, bytes=N][, channel=NAME][, invalidation=auto\|pubsub\|tracking\|off])` | [`Cached`] over `SPEC` ([`Invalidation`]) |
//! | `tiered(SPEC, SPEC, …[, ttl=60s])` | [`Tiered`]: the last `SPEC` decides, the others are upper tiers whose copies live `ttl` |
//! | `fallback(SPEC, SPEC, …[, timeout=500ms])` | [`Fallback`]: members in order, each cut off after `timeout` |
//!
//! Stacks nest: `cached(fallback(redis://10.0.0.1:6379, memory, null))`.
//! Durations are a number with `ms`, `s`, `m` or `h`. A Redis Cluster's seed
//! list keeps its commas inside a stack. A spec that does not parse is an
//! [`InvalidArgument`](ErrorKind::InvalidArgument) error that quotes the
//! offending part and its position.
//!
//! ```
//! # async fn demo() -> statecraft::Result<()> {
//! let store = statecraft::connect("cached(tiered(memory, memory, ttl=10s), ttl=5s)").await?;
//! store.put(b"k", "v".into()).await?;
//! assert!(statecraft::connect("cached(memroy)").await.is_err());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;
use crate::backends::memory::MemoryBackend;
use crate::backends::null::NullBackend;
use crate::layers::cached::{Cached, Invalidation};
use crate::layers::fallback::Fallback;
use crate::layers::tiered::Tiered;

/// Settings a spec does not spell: where the stores keep this process's
/// data.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The key prefix of Redis backends (default none).
    pub redis_key_prefix: Option<String>,
    /// The table of PostgreSQL backends (default the backend's own).
    pub postgres_table: Option<String>,
    /// The connection pool of PostgreSQL backends.
    pub postgres_pool_size: Option<usize>,
    /// The connections PostgreSQL backends' point reads share.
    pub postgres_read_connections: Option<usize>,
}

impl ConnectOptions {
    /// No settings: every store's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys of Redis backends go under `prefix`.
    pub fn redis_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis_key_prefix = Some(prefix.into());
        self
    }

    /// PostgreSQL backends use `table`.
    pub fn postgres_table(mut self, table: impl Into<String>) -> Self {
        self.postgres_table = Some(table.into());
        self
    }

    /// PostgreSQL backends pool `size` connections.
    pub fn postgres_pool_size(mut self, size: usize) -> Self {
        self.postgres_pool_size = Some(size);
        self
    }

    /// PostgreSQL backends pipeline their point reads over `count` shared
    /// connections (`0`: reads use the pool).
    pub fn postgres_read_connections(mut self, count: usize) -> Self {
        self.postgres_read_connections = Some(count);
        self
    }
}

/// Opens the backend or stack `spec` spells (see the [module docs](self)).
pub async fn connect(spec: &str) -> Result<Arc<dyn StateBackend>> {
    connect_with(spec, &ConnectOptions::default()).await
}

/// [`connect`] with settings the spec does not spell.
pub async fn connect_with(spec: &str, options: &ConnectOptions) -> Result<Arc<dyn StateBackend>> {
    let parsed = parse(spec, 0)?;
    open(spec, &parsed, options).await
}

/// A parsed spec: a store, or a layer over parsed specs, with the offset
/// of its text in the whole spec (for errors).
#[derive(Debug, PartialEq, Eq)]
enum Spec<'a> {
    Store {
        text: &'a str,
        at: usize,
    },
    Layer {
        name: &'a str,
        args: Vec<Spec<'a>>,
        params: Vec<(&'a str, &'a str, usize)>,
        at: usize,
    },
}

fn bad(whole: &str, at: usize, part: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        format!("backend spec {whole:?}: {why}: {part:?} at position {at}"),
    )
}

const LAYERS: [&str; 3] = ["cached", "tiered", "fallback"];

fn is_host_port(part: &str) -> bool {
    part.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains("//")
            && port.parse::<u16>().is_ok()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    })
}

/// Splits `inner` (starting at `offset` in the whole spec) at top-level
/// commas, keeping a cluster's seed list together.
fn split_args(inner: &str, offset: usize) -> Vec<(&str, usize)> {
    let mut parts: Vec<(usize, usize)> = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push((start, i));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push((start, inner.len()));
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (from, to) in parts {
        let part = inner[from..to].trim();
        let joins_cluster = merged.last().is_some_and(|&(prev_from, prev_to)| {
            let previous = inner[prev_from..prev_to].trim_start();
            previous.starts_with("redis+cluster://") || previous.starts_with("rediss+cluster://")
        }) && is_host_port(part);
        match merged.last_mut() {
            Some(last) if joins_cluster => last.1 = to,
            _ => merged.push((from, to)),
        }
    }
    merged
        .into_iter()
        .map(|(from, to)| {
            let raw = &inner[from..to];
            let lead = raw.len() - raw.trim_start().len();
            (raw.trim(), offset + from + lead)
        })
        .collect()
}

/// How deep stacks may nest.
const MAX_DEPTH: usize = 16;

fn parse(text: &str, at: usize) -> Result<Spec<'_>> {
    let lead = text.len() - text.trim_start().len();
    parse_part(text, text.trim(), at + lead, 0)
}

fn parse_part<'a>(whole: &str, text: &'a str, at: usize, depth: usize) -> Result<Spec<'a>> {
    if text.is_empty() {
        return Err(bad(whole, at, text, "an empty backend"));
    }
    if depth > MAX_DEPTH {
        return Err(bad(whole, at, text, "stacks nest at most 16 deep"));
    }
    // A layer is a bare word then `(`; a `(` inside a URL is the URL's.
    let open = text.find('(').filter(|&open| {
        let name = text[..open].trim();
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic())
    });
    let Some(open) = open else {
        return Ok(Spec::Store { text, at });
    };
    let name = text[..open].trim();
    if !LAYERS.contains(&name) {
        return Err(bad(
            whole,
            at,
            name,
            "unknown layer (expected cached, tiered or fallback)",
        ));
    }
    if !text.ends_with(')') {
        return Err(bad(whole, at, text, "a layer's arguments end with ')'"));
    }
    let inner = &text[open + 1..text.len() - 1];
    let (mut args, mut params) = (Vec::new(), Vec::new());
    for (part, part_at) in split_args(inner, at + open + 1) {
        match part.split_once('=') {
            Some((key, value))
                if !key.trim().is_empty()
                    && key
                        .trim()
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '_') =>
            {
                params.push((key.trim(), value.trim(), part_at));
            }
            _ => args.push(parse_part(whole, part, part_at, depth + 1)?),
        }
    }
    let known: &[&str] = match name {
        "cached" => &["ttl", "entries", "bytes", "channel", "invalidation"],
        "tiered" => &["ttl"],
        _ => &["timeout"],
    };
    if let Some((key, _, key_at)) = params.iter().find(|(k, _, _)| !known.contains(k)) {
        return Err(bad(
            whole,
            *key_at,
            key,
            &format!("unknown setting of {name}"),
        ));
    }
    match (name, args.len()) {
        (_, 0) => return Err(bad(whole, at, text, "a layer needs at least one backend")),
        ("cached", n) if n != 1 => return Err(bad(whole, at, name, "cached takes one backend")),
        ("tiered", 1) => return Err(bad(whole, at, name, "tiered takes at least two backends")),
        _ => {}
    }
    Ok(Spec::Layer {
        name,
        args,
        params,
        at,
    })
}

fn duration(whole: &str, text: &str, at: usize) -> Result<Duration> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let n: u64 = digits
        .parse()
        .map_err(|_| bad(whole, at, text, "a duration is a number and ms, s, m or h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(|| bad(whole, at, text, "a duration is a number and ms, s, m or h"))?;
    Ok(Duration::from_millis(ms))
}

fn number(whole: &str, text: &str, at: usize) -> Result<u64> {
    text.replace('_', "")
        .parse()
        .map_err(|_| bad(whole, at, text, "expected a whole number"))
}

/// The boxed future of opening a (possibly nested) spec.
type Opening<'s> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<dyn StateBackend>>> + Send + 's>>;

fn open<'s>(whole: &'s str, spec: &'s Spec<'s>, options: &'s ConnectOptions) -> Opening<'s> {
    Box::pin(async move {
        match spec {
            Spec::Store { text, at } => open_store(whole, text, *at, options).await,
            Spec::Layer {
                name,
                args,
                params,
                at,
            } => {
                let mut inner = Vec::with_capacity(args.len());
                for arg in args {
                    inner.push(open(whole, arg, options).await?);
                }
                let param = |key: &str| {
                    params
                        .iter()
                        .find(|(k, _, _)| *k == key)
                        .map(|&(_, v, at)| (v, at))
                };
                match *name {
                    "cached" => {
                        let [only] = <[_; 1]>::try_from(inner)
                            .map_err(|_| bad(whole, *at, name, "cached takes one backend"))?;
                        let mut builder = Cached::builder(only);
                        if let Some((v, at)) = param("ttl") {
                            builder = builder.ttl(duration(whole, v, at)?);
                        }
                        if let Some((v, at)) = param("entries") {
                            builder = builder.max_entries(number(whole, v, at)?);
                        }
                        if let Some((v, at)) = param("bytes") {
                            builder = builder.max_bytes(number(whole, v, at)?);
                        }
                        if let Some((v, _)) = param("channel") {
                            builder = builder.channel(v);
                        }
                        if let Some((v, at)) = param("invalidation") {
                            builder = builder.invalidation(match v {
                                "auto" => Invalidation::Auto,
                                "pubsub" => Invalidation::PubSub,
                                "tracking" => Invalidation::Tracking,
                                "off" => Invalidation::Off,
                                _ => {
                                    return Err(bad(
                                        whole,
                                        at,
                                        v,
                                        "expected invalidation=auto, pubsub, tracking or off",
                                    ))
                                }
                            });
                        }
                        Ok(Arc::new(builder.build().await?) as Arc<dyn StateBackend>)
                    }
                    "tiered" => {
                        if inner.len() < 2 {
                            return Err(bad(
                                whole,
                                *at,
                                name,
                                "tiered takes at least two backends",
                            ));
                        }
                        let ttl = match param("ttl") {
                            Some((v, at)) => duration(whole, v, at)?,
                            None => Duration::from_secs(60),
                        };
                        let last = inner
                            .pop()
                            .ok_or_else(|| bad(whole, *at, name, "no last tier"))?;
                        let mut builder = Tiered::builder();
                        for tier in inner {
                            builder = builder.shared_tier(tier, ttl);
                        }
                        Ok(Arc::new(builder.shared_last(last).build()?) as Arc<dyn StateBackend>)
                    }
                    _ => {
                        let timeout = match param("timeout") {
                            Some((v, at)) => duration(whole, v, at)?,
                            None => Duration::from_millis(500),
                        };
                        let mut builder = Fallback::builder();
                        for member in inner {
                            builder = builder.shared_member(member, timeout);
                        }
                        Ok(Arc::new(builder.build()?) as Arc<dyn StateBackend>)
                    }
                }
            }
        }
    })
}

async fn open_store(
    whole: &str,
    text: &str,
    at: usize,
    options: &ConnectOptions,
) -> Result<Arc<dyn StateBackend>> {
    let unbuilt = |feature: &str| {
        bad(
            whole,
            at,
            text,
            &format!("this build of statecraft has no `{feature}` feature"),
        )
    };
    let _ = (&unbuilt, options);
    match text
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .or_else(|| text.split_once(':').map(|(s, _)| s))
    {
        None if text == "memory" => Ok(Arc::new(MemoryBackend::new())),
        None if text == "null" => Ok(Arc::new(NullBackend::new())),
        Some("sled") => {
            let path = &text["sled:".len()..];
            if path.is_empty() {
                return Err(bad(whole, at, text, "sled needs a path: sled:PATH"));
            }
            #[cfg(feature = "sled")]
            {
                Ok(Arc::new(crate::SledBackend::open(path)?))
            }
            #[cfg(not(feature = "sled"))]
            {
                Err(unbuilt("sled"))
            }
        }
        Some("redb") => {
            let path = &text["redb:".len()..];
            if path.is_empty() {
                return Err(bad(whole, at, text, "redb needs a file: redb:PATH"));
            }
            #[cfg(feature = "redb")]
            {
                Ok(Arc::new(crate::RedbBackend::open(path)?))
            }
            #[cfg(not(feature = "redb"))]
            {
                Err(unbuilt("redb"))
            }
        }
        Some("redis" | "rediss" | "redis+cluster" | "rediss+cluster") => {
            #[cfg(feature = "redis")]
            {
                let mut config = crate::RedisConfig::builder().url(text);
                if let Some(prefix) = &options.redis_key_prefix {
                    config = config.key_prefix(prefix.clone());
                }
                let config = config
                    .build()
                    .map_err(|e| bad(whole, at, text, &e.to_string()))?;
                Ok(Arc::new(crate::RedisBackend::new(config).await?))
            }
            #[cfg(not(feature = "redis"))]
            {
                Err(unbuilt("redis"))
            }
        }
        Some("postgres" | "postgresql") => {
            #[cfg(feature = "postgres")]
            {
                let mut config = crate::PostgresConfig::builder().url(text);
                if let Some(table) = &options.postgres_table {
                    config = config.table(table.clone());
                }
                if let Some(size) = options.postgres_pool_size {
                    config = config.pool_size(size);
                }
                if let Some(count) = options.postgres_read_connections {
                    config = config.read_connections(count);
                }
                let config = config
                    .build()
                    .map_err(|e| bad(whole, at, text, &e.to_string()))?;
                Ok(Arc::new(crate::PostgresBackend::new(config).await?))
            }
            #[cfg(not(feature = "postgres"))]
            {
                Err(unbuilt("postgres"))
            }
        }
        _ => Err(bad(
            whole,
            at,
            text,
            "unknown backend (expected memory, null, sled:PATH, redb:PATH, redis://…, rediss://…, \
             redis+cluster://…, postgres://… or a layer: cached(…), tiered(…), fallback(…))",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_parse_with_positions_and_cluster_seeds() {
        let spec =
            "fallback(redis+cluster://a:7000,b:7001, cached(memory, ttl=5s), null, timeout=100ms)";
        let Ok(Spec::Layer {
            name, args, params, ..
        }) = parse(spec, 0)
        else {
            panic!("did not parse");
        };
        assert_eq!(name, "fallback");
        assert_eq!(
            args[0],
            Spec::Store {
                text: "redis+cluster://a:7000,b:7001",
                at: 9
            }
        );
        assert!(
            matches!(&args[1], Spec::Layer { name: "cached", params, .. } if params[0].0 == "ttl")
        );
        assert_eq!(
            args[2],
            Spec::Store {
                text: "null",
                at: 64
            }
        );
        assert_eq!(params, vec![("timeout", "100ms", 70)]);
    }

    #[test]
    fn bad_specs_point_at_the_offending_part() {
        let message = |spec: &str| match parse(spec, 0) {
            Err(err) => err.to_string(),
            Ok(parsed) => panic!("{spec} parsed as {parsed:?}"),
        };
        assert!(message("cache(memory)").contains("\"cache\" at position 0"));
        assert!(message("cached(memory").contains("end with ')'"));
        assert!(message("tiered(memory, )").contains("position 15"));
        assert!(message("cached()").contains("an empty backend"));
        assert!(message("cached(memory, tll=5s)").contains("unknown setting of cached"));
        assert!(message("tiered(memory)").contains("at least two"));
        let deep = format!("{}memory{}", "cached(".repeat(40), ")".repeat(40));
        assert!(message(&deep).contains("nest at most"));
        let spaced = parse("cached(memory, ttl = 10s)", 0);
        assert!(matches!(spaced, Ok(Spec::Layer { ref params, .. }) if params[0].0 == "ttl"));
        let url = parse("fallback(memory, postgres://u:p(w@h/db?sslmode=disable)", 0);
        let expected = Spec::Store {
            text: "postgres://u:p(w@h/db?sslmode=disable",
            at: 17,
        };
        assert!(
            matches!(&url, Ok(Spec::Layer { args, .. }) if args[1] == expected),
            "{url:?}"
        );
        let later_cluster = parse("fallback(memory, sled:7000, redis+cluster://a:1,b:2)", 0);
        assert!(
            matches!(&later_cluster, Ok(Spec::Layer { args, .. }) if args.len() == 3),
            "{later_cluster:?}"
        );
        assert_eq!(
            duration("x", "250ms", 0).ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration("x", "2m", 0).ok(), Some(Duration::from_secs(120)));
        assert!(duration("x", "5 parsecs", 0).is_err());
        assert!(duration("x", "99999999999999999h", 0).is_err());
    }
}
