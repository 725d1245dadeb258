//! The messages of publish/subscribe ([`StateBackend::publish`](crate::StateBackend::publish),
//! [`subscribe`](crate::StateBackend::subscribe)): Redis pub/sub, PostgreSQL
//! LISTEN/NOTIFY, in-process broadcast for memory.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};

use crate::backend::error::Result;

/// A message received on a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel it was published on.
    pub channel: String,
    /// What was published.
    pub payload: Bytes,
}

/// The messages published on a channel after
/// [`subscribe`](crate::StateBackend::subscribe) returned.
///
/// It is a [`Stream`]; it ends with an error item when the connection under it
/// is lost (messages published while it was down are not delivered: pub/sub
/// is at-most-once on both Redis and PostgreSQL). Dropping it unsubscribes.
pub struct Subscription {
    messages: BoxStream<'static, Result<Message>>,
}

impl Subscription {
    /// A subscription reading `messages`.
    pub fn new(messages: impl Stream<Item = Result<Message>> + Send + 'static) -> Self {
        Subscription {
            messages: messages.boxed(),
        }
    }

    /// The next message, or `None` once the subscription has ended.
    pub async fn next_message(&mut self) -> Option<Result<Message>> {
        self.messages.next().await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.messages.poll_next_unpin(cx)
    }
}
