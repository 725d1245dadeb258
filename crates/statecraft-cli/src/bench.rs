//! `statecraft bench`: latency and throughput of each backend's operations.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use statecraft::{ConnectOptions, PutOptions, RedbBackend, SledBackend, StateBackend};

mod limiter;
mod lock;
mod primitive;
mod raw;

use raw::{Call, Raw};

/// Options of `statecraft bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// A backend to measure: `memory`, `null`, `sled` (a temporary database),
    /// `sled:PATH`, `redb` (a temporary database), `redb:PATH` (a file),
    /// `redis://HOST:PORT`, `rediss://…` (TLS),
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (a Redis Cluster, from seed
    /// nodes) or `postgres://USER@HOST:PORT/DB`; or a stack of layers over
    /// them: `cached(SPEC[, ttl=30s][, entries=N][, bytes=N])`,
    /// `tiered(SPEC, SPEC, …[, ttl=60s])` (the last decides),
    /// `fallback(SPEC, SPEC, …[, timeout=500ms])`, nested as needed (the
    /// spelling `statecraft::connect` takes). Repeat to compare several.
    /// Redis keys go under `statecraft-bench:`, PostgreSQL rows into table
    /// `statecraft_bench`; both are cleared at the end. Default: memory and a
    /// temporary sled.
    #[arg(long = "backend", value_name = "SPEC")]
    backends: Vec<String>,
    /// Operations to measure.
    #[arg(long = "op", value_enum, value_delimiter = ',', default_values_t = Op::ALL)]
    ops: Vec<BenchOp>,
    /// The "N" of concurrency 1 and N: concurrent tasks on one client.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long each (operation, concurrency) case runs, in milliseconds.
    #[arg(long, default_value_t = 800)]
    duration_ms: u64,
    /// Distinct keys read and written.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Keys per batch operation.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure a coordination primitive instead of the backends'
    /// operations: `breaker` (rows `breaker_local_call` on `memory`, and
    /// `breaker_hybrid_call` and `breaker_distributed_call` on each
    /// `--backend`, default memory), `limiter` (`limiter_<algorithm>_local`,
    /// `limiter_gcra_keyed_local`, and per backend
    /// `limiter_<algorithm>_distributed` and `limiter_gcra_hybrid`) or
    /// `counter` (`counter_sharded_local`, and per backend `counter_hybrid`
    /// and `counter_distributed`) or `lock` (per backend
    /// `lock_acquire_release`, `lock_handover` and
    /// `semaphore_acquire_release`). Local and hybrid calls are timed in
    /// blocks of 256 (a clock read costs more than the call): their
    /// p50/p99 are of the blocks' means.
    #[arg(long, value_enum)]
    primitive: Option<primitive::Primitive>,
    /// Also run each operation through the raw engine or client under each
    /// backend (memory: a DashMap with the same hasher; sled: a sled
    /// database; redb: a redb database, a durable commit per write; redis://: one redis-rs multiplexed connection; postgres://:
    /// one tokio-postgres client pipelining prepared statements), in rounds
    /// interleaved with the statecraft side (which goes first alternates):
    /// extra rows whose backend is `raw_<backend>`, and on the statecraft
    /// rows a `ratio`, the median of the rounds' statecraft ÷ raw time per
    /// call. Stacks, `null`, TLS and Cluster URLs have no raw peer.
    #[arg(long)]
    with_raw: bool,
    /// With `--with-raw`: rounds per case, each side running
    /// `duration-ms / rounds` a round.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// An operation `statecraft bench` can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchOp {
    Get,
    /// Gets of a hot set of 1,000 loaded keys, each read twice first: for a
    /// stack with `Cached` on top, L1 hits (added for such stacks).
    GetHit,
    /// Gets of keys never written, a new one each call: for `Cached`, L1
    /// misses (added for such stacks).
    GetMiss,
    Put,
    Increment,
    BatchGet,
    BatchPut,
}

struct Op;

impl Op {
    const ALL: [BenchOp; 5] = [
        BenchOp::Get,
        BenchOp::Put,
        BenchOp::Increment,
        BenchOp::BatchGet,
        BenchOp::BatchPut,
    ];
}

impl BenchOp {
    fn name(self) -> &'static str {
        match self {
            BenchOp::Get => "get",
            BenchOp::GetHit => "get_hit",
            BenchOp::GetMiss => "get_miss",
            BenchOp::Put => "put",
            BenchOp::Increment => "increment",
            BenchOp::BatchGet => "batch_get",
            BenchOp::BatchPut => "batch_put",
        }
    }

    fn is_batch(self) -> bool {
        matches!(self, BenchOp::BatchGet | BenchOp::BatchPut)
    }
}

