//! [`DistributedBreaker`]: one breaker shared by every instance that uses
//! the same store and name. Asking is one round trip: the step's read-only
//! form ([`PEEK`]) while the breaker is closed, the atomic step while this
//! instance last saw it open or half-open; recording is one atomic step
//! ([`BreakerStep`]: natively on Redis and PostgreSQL, at the server's
//! clock), so the half-open probe limit holds across instances and their
//! clocks do not matter.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::{Error, ErrorKind, Result};
use crate::backend::StateBackend;

use super::config::BreakerConfig;
use super::events::{observable, Observers};
use super::machine::{xorshift, Decision, Event, Outcome, Phase, State, Step};
use super::permit::{CallError, Rejected};
use super::shared::{parse_step_output, step_input, BreakerStep, PEEK};
use super::wire;

/// What a shared breaker does when its store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDown {
    /// Let calls through (uncounted): the protected call matters more.
    FailOpen,
    /// Reject calls: the protected resource must not be hammered blind.
    FailClosed,
}

thread_local! {
    static ENTROPY: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        hasher.finish() | 1
    });
}

/// The jitter's randomness for a step run in a store (this thread's
/// generator).
pub(super) fn entropy() -> u32 {
    ENTROPY.with(|cell| {
        let x = xorshift(cell.get());
        cell.set(x);
        (x >> 32) as u32
    })
}

/// A circuit breaker whose state lives in a store, shared by every
/// instance with the same store and name.
///
/// ```
/// # #[tokio::main] async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use statecraft::breaker::{BreakerConfig, DistributedBreaker, Phase};
/// use statecraft::MemoryBackend;
///
/// let store = Arc::new(MemoryBackend::new()); // Redis or PostgreSQL in production
/// let config = BreakerConfig::builder().consecutive_failures(2).build()?;
/// let a = DistributedBreaker::new(store.clone(), "payments", config.clone());
/// let b = DistributedBreaker::new(store, "payments", config);
/// for _ in 0..2 {
///     a.acquire().await.expect("closed").failure().await?;
/// }
/// assert!(b.acquire().await.is_err()); // b sees a's opening
/// assert_eq!(b.state().await?.map(|s| s.phase), Some(Phase::Open));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DistributedBreaker {
    pub(super) backend: Arc<dyn StateBackend>,
    name: Arc<str>,
    key: Bytes,
    config: Arc<BreakerConfig>,
    timeout: Duration,
    store_down: StoreDown,
    /// Whether this instance last saw the breaker in a phase that needs
    /// the atomic step to ask (open, half-open, forced open): then asking
    /// skips the read and goes straight to the step, one round trip.
    stepping: Arc<std::sync::atomic::AtomicBool>,
    /// Hooks, events and metrics of what this instance's steps do and see.
    observers: Arc<Observers>,
}

impl std::fmt::Debug for DistributedBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedBreaker")
            .field("name", &self.name)
            .field("backend", &self.backend.name())
            .field("store_down", &self.store_down)
            .finish_non_exhaustive()
    }
}

