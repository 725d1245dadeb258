//! [`HybridBreaker`]: a shared breaker that decides locally.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::backend::clock::{Clock, MonotonicClock};
use crate::backend::error::Result;
use crate::backend::StateBackend;

use super::config::BreakerConfig;
use super::distributed::{entropy, DistributedBreaker};
use super::events::{observable, BreakerEvent, Observers};
use super::fast::{stripe, STRIPES};
use super::local::LocalBreaker;
use super::machine::{Decision, Event, Outcome, Phase, State, Transition};
use super::permit::{CallError, Rejected};
use super::shared::{
    batch_input, parse_peek_at, parse_step_output, BreakerStep, MAX_BATCH, PEEK_AT,
};

mod permit;

pub use permit::HybridPermit;
use permit::Kind;

/// How a [`HybridBreaker`] keeps in step with the store.
#[derive(Debug, Clone)]
pub struct HybridConfig {
    /// How often results are flushed to the store (default 20 ms); a local
    /// opening flushes at once.
    pub flush_every: Duration,
    /// How often the shared state is read, in case a pub/sub message was
    /// lost (default 250 ms): the staleness bound without pub/sub.
    pub reconcile_every: Duration,
    /// How long one round trip to the store may take (default 1 s).
    pub timeout: Duration,
    /// Whether transitions are published and listened for (default true).
    pub pubsub: bool,
}

impl Default for HybridConfig {
    fn default() -> Self {
        HybridConfig {
            flush_every: Duration::from_millis(20),
            reconcile_every: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            pubsub: true,
        }
    }
}

/// What a [`HybridBreaker`] has done with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HybridStats {
    /// Batches sent.
    pub flushes: u64,
    /// Results they carried.
    pub flushed: u64,
    /// Results dropped because the store did not answer.
    pub dropped: u64,
    /// Round trips that failed.
    pub store_errors: u64,
    /// Shared states learned from pub/sub messages.
    pub pushed: u64,
    /// Shared states read by reconciling.
    pub reconciled: u64,
    /// Whether the store answered last time.
    pub store_up: bool,
}

/// Results not yet flushed, per thread stripe: counts of the four codes
/// (1 failed + 2 slow).
#[derive(Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; 4]);

/// What an instance tells the others after a transition, and what it
/// reads when reconciling: the shared phase, the end of an opening and the
/// store's time then (`<store ms> <PHASE> <open until ms>`: a few bytes,
/// whatever the window's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Push {
    store_now: u64,
    phase: Phase,
    open_until: u64,
}

impl Push {
    fn of(store_now: u64, state: Option<&State>) -> Push {
        Push {
            store_now,
            phase: state.map_or(Phase::Closed, |s| s.phase),
            open_until: state.map_or(0, |s| s.open_until),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{} {} {}",
            self.store_now,
            self.phase.as_str(),
            self.open_until
        )
    }

    fn decode(raw: &[u8]) -> Option<Push> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut words = text.split(' ');
        let push = Push {
            store_now: words.next()?.parse().ok()?,
            phase: Phase::named(words.next()?)?,
            open_until: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(push)
    }
}

/// The shared phase as this instance last learned it, with the end of an
/// opening on this process's clock, in one word (the phase's code in the
/// top byte), and the store's time of the newest state learned.
struct View {
    word: AtomicU64,
    newest: AtomicU64,
}

struct Hybrid {
    local: LocalBreaker,
    shared: DistributedBreaker,
    config: Arc<BreakerConfig>,
    hybrid: HybridConfig,
    channel: String,
    clock: Arc<dyn Clock>,
    view: View,
    pending: Box<[Stripe]>,
    wake: Notify,
    store_up: AtomicBool,
    figures: [AtomicU64; 6],
    /// The shared transitions learned, and the store's comings and goings.
    observers: Observers,
}

const FLUSHES: usize = 0;
const FLUSHED: usize = 1;
const DROPPED: usize = 2;
const ERRORS: usize = 3;
const PUSHED: usize = 4;
const RECONCILED: usize = 5;