/// One row of results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchRow {
    backend: String,
    operation: &'static str,
    concurrency: usize,
    /// Keys per second (for batch operations, keys, not calls).
    ops_per_sec: f64,
    /// Median latency of one call, in microseconds.
    p50_us: f64,
    /// 99th percentile latency of one call, in microseconds.
    p99_us: f64,
    /// Keys per call.
    batch_size: usize,
    /// Calls made.
    calls: u64,
    persistent: bool,
    distributed: bool,
    /// For a stack with a `Cached` on top: reads its L1 answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    l1_hits: Option<u64>,
    /// For a stack with a `Cached` on top: reads that went to the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    l1_misses: Option<u64>,
    /// With `--with-raw`, on statecraft's rows: the median over the rounds
    /// of statecraft's time per call ÷ the raw peer's (below 1: faster).
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
}

/// The L1 figures of a `Cached` on top, if there is one.
async fn l1_figures(backend: &dyn StateBackend) -> Option<(u64, u64)> {
    let stats = backend.stats().await.ok()?;
    Some((
        *stats.details.get("l1_hits")?,
        *stats.details.get("l1_misses")?,
    ))
}

/// A backend opened for benchmarking, with whatever must outlive it.
struct Target {
    label: String,
    backend: Arc<dyn StateBackend>,
    _dir: Option<tempfile::TempDir>,
}

/// The key prefix of benchmark keys on a shared Redis, and the table on
/// PostgreSQL: `clear` at the end removes only what the benchmark wrote.
const REDIS_PREFIX: &str = "statecraft-bench:";
const POSTGRES_TABLE: &str = "statecraft_bench";

async fn open_target(spec: &str, concurrency: usize) -> Result<Target, String> {
    let target = |label: &str, backend: Arc<dyn StateBackend>, dir| Target {
        label: label.to_string(),
        backend,
        _dir: dir,
    };
    if spec == "sled" {
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let backend =
            SledBackend::open(dir.path()).map_err(|e| format!("backend \"sled\": {e}"))?;
        return Ok(target("sled", Arc::new(backend), Some(dir)));
    }
    if spec == "redb" {
        let dir =
            tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let backend = RedbBackend::open(dir.path().join("bench.redb"))
            .map_err(|e| format!("backend \"redb\": {e}"))?;
        return Ok(target("redb", Arc::new(backend), Some(dir)));
    }
    let options = ConnectOptions::new()
        .redis_key_prefix(REDIS_PREFIX)
        .postgres_table(POSTGRES_TABLE)
        .postgres_pool_size(concurrency.clamp(4, 64));
    let backend = statecraft::connect_with(spec, &options)
        .await
        .map_err(|err| format!("backend {spec:?}: {err}"))?;
    // A plain store is labelled by its kind, a stack by its spec.
    let label = if spec.contains('(') || spec.starts_with("sled:") || spec.starts_with("redb:") {
        spec.to_string()
    } else {
        backend.name().to_string()
    };
    Ok(target(&label, backend, None))
}

