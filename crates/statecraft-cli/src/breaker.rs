//! `statecraft breaker list | show NAME | open NAME | close NAME | reset
//! NAME --backend SPEC [--json]`: the shared breakers of a store, seen and
//! steered from the shell.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use serde::Serialize;
use statecraft::breaker::{
    decode_state, BreakerConfig, BreakerStep, Calls, DistributedBreaker, State, PEEK,
};
use statecraft::{PostgresBackend, PostgresConfig, StateBackend};

/// Where a shared breaker keeps its state: `breaker:<name>`.
const PREFIX: &[u8] = b"breaker:";

#[derive(Debug, Args)]
pub(crate) struct BreakerArgs {
    #[command(subcommand)]
    action: Action,
    /// The store: `redis://HOST:PORT`, `rediss://…`,
    /// `redis+cluster://HOST:PORT[,…]`, `postgres://USER@HOST:PORT/DB`,
    /// `sled:PATH`, or another `statecraft::connect` spelling.
    #[arg(long = "backend", value_name = "SPEC", global = true)]
    backend: Option<String>,
    /// The PostgreSQL table the services use (their breakers are in
    /// `<table>_breakers`); default the backend's own.
    #[arg(long, value_name = "NAME", global = true)]
    table: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Every breaker with stored state, and where it is.
    List,
    /// One breaker's whole state.
    Show {
        /// The breaker's name.
        name: String,
    },
    /// Hold a breaker open for every instance (until `close` or `reset`).
    Open {
        /// The breaker's name.
        name: String,
    },
    /// Close a breaker for every instance, forgetting its history.
    Close {
        /// The breaker's name.
        name: String,
    },
    /// A fresh closed breaker for every instance.
    Reset {
        /// The breaker's name.
        name: String,
    },
}

/// One breaker as printed.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// Whether the store holds state for it (if not, it is closed).
    stored: bool,
    state: String,
    since_ms: Option<u64>,
    open_until_ms: Option<u64>,
    /// Until the opening ends, by this machine's clock.
    opens_in_ms: Option<u64>,
    openings: u32,
    consecutive_failures: u32,
    window_calls: u64,
    window_failures: u64,
    probes_admitted: u32,
}

impl Row {
    fn new(name: &str, state: Option<State>) -> Row {
        let Some(state) = state else {
            return Row {
                name: name.to_string(),
                stored: false,
                state: "CLOSED".into(),
                since_ms: None,
                open_until_ms: None,
                opens_in_ms: None,
                openings: 0,
                consecutive_failures: 0,
                window_calls: 0,
                window_failures: 0,
                probes_admitted: 0,
            };
        };
        let (calls, failures) = match &state.calls {
            Calls::Count {
                outcomes, failures, ..
            } => (outcomes.len() as u64, *failures),
            Calls::Time { buckets } => buckets
                .iter()
                .fold((0, 0), |(c, f), b| (c + b.calls, f + b.failures)),
        };
        let open = state.phase == statecraft::breaker::Phase::Open;
        Row {
            name: name.to_string(),
            stored: true,
            state: state.phase.to_string(),
            since_ms: Some(state.since),
            open_until_ms: open.then_some(state.open_until),
            opens_in_ms: open.then(|| state.open_until.saturating_sub(now_ms())),
            openings: state.openings,
            consecutive_failures: state.consecutive_failures,
            window_calls: calls,
            window_failures: failures,
            probes_admitted: state.probes_admitted,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The store, and on PostgreSQL the backend itself (its breakers are in a
/// table of their own, listed by it).
struct Store {
    backend: Arc<dyn StateBackend>,
    postgres: Option<Arc<PostgresBackend>>,
}

async fn open_store(spec: &str, table: Option<&str>) -> Result<Store, String> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        // The services' table must be there: a mistyped name creates none.
        let mut config = PostgresConfig::builder().url(spec).migrate(false);
        if let Some(table) = table {
            config = config.table(table);
        }
        let config = config.build().map_err(|e| format!("{spec}: {e}"))?;
        let backend = Arc::new(
            PostgresBackend::new(config)
                .await
                .map_err(|e| format!("{spec}: {e}"))?,
        );
        return Ok(Store {
            backend: backend.clone(),
            postgres: Some(backend),
        });
    }
    if table.is_some() {
        return Err("--table is for PostgreSQL backends".into());
    }
    let backend = statecraft::connect(spec)
        .await
        .map_err(|e| format!("{spec}: {e}"))?;
    Ok(Store {
        backend,
        postgres: None,
    })
}

impl Store {
    async fn names(&self) -> Result<Vec<String>, String> {
        let keys = match &self.postgres {
            Some(pg) => pg.native_keys(&BreakerStep, PREFIX).await,
            None => self.backend.list_keys(PREFIX).await,
        }
        .map_err(|e| format!("listing the breakers: {e}"))?;
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(PREFIX))
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn state(&self, name: &str) -> Result<Option<State>, String> {
        let key = [PREFIX, name.as_bytes()].concat();
        let raw = self
            .backend
            .update_atomic(&key, &BreakerStep, PEEK)
            .await
            .map_err(|e| format!("reading breaker {name:?}: {e}"))?;
        Ok(decode_state(&raw))
    }
}

pub(crate) async fn run(args: BreakerArgs) -> Result<(), String> {
    let spec = args
        .backend
        .as_deref()
        .ok_or("--backend SPEC is required (the store the services share)")?;
    let store = open_store(spec, args.table.as_deref()).await?;
    let rows = match &args.action {
        Action::List => {
            let mut rows = Vec::new();
            for name in store.names().await? {
                // Gone between the listing and the read: not listed.
                if let Some(state) = store.state(&name).await? {
                    rows.push(Row::new(&name, Some(state)));
                }
            }
            rows
        }
        Action::Show { name } => vec![Row::new(name, store.state(name).await?)],
        Action::Open { name } | Action::Close { name } | Action::Reset { name } => {
            // An operator's event consults no rule: any valid one will do.
            let config = BreakerConfig::builder()
                .consecutive_failures(5)
                .build()
                .map_err(|e| e.to_string())?;
            let breaker = DistributedBreaker::new(store.backend.clone(), name.as_str(), config)
                .timeout(Duration::from_secs(10));
            let done = match &args.action {
                Action::Open { .. } => breaker.force_open().await,
                Action::Close { .. } => breaker.force_close().await,
                _ => breaker.reset().await,
            };
            done.map_err(|e| format!("breaker {name:?}: {e}"))?;
            vec![Row::new(name, store.state(name).await?)]
        }
    };
    if args.json {
        let text = match &args.action {
            Action::List => serde_json::to_string_pretty(&rows),
            _ => serde_json::to_string_pretty(&rows[0]),
        }
        .map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", render(&rows));
    }
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<32} {:<12} {:>10} {:>9} {:>14} {:>8}\n",
        "NAME", "STATE", "OPENS IN", "OPENINGS", "FAILURES/CALLS", "IN A ROW"
    );
    for row in rows {
        let opens_in = row
            .opens_in_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        let state = if row.stored {
            row.state.clone()
        } else {
            format!("{} (none)", row.state)
        };
        out.push_str(&format!(
            "{:<32} {:<12} {:>10} {:>9} {:>14} {:>8}\n",
            row.name,
            state,
            opens_in,
            row.openings,
            format!("{}/{}", row.window_failures, row.window_calls),
            row.consecutive_failures
        ));
    }
    out
}
