//! The invalidation messages `Cached` instances exchange on their channel,
//! and the task that applies them and watches the subscription.
//!
//! A message is text (PostgreSQL's NOTIFY carries only text, fewer than
//! 8000 bytes): `sc1 <instance> K <hex key> <hex key> …` drops keys,
//! `sc1 <instance> C` drops everything, `sc1 <instance> P <seq>` is a
//! heartbeat an instance sends itself to prove its subscription still
//! delivers.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::backend::pubsub::Subscription;
use crate::backend::StateBackend;

use super::l1::L1;
use super::Shared;

/// The longest message payload (PostgreSQL's NOTIFY limit, with room).
const MAX_PAYLOAD: usize = 7_000;
const MAGIC: &str = "sc1";

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notice {
    /// Drop these keys.
    Keys(Vec<Vec<u8>>),
    /// Drop everything.
    All,
    /// A heartbeat.
    Ping(u64),
}

fn hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn head(instance: u64) -> String {
    format!("{MAGIC} {instance:016x}")
}

/// The messages that drop `keys` (as many as their size needs; a key too
/// long for any message drops everything instead).
pub(super) fn encode_keys<'k>(
    instance: u64,
    keys: impl IntoIterator<Item = &'k [u8]>,
) -> Vec<Bytes> {
    let mut messages = Vec::new();
    let mut current = String::new();
    for key in keys {
        if head(instance).len() + 3 + key.len() * 2 > MAX_PAYLOAD {
            return vec![encode_all(instance)];
        }
        if !current.is_empty() && current.len() + 1 + key.len() * 2 > MAX_PAYLOAD {
            messages.push(Bytes::from(std::mem::take(&mut current)));
        }
        if current.is_empty() {
            current = head(instance);
            current.push_str(" K");
        }
        current.push(' ');
        hex(&mut current, key);
    }
    if !current.is_empty() {
        messages.push(Bytes::from(current));
    }
    messages
}

/// The message that drops everything.
pub(super) fn encode_all(instance: u64) -> Bytes {
    Bytes::from(format!("{} C", head(instance)))
}

/// A heartbeat.
pub(super) fn encode_ping(instance: u64, seq: u64) -> Bytes {
    Bytes::from(format!("{} P {seq}", head(instance)))
}

/// The sender and notice of a message, or `None` for one that is not ours
/// to read (which the caller treats as "drop everything").
pub(super) fn decode(payload: &[u8]) -> Option<(u64, Notice)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    if parts.next()? != MAGIC {
        return None;
    }
    let instance = u64::from_str_radix(parts.next()?, 16).ok()?;
    let notice = match parts.next()? {
        "K" => Notice::Keys(parts.map(unhex).collect::<Option<_>>()?),
        "C" => Notice::All,
        "P" => Notice::Ping(parts.next()?.parse().ok()?),
        _ => return None,
    };
    Some((instance, notice))
}

/// Why a subscription stopped being trusted.
enum Lost {
    Ended,
    Failed(String),
    Silent,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Ended => f.write_str("the subscription ended"),
            Lost::Failed(err) => write!(f, "the subscription failed: {err}"),
            Lost::Silent => f.write_str("no heartbeat came back in time"),
        }
    }
}

/// Suspends L1 when the invalidation task stops for any reason (aborted
/// with its `Cached`, a panic, its runtime shutting down): an L1 nobody
/// invalidates must not serve.
pub(super) struct SuspendOnExit<'a>(pub(super) &'a L1);

impl Drop for SuspendOnExit<'_> {
    fn drop(&mut self) {
        self.0.suspend();
    }
}

/// Applies messages from `sub` to L1 until the subscription fails, ends or
/// goes silent; then suspends L1, subscribes again with back-off, and
/// resumes once the new subscription delivers. Runs until the `Cached`
/// that spawned it aborts it.
pub(super) async fn run<B: StateBackend + 'static>(shared: Arc<Shared<B>>, sub: Subscription) {
    let _guard = SuspendOnExit(&shared.l1);
    let mut sub = sub;
    loop {
        let lost = watch(&shared, &mut sub).await;
        drop(sub);
        shared.l1.suspend();
        shared.counters.suspensions.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            backend = shared.inner.name(),
            channel = %shared.channel,
            reason = %lost,
            "cache invalidation subscription lost; L1 cleared and not serving until resubscribed"
        );
        let mut backoff = shared.config.resubscribe_backoff;
        sub = loop {
            let attempt = tokio::time::timeout(
                shared.config.subscribe_timeout,
                shared.inner.subscribe(&shared.channel),
            );
            match attempt.await {
                Ok(Ok(mut sub)) => {
                    if delivers(&shared, &mut sub).await {
                        break sub;
                    }
                    tracing::debug!("new cache invalidation subscription is silent");
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "resubscribing to cache invalidations")
                }
                Err(_) => tracing::debug!("resubscribing to cache invalidations timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff
                .checked_mul(2)
                .unwrap_or(Duration::MAX)
                .min(shared.config.max_resubscribe_backoff);
        };
        shared.l1.resume();
        tracing::info!(channel = %shared.channel, "cache invalidation subscription back; L1 serving");
    }
}

