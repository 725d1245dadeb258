//! Conformance cases on what a backend reports of itself: its statistics
//! and its capabilities.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use statecraft::{ErrorKind, KeyChange, KeyChanges, PutOptions, StateBackend};

use super::{b, kind_of, ok};
use crate::Fixture;

/// Statistics count the same operations the same way on every backend: a
/// fixed sequence moves hits, misses, writes and scans by the same amounts
/// (see [`statecraft::BackendStats`]).
pub async fn stats_count_alike(f: &Fixture) {
    let s = &*f.backend;
    let before = ok(f, "stats", s.stats().await);
    ok(f, "put", s.put(b"s1", b(b"v")).await);
    ok(
        f,
        "put_with_ttl",
        s.put_with_ttl(b"s2", b(b"v"), Duration::from_secs(60))
            .await,
    );
    ok(f, "get hit", s.get(b"s1").await);
    ok(f, "get miss", s.get(b"nope").await);
    ok(f, "contains hit", s.contains(b"s1").await);
    ok(f, "contains miss", s.contains(b"nope").await);
    ok(f, "ttl hit", s.ttl(b"s2").await);
    ok(f, "ttl miss", s.ttl(b"nope").await);
    ok(f, "get_with_ttl hit", s.get_with_ttl(b"s1").await);
    ok(f, "get_with_ttl miss", s.get_with_ttl(b"nope").await);
    let keys = [b(b"s1"), b(b"nope"), b(b"s2")];
    ok(f, "batch_get", s.batch_get(&keys).await);
    let entries = vec![(b(b"s3"), b(b"v")), (b(b"s4"), b(b"v"))];
    ok(
        f,
        "batch_put",
        s.batch_put(entries, PutOptions::new()).await,
    );
    ok(
        f,
        "batch_delete",
        s.batch_delete(&[b(b"s3"), b(b"nope")]).await,
    );
    ok(
        f,
        "set_if_not_exists",
        s.set_if_not_exists(b"s5", b(b"1"), PutOptions::new()).await,
    );
    ok(
        f,
        "set_if_not_exists again",
        s.set_if_not_exists(b"s5", b(b"2"), PutOptions::new()).await,
    );
    ok(
        f,
        "cas conflict",
        s.compare_and_swap(b"s5", Some(b"0"), Some(b(b"2")), PutOptions::new())
            .await,
    );
    ok(
        f,
        "cas swap",
        s.compare_and_swap(b"s5", Some(b"1"), Some(b(b"2")), PutOptions::new())
            .await,
    );
    ok(
        f,
        "increment",
        s.increment(b"s6", 1, PutOptions::new()).await,
    );
    ok(f, "get_and_delete hit", s.get_and_delete(b"s5").await);
    ok(f, "get_and_delete miss", s.get_and_delete(b"nope").await);
    ok(f, "delete", s.delete(b"s2").await);
    ok(f, "list page", s.list_keys_page(b"s", None, 100).await);
    ok(f, "count", s.count().await);
    let after = ok(f, "stats", s.stats().await);
    let delta = |name: &str, a: u64, b: u64| (name.to_owned(), b.saturating_sub(a));
    let got = [
        delta("hits", before.hits, after.hits),
        delta("misses", before.misses, after.misses),
        delta("writes", before.writes, after.writes),
        delta("scans", before.scans, after.scans),
        delta("errors", before.errors, after.errors),
    ];
    let want = [
        ("hits", 7),
        ("misses", 6),
        ("writes", 10),
        ("scans", 2),
        ("errors", 0),
    ]
    .map(|(name, n)| (name.to_owned(), n));
    assert_eq!(got, want, "{}: statistics deltas", s.name());
}

/// What the capabilities promise is what the backend does: with `pubsub`
/// a published message reaches a subscriber, with `transactions` a
/// transaction applies atomically, with `key_tracking` a watch reports the
/// changed keys under its prefix and no others; without them each is
/// `Unsupported`.
pub async fn capabilities_match_behaviour(f: &Fixture) {
    let s = &*f.backend;
    let caps = s.capabilities();
    let channel = format!(
        "conformance-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    if caps.pubsub {
        let mut sub = ok(f, "subscribe", s.subscribe(&channel).await);
        ok(f, "publish", s.publish(&channel, b(b"hello")).await);
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        match got {
            Ok(Some(Ok(message))) => {
                assert_eq!(message.payload, b(b"hello"));
                assert_eq!(message.channel, channel);
            }
            other => panic!("{}: no message after publish: {other:?}", s.name()),
        }
    } else {
        assert_eq!(
            kind_of(s.publish(&channel, b(b"x")).await),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(
            s.subscribe(&channel).await.err().map(|e| e.kind()),
            Some(ErrorKind::Unsupported)
        );
    }
    watch_matches_key_tracking(f).await;
    let applied = statecraft::Transaction::new()
        .check("t1", None::<Bytes>)
        .put("t1", "a")
        .put("t2", "b");
    if caps.transactions {
        assert!(ok(f, "transaction", s.transaction(applied).await));
        assert_eq!(ok(f, "get", s.get(b"t2").await), Some(b(b"b")));
        let refused = statecraft::Transaction::new()
            .check("t1", Some("other"))
            .put("t3", "c");
        assert!(!ok(f, "failed check", s.transaction(refused).await));
        assert_eq!(ok(f, "nothing applied", s.get(b"t3").await), None);
    } else {
        assert_eq!(
            kind_of(s.transaction(applied).await),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(ok(f, "nothing applied", s.get(b"t1").await), None);
    }
}

async fn watch_matches_key_tracking(f: &Fixture) {
    let s = &*f.backend;
    if !s.capabilities().key_tracking {
        assert_eq!(
            s.watch_keys(b"w:").await.err().map(|e| e.kind()),
            Some(ErrorKind::Unsupported),
            "{}: watch_keys without key_tracking",
            s.name()
        );
        return;
    }
    let mut changes = ok(f, "watch_keys", s.watch_keys(b"w:").await);
    ok(f, "put", s.put(b"w:1", b(b"a")).await);
    assert_eq!(
        next_change(s, &mut changes).await,
        KeyChange::Keys(vec![b(b"w:1")]),
        "{}",
        s.name()
    );
    ok(f, "put outside the prefix", s.put(b"x:1", b(b"a")).await);
    ok(
        f,
        "increment",
        s.increment(b"w:2", 1, PutOptions::new()).await,
    );
    assert_eq!(
        next_change(s, &mut changes).await,
        KeyChange::Keys(vec![b(b"w:2")]),
        "{}",
        s.name()
    );
    assert!(ok(f, "delete", s.delete(b"w:1").await));
    assert_eq!(
        next_change(s, &mut changes).await,
        KeyChange::Keys(vec![b(b"w:1")]),
        "{}",
        s.name()
    );
}

async fn next_change(s: &dyn StateBackend, changes: &mut KeyChanges) -> KeyChange {
    match tokio::time::timeout(Duration::from_secs(10), changes.next()).await {
        Ok(Some(Ok(change))) => change,
        other => panic!("{}: no change reported: {other:?}", s.name()),
    }
}
