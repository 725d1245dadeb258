//! Publish/subscribe over `NOTIFY` and `LISTEN`.

use bytes::Bytes;
use futures_util::stream;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::pubsub::{Message, Subscription};

use super::backend::PostgresBackend;
use super::errors::pg_error;
use super::NAME;

/// Channel names are identifiers: 1 to 63 bytes.
fn check_channel(channel: &str) -> Result<()> {
    if channel.is_empty() || channel.len() > 63 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a PostgreSQL channel name is 1 to 63 bytes",
        ));
    }
    Ok(())
}

/// NOTIFY payloads are text of fewer than 8000 bytes.
const MAX_NOTIFY_PAYLOAD: usize = 7999;

impl PostgresBackend {
    /// `pg_notify(channel, payload)`. PostgreSQL payloads are text: a payload
    /// that is not UTF-8, holds a NUL, or is 8000 bytes or longer, and a
    /// channel name outside 1–63 bytes, are [`ErrorKind::InvalidArgument`]
    /// errors.
    pub(super) fn notify<'a>(&'a self, channel: &'a str, payload: Bytes) -> StateFuture<'a, ()> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(Operation::Publish, Some(channel.as_bytes()), async {
                    check_channel(channel)?;
                    let text = std::str::from_utf8(&payload)
                        .ok()
                        .filter(|text| !text.contains('\0'))
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::InvalidArgument,
                                "a PostgreSQL NOTIFY payload must be UTF-8 text without NUL",
                            )
                        })?;
                    if text.len() > MAX_NOTIFY_PAYLOAD {
                        return Err(Error::new(
                            ErrorKind::InvalidArgument,
                            format!(
                                "a NOTIFY payload is at most {MAX_NOTIFY_PAYLOAD} bytes, not {}",
                                text.len()
                            ),
                        ));
                    }
                    let mut client = inner.client().await?;
                    client
                        .execute("SELECT pg_notify($1, $2)", &[&channel, &text])
                        .await
                        .map_err(pg_error)?;
                    Ok(())
                })
                .await
        })
    }

    /// `LISTEN` on a dedicated connection (not a pooled one), which the
    /// subscription owns and closes when dropped.
    pub(super) fn listen<'a>(&'a self, channel: &'a str) -> StateFuture<'a, Subscription> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            inner
                .run(Operation::Subscribe, Some(channel.as_bytes()), async {
                    check_channel(channel)?;
                    let (client, mut connection) =
                        inner.pg_config.connect(NoTls).await.map_err(pg_error)?;
                    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = futures_util::StreamExt::next(&mut messages).await
                        {
                            let item = match message {
                                Ok(AsyncMessage::Notification(note)) => Ok(Message {
                                    channel: note.channel().to_string(),
                                    payload: Bytes::copy_from_slice(note.payload().as_bytes()),
                                }),
                                Ok(_) => continue,
                                Err(err) => Err(pg_error(err).context(NAME, Operation::Subscribe)),
                            };
                            let failed = item.is_err();
                            if sender.send(item).is_err() || failed {
                                return;
                            }
                        }
                    });
                    let listen = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
                    client.batch_execute(&listen).await.map_err(pg_error)?;
                    let messages =
                        stream::unfold((receiver, client), |(mut receiver, client)| async move {
                            let item = receiver.recv().await?;
                            Some((item, (receiver, client)))
                        });
                    Ok(Subscription::new(messages))
                })
                .await
        })
    }
}