/// Whether a heartbeat sent now comes back on `sub` within its timeout
/// (true without heartbeats). Other messages meanwhile need no applying:
/// L1 is suspended and empty.
async fn delivers<B: StateBackend>(shared: &Shared<B>, sub: &mut Subscription) -> bool {
    let Some(heartbeat) = shared.config.heartbeat else {
        return true;
    };
    let seq = shared.counters.suspensions.load(Ordering::Relaxed) | (1 << 63);
    let round_trip = async {
        let ping = encode_ping(shared.instance, seq);
        if shared.inner.publish(&shared.channel, ping).await.is_err() {
            return false;
        }
        while let Some(Ok(message)) = sub.next().await {
            if decode(&message.payload) == Some((shared.instance, Notice::Ping(seq))) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(heartbeat.timeout, round_trip)
        .await
        .unwrap_or(false)
}

async fn watch<B: StateBackend + 'static>(shared: &Arc<Shared<B>>, sub: &mut Subscription) -> Lost {
    let heartbeat = shared.config.heartbeat;
    let far = Duration::from_secs(3600);
    let mut ticker = tokio::time::interval(heartbeat.map_or(far, |h| h.interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // The heartbeat in flight and when it must be back by.
    let mut awaiting: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let deadline = awaiting.map_or_else(|| tokio::time::Instant::now() + far, |(_, at)| at);
        tokio::select! {
            message = sub.next() => match message {
                None => return Lost::Ended,
                Some(Err(err)) => return Lost::Failed(err.to_string()),
                Some(Ok(message)) => match decode(&message.payload) {
                    Some((from, Notice::Ping(n))) => {
                        if from == shared.instance && awaiting.is_some_and(|(want, _)| want == n) {
                            awaiting = None;
                        }
                    }
                    Some((from, _)) if from == shared.instance => {}
                    Some((_, Notice::Keys(keys))) => {
                        for key in &keys {
                            shared.l1.invalidate(key);
                        }
                        shared.counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((_, Notice::All)) | None => {
                        shared.l1.invalidate_all();
                        shared.counters.received.fetch_add(1, Ordering::Relaxed);
                    }
                },
            },
            () = tokio::time::sleep_until(deadline), if awaiting.is_some() => return Lost::Silent,
            _ = ticker.tick(), if heartbeat.is_some() && awaiting.is_none() => {
                let Some(heartbeat) = heartbeat else { continue };
                seq += 1;
                awaiting = Some((seq, tokio::time::Instant::now() + heartbeat.timeout));
                // Sent from a task of its own: a publish that hangs must not
                // stop this loop from reading messages or noticing silence.
                let sender = shared.clone();
                tokio::spawn(async move {
                    let ping = encode_ping(sender.instance, seq);
                    let publish = sender.inner.publish(&sender.channel, ping);
                    if let Ok(Err(err)) = tokio::time::timeout(heartbeat.timeout, publish).await {
                        tracing::debug!(error = %err, "cache heartbeat not published");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let keys: Vec<&[u8]> = vec![b"a", b"", b"\0\xff", b"space key"];
        let messages = encode_keys(7, keys.iter().copied());
        assert_eq!(messages.len(), 1);
        let expected = Notice::Keys(keys.iter().map(|k| k.to_vec()).collect());
        assert_eq!(decode(&messages[0]), Some((7, expected)));
        assert_eq!(decode(&encode_all(9)), Some((9, Notice::All)));
        assert_eq!(
            decode(&encode_ping(u64::MAX, 3)),
            Some((u64::MAX, Notice::Ping(3)))
        );
        assert_eq!(decode(b"sc1 zz K 00"), None);
        assert_eq!(decode(b"sc1 0000000000000001 K 0"), None);
        assert_eq!(decode(b"other"), None);
        assert_eq!(decode(b"sc1 0000000000000001 K +f"), None);
    }

    #[test]
    fn many_keys_split_and_huge_keys_drop_everything() {
        let keys: Vec<Vec<u8>> = (0..2_000)
            .map(|i| format!("key-{i:06}").into_bytes())
            .collect();
        let messages = encode_keys(1, keys.iter().map(Vec::as_slice));
        assert!(messages.len() > 1);
        let mut seen = Vec::new();
        for message in &messages {
            assert!(message.len() <= MAX_PAYLOAD);
            match decode(message) {
                Some((1, Notice::Keys(got))) => seen.extend(got),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, keys);
        let huge = vec![1u8; MAX_PAYLOAD];
        let messages = encode_keys(1, [&b"k"[..], &huge]);
        assert_eq!(messages.len(), 1);
        assert_eq!(decode(&messages[0]), Some((1, Notice::All)));
    }
}