/// Runs the benchmark and prints the table or JSON.
pub(crate) async fn run(args: BenchArgs) -> Result<(), String> {
    if args.concurrency == 0
        || args.keys == 0
        || args.batch_size == 0
        || args.duration_ms == 0
        || args.rounds == 0
    {
        return Err(
            "--concurrency, --keys, --batch-size, --duration-ms and --rounds must be at least 1"
                .into(),
        );
    }
    if args.with_raw && args.primitive.is_some() {
        return Err("--with-raw measures the backends' operations, not --primitive".into());
    }
    let mut levels = vec![1];
    if args.concurrency > 1 {
        levels.push(args.concurrency);
    }
    if let Some(which) = args.primitive {
        let specs = match args.backends.is_empty() {
            true => vec!["memory".to_string()],
            false => args.backends.clone(),
        };
        let rows = primitive::run(which, &args, &specs, &levels).await?;
        return print_rows(&rows, args.json);
    }
    let specs = if args.backends.is_empty() {
        vec!["memory".to_string(), "sled".to_string()]
    } else {
        args.backends.clone()
    };
    let mut targets = Vec::with_capacity(specs.len());
    let mut raws = Vec::with_capacity(specs.len());
    for spec in &specs {
        let target = open_target(spec, args.concurrency).await?;
        // A backend without a peer, or whose peer cannot open, is said so,
        // and the run goes on.
        raws.push(match args.with_raw {
            true => match Raw::open(spec).await {
                Ok(Some(raw)) => Some(Arc::new(raw)),
                Ok(None) => {
                    eprintln!("{}: no raw peer", target.label);
                    None
                }
                Err(err) => {
                    eprintln!("{}: no raw peer: {err}", target.label);
                    None
                }
            },
            false => None,
        });
        targets.push(target);
    }
    let cases = (targets.len() * args.ops.len() * levels.len()) as u64;
    let progress = ProgressBar::new(cases);
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let keys: Arc<[Bytes]> = (0..args.keys)
        .map(|i| Bytes::from(format!("bench:{i:08}")))
        .collect();
    let mut rows = Vec::new();
    for (target, raw) in targets.iter().zip(&raws) {
        progress.set_message(format!("{}: loading {} keys", target.label, args.keys));
        prefill(&*target.backend, &keys, &value).await?;
        if let Some(raw) = raw {
            raw.prefill(&keys, &value).await?;
        }
        let mut ops = args.ops.clone();
        if l1_figures(&*target.backend).await.is_some() {
            for op in [BenchOp::GetHit, BenchOp::GetMiss] {
                if !ops.contains(&op) {
                    ops.push(op);
                }
            }
        }
        for &op in &ops {
            for &concurrency in &levels {
                progress.set_message(format!("{} {} ×{concurrency}", target.label, op.name()));
                let case = Case {
                    op,
                    concurrency,
                    args: &args,
                    keys: &keys,
                    value: &value,
                };
                match raw {
                    Some(raw) if Raw::runs(op) => {
                        rows.extend(measure_with_raw(target, raw, &case).await?);
                    }
                    _ => rows.push(measure(target, &case).await?),
                }
                progress.inc(1);
            }
        }
        target.backend.clear().await.map_err(|e| e.to_string())?;
        if let Some(raw) = raw {
            raw.clear().await?;
        }
    }
    progress.finish_and_clear();
    print_rows(&rows, args.json)
}

fn print_rows(rows: &[BenchRow], json: bool) -> Result<(), String> {
    if json {
        let json = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
        println!("{json}");
    } else {
        print!("{}", render_table(rows));
    }
    Ok(())
}

async fn prefill(backend: &dyn StateBackend, keys: &[Bytes], value: &Bytes) -> Result<(), String> {
    for chunk in keys.chunks(1_000) {
        let entries = chunk.iter().map(|k| (k.clone(), value.clone())).collect();
        backend
            .batch_put(entries, PutOptions::default())
            .await
            .map_err(|e| format!("loading keys: {e}"))?;
    }
    Ok(())
}

/// The hot set of `get_hit`.
const HOT_KEYS: usize = 1_000;

/// One task's results.
struct TaskResult {
    histogram: Histogram<u64>,
    calls: u64,
}

/// One (operation, concurrency) case and what it runs on.
struct Case<'a> {
    op: BenchOp,
    concurrency: usize,
    args: &'a BenchArgs,
    keys: &'a Arc<[Bytes]>,
    value: &'a Bytes,
}

/// What a case's calls go through.
#[derive(Clone)]
enum Side {
    Store(Arc<dyn StateBackend>),
    Raw(Arc<Raw>),
}

/// A case run for a while: its latencies, calls and seconds.
struct Ran {
    histogram: Histogram<u64>,
    calls: u64,
    seconds: f64,
}

impl Ran {
    /// Nothing run yet.
    fn empty() -> Result<Ran, String> {
        Ok(Ran {
            histogram: new_histogram()?,
            calls: 0,
            seconds: 0.0,
        })
    }

    /// Seconds a call, the tasks' calls overlapping.
    fn per_call(&self) -> f64 {
        self.seconds / self.calls.max(1) as f64
    }
}