/// A circuit breaker shared through a store that decides locally. While the
/// fleet's breaker is closed, asking and recording are a local breaker's
/// few atomic operations; the results are counted per thread and flushed
/// to the store in batches by one background task, where the shared state
/// machine ([`BreakerStep`](super::BreakerStep)) counts every instance's
/// results together. A transition is published through the store's
/// pub/sub, so idle instances learn an opening without making a call, and
/// the task reconciles with the store's state every so often in case a
/// message was lost. While the shared breaker is open (or forced open),
/// asking costs nothing; once its opening ends, probes are asked of the
/// store (so the
/// half-open limit holds across instances).
///
/// Bounds, with a [`HybridConfig`]:
/// - staleness: an instance learns a shared transition within the pub/sub
///   delivery time, or at worst within
///   [`reconcile_every`](HybridConfig::reconcile_every) and a flush's round
///   trip (a state older than one learned already is ignored);
/// - over-admission: after the shared breaker opens, an instance that has
///   not learned it yet admits the calls it makes in that time; and the
///   results of the last [`flush_every`](HybridConfig::flush_every) reach
///   the shared window that late (an instance's own evidence opens its
///   local breaker at once, and flushes at once);
/// - a flush sends one batch of at most [`MAX_BATCH`](super::MAX_BATCH)
///   results, their kinds spread evenly through it (more results are
///   scaled down, keeping the proportions: a rule counting failures in a
///   window then sees fewer than there were); results counted while the
///   store does not answer are dropped, not sent stale.
///
/// When the store does not answer, the breaker keeps deciding on this
/// instance's own evidence (also once a shared opening has ended, or while
/// it is half-open; a forced opening holds until its release reaches it),
/// says so ([`BreakerEvent::StoreUnavailable`],
/// [`HybridStats::store_up`]), and follows the shared state again once
/// the store answers ([`BreakerEvent::StoreRecovered`]).
///
/// ```
/// # #[tokio::main] async fn main() -> statecraft::Result<()> {
/// use std::sync::Arc;
/// use statecraft::breaker::{BreakerConfig, HybridBreaker, HybridConfig, Phase};
/// use statecraft::MemoryBackend;
///
/// let store = Arc::new(MemoryBackend::new()); // Redis or PostgreSQL across instances
/// let config = BreakerConfig::builder().consecutive_failures(2).build()?;
/// let a = HybridBreaker::start(store.clone(), "search", config.clone(), HybridConfig::default()).await;
/// let b = HybridBreaker::start(store, "search", config, HybridConfig::default()).await;
/// for _ in 0..2 {
///     a.acquire().await.expect("closed").failure().await;
/// }
/// b.wait_for(Phase::Open, std::time::Duration::from_secs(1)).await; // pushed, no call
/// assert!(b.acquire().await.is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HybridBreaker {
    inner: Arc<Hybrid>,
}

impl std::fmt::Debug for HybridBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridBreaker")
            .field("name", &self.inner.local.name())
            .field("shared", &self.shared_phase())
            .field("local", &self.inner.local.phase())
            .finish_non_exhaustive()
    }
}

impl HybridBreaker {
    /// The breaker `name` shared through `store` (the same key and state
    /// as a [`DistributedBreaker`] of that name). It starts from the shared
    /// state (closed if the store does not answer) and runs its flush and
    /// pub/sub tasks on the current Tokio runtime until it is dropped.
    pub async fn start(
        store: Arc<dyn StateBackend>,
        name: impl Into<String>,
        config: BreakerConfig,
        hybrid: HybridConfig,
    ) -> HybridBreaker {
        Self::start_with_clock(store, name, config, hybrid, MonotonicClock::new()).await
    }

