//! Changes the store reports on its own ([`StateBackend::watch_keys`](crate::StateBackend::watch_keys)):
//! Redis server-assisted client-side caching (`CLIENT TRACKING` in `BCAST`
//! mode over RESP3).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};

use crate::backend::error::Result;

/// What changed in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyChange {
    /// These keys were written, deleted, expired or evicted (by any client).
    Keys(Vec<Bytes>),
    /// Anything may have changed (the store was flushed).
    All,
}

/// The changes to keys under a prefix after
/// [`watch_keys`](crate::StateBackend::watch_keys) returned.
///
/// It is a [`Stream`]; it ends with an error item when the connection under
/// it is lost or stops answering (changes made meanwhile are not reported:
/// whoever relies on it must treat everything as changed). Dropping it stops
/// the watch.
pub struct KeyChanges {
    changes: BoxStream<'static, Result<KeyChange>>,
}

impl KeyChanges {
    /// A watch reading `changes`.
    pub fn new(changes: impl Stream<Item = Result<KeyChange>> + Send + 'static) -> Self {
        KeyChanges {
            changes: changes.boxed(),
        }
    }

    /// The next change, or `None` once the watch has ended.
    pub async fn next_change(&mut self) -> Option<Result<KeyChange>> {
        self.changes.next().await
    }
}

impl fmt::Debug for KeyChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyChanges").finish_non_exhaustive()
    }
}

impl Stream for KeyChanges {
    type Item = Result<KeyChange>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_next_unpin(cx)
    }
}
