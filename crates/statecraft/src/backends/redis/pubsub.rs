//! Publish/subscribe over Redis `PUBLISH` / `SUBSCRIBE`.

use bytes::Bytes;
use futures_util::StreamExt;

use crate::backend::error::{Error, ErrorKind, Operation};
use crate::backend::future::StateFuture;
use crate::backend::pubsub::{Message, Subscription};

use super::backend::RedisBackend;
use super::errors::{redis_error, Idempotent};

impl RedisBackend {
    /// `PUBLISH` (on a Cluster it reaches subscribers on every node).
    pub(super) fn publish_message<'a>(
        &'a self,
        channel: &'a str,
        payload: Bytes,
    ) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let payload = &payload;
            inner
                .run(
                    Operation::Publish,
                    Some(channel.as_bytes()),
                    Idempotent::No,
                    |mut conn| async move {
                        redis::cmd("PUBLISH")
                            .arg(channel)
                            .arg(payload.as_ref())
                            .exec_async(&mut conn)
                            .await
                            .map_err(redis_error)
                    },
                )
                .await
        })
    }

    /// `SUBSCRIBE` on a dedicated connection that the subscription owns
    /// (on a Cluster, to the first seed node that answers; a classic
    /// `PUBLISH` reaches subscribers on every node). Connecting and
    /// subscribing are bounded by the connect plus response timeouts. When
    /// the connection is lost the subscription yields one
    /// [`ErrorKind::Unavailable`] error and ends: subscribe again.
    pub(super) fn subscribe_channel<'a>(
        &'a self,
        channel: &'a str,
    ) -> StateFuture<'a, Subscription> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let deadline = inner.config.connect_timeout + inner.config.response_timeout;
            let mut last_error = None;
            for client in &inner.pubsub_clients {
                let attempt = async {
                    let mut pubsub = client.get_async_pubsub().await.map_err(redis_error)?;
                    pubsub.subscribe(channel).await.map_err(redis_error)?;
                    Ok::<_, Error>(pubsub)
                };
                let outcome = match tokio::time::timeout(deadline, attempt).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("subscribing took longer than {deadline:?}"),
                    )),
                };
                match outcome {
                    Ok(pubsub) => {
                        let name = inner.name;
                        let messages = pubsub
                            .into_on_message()
                            .map(|message| {
                                Ok(Message {
                                    channel: message.get_channel_name().to_string(),
                                    payload: Bytes::copy_from_slice(message.get_payload_bytes()),
                                })
                            })
                            .chain(futures_util::stream::once(async move {
                                Err(Error::new(
                                    ErrorKind::Unavailable,
                                    "the subscription's connection was lost",
                                )
                                .context(name, Operation::Subscribe))
                            }));
                        return Ok(Subscription::new(messages));
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            let err = last_error
                .unwrap_or_else(|| Error::new(ErrorKind::Config, "no Redis node to subscribe on"));
            Err(err
                .context(inner.name, Operation::Subscribe)
                .with_key(channel.as_bytes()))
        })
    }
}