    /// [`start`](Self::start), this instance reading `clock` (its own
    /// breaker's time, and the end of a shared opening on it): a
    /// [`ManualClock`](crate::ManualClock) in tests.
    pub async fn start_with_clock(
        store: Arc<dyn StateBackend>,
        name: impl Into<String>,
        config: BreakerConfig,
        hybrid: HybridConfig,
        clock: impl Clock + Clone + 'static,
    ) -> HybridBreaker {
        let name: String = name.into();
        // No zero intervals: a loop that never waits, a store never in time.
        let floor = Duration::from_millis(1);
        let hybrid = HybridConfig {
            flush_every: hybrid.flush_every.max(floor),
            reconcile_every: hybrid.reconcile_every.max(hybrid.flush_every).max(floor),
            timeout: hybrid.timeout.max(floor),
            ..hybrid
        };
        let shared =
            DistributedBreaker::new(store, name.as_str(), config.clone()).timeout(hybrid.timeout);
        let inner = Arc::new(Hybrid {
            local: LocalBreaker::with_clock(name.as_str(), config.clone(), clock.clone()),
            channel: format!("statecraft:breaker:{name}"),
            shared,
            config: Arc::new(config),
            hybrid,
            clock: Arc::new(clock),
            view: View {
                word: AtomicU64::new(0),
                newest: AtomicU64::new(0),
            },
            pending: (0..STRIPES).map(|_| Stripe::default()).collect(),
            wake: Notify::new(),
            store_up: AtomicBool::new(true),
            figures: Default::default(),
            observers: Observers::new(Arc::from(name.as_str())),
        });
        let breaker = HybridBreaker { inner };
        // Subscribed before the first read: no transition falls between.
        let subscription = match breaker.inner.hybrid.pubsub {
            true => breaker.inner.subscribe().await,
            false => None,
        };
        // A step that got no answer is not followed by a read that waits
        // as long again.
        match breaker.inner.warm_up().await {
            Ok(true) => breaker.inner.reconcile_and_publish().await,
            Ok(false) => drop(breaker.inner.reconcile().await),
            Err(err) => breaker.inner.store_failed(&err),
        }
        let weak = Arc::downgrade(&breaker.inner);
        tokio::spawn(flush_loop(weak.clone()));
        if breaker.inner.hybrid.pubsub {
            tokio::spawn(listen_loop(weak, subscription));
        }
        breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.inner.local.name()
    }

    /// The shared phase as this instance knows it now.
    pub fn shared_phase(&self) -> Phase {
        self.inner.view.phase()
    }

    /// This instance's own breaker: its own evidence, with its hooks and
    /// events (the shared breaker's are this one's own
    /// [`events`](Self::events) and hooks).
    pub fn local(&self) -> &LocalBreaker {
        &self.inner.local
    }

    /// What it has done with the store.
    pub fn stats(&self) -> HybridStats {
        let f = |i: usize| self.inner.figures[i].load(Ordering::Relaxed);
        HybridStats {
            flushes: f(FLUSHES),
            flushed: f(FLUSHED),
            dropped: f(DROPPED),
            store_errors: f(ERRORS),
            pushed: f(PUSHED),
            reconciled: f(RECONCILED),
            store_up: self.inner.store_up.load(Ordering::Relaxed),
        }
    }