impl DistributedBreaker {
    /// The breaker `name` in `backend` (its key is `breaker:<name>`; on
    /// PostgreSQL its row in the table `<table>_breakers`), with a 1 s
    /// store timeout, failing open.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        name: impl Into<String>,
        config: BreakerConfig,
    ) -> DistributedBreaker {
        let name: String = name.into();
        let name_arc: Arc<str> = Arc::from(name.as_str());
        DistributedBreaker {
            key: Bytes::from(format!("breaker:{name}")),
            observers: Arc::new(Observers::new(name_arc.clone())),
            name: name_arc,
            backend,
            config: Arc::new(config),
            timeout: Duration::from_secs(1),
            store_down: StoreDown::FailOpen,
            stepping: Arc::default(),
        }
    }

    /// How long one round trip to the store may take (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens when the store does not answer (default fail open).
    pub fn store_down(mut self, behaviour: StoreDown) -> Self {
        self.store_down = behaviour;
        self
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key its state lives under.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub(super) async fn run(&self, event: Event) -> Result<(Step, Option<u64>)> {
        let input = step_input(&self.config, &self.name, event, entropy(), 0);
        let update = self
            .backend
            .update_atomic(&self.key, &BreakerStep, input.as_bytes());
        match tokio::time::timeout(self.timeout, update).await {
            Ok(answer) => {
                let (step, spell) = parse_step_output(&answer?)?;
                if let Some(t) = step.transition {
                    self.observers.moved(t);
                    self.observers.after(t);
                }
                if let Decision::Reject { retry_after_ms } = step.decision {
                    self.observers.rejected(retry_after_ms);
                }
                Ok((step, spell))
            }
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "breaker {:?}: the store took longer than {:?}",
                    self.name, self.timeout
                ),
            )
            .maybe_applied(true)),
        }
    }

    /// Asks to make a call (one round trip). When the store does not
    /// answer, [`StoreDown`] decides: an uncounted permit, or a rejection
    /// without a retry time.
    pub async fn acquire(&self) -> std::result::Result<DistributedPermit<'_>, Rejected> {
        // A closed (or disabled, or counting-only) breaker admits whatever
        // the time: one read (the step's read-only form) decides, as of
        // that read. Only an opening that
        // may have ended, or a probe to admit, needs the atomic step — and
        // while this instance last saw one, it asks the step directly.
        use std::sync::atomic::Ordering;
        if !self.stepping.load(Ordering::Relaxed) {
            match self.read_phase().await {
                Ok(Some(Phase::Closed | Phase::Disabled | Phase::MetricsOnly) | None) => {
                    return Ok(DistributedPermit::new(self, false, None, true))
                }
                Ok(Some(_)) => self.stepping.store(true, Ordering::Relaxed),
                Err(err) => return self.store_is_down(err),
            }
        }
        let answer = self.run(Event::Acquire).await;
        if let Ok((step, _)) = &answer {
            // A plain permit: closed again (or disabled): back to reading.
            let closed = step.decision == Decision::Permit { probe: false };
            self.stepping.store(!closed, Ordering::Relaxed);
        }
        match answer {
            Ok((step, spell)) => match step.decision {
                Decision::Permit { probe } => Ok(DistributedPermit::new(self, probe, spell, true)),
                Decision::Reject { retry_after_ms } => {
                    Err(Rejected::new(self.name.clone(), retry_after_ms))
                }
                Decision::Done => Ok(DistributedPermit::new(self, false, None, true)),
            },
            Err(err) => self.store_is_down(err),
        }
    }

    fn store_is_down(&self, err: Error) -> std::result::Result<DistributedPermit<'_>, Rejected> {
        tracing::warn!(breaker = %self.name, error = %err, "breaker store unavailable");
        match self.store_down {
            StoreDown::FailOpen => Ok(DistributedPermit::new(self, false, None, false)),
            StoreDown::FailClosed => Err(Rejected::new(self.name.clone(), None)),
        }
    }

    /// The stored phase (`None`: no state, a fresh closed breaker; a
    /// damaged state reads as `None` too, and the next step replaces it).
    async fn read_phase(&self) -> Result<Option<Phase>> {
        Ok(self.state().await?.map(|s| s.phase))
    }

    /// Records a result (one round trip).
    async fn record(&self, outcome: Outcome, slow: bool, probe: Option<u64>) -> Result<()> {
        self.observers.recorded(outcome, slow);
        self.run(Event::Record {
            outcome,
            slow,
            probe,
        })
        .await
        .map(|_| ())
    }

    /// Runs `call` if the breaker lets it through and records its result
    /// (an `Err` is a failure). A result that cannot be recorded is logged.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> std::result::Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
    {
        self.call_with(Outcome::of::<T, E>, call).await
    }

    /// [`call`](Self::call) with `classify` deciding which results count
    /// as failures and which are ignored.
    pub async fn call_with<T, E, F, Fut, C>(
        &self,
        classify: C,
        call: F,
    ) -> std::result::Result<T, CallError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
        C: FnOnce(&std::result::Result<T, E>) -> Outcome,
    {
        let permit = self.acquire().await.map_err(CallError::Rejected)?;
        let result = call().await;
        let outcome = classify(&result);
        if let Err(err) = permit.record(outcome).await {
            tracing::warn!(breaker = %self.name, error = %err, "breaker result not recorded");
        }
        result.map_err(CallError::Failed)
    }

    /// The shared state now (`None`: never written, or expired: closed),
    /// read in one round trip by the step's read-only form (a store's
    /// native copy may keep it outside the key-value table).
    pub async fn state(&self) -> Result<Option<State>> {
        let read = self.backend.update_atomic(&self.key, &BreakerStep, PEEK);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(raw) => Ok(wire::decode_state(&raw?)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "breaker {:?}: the store took longer than {:?}",
                    self.name, self.timeout
                ),
            )),
        }
    }

    /// Holds it open for every instance.
    pub async fn force_open(&self) -> Result<()> {
        self.run(Event::ForceOpen).await.map(|_| ())
    }

    /// Closes it for every instance, forgetting its history.
    pub async fn force_close(&self) -> Result<()> {
        self.run(Event::ForceClose).await.map(|_| ())
    }

    /// A fresh closed breaker for every instance.
    pub async fn reset(&self) -> Result<()> {
        self.run(Event::Reset).await.map(|_| ())
    }

    /// Lets every call through everywhere, counting nothing.
    pub async fn disable(&self) -> Result<()> {
        self.run(Event::Disable).await.map(|_| ())
    }

    /// Lets every call through everywhere, counting, never opening.
    pub async fn metrics_only(&self) -> Result<()> {
        self.run(Event::MetricsOnly).await.map(|_| ())
    }
}

