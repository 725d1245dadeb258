//! The permit of one call through a [`HybridBreaker`]: recorded here at
//! once (a probe's in the store), a failure when dropped unfinished.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::super::machine::Outcome;
use super::super::permit::Rejected;
use super::HybridBreaker;

/// Leave to make one call through a [`HybridBreaker`]; record its result
/// with [`success`](Self::success), [`failure`](Self::failure),
/// [`ignore`](Self::ignore) or [`record`](Self::record). Dropped
/// unfinished, it records a failure (a probe's from a task of its own).
#[must_use = "a dropped permit records a failure"]
pub struct HybridPermit<'a> {
    breaker: &'a HybridBreaker,
    kind: Option<Kind>,
    started: Option<Instant>,
}

pub(super) enum Kind {
    /// Counted locally (a local probe names its spell there) and in the
    /// next flush. The local breaker's permit is not kept: its own timer
    /// and drop would double the hybrid's, and the closed path moves this
    /// permit by value.
    Local(Option<u64>),
    /// Counted in the next flush only (the shared breaker only counts).
    Counted,
    /// Counted nowhere (disabled, or the store did not answer).
    Uncounted,
    /// A half-open probe of the store's breaker, of this spell.
    Probe(u64),
}

impl std::fmt::Debug for HybridPermit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridPermit")
            .field("breaker", &self.breaker.name())
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}

impl<'a> HybridPermit<'a> {
    #[inline]
    pub(super) fn new(breaker: &'a HybridBreaker, kind: Kind) -> Self {
        HybridPermit {
            started: breaker.inner.config.slow_call().map(|_| Instant::now()),
            breaker,
            kind: Some(kind),
        }
    }

    /// Whether this call is a half-open probe of the shared breaker.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, Some(Kind::Probe(_)))
    }

    /// Whether its result will be counted anywhere.
    pub fn is_counted(&self) -> bool {
        !matches!(self.kind, Some(Kind::Uncounted) | None)
    }

    /// The call worked.
    pub fn success(self) -> impl Future<Output = ()> + Send + 'a {
        self.record(Outcome::Success)
    }

    /// The call failed.
    pub fn failure(self) -> impl Future<Output = ()> + Send + 'a {
        self.record(Outcome::Failure)
    }

    /// The call says nothing about the protected resource.
    pub fn ignore(self) -> impl Future<Output = ()> + Send + 'a {
        self.record(Outcome::Ignored)
    }

    #[inline]
    fn slow(&self) -> bool {
        match (self.started, self.breaker.inner.config.slow_call()) {
            (Some(started), Some(threshold)) => started.elapsed() >= threshold,
            _ => false,
        }
    }

    /// Records `outcome` at the future's first poll: locally at once; a
    /// probe's in the store. The result futures (this one, and those of
    /// [`success`](Self::success), [`failure`](Self::failure) and
    /// [`ignore`](Self::ignore)) hold the permit: dropped unpolled, they
    /// record a failure, a cancelled call.
    pub fn record(self, outcome: Outcome) -> impl Future<Output = ()> + Send + 'a {
        Record {
            permit: Some(self),
            outcome,
            probe: None,
        }
    }

    /// Records `outcome` without waiting, unless this is a probe (whose
    /// result goes to the store: then it is handed back, for
    /// [`record`](Self::record)).
    #[inline(always)]
    pub fn try_record(mut self, outcome: Outcome) -> std::result::Result<(), Self> {
        // The closed path (a local call, not timed) inline; the others out
        // of line, so that this one keeps the permit in registers.
        if self.started.is_none() {
            if let Some(Kind::Local(spell)) = self.kind {
                self.kind = None;
                self.breaker.inner.record_here(outcome, false, spell);
                return Ok(());
            }
        }
        self.try_record_otherwise(outcome)
    }

    /// [`try_record`](Self::try_record) off the closed path.
    #[inline(never)]
    fn try_record_otherwise(mut self, outcome: Outcome) -> std::result::Result<(), Self> {
        if matches!(self.kind, Some(Kind::Probe(_))) {
            return Err(self);
        }
        let slow = self.slow();
        let Some(kind) = self.kind.take() else {
            return Ok(());
        };
        let inner = &*self.breaker.inner;
        match kind {
            Kind::Local(spell) => inner.record_here(outcome, slow, spell),
            Kind::Counted => inner.count(outcome, slow),
            Kind::Uncounted | Kind::Probe(_) => {}
        }
        Ok(())
    }

    /// Records a probe's result in the store.
    pub(super) async fn record_probe(mut self, outcome: Outcome) {
        let slow = self.slow();
        if let Some(Kind::Probe(spell)) = self.kind.take() {
            self.breaker.inner.record_probe(outcome, slow, spell).await;
        }
    }
}