    /// Waits until the shared phase is `phase` (as learned by pub/sub or
    /// reconciling), at most `timeout`; returns whether it is.
    pub async fn wait_for(&self, phase: Phase, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.shared_phase() != phase {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Asks to make a call: locally while the shared breaker is closed or
    /// open, of the store once an opening has ended (a probe). Nothing is
    /// asked before the future's first poll; dropped unpolled, it takes
    /// nothing.
    pub fn acquire(
        &self,
    ) -> impl Future<Output = std::result::Result<HybridPermit<'_>, Rejected>> + Send + '_ {
        permit::Acquire::new(self)
    }

    /// Asks without waiting: the answer when this instance decides alone
    /// (the shared breaker closed, open, disabled or only counting), `None`
    /// when only the store can (an opening has ended: use
    /// [`acquire`](Self::acquire)).
    #[inline]
    pub fn try_acquire(&self) -> Option<std::result::Result<HybridPermit<'_>, Rejected>> {
        let inner = &*self.inner;
        let phase = inner.view.phase();
        // The permit is built once, after the phases' kinds meet: a kind
        // travels in registers where a permit would go through memory.
        let kind = if phase == Phase::Closed {
            match inner.local.shared.acquire() {
                Ok(spell) => Kind::Local(spell),
                Err(rejected) => return Some(Err(rejected)),
            }
        } else {
            match self.try_acquire_otherwise(phase)? {
                Ok(kind) => kind,
                Err(rejected) => return Some(Err(rejected)),
            }
        };
        Some(Ok(HybridPermit::new(self, kind)))
    }

    /// [`try_acquire`](Self::try_acquire) when the shared breaker is not
    /// closed: the permit's kind.
    #[cold]
    #[inline(never)]
    fn try_acquire_otherwise(&self, phase: Phase) -> Option<std::result::Result<Kind, Rejected>> {
        let inner = &*self.inner;
        let decided = match phase {
            // (Closed is try_acquire's own case.)
            Phase::Closed => inner.local_kind(),
            Phase::MetricsOnly => Ok(Kind::Counted),
            Phase::Disabled => Ok(Kind::Uncounted),
            Phase::Open => {
                let now = inner.clock.now_millis();
                let (_, deadline) = inner.view.load();
                if now < deadline {
                    Err(Rejected::new(Arc::from(self.name()), Some(deadline - now)))
                } else if inner.store_up.load(Ordering::Relaxed) {
                    return None;
                } else {
                    // The store is down: this instance's own evidence.
                    inner.local_kind()
                }
            }
            // Held open until an operator says otherwise (a push, or the
            // next reconcile, brings the release).
            Phase::ForcedOpen => Err(Rejected::new(Arc::from(self.name()), None)),
            Phase::HalfOpen if inner.store_up.load(Ordering::Relaxed) => return None,
            Phase::HalfOpen => inner.local_kind(),
        };
        Some(decided)
    }

    /// An ask of the store's breaker: a probe, a rejection, or closed again.
    #[cold]
    async fn ask_store(&self) -> std::result::Result<HybridPermit<'_>, Rejected> {
        let inner = &*self.inner;
        match inner.shared.run(Event::Acquire).await {
            Ok((step, spell)) => {
                inner.store_answered();
                if step.transition.is_some() {
                    inner.reconcile_and_publish().await;
                }
                match step.decision {
                    Decision::Permit { probe: true } => {
                        Ok(HybridPermit::new(self, Kind::Probe(spell.unwrap_or(0))))
                    }
                    Decision::Reject { retry_after_ms } => {
                        if let Some(ms) = retry_after_ms {
                            inner
                                .view
                                .set(Phase::Open, inner.clock.now_millis().saturating_add(ms));
                        }
                        Err(Rejected::new(Arc::from(self.name()), retry_after_ms))
                    }
                    Decision::Permit { probe: false } | Decision::Done => {
                        inner.reconcile().await;
                        let spell = inner.local.shared.acquire()?;
                        Ok(HybridPermit::new(self, Kind::Local(spell)))
                    }
                }
            }
            Err(err) => {
                inner.store_failed(&err);
                inner.local_kind().map(|kind| HybridPermit::new(self, kind))
            }
        }
    }

    /// Runs `call` if the breaker lets it through and records its result
    /// (an `Err` is a failure): here at once, in the store with the next
    /// flush (a probe's at once).
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
        // The slow paths boxed: this future holds little more than the
        // call's.
        let permit = self.acquire().await.map_err(CallError::Rejected)?;
        let result = call().await;
        let outcome = classify(&result);
        if let Err(probe) = permit.try_record(outcome) {
            // Boxed: this future keeps one word for it.
            Box::pin(probe.record_probe(outcome)).await;
        }
        result.map_err(CallError::Failed)
    }

    /// Holds the shared breaker open for every instance.
    pub async fn force_open(&self) -> Result<()> {
        self.operator(Event::ForceOpen).await
    }

    /// Closes it for every instance, forgetting its history.
    pub async fn force_close(&self) -> Result<()> {
        self.operator(Event::ForceClose).await
    }

    /// A fresh closed breaker for every instance.
    pub async fn reset(&self) -> Result<()> {
        self.operator(Event::Reset).await
    }

    async fn operator(&self, event: Event) -> Result<()> {
        let inner = &*self.inner;
        inner.shared.run(event).await?;
        if matches!(event, Event::ForceClose | Event::Reset) {
            inner.local.reset();
        }
        inner.reconcile_and_publish().await;
        Ok(())
    }
}

