//! In-process publish/subscribe for [`MemoryBackend`](super::MemoryBackend):
//! a message published on a channel reaches every subscription to that
//! channel made through the same backend or any of its clones.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::Stream;
use futures_util::task::AtomicWaker;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::pubsub::{Message, Subscription};

/// The subscribers of every channel of one backend.
#[derive(Debug, Default)]
pub(super) struct Hub {
    channels: Mutex<HashMap<String, Vec<Weak<Queue>>>>,
    capacity: usize,
}

/// The messages waiting for one subscription.
#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
}

#[derive(Debug, Default)]
struct QueueState {
    messages: VecDeque<Message>,
    /// Set when a message was dropped because the queue was full.
    lagged: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every unlock, so a panic in
    // another holder does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// A hub whose subscriptions hold at most `capacity` undelivered messages.
    pub(super) fn new(capacity: usize) -> Self {
        Hub {
            channels: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    /// Delivers `payload` to every live subscription of `channel`; returns
    /// how many received it.
    pub(super) fn publish(&self, channel: &str, payload: Bytes) -> Result<usize> {
        check_channel(channel, Operation::Publish)?;
        let mut channels = lock(&self.channels);
        let Some(queues) = channels.get_mut(channel) else {
            return Ok(0);
        };
        let mut delivered = 0;
        queues.retain(|queue| {
            let Some(queue) = queue.upgrade() else {
                return false;
            };
            let mut state = lock(&queue.state);
            // Once a message was dropped, nothing more is queued: the
            // subscriber sees the messages before the gap, then the error.
            if !state.lagged && state.messages.len() < self.capacity {
                state.messages.push_back(Message {
                    channel: channel.to_owned(),
                    payload: payload.clone(),
                });
                delivered += 1;
            } else {
                state.lagged = true;
            }
            drop(state);
            queue.waker.wake();
            true
        });
        if queues.is_empty() {
            channels.remove(channel);
        }
        Ok(delivered)
    }

    /// A subscription to `channel` that receives every later publish.
    pub(super) fn subscribe(&self, channel: &str) -> Result<Subscription> {
        check_channel(channel, Operation::Subscribe)?;
        let queue = Arc::new(Queue::default());
        lock(&self.channels)
            .entry(channel.to_owned())
            .or_default()
            .push(Arc::downgrade(&queue));
        Ok(Subscription::new(Receiver {
            queue,
            ended: false,
        }))
    }
}

fn check_channel(channel: &str, operation: Operation) -> Result<()> {
    if channel.is_empty() {
        return Err(
            Error::new(ErrorKind::InvalidArgument, "a channel name is empty")
                .with_backend(super::NAME)
                .with_operation(operation),
        );
    }
    Ok(())
}

/// The stream side of one subscription. Dropping it unsubscribes: the hub
/// only holds a weak reference and forgets it on the next publish.
struct Receiver {
    queue: Arc<Queue>,
    ended: bool,
}

impl Stream for Receiver {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.queue.waker.register(cx.waker());
        let mut state = lock(&self.queue.state);
        if let Some(message) = state.messages.pop_front() {
            return Poll::Ready(Some(Ok(message)));
        }
        if state.lagged {
            drop(state);
            self.ended = true;
            return Poll::Ready(Some(Err(Error::new(
                ErrorKind::Unavailable,
                "the subscriber fell behind and messages were dropped; subscribe again",
            )
            .with_backend(super::NAME)
            .with_operation(Operation::Subscribe))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn next_now(sub: &mut Subscription) -> Option<Option<Result<Message>>> {
        futures_util::FutureExt::now_or_never(sub.next())
    }

    #[test]
    fn every_subscriber_gets_every_message_in_order() {
        let hub = Hub::new(8);
        let mut a = hub.subscribe("c").unwrap();
        let mut b = hub.subscribe("c").unwrap();
        let mut other = hub.subscribe("d").unwrap();
        assert_eq!(hub.publish("c", "1".into()).unwrap(), 2);
        assert_eq!(hub.publish("c", "2".into()).unwrap(), 2);
        for sub in [&mut a, &mut b] {
            for want in ["1", "2"] {
                let got = next_now(sub).flatten().map(|m| m.map(|m| m.payload));
                assert_eq!(got.map(|r| r.ok()), Some(Some(Bytes::from(want))));
            }
            assert!(next_now(sub).is_none(), "no third message");
        }
        assert!(next_now(&mut other).is_none());
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let hub = Hub::new(8);
        let sub = hub.subscribe("c").unwrap();
        drop(sub);
        assert_eq!(hub.publish("c", "x".into()).unwrap(), 0);
        assert!(lock(&hub.channels).is_empty());
    }

    #[test]
    fn a_full_queue_ends_the_subscription_with_an_error_after_the_queued_messages() {
        let hub = Hub::new(2);
        let mut sub = hub.subscribe("c").unwrap();
        for n in 0..3 {
            hub.publish("c", Bytes::from(n.to_string())).unwrap();
        }
        assert!(matches!(next_now(&mut sub), Some(Some(Ok(_)))));
        // Room again, but after a gap nothing more is queued.
        assert_eq!(hub.publish("c", "late".into()).unwrap(), 0);
        assert!(matches!(next_now(&mut sub), Some(Some(Ok(_)))));
        let err = next_now(&mut sub).flatten().and_then(|r| r.err());
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Unavailable));
        assert!(matches!(next_now(&mut sub), Some(None)), "ended");
    }

    #[test]
    fn empty_channel_names_are_rejected() {
        let hub = Hub::new(2);
        let err = hub.publish("", Bytes::new()).err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::InvalidArgument));
        assert!(hub.subscribe("").is_err());
    }
}