impl Drop for HybridPermit<'_> {
    #[inline]
    fn drop(&mut self) {
        // Recorded (the closed path's end): nothing to do, inline.
        if self.kind.is_some() {
            self.cancelled();
        }
    }
}

impl HybridPermit<'_> {
    /// Dropped unfinished: a cancelled call, a failure.
    #[cold]
    #[inline(never)]
    fn cancelled(&mut self) {
        let slow = self.slow();
        match self.kind.take() {
            None | Some(Kind::Uncounted) => {}
            Some(Kind::Local(spell)) => {
                self.breaker
                    .inner
                    .record_here(Outcome::Failure, slow, spell)
            }
            Some(Kind::Counted) => self.breaker.inner.count(Outcome::Failure, slow),
            Some(Kind::Probe(spell)) => {
                let breaker = self.breaker.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        breaker
                            .inner
                            .record_probe(Outcome::Failure, slow, spell)
                            .await;
                    });
                }
            }
        }
    }
}

/// The future of [`HybridBreaker::acquire`]: decided at its first poll
/// when this instance decides alone, else an ask of the store, boxed (the
/// closed path's future is a reference and an empty option).
pub(super) struct Acquire<'a> {
    breaker: &'a HybridBreaker,
    asking: Option<BoxFuture<'a, Result<HybridPermit<'a>, Rejected>>>,
    done: bool,
}

impl<'a> Acquire<'a> {
    pub(super) fn new(breaker: &'a HybridBreaker) -> Self {
        Acquire {
            breaker,
            asking: None,
            done: false,
        }
    }

    #[cold]
    #[inline(never)]
    fn poll_asking(&mut self, cx: &mut Context<'_>) -> Poll<Result<HybridPermit<'a>, Rejected>> {
        // Polled again once it answered: a second permit would be taken.
        assert!(
            !self.done,
            "HybridBreaker::acquire polled after it answered"
        );
        let breaker = self.breaker;
        let answer = self
            .asking
            .get_or_insert_with(|| Box::pin(breaker.ask_store()))
            .as_mut()
            .poll(cx);
        if answer.is_ready() {
            self.asking = None;
            self.done = true;
        }
        answer
    }
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<HybridPermit<'a>, Rejected>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.asking.is_none() && !this.done {
            if let Some(decided) = this.breaker.try_acquire() {
                this.done = true;
                return Poll::Ready(decided);
            }
        }
        this.poll_asking(cx)
    }
}

/// The future of [`HybridPermit::record`]: recorded here at its first
/// poll, a probe's result sent to the store (boxed).
struct Record<'a> {
    permit: Option<HybridPermit<'a>>,
    outcome: Outcome,
    probe: Option<BoxFuture<'a, ()>>,
}

impl Record<'_> {
    #[cold]
    #[inline(never)]
    fn poll_probe(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let probe = self
            .probe
            .as_mut()
            .expect("HybridPermit::record polled after it finished");
        let done = probe.as_mut().poll(cx);
        if done.is_ready() {
            self.probe = None;
        }
        done
    }
}

impl Future for Record<'_> {
    type Output = ();

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(permit) = this.permit.take() {
            match permit.try_record(this.outcome) {
                Ok(()) => return Poll::Ready(()),
                Err(probe) => this.probe = Some(Box::pin(probe.record_probe(this.outcome))),
            }
        }
        this.poll_probe(cx)
    }
}