const DEADLINE: u64 = (1 << 56) - 1;

impl View {
    #[inline]
    fn load(&self) -> (Phase, u64) {
        let word = self.word.load(Ordering::Acquire);
        (Phase::from_code((word >> 56) as u8), word & DEADLINE)
    }

    #[inline]
    fn phase(&self) -> Phase {
        self.load().0
    }

    fn set(&self, phase: Phase, deadline: u64) {
        self.word.store(
            (u64::from(phase as u8) << 56) | deadline.min(DEADLINE),
            Ordering::Release,
        );
    }

    /// Sets what the store said at `store_now`, unless a newer state was
    /// learned already (a push or a read that arrives late).
    fn learned(&self, store_now: u64, phase: Phase, deadline: u64) {
        if self.newest.fetch_max(store_now, Ordering::AcqRel) <= store_now {
            self.set(phase, deadline);
        }
    }
}

impl Hybrid {
    /// A decision on this instance's own evidence (the store is down).
    #[cold]
    #[inline(never)]
    fn local_kind(&self) -> std::result::Result<Kind, Rejected> {
        self.local.shared.acquire().map(Kind::Local)
    }

    /// Records a result in the local breaker and for the next flush; a
    /// local opening is flushed at once.
    #[inline(always)]
    fn record_here(&self, outcome: Outcome, slow: bool, spell: Option<u64>) {
        let before = self.local.phase();
        self.local.shared.record(outcome, slow, spell);
        self.count(outcome, slow);
        if before != Phase::Open && self.local.phase() == Phase::Open {
            // This instance's own evidence: the fleet hears it now.
            self.wake.notify_one();
        }
    }

    #[inline(always)]
    fn count(&self, outcome: Outcome, slow: bool) {
        if outcome == Outcome::Ignored {
            return;
        }
        let code = usize::from(outcome == Outcome::Failure) + 2 * usize::from(slow);
        self.pending[stripe()].0[code].fetch_add(1, Ordering::Relaxed);
    }

    fn bump(&self, figure: usize, by: u64) {
        self.figures[figure].fetch_add(by, Ordering::Relaxed);
    }

    fn store_answered(&self) {
        if !self.store_up.swap(true, Ordering::AcqRel) {
            let breaker: Arc<str> = Arc::from(self.local.name());
            tracing::info!(breaker = %breaker, "breaker store answers again");
            self.observers
                .emit(|| BreakerEvent::StoreRecovered { breaker });
        }
    }

    fn store_failed(&self, err: &crate::Error) {
        self.bump(ERRORS, 1);
        if self.store_up.swap(false, Ordering::AcqRel) {
            let breaker: Arc<str> = Arc::from(self.local.name());
            tracing::warn!(breaker = %breaker, error = %err, "breaker store unavailable");
            let error = err.to_string();
            self.observers
                .emit(|| BreakerEvent::StoreUnavailable { breaker, error });
        }
    }

    /// The channel's messages, if the store answers in time.
    async fn subscribe(&self) -> Option<crate::Subscription> {
        let subscribe = self.shared.backend.subscribe(&self.channel);
        tokio::time::timeout(self.hybrid.timeout, subscribe)
            .await
            .ok()?
            .ok()
    }

    /// Sets the store's step up where its first call costs (the PostgreSQL
    /// session it runs on compiles the PL/pgSQL step then: ~10 ms here; a
    /// first opening in a session still plans the statements an opening
    /// runs), so that the first opening this instance flushes reaches the
    /// others about as fast as the next: one step of a result that counts
    /// for nothing (it changes
    /// no state, but for what time alone does, such as a half-open wait
    /// that ran out). Answers whether that moved the shared breaker.
    async fn warm_up(&self) -> Result<bool> {
        let nothing = Event::Record {
            outcome: Outcome::Ignored,
            slow: false,
            probe: None,
        };
        let (step, _) = self.shared.run(nothing).await?;
        Ok(step.transition.is_some())
    }

