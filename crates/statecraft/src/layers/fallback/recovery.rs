//! What a [`Fallback`] remembers of an outage, and how it settles it when
//! an earlier member is healthy again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::options::KeyTtl;
use crate::backend::StateBackend;
use crate::layers::timeout::timeout_error;

use super::{Fallback, FallbackEvent, Recovery};

/// Keys per batch call while settling.
const SETTLE_BATCH: usize = 500;

/// How a call wrote a key, for outage tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Stored a value.
    Put,
    /// Removed it.
    Delete,
    /// Maybe changed it (the call failed or was dropped): removed from the
    /// fallback when settling, not applied to the recovered member.
    Touched,
    /// Changed it in a way the chain cannot see ([`update_atomic`]: a put
    /// or a delete): settled by what the fallback holds then — absent is
    /// a delete, present a put.
    ///
    /// [`update_atomic`]: crate::StateBackend::update_atomic
    Updated,
}

impl Mark {
    /// The mark after `self` when a later call wrote `next`. A key deleted
    /// and then maybe written stays deleted: either outcome of the uncertain
    /// write is then kept.
    fn then(self, next: Mark) -> Mark {
        match (self, next) {
            (Mark::Delete, Mark::Touched) => Mark::Delete,
            // What the fallback holds decides either way.
            (Mark::Updated, Mark::Touched) => Mark::Updated,
            (_, next) => next,
        }
    }
}

/// Keys written to a member while members before it were unhealthy.
#[derive(Debug, Default)]
pub(super) struct Outage {
    keys: HashMap<Bytes, Mark>,
    /// More keys than tracked were written: settling clears the member.
    overflowed: bool,
    /// The chain was cleared during the outage.
    cleared: bool,
}

impl Outage {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.overflowed && !self.cleared
    }
}

/// An outage being settled, and a copy of what is still to do that goes
/// back to its member if the settling future is dropped (its caller timed
/// out, say) before [`done`](Taken::done). The copy shrinks as steps
/// complete — a clear or delete that reached the recovered member is not
/// sent there again (the member may have taken writes since) — so the next
/// try does only what is left.
struct Taken<'c> {
    chain: &'c Fallback,
    index: usize,
    outage: Outage,
    copy: Option<Outage>,
}

impl Taken<'_> {
    /// The settling ran to its end (what failed was restored by it).
    fn done(&mut self) {
        self.copy = None;
    }

    /// The outage's clear reached the recovered member: not again.
    fn target_cleared(&mut self) {
        if let Some(copy) = &mut self.copy {
            copy.cleared = false;
        }
    }

    /// The later member was emptied.
    fn later_cleared(&mut self) {
        if let Some(copy) = &mut self.copy {
            copy.overflowed = false;
        }
    }

    /// `key`'s delete or copy reached the recovered member: if the settling
    /// stops now, it is only removed from the later member next time (never
    /// applied again over writes the recovered member took since).
    fn applied(&mut self, key: &Bytes) {
        if let Some(mark) = self.copy.as_mut().and_then(|copy| copy.keys.get_mut(key)) {
            *mark = Mark::Touched;
        }
    }

    /// `key` is out of the later member: nothing is left to do for it.
    fn removed(&mut self, key: &Bytes) {
        if let Some(copy) = &mut self.copy {
            copy.keys.remove(key);
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            self.chain.restore(
                self.index,
                copy.keys.into_iter().collect(),
                copy.overflowed,
                copy.cleared,
            );
        }
    }
}

/// Whether a settling error should leave the key tracked for the next try
/// (the member is unwell) rather than drop it (it will never take it).
fn retry_later(err: &Error) -> bool {
    !matches!(
        err.kind(),
        ErrorKind::KeyTooLarge
            | ErrorKind::ValueTooLarge
            | ErrorKind::InvalidKey
            | ErrorKind::InvalidArgument
    )
}

async fn within<T>(
    backend: &dyn StateBackend,
    limit: Duration,
    operation: Operation,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(timeout_error(backend.name(), operation, limit)),
    }
}