/// Runs `case` on `side` for `millis`, its tasks at once. The clock runs
/// from the first task's first call to the last task's last: setting the
/// tasks up (a histogram each) and merging their results are not timed,
/// which with 1,000 tasks would cost more than the calls.
async fn run_case(side: &Side, case: &Case<'_>, millis: u64) -> Result<Ran, String> {
    let counters: Arc<[Bytes]> = (0..1_000)
        .map(|i| Bytes::from(format!("bench:counter:{i}")))
        .collect();
    let states = (0..case.concurrency)
        .map(|task| TaskState::new(task as u64, case.args.batch_size))
        .collect::<Result<Vec<_>, String>>()?;
    let ready = Arc::new(tokio::sync::Barrier::new(case.concurrency));
    let tasks: Vec<_> = states
        .into_iter()
        .map(|mut state| {
            let (side, ready) = (side.clone(), Arc::clone(&ready));
            let (keys, counters) = (Arc::clone(case.keys), Arc::clone(&counters));
            let value = case.value.clone();
            let op = case.op;
            tokio::spawn(async move {
                ready.wait().await;
                let began = Instant::now();
                let deadline = began + Duration::from_millis(millis);
                let calls =
                    run_task(&side, op, &mut state, deadline, &keys, &counters, &value).await?;
                Ok::<_, String>((state.histogram, calls, began, Instant::now()))
            })
        })
        .collect();
    let mut histogram = new_histogram()?;
    let mut calls = 0;
    let mut span: Option<(Instant, Instant)> = None;
    for task in tasks {
        let (task_histogram, task_calls, began, ended) = task
            .await
            .map_err(|e| format!("benchmark task failed: {e}"))??;
        histogram.add(&task_histogram).map_err(|e| e.to_string())?;
        calls += task_calls;
        span = Some(match span {
            None => (began, ended),
            Some((first, last)) => (first.min(began), last.max(ended)),
        });
    }
    let seconds = span.map_or(0.0, |(first, last)| (last - first).as_secs_f64());
    Ok(Ran {
        histogram,
        calls,
        seconds,
    })
}

/// A row of `ran` on `backend`.
fn row(backend: String, case: &Case<'_>, ran: &Ran, caps: statecraft::Capabilities) -> BenchRow {
    let batch_size = if case.op.is_batch() {
        case.args.batch_size
    } else {
        1
    };
    BenchRow {
        backend,
        operation: case.op.name(),
        concurrency: case.concurrency,
        ops_per_sec: (ran.calls * batch_size as u64) as f64 / ran.seconds,
        p50_us: ran.histogram.value_at_quantile(0.50) as f64 / 1_000.0,
        p99_us: ran.histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        batch_size,
        calls: ran.calls,
        persistent: caps.persistent,
        distributed: caps.distributed,
        l1_hits: None,
        l1_misses: None,
        ratio: None,
    }
}

async fn warm(target: &Target, case: &Case<'_>) -> Result<(), String> {
    if case.op == BenchOp::GetHit {
        let hot = case.keys.iter().take(HOT_KEYS);
        for key in hot.clone().chain(hot) {
            target
                .backend
                .get(key)
                .await
                .map_err(|e| format!("warming: {e}"))?;
        }
    }
    Ok(())
}

async fn measure(target: &Target, case: &Case<'_>) -> Result<BenchRow, String> {
    warm(target, case).await?;
    let l1_before = l1_figures(&*target.backend).await;
    let side = Side::Store(Arc::clone(&target.backend));
    let ran = run_case(&side, case, case.args.duration_ms).await?;
    let l1 = match (l1_before, l1_figures(&*target.backend).await) {
        (Some((hits, misses)), Some((hits_after, misses_after))) => Some((
            hits_after.saturating_sub(hits),
            misses_after.saturating_sub(misses),
        )),
        _ => None,
    };
    let mut row = row(
        target.label.clone(),
        case,
        &ran,
        target.backend.capabilities(),
    );
    row.l1_hits = l1.map(|(hits, _)| hits);
    row.l1_misses = l1.map(|(_, misses)| misses);
    Ok(row)
}

/// The case on the statecraft side and on the raw peer, in interleaved
/// rounds (the side that goes first alternates): the statecraft row with
/// its ratio, then the raw row.
async fn measure_with_raw(
    target: &Target,
    raw: &Arc<Raw>,
    case: &Case<'_>,
) -> Result<[BenchRow; 2], String> {
    warm(target, case).await?;
    let rounds = case.args.rounds;
    let millis = (case.args.duration_ms / rounds as u64).max(1);
    let sides = [
        Side::Store(Arc::clone(&target.backend)),
        Side::Raw(Arc::clone(raw)),
    ];
    let mut totals = [Ran::empty()?, Ran::empty()?];
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut this: [Option<Ran>; 2] = [None, None];
        for k in 0..2 {
            let which = (k + round) % 2;
            this[which] = Some(run_case(&sides[which], case, millis).await?);
        }
        let [Some(ours), Some(theirs)] = this else {
            return Err("a round ran one side only".into());
        };
        ratios.push(ours.per_call() / theirs.per_call());
        for (total, ran) in totals.iter_mut().zip([ours, theirs]) {
            total
                .histogram
                .add(&ran.histogram)
                .map_err(|e| e.to_string())?;
            total.calls += ran.calls;
            total.seconds += ran.seconds;
        }
    }
    let caps = target.backend.capabilities();
    let mut ours = row(target.label.clone(), case, &totals[0], caps);
    ours.ratio = Some(median(ratios));
    let theirs = row(format!("raw_{}", target.label), case, &totals[1], caps);
    Ok([ours, theirs])
}