    /// A probe's result, in the store's breaker.
    async fn record_probe(&self, outcome: Outcome, slow: bool, spell: u64) {
        let event = Event::Record {
            outcome,
            slow,
            probe: Some(spell),
        };
        match self.shared.run(event).await {
            Ok((step, _)) => {
                self.store_answered();
                if step.transition.is_some() {
                    self.reconcile_and_publish().await;
                }
            }
            Err(err) => self.store_failed(&err),
        }
    }

    /// Takes on a shared state read at the store's time `store_now`.
    fn learn(&self, push: Push) {
        let deadline = match push.phase {
            Phase::Open => self
                .clock
                .now_millis()
                .saturating_add(push.open_until.saturating_sub(push.store_now)),
            _ => 0,
        };
        let before = self.view.phase();
        self.view.learned(push.store_now, push.phase, deadline);
        let after = self.view.phase();
        if before != after {
            self.observers.moved(Transition {
                from: before,
                to: after,
            });
            self.observers.after(Transition {
                from: before,
                to: after,
            });
        }
    }

    /// Reads the shared state (at the store's time) into the view.
    async fn read(&self) -> Result<Option<Push>> {
        let backend = &self.shared.backend;
        let read = backend.update_atomic(self.shared.key(), &BreakerStep, PEEK_AT);
        match tokio::time::timeout(self.hybrid.timeout, read).await {
            Ok(Ok(raw)) => {
                let (now, state) = parse_peek_at(&raw)?;
                Ok(Some(Push::of(now, state.as_ref())))
            }
            Ok(Err(err)) => Err(err),
            Err(_) => Ok(None),
        }
    }

    async fn reconcile(&self) -> Option<Push> {
        match self.read().await {
            Ok(Some(push)) => {
                self.store_answered();
                self.bump(RECONCILED, 1);
                self.learn(push);
                Some(push)
            }
            Ok(None) => {
                self.store_failed(&crate::Error::new(
                    crate::ErrorKind::Timeout,
                    format!("no answer within {:?}", self.hybrid.timeout),
                ));
                None
            }
            Err(err) => {
                self.store_failed(&err);
                None
            }
        }
    }

    /// After a shared transition: the new state into the view, and to the
    /// other instances.
    async fn reconcile_and_publish(&self) {
        let Some(push) = self.reconcile().await else {
            return;
        };
        if self.hybrid.pubsub {
            let payload = bytes::Bytes::from(push.encode());
            let publish = self.shared.backend.publish(&self.channel, payload);
            let published = match tokio::time::timeout(self.hybrid.timeout, publish).await {
                Ok(done) => done,
                Err(_) => Err(crate::Error::new(
                    crate::ErrorKind::Timeout,
                    format!("no answer within {:?}", self.hybrid.timeout),
                )),
            };
            if let Err(err) = published {
                tracing::warn!(breaker = %self.local.name(), error = %err, "breaker transition not published");
            }
        }
    }

