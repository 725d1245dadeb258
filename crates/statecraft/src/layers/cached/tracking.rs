//! The task that applies the store's own change reports
//! ([`Invalidation::Tracking`](super::Invalidation::Tracking)) to L1.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::backend::watch::{KeyChange, KeyChanges};
use crate::backend::StateBackend;

use super::invalidation::SuspendOnExit;
use super::Shared;

/// Applies `changes` to L1 until the watch fails or ends; then suspends L1,
/// watches again with back-off, and resumes as soon as the new watch is in
/// place (the store reports every change made after that, and L1 was
/// emptied when it suspended). Runs until the `Cached` that spawned it
/// aborts it.
pub(super) async fn run<B: StateBackend + 'static>(shared: Arc<Shared<B>>, changes: KeyChanges) {
    let _guard = SuspendOnExit(&shared.l1);
    let mut changes = changes;
    loop {
        let reason = loop {
            match changes.next().await {
                Some(Ok(KeyChange::Keys(keys))) => {
                    for key in &keys {
                        shared.l1.invalidate(key);
                    }
                    shared.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {
                    shared.l1.invalidate_all();
                    shared.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(err)) => break err.to_string(),
                None => break "the watch ended".to_string(),
            }
        };
        drop(changes);
        shared.l1.suspend();
        shared.counters.suspensions.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            backend = shared.inner.name(),
            reason = %reason,
            "cache change tracking lost; L1 cleared and not serving until tracking again"
        );
        let mut backoff = shared.config.resubscribe_backoff;
        changes = loop {
            let attempt = tokio::time::timeout(
                shared.config.subscribe_timeout,
                shared.inner.watch_keys(b""),
            );
            match attempt.await {
                Ok(Ok(changes)) => break changes,
                Ok(Err(err)) => tracing::debug!(error = %err, "tracking changes again"),
                Err(_) => tracing::debug!("tracking changes again timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff
                .checked_mul(2)
                .unwrap_or(Duration::MAX)
                .min(shared.config.max_resubscribe_backoff);
        };
        shared.l1.resume();
        tracing::info!(
            backend = shared.inner.name(),
            "cache change tracking back; L1 serving"
        );
    }
}