/// The median (of an even count, the mean of the middle two).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())
}

/// A xorshift generator: key choice must cost less than the operation.
struct KeyPicker(u64);

impl KeyPicker {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What one task of a case sets up before the clock starts.
struct TaskState {
    histogram: Histogram<u64>,
    picker: KeyPicker,
    batch_size: usize,
    batch_keys: Vec<Bytes>,
    missing: Vec<u8>,
}

impl TaskState {
    fn new(task: u64, batch_size: usize) -> Result<TaskState, String> {
        Ok(TaskState {
            histogram: new_histogram()?,
            picker: KeyPicker(
                0x9E37_79B9_7F4A_7C15 ^ (task + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            ),
            batch_size,
            batch_keys: Vec::with_capacity(batch_size),
            missing: b"bench:missing:".to_vec(),
        })
    }
}

/// One task's calls until `deadline`, recorded in `state`: how many.
async fn run_task(
    side: &Side,
    op: BenchOp,
    state: &mut TaskState,
    deadline: Instant,
    keys: &[Bytes],
    counters: &[Bytes],
    value: &Bytes,
) -> Result<u64, String> {
    let TaskState {
        histogram,
        picker,
        batch_size,
        batch_keys,
        missing,
    } = state;
    let batch_size = *batch_size;
    let mut calls = 0u64;
    let missing_prefix = b"bench:missing:".len();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let call = match op {
            BenchOp::Get => Call::Get(&keys[picker.next(keys.len())]),
            BenchOp::GetHit => Call::Get(&keys[picker.next(keys.len().min(HOT_KEYS))]),
            BenchOp::GetMiss => {
                // Unique across tasks and cases: never read before.
                static NEXT_MISS: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0);
                let n = NEXT_MISS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                missing.truncate(missing_prefix);
                missing.extend_from_slice(n.to_string().as_bytes());
                Call::Get(missing)
            }
            BenchOp::Put => Call::Put(&keys[picker.next(keys.len())], value),
            BenchOp::Increment => Call::Increment(&counters[picker.next(counters.len())]),
            BenchOp::BatchGet => {
                batch_keys.clear();
                batch_keys.extend((0..batch_size).map(|_| keys[picker.next(keys.len())].clone()));
                Call::BatchGet(batch_keys)
            }
            BenchOp::BatchPut => Call::BatchPut(
                (0..batch_size)
                    .map(|_| (keys[picker.next(keys.len())].clone(), value.clone()))
                    .collect(),
            ),
        };
        let result = match side {
            Side::Store(backend) => store_call(&**backend, call).await,
            Side::Raw(raw) => raw.call(call).await,
        };
        let took = now.elapsed();
        result.map_err(|e| format!("{} failed: {e}", op.name()))?;
        calls += 1;
        histogram
            .record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1))
            .map_err(|e| e.to_string())?;
        if calls.is_multiple_of(64) {
            // In-process backends never yield on their own; let the other
            // tasks of this case run.
            tokio::task::yield_now().await;
        }
    }
    Ok(calls)
}

/// One call through statecraft.
async fn store_call(backend: &dyn StateBackend, call: Call<'_>) -> Result<(), String> {
    let done = match call {
        Call::Get(key) => backend.get(key).await.map(drop),
        Call::Put(key, value) => backend.put(key, value.clone()).await,
        Call::Increment(key) => backend.increment(key, 1, PutOptions::new()).await.map(drop),
        Call::BatchGet(keys) => backend.batch_get(keys).await.map(drop),
        Call::BatchPut(entries) => backend.batch_put(entries, PutOptions::default()).await,
    };
    done.map_err(|e| e.to_string())
}

fn human_latency(us: f64) -> String {
    if us < 1.0 {
        format!("{:.0}ns", us * 1_000.0)
    } else if us < 1_000.0 {
        format!("{us:.1}μs")
    } else {
        format!("{:.2}ms", us / 1_000.0)
    }
}

fn human_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M ops/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}K ops/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0} ops/s")
    }
}