    /// Sends the pending results, in batches; returns whether one made the
    /// shared breaker change phase.
    async fn flush(&self) -> bool {
        let mut counts = [0u64; 4];
        for stripe in self.pending.iter() {
            for (total, count) in counts.iter_mut().zip(&stripe.0) {
                *total += count.swap(0, Ordering::Relaxed);
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return false;
        }
        // One batch, at most MAX_BATCH results (more are scaled down,
        // keeping the proportions), the codes spread evenly through it, so
        // that every stretch of it has the flush's mix of results.
        let size = total.min(MAX_BATCH as u64);
        let wanted = counts.map(|n| (u128::from(n) * u128::from(size) / u128::from(total)) as u64);
        let batch = spread(wanted);
        let input = batch_input(&self.config, self.local.name(), &batch, entropy(), 0);
        let update =
            self.shared
                .backend
                .update_atomic(self.shared.key(), &BreakerStep, input.as_bytes());
        let answer = match tokio::time::timeout(self.hybrid.timeout, update).await {
            Ok(Ok(raw)) => parse_step_output(&raw),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(crate::Error::new(
                crate::ErrorKind::Timeout,
                format!("no answer within {:?}", self.hybrid.timeout),
            )),
        };
        match answer {
            Ok((step, _)) => {
                self.store_answered();
                self.bump(FLUSHES, 1);
                self.bump(FLUSHED, batch.len() as u64);
                step.transition.is_some()
            }
            Err(err) => {
                self.store_failed(&err);
                self.bump(DROPPED, total);
                false
            }
        }
    }
}

/// `counts[code]` results of each code, interleaved evenly: at each place
/// the code furthest behind its share comes next.
fn spread(counts: [u64; 4]) -> Vec<(bool, bool)> {
    let total: u64 = counts.iter().sum();
    let mut placed = [0u64; 4];
    let mut out = Vec::with_capacity(total as usize);
    for i in 1..=total {
        let code = (0..4)
            .filter(|&c| placed[c] < counts[c])
            .max_by_key(|&c| {
                i128::from(counts[c]) * i128::from(i) - i128::from(placed[c]) * i128::from(total)
            })
            .unwrap_or(0);
        placed[code] += 1;
        out.push((code & 1 == 1, code & 2 == 2));
    }
    out
}

/// Flushes every `flush_every` (or at once when woken), and reconciles
/// every `reconcile_every`, while the breaker lives.
async fn flush_loop(weak: Weak<Hybrid>) {
    let mut reconciled = Instant::now();
    loop {
        // Held for one bounded wait and one round: the breaker goes at
        // most that long after its last handle.
        let Some(inner) = weak.upgrade() else { return };
        let woken = tokio::time::timeout(inner.hybrid.flush_every, inner.wake.notified())
            .await
            .is_ok();
        let moved = inner.flush().await;
        if moved {
            inner.reconcile_and_publish().await;
            reconciled = Instant::now();
        } else if reconciled.elapsed() >= inner.hybrid.reconcile_every || woken {
            inner.reconcile().await;
            reconciled = Instant::now();
        }
    }
}

/// Takes on every published shared state; resubscribes after a lost
/// subscription (reconciling covers the gap).
async fn listen_loop(weak: Weak<Hybrid>, mut subscription: Option<crate::Subscription>) {
    loop {
        let Some(mut stream) = subscription.take() else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(inner) = weak.upgrade() else { return };
            subscription = inner.subscribe().await;
            continue;
        };
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
            let Some(inner) = weak.upgrade() else { return };
            match next {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(Ok(message))) => {
                    if let Some(push) = Push::decode(&message.payload) {
                        inner.bump(PUSHED, 1);
                        inner.learn(push);
                    }
                }
                Ok(Some(Err(_))) => break,
            }
        }
    }
}

observable!(HybridBreaker, this => this.inner.observers);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_reads_back_and_nothing_else_does() {
        let push = Push {
            store_now: 1_733_000_000_000,
            phase: Phase::Open,
            open_until: 1_733_000_030_000,
        };
        assert_eq!(Push::decode(push.encode().as_bytes()), Some(push));
        for bad in [
            "",
            "1 OPEN",
            "1 WHAT 2",
            "x OPEN 2",
            "1 OPEN 2 3",
            "1 OPEN -2",
        ] {
            assert_eq!(Push::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod spread_tests {
    use super::spread;

    #[test]
    fn every_stretch_of_a_batch_has_its_mix() {
        let batch = spread([1_000, 8, 0, 0]);
        assert_eq!(batch.len(), 1_008);
        assert_eq!(batch.iter().filter(|(failed, _)| *failed).count(), 8);
        // No two failures within 100 places of each other.
        let at: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].0).collect();
        assert!(at.windows(2).all(|w| w[1] - w[0] > 100), "{at:?}");
        assert_eq!(spread([0, 0, 0, 0]), []);
        assert_eq!(
            spread([0, 2, 0, 1]),
            [(true, false), (true, true), (true, false)]
        );
    }
}