observable!(DistributedBreaker, this => this.observers);

impl DistributedBreaker {
    /// Reports this breaker's calls by outcome, rejections, slow calls,
    /// the transitions this instance's steps made and the last phase it
    /// saw, through the `metrics` crate (the names are those of
    /// [`LocalBreaker::with_metrics`](super::LocalBreaker::with_metrics)).
    pub fn with_metrics(self) -> Self {
        self.observers.enable_metrics(Phase::Closed);
        self
    }
}

/// Leave to make one call through a [`DistributedBreaker`]; record its
/// result with [`success`](Self::success), [`failure`](Self::failure),
/// [`ignore`](Self::ignore) or [`record`](Self::record) (one round trip).
/// A permit dropped unfinished records a failure from a task of its own
/// (a cancelled call), inside a Tokio runtime.
#[derive(Debug)]
#[must_use = "a dropped permit records a failure"]
pub struct DistributedPermit<'a> {
    breaker: &'a DistributedBreaker,
    probe: bool,
    spell: Option<u64>,
    started: Option<std::time::Instant>,
    /// Whether the result is to be recorded (not when the store was down).
    counted: bool,
}

impl<'a> DistributedPermit<'a> {
    fn new(
        breaker: &'a DistributedBreaker,
        probe: bool,
        spell: Option<u64>,
        counted: bool,
    ) -> Self {
        DistributedPermit {
            started: breaker
                .config
                .slow_call()
                .map(|_| std::time::Instant::now()),
            breaker,
            probe,
            spell,
            counted,
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// A probe's half-open spell: when it began (store milliseconds). All
    /// probes of one spell, on every instance, share it.
    pub fn spell(&self) -> Option<u64> {
        self.spell.filter(|_| self.probe)
    }

    /// Whether the store answered the request for this permit (a permit
    /// given because the store was down records nothing).
    pub fn is_counted(&self) -> bool {
        self.counted
    }

    /// The call worked.
    pub async fn success(self) -> Result<()> {
        self.record(Outcome::Success).await
    }

    /// The call failed.
    pub async fn failure(self) -> Result<()> {
        self.record(Outcome::Failure).await
    }

    /// The call says nothing about the protected resource.
    pub async fn ignore(self) -> Result<()> {
        self.record(Outcome::Ignored).await
    }

    /// Records `outcome` (one round trip; nothing if the store was down
    /// when the permit was given).
    pub async fn record(self, outcome: Outcome) -> Result<()> {
        let this = std::mem::ManuallyDrop::new(self);
        if !this.counted {
            return Ok(());
        }
        let slow = match (this.started, this.breaker.config.slow_call()) {
            (Some(started), Some(threshold)) => started.elapsed() >= threshold,
            _ => false,
        };
        this.breaker.record(outcome, slow, this.spell()).await
    }
}

impl Drop for DistributedPermit<'_> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let breaker = self.breaker.clone();
        let probe = self.spell();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(err) = breaker.record(Outcome::Failure, false, probe).await {
                        tracing::warn!(breaker = %breaker.name, error = %err, "cancelled call not recorded");
                    }
                });
            }
            Err(_) => tracing::warn!(
                breaker = %self.breaker.name,
                "a permit dropped outside a Tokio runtime: its failure is not recorded"
            ),
        }
    }
}