impl Fallback {
    /// Records that a call wrote `written` on member `index` (nothing for
    /// the first member: it is no one's fallback). With `uncertain`, puts
    /// count as [`Mark::Touched`].
    pub(super) fn track(&self, index: usize, written: &[(&[u8], Mark)], uncertain: bool) {
        if index == 0 || written.is_empty() {
            return;
        }
        let member = &self.members[index];
        let mut outage = member.outage.lock().unwrap_or_else(|p| p.into_inner());
        for &(key, mark) in written {
            let mark = match (uncertain, mark) {
                (true, Mark::Put) => Mark::Touched,
                // An uncertain update is still settled by what is there.
                (_, mark) => mark,
            };
            if let Some(slot) = outage.keys.get_mut(key) {
                *slot = slot.then(mark);
            } else if outage.keys.len() < self.max_tracked {
                outage.keys.insert(Bytes::copy_from_slice(key), mark);
            } else {
                outage.overflowed = true;
            }
        }
        member.pending.store(true, Ordering::SeqCst);
    }

    /// Records that the chain was cleared while member `index` served.
    pub(super) fn track_clear(&self, index: usize) {
        if index == 0 {
            return;
        }
        let member = &self.members[index];
        let mut outage = member.outage.lock().unwrap_or_else(|p| p.into_inner());
        outage.keys.clear();
        outage.overflowed = false;
        outage.cleared = true;
        member.pending.store(true, Ordering::SeqCst);
    }

