//! Server-assisted change tracking: `CLIENT TRACKING ON BCAST PREFIX …` on
//! a RESP3 connection of the watch's own, whose invalidation pushes become
//! [`KeyChange`]s.
//!
//! In `BCAST` mode the server pushes the name of every key under the prefix
//! that any client changes (writes, deletes, expiry, eviction; a flush
//! pushes "everything"), whether or not this connection read it. The
//! server queues a push before it answers the write that caused it, so a
//! push reaches the watch no later than any reply sent after that write.
//! The connection is checked with a `PING` every [`PING_EVERY`]: a watch
//! whose connection is cut ends with an error at once, one that stops
//! answering within `PING_EVERY` plus the response timeout (changes in that
//! window are lost with it). Pushes wait in an unbounded channel only while
//! the watch's reader is busy (a ping in flight); with an empty key prefix
//! every change on the server is pushed.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::backend::error::{Error, ErrorKind, Operation, Result};
use crate::backend::future::StateFuture;
use crate::backend::watch::{KeyChange, KeyChanges};

use super::backend::RedisBackend;
use super::errors::redis_error;

/// How often the watch's connection is checked.
const PING_EVERY: Duration = Duration::from_secs(1);

/// What the stream of one watch holds.
struct Watch {
    conn: MultiplexedConnection,
    pushes: UnboundedReceiver<PushInfo>,
    ticker: tokio::time::Interval,
    /// The length of the backend's key prefix, cut from reported keys.
    strip: usize,
    name: &'static str,
}

/// The change an invalidation push reports (keys, or "everything" for a
/// flush or a shape this code does not know).
fn change_of(data: Vec<Value>, strip: usize) -> KeyChange {
    match data.into_iter().next() {
        Some(Value::Array(keys)) => {
            let mut names = Vec::with_capacity(keys.len());
            for key in keys {
                match key {
                    Value::BulkString(key) if key.len() >= strip => {
                        names.push(Bytes::from(key).slice(strip..));
                    }
                    Value::SimpleString(key) if key.len() >= strip => {
                        names.push(Bytes::from(key.into_bytes()).slice(strip..));
                    }
                    _ => return KeyChange::All,
                }
            }
            KeyChange::Keys(names)
        }
        _ => KeyChange::All,
    }
}

impl Watch {
    /// The next change, or the error that ends the watch.
    async fn next(&mut self) -> Result<KeyChange> {
        let lost = |name, why: String| {
            Err(Error::new(ErrorKind::Unavailable, why).context(name, Operation::WatchKeys))
        };
        loop {
            tokio::select! {
                biased;
                push = self.pushes.recv() => match push {
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => {
                        return Ok(change_of(data, self.strip));
                    }
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                        return lost(self.name, "the tracking connection was lost".into());
                    }
                    Some(_) => {}
                },
                _ = self.ticker.tick() => {
                    let ping = redis::cmd("PING").query_async::<Value>(&mut self.conn).await;
                    if let Err(err) = ping {
                        return lost(
                            self.name,
                            format!("the tracking connection stopped answering: {}", redis_error(err)),
                        );
                    }
                }
            }
        }
    }
}

impl RedisBackend {
    /// A RESP3 connection of its own in `BCAST` tracking mode on the key
    /// prefix + `prefix` (single server only: on a Cluster each master
    /// tracks its own slots, which this does not follow).
    pub(super) fn watch_prefix<'a>(&'a self, prefix: &'a [u8]) -> StateFuture<'a, KeyChanges> {
        let inner = &*self.inner;
        StateFuture::new(async move {
            let context = |err: Error| err.context(inner.name, Operation::WatchKeys);
            let client = match (inner.config.is_cluster(), inner.pubsub_clients.first()) {
                (false, Some(client)) => client,
                _ => return Err(Error::unsupported(inner.name, Operation::WatchKeys)),
            };
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))
                .map_err(|err| context(redis_error(err)))?;
            let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(inner.config.connect_timeout))
                .set_response_timeout(Some(inner.config.response_timeout))
                .set_push_sender(sender);
            let full = inner.full_key(prefix);
            let open = async {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(redis_error)?;
                let mut tracking = redis::cmd("CLIENT");
                tracking.arg("TRACKING").arg("ON").arg("BCAST");
                if !full.is_empty() {
                    tracking.arg("PREFIX").arg(&full);
                }
                tracking.exec_async(&mut conn).await.map_err(redis_error)?;
                Ok::<_, Error>(conn)
            };
            let deadline = inner.config.connect_timeout + inner.config.response_timeout;
            let conn = match tokio::time::timeout(deadline, open).await {
                Ok(Ok(conn)) => conn,
                // The server refused (no RESP3 before Redis 6, `CLIENT`
                // denied by an ACL, a proxy that does not track): it cannot.
                Ok(Err(err)) if err.kind() == ErrorKind::Backend => {
                    return Err(context(Error::new(
                        ErrorKind::Unsupported,
                        format!("the server refused to track keys: {err}"),
                    )))
                }
                Ok(Err(err)) => return Err(context(err)),
                Err(_) => {
                    return Err(context(Error::new(
                        ErrorKind::Timeout,
                        format!("starting to track keys took longer than {deadline:?}"),
                    )))
                }
            };
            let mut ticker = tokio::time::interval(PING_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.reset();
            let watch = Watch {
                conn,
                pushes,
                ticker,
                strip: inner.config.key_prefix.len(),
                name: inner.name,
            };
            Ok(KeyChanges::new(stream::unfold(
                Some(watch),
                |watch| async {
                    let mut watch = watch?;
                    match watch.next().await {
                        Ok(change) => Some((Ok(change), Some(watch))),
                        Err(err) => Some((Err(err), None)),
                    }
                },
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_become_changes() {
        let keys = vec![
            Value::BulkString(b"app:a".to_vec()),
            Value::BulkString(b"app:".to_vec()),
        ];
        assert_eq!(
            change_of(vec![Value::Array(keys)], 4),
            KeyChange::Keys(vec![Bytes::from_static(b"a"), Bytes::new()])
        );
        assert_eq!(change_of(vec![Value::Nil], 4), KeyChange::All);
        assert_eq!(change_of(vec![], 0), KeyChange::All);
        let short = vec![Value::BulkString(b"ap".to_vec())];
        assert_eq!(change_of(vec![Value::Array(short)], 4), KeyChange::All);
    }
}