/// The table, shaped like the "Performance Characteristics" table of the
/// original design, one row per (backend, operation, concurrency).
fn render_table(rows: &[BenchRow]) -> String {
    let header = [
        "Backend",
        "Operation",
        "Concurrency",
        "p50 latency",
        "p99 latency",
        "Throughput",
        "Persistence",
        "Distribution",
        "L1 hits",
        "× raw",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let op = if r.batch_size > 1 {
                format!("{} ({} keys)", r.operation, r.batch_size)
            } else {
                r.operation.to_string()
            };
            [
                r.backend.clone(),
                op,
                r.concurrency.to_string(),
                human_latency(r.p50_us),
                human_latency(r.p99_us),
                human_rate(r.ops_per_sec),
                if r.persistent { "Yes" } else { "No" }.to_string(),
                if r.distributed { "Yes" } else { "No" }.to_string(),
                match (r.l1_hits, r.l1_misses) {
                    (Some(hits), Some(misses)) if hits + misses > 0 => {
                        format!("{:.1}%", 100.0 * hits as f64 / (hits + misses) as f64)
                    }
                    _ => "-".to_string(),
                },
                r.ratio
                    .map_or_else(|| "-".to_string(), |ratio| format!("{ratio:.2}")),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    // The "× raw" column only with `--with-raw`'s ratios.
    let ratios = rows.iter().any(|r| r.ratio.is_some());
    let shown = if ratios {
        widths.len()
    } else {
        widths.len() - 1
    };
    let widths = &widths[..shown];
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (cell, &width) in cells.iter().zip(widths) {
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    out.push('|');
    for &width in widths {
        let _ = write!(out, "{}|", "-".repeat(width + 2));
    }
    out.push('\n');
    for row in &cells {
        line(&mut out, row);
    }
    out.push_str(
        "\nLatency is per call (a batch call covers all its keys); throughput counts keys.\n",
    );
    if ratios {
        out.push_str(
            "× raw: statecraft's time per call ÷ the raw peer's (median of interleaved rounds).\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_specs_parse_or_explain() {
        assert!(open_target("memory", 4).await.is_ok());
        let dir = tempfile::tempdir().expect("temp dir");
        let spec = format!("sled:{}", dir.path().display());
        assert_eq!(
            open_target(&spec, 4).await.map(|t| t.label).ok(),
            Some(spec)
        );
        let spec = format!("redb:{}", dir.path().join("db.redb").display());
        assert_eq!(
            open_target(&spec, 4).await.map(|t| t.label).ok(),
            Some(spec)
        );
        assert_eq!(
            open_target("redb", 4)
                .await
                .map(|t| t.label)
                .ok()
                .as_deref(),
            Some("redb")
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let unreachable = format!("redis://127.0.0.1:{closed}");
        let stack = "cached(tiered(memory, memory, ttl=5s))";
        assert_eq!(
            open_target(stack, 4).await.map(|t| t.label).ok().as_deref(),
            Some(stack)
        );
        for bad in [
            "mem",
            "sled:",
            "redb:",
            "ftp://x",
            "redis+cluster://",
            &unreachable,
            "cached(memroy)",
            "tiered(memory)",
        ] {
            let err = open_target(bad, 4).await.err().unwrap_or_default();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn table_has_one_line_per_row() {
        let row = BenchRow {
            backend: "memory".into(),
            operation: "get",
            concurrency: 1,
            ops_per_sec: 2.5e6,
            p50_us: 0.3,
            p99_us: 1.5,
            batch_size: 1,
            calls: 10,
            persistent: false,
            distributed: false,
            l1_hits: Some(99),
            l1_misses: Some(1),
            ratio: Some(1.234),
        };
        let table = render_table(&[
            row.clone(),
            BenchRow {
                concurrency: 16,
                ..row.clone()
            },
        ]);
        assert!(table.contains("| memory  | get       | 16 "), "{table}");
        assert!(table.contains("2.50M ops/s"));
        assert!(table.contains("300ns"));
        assert!(table.contains("99.0%"), "{table}");
        assert!(table.contains("| 1.23 "), "{table}");
        assert!(table.contains("× raw"), "{table}");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let plain = BenchRow { ratio: None, ..row };
        let without = render_table(&[plain]);
        assert!(!without.contains("× raw"), "{without}");
        assert!(without.lines().all(|l| !l.ends_with("| - |")), "{without}");
        assert_eq!(
            table.lines().filter(|l| l.starts_with("| memory")).count(),
            2
        );
    }
}