    /// Takes member `index`'s outage to settle; the guard puts all of it
    /// back if the settling is dropped before it says it is done.
    fn take_outage(&self, index: usize) -> Taken<'_> {
        let member = &self.members[index];
        let mut outage = member.outage.lock().unwrap_or_else(|p| p.into_inner());
        member.pending.store(false, Ordering::SeqCst);
        let outage = std::mem::take(&mut *outage);
        Taken {
            chain: self,
            index,
            copy: (!outage.is_empty()).then(|| Outage {
                keys: outage.keys.clone(),
                overflowed: outage.overflowed,
                cleared: outage.cleared,
            }),
            outage,
        }
    }

    /// Puts what could not be settled back, for the next try.
    fn restore(&self, index: usize, keys: Vec<(Bytes, Mark)>, overflowed: bool, cleared: bool) {
        if keys.is_empty() && !overflowed && !cleared {
            return;
        }
        let member = &self.members[index];
        let mut outage = member.outage.lock().unwrap_or_else(|p| p.into_inner());
        for (key, mark) in keys {
            let slot = outage.keys.entry(key).or_insert(mark);
            *slot = mark.then(*slot);
        }
        outage.overflowed |= overflowed;
        outage.cleared |= cleared;
        member.pending.store(true, Ordering::SeqCst);
    }

    /// Settles the writes the members after `index` took while it (or a
    /// member before it) was unhealthy, with every other call waiting:
    /// a clear or a delete made during the outage is applied to member
    /// `index`, values are dropped or copied as [`Recovery`] says, and the
    /// keys are removed from the later members. What fails stays tracked
    /// for the next try. Returns whether everything was settled.
    pub(super) async fn settle(&self, index: usize) -> bool {
        let _alone = self.gate.write().await;
        let target = &*self.members[index].backend;
        let limit = self.members[index].timeout;
        let (mut deletes_applied, mut copied, mut cleared_keys, mut failed) =
            (0u64, 0u64, 0u64, 0u64);
        let mut overflowed_any = false;
        let mut complete = true;
        for later_index in index + 1..self.members.len() {
            let later = &self.members[later_index];
            let mut taken = self.take_outage(later_index);
            let outage = std::mem::take(&mut taken.outage);
            if outage.is_empty() {
                continue;
            }
            overflowed_any |= outage.overflowed;
            let mut left: Vec<(Bytes, Mark)> = Vec::new();
            let mut settled: Vec<(Bytes, Mark)> = Vec::new();
            let mut cleared = outage.cleared;
            if cleared {
                match within(target, limit, Operation::Clear, target.clear()).await {
                    Ok(()) => {
                        cleared = false;
                        taken.target_cleared();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "fallback recovery: clear not applied")
                    }
                }
            }
            if cleared {
                // Nothing else makes sense before the clear: try it all again.
                taken.done();
                self.restore(
                    later_index,
                    outage.keys.into_iter().collect(),
                    outage.overflowed,
                    true,
                );
                complete = false;
                continue;
            }
            let mut keys: Vec<(Bytes, Mark)> = Vec::with_capacity(outage.keys.len());
            for (key, mark) in outage.keys {
                if mark != Mark::Updated {
                    keys.push((key, mark));
                    continue;
                }
                let read = later.backend.get(&key);
                match within(&*later.backend, later.timeout, Operation::Get, read).await {
                    Ok(None) => keys.push((key, Mark::Delete)),
                    Ok(Some(_)) => keys.push((key, Mark::Put)),
                    Err(err) => {
                        tracing::warn!(error = %err, "fallback recovery: update not resolved");
                        failed += 1;
                        left.push((key, mark));
                    }
                }
            }
            let (deleted, written): (Vec<_>, Vec<_>) = keys
                .into_iter()
                .partition(|(_, mark)| *mark == Mark::Delete);
            for chunk in deleted.chunks(SETTLE_BATCH) {
                let keys: Vec<Bytes> = chunk.iter().map(|(key, _)| key.clone()).collect();
                match within(
                    target,
                    limit,
                    Operation::BatchDelete,
                    target.batch_delete(&keys),
                )
                .await
                {
                    Ok(_) => {
                        deletes_applied += keys.len() as u64;
                        for key in &keys {
                            taken.applied(key);
                        }
                        settled.extend_from_slice(chunk);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "fallback recovery: deletes not applied");
                        failed += keys.len() as u64;
                        left.extend_from_slice(chunk);
                    }
                }
            }
            for (key, mark) in written {
                if mark != Mark::Put || self.recovery != Recovery::CopyWrites {
                    settled.push((key, mark));
                    continue;
                }
                let copy = async {
                    match later.backend.get_with_ttl(&key).await? {
                        Some((value, KeyTtl::ExpiresIn(left))) => {
                            target.put_with_ttl(&key, value, left).await.map(|()| true)
                        }
                        Some((value, _)) => target.put(&key, value).await.map(|()| true),
                        // Expired there: leave the recovered member as it is.
                        None => Ok(false),
                    }
                };
                match within(target, limit, Operation::Put, copy).await {
                    Ok(done) => {
                        copied += u64::from(done);
                        taken.applied(&key);
                        settled.push((key, mark));
                    }
                    Err(err) if retry_later(&err) => {
                        tracing::warn!(key_len = key.len(), error = %err, "fallback recovery: not copied");
                        failed += 1;
                        left.push((key, mark));
                    }
                    Err(err) => {
                        tracing::warn!(key_len = key.len(), error = %err, "fallback recovery: dropped");
                        failed += 1;
                        settled.push((key, mark));
                    }
                }
            }
            // Out of the later member, so that nothing resurfaces in a
            // later outage.
            if outage.overflowed {
                match within(
                    &*later.backend,
                    later.timeout,
                    Operation::Clear,
                    later.backend.clear(),
                )
                .await
                {
                    Ok(()) => taken.later_cleared(),
                    Err(err) => {
                        tracing::warn!(error = %err, "fallback recovery: fallback not cleared");
                        self.restore(later_index, Vec::new(), true, false);
                        complete = false;
                    }
                }
            }
            for chunk in settled.chunks(SETTLE_BATCH) {
                let keys: Vec<Bytes> = chunk.iter().map(|(key, _)| key.clone()).collect();
                let removal = later.backend.batch_delete(&keys);
                match within(
                    &*later.backend,
                    later.timeout,
                    Operation::BatchDelete,
                    removal,
                )
                .await
                {
                    Ok(_) => {
                        cleared_keys += keys.len() as u64;
                        for key in &keys {
                            taken.removed(key);
                        }
                    }
                    // Applied to the recovered member already: only the
                    // removal is left (a delete sent again could undo
                    // writes the member takes meanwhile).
                    Err(_) => {
                        left.extend(chunk.iter().map(|(key, _)| (key.clone(), Mark::Touched)))
                    }
                }
            }
            // A recovered member that is itself a fallback now holds what
            // was settled into it: it answers for it at the next recovery.
            if index > 0 {
                let marks: Vec<(&[u8], Mark)> = settled
                    .iter()
                    .filter(|(_, mark)| *mark != Mark::Touched)
                    .map(|(key, mark)| (&key[..], *mark))
                    .collect();
                self.track(index, &marks, false);
                if outage.overflowed {
                    self.restore(index, Vec::new(), true, false);
                }
            }
            complete &= left.is_empty();
            taken.done();
            self.restore(later_index, left, false, false);
        }
        self.emit(FallbackEvent::Recovered {
            member: index,
            backend: target.name(),
            deletes_applied,
            copied,
            cleared: cleared_keys,
            failed,
            overflowed: overflowed_any,
        });
        complete
    }
}
