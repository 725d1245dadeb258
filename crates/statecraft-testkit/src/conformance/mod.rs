//! The conformance cases: each checks one part of the
//! [`StateBackend`] contract and panics with a
//! message naming the backend when the backend breaks it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use statecraft::{
    CasOutcome, ErrorKind, KeyTtl, PutOptions, Result, StateBackend, StateBackendExt,
};

use crate::Fixture;

mod atomic;
mod options;
mod reporting;

pub use atomic::{atomic_update_contract, concurrent_atomic_updates_are_exact};
pub use options::{get_with_ttl_reads_both, write_options_on_default_ttl};
pub use reporting::{capabilities_match_behaviour, stats_count_alike};

pub(crate) fn b(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}

pub(crate) fn ok<T>(f: &Fixture, what: &str, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{}: {what} failed: {err}", f.backend.name()),
    }
}

pub(crate) fn kind_of<T: std::fmt::Debug>(result: Result<T>) -> Option<ErrorKind> {
    match result {
        Ok(value) => panic!("expected an error, got Ok({value:?})"),
        Err(err) => Some(err.kind()),
    }
}

/// A missing key reads as absent through every read operation.
pub async fn get_missing_key(f: &Fixture) {
    let s = &*f.backend;
    assert_eq!(ok(f, "get", s.get(b"missing").await), None);
    assert!(!ok(f, "contains", s.contains(b"missing").await));
    assert_eq!(ok(f, "ttl", s.ttl(b"missing").await), KeyTtl::Missing);
    assert!(!ok(f, "delete", s.delete(b"missing").await));
    assert_eq!(
        ok(f, "get_and_delete", s.get_and_delete(b"missing").await),
        None
    );
    assert_eq!(ok(f, "count", s.count().await), 0);
}

/// A stored value reads back byte for byte.
pub async fn put_then_get(f: &Fixture) {
    let s = &*f.backend;
    ok(f, "put", s.put(b"k", b("v1".as_bytes())).await);
    assert_eq!(ok(f, "get", s.get(b"k").await), Some(b(b"v1")));
    assert!(ok(f, "contains", s.contains(b"k").await));
    assert_eq!(ok(f, "count", s.count().await), 1);
}

/// A put replaces both the value and any TTL the key had.
pub async fn overwrite_replaces_value_and_ttl(f: &Fixture) {
    let s = &*f.backend;
    ok(
        f,
        "put_with_ttl",
        s.put_with_ttl(b"k", b(b"old"), Duration::from_secs(2))
            .await,
    );
    ok(f, "put", s.put(b"k", b(b"new")).await);
    assert_eq!(ok(f, "get", s.get(b"k").await), Some(b(b"new")));
    assert_eq!(ok(f, "ttl", s.ttl(b"k").await), KeyTtl::Persistent);
    f.advance(Duration::from_millis(2_200)).await;
    assert_eq!(
        ok(f, "get after old ttl", s.get(b"k").await),
        Some(b(b"new"))
    );
}

/// An empty value is stored and read back as empty, not as missing.
pub async fn empty_value_is_not_missing(f: &Fixture) {
    let s = &*f.backend;
    ok(f, "put", s.put(b"empty", Bytes::new()).await);
    assert_eq!(ok(f, "get", s.get(b"empty").await), Some(Bytes::new()));
    assert!(ok(f, "contains", s.contains(b"empty").await));
    assert_eq!(ok(f, "list", s.list_keys(b"").await), vec![b(b"empty")]);
}

/// Keys with NUL, CR/LF, glob metacharacters, non-UTF-8 bytes and the empty
/// key are all distinct keys that round-trip and list exactly.
pub async fn binary_keys_round_trip(f: &Fixture) {
    let s = &*f.backend;
    let keys: Vec<&[u8]> = vec![
        b"",
        b"\0",
        b"a\0b",
        b"line\r\nbreak",
        b"*",
        b"a*",
        b"?",
        b"[ab]",
        b"{tag}",
        b"\\",
        b"\xff\xfe\x80",
        b"space key",
    ];
    for (i, key) in keys.iter().enumerate() {
        ok(
            f,
            "put",
            s.put(key, Bytes::from(format!("value-{i}"))).await,
        );
    }
    for (i, key) in keys.iter().enumerate() {
        let got = ok(f, "get", s.get(key).await);
        assert_eq!(got, Some(Bytes::from(format!("value-{i}"))), "key {key:?}");
    }
    let listed: BTreeSet<Bytes> = ok(f, "list", s.list_keys(b"").await).into_iter().collect();
    let expected: BTreeSet<Bytes> = keys.iter().map(|k| b(k)).collect();
    assert_eq!(listed, expected);
    // A glob metacharacter in a prefix is a literal byte, not a pattern.
    assert_eq!(ok(f, "list *", s.list_keys(b"*").await), vec![b(b"*")]);
    assert_eq!(ok(f, "list [", s.list_keys(b"[").await), vec![b(b"[ab]")]);
    assert_eq!(ok(f, "list ?", s.list_keys(b"?").await), vec![b(b"?")]);
    assert_eq!(ok(f, "list \\0", s.list_keys(b"\0").await), vec![b(b"\0")]);
    assert_eq!(ok(f, "count", s.count().await), keys.len() as u64);
}

/// A 1 MiB value of every byte value round-trips.
pub async fn large_value_round_trip(f: &Fixture) {
    let s = &*f.backend;
    let value: Bytes = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
    ok(f, "put", s.put(b"big", value.clone()).await);
    let got = ok(f, "get", s.get(b"big").await);
    assert!(got.as_ref() == Some(&value), "1 MiB value differs");
}

/// Delete reports whether the key existed and removes it.
pub async fn delete_removes(f: &Fixture) {
    let s = &*f.backend;
    ok(f, "put", s.put(b"k", b(b"v")).await);
    assert!(ok(f, "delete", s.delete(b"k").await));
    assert_eq!(ok(f, "get", s.get(b"k").await), None);
    assert!(!ok(f, "delete again", s.delete(b"k").await));
}

/// A prefix listing returns exactly the keys that start with the prefix.
pub async fn list_keys_matches_prefix_only(f: &Fixture) {
    let s = &*f.backend;
    for key in [
        &b"a"[..],
        b"a:",
        b"a:1",
        b"a:2",
        b"a;1",
        b"a9",
        b"b:1",
        b"A:1",
    ] {
        ok(f, "put", s.put(key, b(b"x")).await);
    }
    let mut got = ok(f, "list a:", s.list_keys(b"a:").await);
    got.sort();
    assert_eq!(got, vec![b(b"a:"), b(b"a:1"), b(b"a:2")]);
    assert_eq!(ok(f, "list a;", s.list_keys(b"a;").await), vec![b(b"a;1")]);
    assert!(ok(f, "list zzz", s.list_keys(b"zzz").await).is_empty());
    assert_eq!(ok(f, "list all", s.list_keys(b"").await).len(), 8);
}

/// Pages cover every key once (or at least once, in listing order rules),
/// and a zero page size is an invalid argument.
pub async fn list_keys_paginates(f: &Fixture) {
    let s = &*f.backend;
    let expected: BTreeSet<Bytes> = (0..53).map(|i| Bytes::from(format!("p:{i:03}"))).collect();
    for key in &expected {
        ok(f, "put", s.put(key, b(b"x")).await);
    }
    ok(f, "put outside", s.put(b"q:0", b(b"x")).await);
    let mut seen = Vec::new();
    let mut cursor: Option<Bytes> = None;
    let mut pages = 0;
    loop {
        let page = ok(
            f,
            "page",
            s.list_keys_page(b"p:", cursor.as_deref(), 10).await,
        );
        assert!(page.keys.len() <= 10, "page longer than its limit");
        seen.extend(page.keys);
        pages += 1;
        assert!(pages < 1_000, "pagination does not end");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if s.capabilities().ordered_listing {
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(seen, sorted, "ordered listing is not ascending and unique");
    }
    let seen: BTreeSet<Bytes> = seen.into_iter().collect();
    assert_eq!(seen, expected);
    assert_eq!(
        kind_of(s.list_keys_page(b"p:", None, 0).await),
        Some(ErrorKind::InvalidArgument)
    );
}

/// The streamed listing yields every matching key.
pub async fn key_stream_lists_everything(f: &Fixture) {
    let s = &*f.backend;
    let expected: BTreeSet<Bytes> = (0..40).map(|i| Bytes::from(format!("s:{i}"))).collect();
    for key in &expected {
        ok(f, "put", s.put(key, b(b"x")).await);
    }
    ok(f, "put outside", s.put(b"t:1", b(b"x")).await);
    let streamed: Vec<Result<Bytes>> = s.key_stream(b"s:", 7).collect().await;
    let streamed: BTreeSet<Bytes> = streamed.into_iter().map(|k| ok(f, "stream", k)).collect();
    assert_eq!(streamed, expected);
}

/// Count counts live keys; clear removes them all.
pub async fn count_and_clear(f: &Fixture) {
    let s = &*f.backend;
    for i in 0..30 {
        ok(f, "put", s.put(format!("c{i}").as_bytes(), b(b"x")).await);
    }
    assert_eq!(ok(f, "count", s.count().await), 30);
    ok(f, "clear", s.clear().await);
    assert_eq!(ok(f, "count", s.count().await), 0);
    assert!(ok(f, "list", s.list_keys(b"").await).is_empty());
    assert_eq!(ok(f, "get", s.get(b"c1").await), None);
    ok(f, "put after clear", s.put(b"c1", b(b"y")).await);
    assert_eq!(ok(f, "get after clear", s.get(b"c1").await), Some(b(b"y")));
}

/// A key written with a TTL disappears from every read once it expires.
pub async fn ttl_expires(f: &Fixture) {
    let s = &*f.backend;
    ok(
        f,
        "put_with_ttl",
        s.put_with_ttl(b"t", b(b"v"), Duration::from_millis(1_000))
            .await,
    );
    ok(f, "put", s.put(b"keep", b(b"v")).await);
    assert_eq!(ok(f, "get", s.get(b"t").await), Some(b(b"v")));
    f.advance(Duration::from_millis(1_100)).await;
    assert_eq!(ok(f, "get", s.get(b"t").await), None);
    assert!(!ok(f, "contains", s.contains(b"t").await));
    assert_eq!(ok(f, "ttl", s.ttl(b"t").await), KeyTtl::Missing);
    assert_eq!(ok(f, "list", s.list_keys(b"").await), vec![b(b"keep")]);
    assert_eq!(ok(f, "count", s.count().await), 1);
    ok(
        f,
        "put_with_ttl",
        s.put_with_ttl(b"u", b(b"v"), Duration::from_millis(1_000))
            .await,
    );
    f.advance(Duration::from_millis(1_100)).await;
    let cas = ok(
        f,
        "cas on expired",
        s.compare_and_swap(b"u", Some(b"v"), Some(b(b"w")), PutOptions::new())
            .await,
    );
    assert_eq!(
        cas,
        CasOutcome::Conflict(None),
        "an expired value cannot be swapped"
    );
    assert_eq!(ok(f, "take expired", s.get_and_delete(b"u").await), None);
    assert!(!ok(f, "delete expired", s.delete(b"t").await));
    let all = ok(
        f,
        "huge page",
        s.list_keys_page(b"", None, usize::MAX).await,
    );
    assert_eq!(all.keys, vec![b(b"keep")]);
}

/// The remaining TTL reads back, bounded by what was written.
pub async fn ttl_reads_back(f: &Fixture) {
    let s = &*f.backend;
    let opts = PutOptions::new().ttl(Duration::from_secs(60));
    ok(f, "put_with", s.put_with(b"t", b(b"v"), opts).await);
    match ok(f, "ttl", s.ttl(b"t").await) {
        KeyTtl::ExpiresIn(left) => assert!(
            left <= Duration::from_secs(60) && left > Duration::from_secs(55),
            "ttl {left:?}"
        ),
        other => panic!("expected a ttl, got {other:?}"),
    }
    f.advance(Duration::from_secs(10)).await;
    match ok(f, "ttl later", s.ttl(b"t").await) {
        KeyTtl::ExpiresIn(left) => assert!(left <= Duration::from_secs(50), "ttl {left:?}"),
        other => panic!("expected a ttl, got {other:?}"),
    }
    ok(f, "put", s.put(b"p", b(b"v")).await);
    assert_eq!(
        ok(f, "ttl persistent", s.ttl(b"p").await),
        KeyTtl::Persistent
    );
}

/// Only the first of several `set_if_not_exists` writes; an expired key
/// counts as absent.
pub async fn set_if_not_exists_only_once(f: &Fixture) {
    let s = &*f.backend;
    assert!(ok(
        f,
        "first",
        s.set_if_not_exists(b"n", b(b"1"), PutOptions::new()).await
    ));
    assert!(!ok(
        f,
        "second",
        s.set_if_not_exists(b"n", b(b"2"), PutOptions::new()).await
    ));
    assert_eq!(ok(f, "get", s.get(b"n").await), Some(b(b"1")));
    let ttl = PutOptions::new().ttl(Duration::from_millis(500));
    assert!(ok(
        f,
        "with ttl",
        s.set_if_not_exists(b"l", b(b"a"), ttl).await
    ));
    assert!(matches!(
        ok(f, "ttl", s.ttl(b"l").await),
        KeyTtl::ExpiresIn(_)
    ));
    f.advance(Duration::from_millis(600)).await;
    assert!(ok(
        f,
        "after expiry",
        s.set_if_not_exists(b"l", b(b"b"), PutOptions::new()).await
    ));
    assert_eq!(ok(f, "get", s.get(b"l").await), Some(b(b"b")));
}

/// `get_and_delete` returns the value and leaves nothing behind.
pub async fn get_and_delete_takes_value(f: &Fixture) {
    let s = &*f.backend;
    ok(f, "put", s.put(b"g", b(b"v")).await);
    assert_eq!(ok(f, "take", s.get_and_delete(b"g").await), Some(b(b"v")));
    assert_eq!(ok(f, "get", s.get(b"g").await), None);
    assert_eq!(ok(f, "take again", s.get_and_delete(b"g").await), None);
}

/// Compare-and-swap swaps only on a match and reports the current value.
pub async fn compare_and_swap_contract(f: &Fixture) {
    let s = &*f.backend;
    let cas = |expected: Option<&'static [u8]>, new: Option<&'static [u8]>| {
        s.compare_and_swap(
            b"c",
            expected,
            new.map(Bytes::from_static),
            PutOptions::new(),
        )
    };
    assert_eq!(
        ok(
            f,
            "absent->Some on present",
            cas(Some(b"x"), Some(b"1")).await
        ),
        CasOutcome::Conflict(None)
    );
    assert_eq!(
        ok(f, "create", cas(None, Some(b"1")).await),
        CasOutcome::Swapped
    );
    assert_eq!(
        ok(f, "create again", cas(None, Some(b"2")).await),
        CasOutcome::Conflict(Some(b(b"1")))
    );
    assert_eq!(
        ok(f, "wrong", cas(Some(b"0"), Some(b"2")).await),
        CasOutcome::Conflict(Some(b(b"1")))
    );
    assert_eq!(
        ok(f, "right", cas(Some(b"1"), Some(b"2")).await),
        CasOutcome::Swapped
    );
    assert_eq!(ok(f, "get", s.get(b"c").await), Some(b(b"2")));
    assert_eq!(
        ok(f, "empty expected", cas(Some(b""), Some(b"3")).await),
        CasOutcome::Conflict(Some(b(b"2")))
    );
    assert_eq!(
        ok(f, "delete", cas(Some(b"2"), None).await),
        CasOutcome::Swapped
    );
    assert_eq!(ok(f, "get", s.get(b"c").await), None);
    assert_eq!(
        ok(f, "create empty", cas(None, Some(b"")).await),
        CasOutcome::Swapped
    );
    assert_eq!(
        ok(f, "empty is not absent", cas(None, Some(b"4")).await),
        CasOutcome::Conflict(Some(Bytes::new()))
    );
    assert_eq!(
        ok(f, "swap empty", cas(Some(b""), Some(b"5")).await),
        CasOutcome::Swapped
    );
}

/// A value written by compare-and-swap with a TTL expires.
pub async fn compare_and_swap_with_ttl(f: &Fixture) {
    let s = &*f.backend;
    let ttl = PutOptions::new().ttl(Duration::from_millis(500));
    let swapped = ok(
        f,
        "cas",
        s.compare_and_swap(b"c", None, Some(b(b"v")), ttl).await,
    );
    assert_eq!(swapped, CasOutcome::Swapped);
    assert!(matches!(
        ok(f, "ttl", s.ttl(b"c").await),
        KeyTtl::ExpiresIn(_)
    ));
    f.advance(Duration::from_millis(600)).await;
    assert_eq!(ok(f, "get", s.get(b"c").await), None);
    let again = ok(
        f,
        "cas after expiry",
        s.compare_and_swap(b"c", None, Some(b(b"w")), PutOptions::new())
            .await,
    );
    assert_eq!(again, CasOutcome::Swapped);
}

/// Increment counts from zero, stores decimal ASCII, and accepts negatives.
pub async fn increment_contract(f: &Fixture) {
    let s = &*f.backend;
    assert_eq!(
        ok(f, "first", s.increment(b"i", 5, PutOptions::new()).await),
        5
    );
    assert_eq!(
        ok(f, "second", s.increment(b"i", 3, PutOptions::new()).await),
        8
    );
    assert_eq!(
        ok(
            f,
            "negative",
            s.increment(b"i", -10, PutOptions::new()).await
        ),
        -2
    );
    assert_eq!(
        ok(f, "zero", s.increment(b"i", 0, PutOptions::new()).await),
        -2
    );
    assert_eq!(ok(f, "get", s.get(b"i").await), Some(b(b"-2")));
    ok(f, "put", s.put(b"j", b(b"41")).await);
    assert_eq!(
        ok(
            f,
            "on stored",
            s.increment(b"j", 1, PutOptions::new()).await
        ),
        42
    );
}

/// The TTL given to increment applies when it creates the key, and an
/// existing counter keeps its own TTL.
pub async fn increment_ttl_on_create_only(f: &Fixture) {
    let s = &*f.backend;
    let ttl = PutOptions::new().ttl(Duration::from_millis(1_000));
    assert_eq!(ok(f, "create", s.increment(b"w", 1, ttl).await), 1);
    assert!(matches!(
        ok(f, "ttl", s.ttl(b"w").await),
        KeyTtl::ExpiresIn(_)
    ));
    f.advance(Duration::from_millis(600)).await;
    let longer = PutOptions::new().ttl(Duration::from_secs(3_600));
    assert_eq!(ok(f, "again", s.increment(b"w", 1, longer).await), 2);
    match ok(f, "ttl kept", s.ttl(b"w").await) {
        KeyTtl::ExpiresIn(left) => assert!(
            left <= Duration::from_millis(400),
            "ttl was reset: {left:?}"
        ),
        other => panic!("expected a ttl, got {other:?}"),
    }
    f.advance(Duration::from_millis(500)).await;
    assert_eq!(
        ok(
            f,
            "after expiry",
            s.increment(b"w", 1, PutOptions::new()).await
        ),
        1
    );
    assert_eq!(ok(f, "ttl none", s.ttl(b"w").await), KeyTtl::Persistent);
    ok(f, "persistent", s.put(b"p", b(b"1")).await);
    assert_eq!(ok(f, "incr persistent", s.increment(b"p", 1, ttl).await), 2);
    assert_eq!(
        ok(f, "still persistent", s.ttl(b"p").await),
        KeyTtl::Persistent
    );
}

/// Incrementing a non-integer is a typed error that changes nothing.
pub async fn increment_rejects_non_integer(f: &Fixture) {
    let s = &*f.backend;
    for bad in [
        &b"abc"[..],
        b"1.5",
        b"",
        b" 7",
        b"\xff",
        b"007",
        b"-0",
        b"+1",
    ] {
        ok(f, "put", s.put(b"n", b(bad)).await);
        assert_eq!(
            kind_of(s.increment(b"n", 1, PutOptions::new()).await),
            Some(ErrorKind::NotAnInteger),
            "{bad:?}"
        );
        assert_eq!(ok(f, "unchanged", s.get(b"n").await), Some(b(bad)));
    }
}

/// Overflowing a 64-bit counter is a typed error that changes nothing.
pub async fn increment_rejects_overflow(f: &Fixture) {
    let s = &*f.backend;
    let max = i64::MAX.to_string();
    ok(f, "put", s.put(b"o", Bytes::from(max.clone())).await);
    assert_eq!(
        kind_of(s.increment(b"o", 1, PutOptions::new()).await),
        Some(ErrorKind::Overflow)
    );
    assert_eq!(
        ok(f, "unchanged", s.get(b"o").await),
        Some(Bytes::from(max))
    );
    assert_eq!(
        ok(
            f,
            "min",
            s.increment(b"m", i64::MIN, PutOptions::new()).await
        ),
        i64::MIN
    );
    assert_eq!(
        kind_of(s.increment(b"m", -1, PutOptions::new()).await),
        Some(ErrorKind::Overflow)
    );
}

/// Batch get, put and delete behave like the single operations, in order.
pub async fn batch_operations(f: &Fixture) {
    let s = &*f.backend;
    let entries: Vec<(Bytes, Bytes)> = (0..100)
        .map(|i| (Bytes::from(format!("b{i}")), Bytes::from(format!("v{i}"))))
        .collect();
    ok(
        f,
        "batch_put",
        s.batch_put(entries.clone(), PutOptions::default()).await,
    );
    let mut keys: Vec<Bytes> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(50, b(b"absent"));
    let values = ok(f, "batch_get", s.batch_get(&keys).await);
    assert_eq!(values.len(), keys.len());
    for (key, value) in keys.iter().zip(&values) {
        let expected = entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone());
        assert_eq!(value, &expected, "key {key:?}");
    }
    assert_eq!(
        ok(f, "batch_get empty", s.batch_get(&[]).await),
        Vec::<Option<Bytes>>::new()
    );
    assert_eq!(
        ok(f, "batch_delete", s.batch_delete(&keys[40..60]).await),
        19
    );
    assert_eq!(ok(f, "count", s.count().await), 81);
    ok(
        f,
        "batch_put empty",
        s.batch_put(Vec::new(), PutOptions::default()).await,
    );
}

/// A batch written with a TTL expires as a whole.
pub async fn batch_put_with_ttl(f: &Fixture) {
    let s = &*f.backend;
    let entries: Vec<(Bytes, Bytes)> = (0..10)
        .map(|i| (Bytes::from(format!("e{i}")), b(b"v")))
        .collect();
    let opts = PutOptions::new().ttl(Duration::from_millis(500));
    ok(f, "batch_put", s.batch_put(entries, opts).await);
    assert_eq!(ok(f, "count", s.count().await), 10);
    f.advance(Duration::from_millis(600)).await;
    assert_eq!(ok(f, "count after", s.count().await), 0);
    assert_eq!(ok(f, "get", s.get(b"e3").await), None);
}

/// Oversized keys and values are typed errors, and a batch with one bad
/// entry writes nothing.
pub async fn size_limits_are_typed_errors(f: &Fixture) {
    let s = &*f.backend;
    let long_key = vec![b'k'; f.max_key_len + 1];
    let max_key = vec![b'k'; f.max_key_len];
    let big = Bytes::from(vec![0u8; f.max_value_len + 1]);
    ok(f, "max key", s.put(&max_key, b(b"v")).await);
    assert_eq!(ok(f, "max key get", s.get(&max_key).await), Some(b(b"v")));
    assert_eq!(
        kind_of(s.put(&long_key, b(b"v")).await),
        Some(ErrorKind::KeyTooLarge)
    );
    assert_eq!(
        kind_of(s.get(&long_key).await),
        Some(ErrorKind::KeyTooLarge)
    );
    assert_eq!(
        kind_of(s.delete(&long_key).await),
        Some(ErrorKind::KeyTooLarge)
    );
    assert_eq!(
        kind_of(s.increment(&long_key, 1, PutOptions::new()).await),
        Some(ErrorKind::KeyTooLarge)
    );
    assert_eq!(
        kind_of(s.put(b"v", big.clone()).await),
        Some(ErrorKind::ValueTooLarge)
    );
    assert_eq!(
        kind_of(
            s.set_if_not_exists(b"v", big.clone(), PutOptions::new())
                .await
        ),
        Some(ErrorKind::ValueTooLarge)
    );
    assert_eq!(
        kind_of(
            s.compare_and_swap(b"v", None, Some(big.clone()), PutOptions::new())
                .await
        ),
        Some(ErrorKind::ValueTooLarge)
    );
    let batch = vec![(b(b"ok1"), b(b"v")), (b(b"bad"), big), (b(b"ok2"), b(b"v"))];
    assert_eq!(
        kind_of(s.batch_put(batch, PutOptions::default()).await),
        Some(ErrorKind::ValueTooLarge)
    );
    // Nothing after the bad entry is written; with an atomic batch,
    // nothing at all (the trait's default writes one by one).
    assert_eq!(ok(f, "nothing after", s.get(b"ok2").await), None);
    if s.capabilities().atomic_batch {
        assert_eq!(ok(f, "nothing written", s.get(b"ok1").await), None);
    }
    s.delete(b"ok1").await.ok();
    let err = s.put(&long_key, b(b"v")).await.err();
    let err = err.unwrap_or_else(|| panic!("{}: long key accepted", s.name()));
    assert!(!err.is_temporary(), "a size error is not temporary");
    assert!(!err.backend().is_empty(), "the error names its backend");
    assert_eq!(ok(f, "count", s.count().await), 1);
}

/// 16 tasks × 1,000 increments on one key give exactly 16,000.
pub async fn concurrent_increments_are_exact(f: &Fixture) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let backend = Arc::clone(&f.backend);
            tokio::spawn(async move {
                for _ in 0..1_000 {
                    backend.increment(b"hits", 1, PutOptions::new()).await?;
                }
                Ok::<_, statecraft::Error>(())
            })
        })
        .collect();
    for task in tasks {
        let joined = task.await.unwrap_or_else(|e| panic!("task panicked: {e}"));
        ok(f, "increment task", joined);
    }
    assert_eq!(
        ok(f, "get", f.backend.get(b"hits").await),
        Some(b(b"16000"))
    );
}

/// 16 tasks racing read-then-compare-and-swap increments lose no update.
pub async fn concurrent_cas_increments_lose_nothing(f: &Fixture) {
    const TASKS: u64 = 16;
    const EACH: u64 = 200;
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let backend = Arc::clone(&f.backend);
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..EACH {
                    let mut current = backend.get(b"cas").await?;
                    loop {
                        let n: u64 = match &current {
                            Some(v) => std::str::from_utf8(v)
                                .ok()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(u64::MAX),
                            None => 0,
                        };
                        assert_ne!(n, u64::MAX, "counter corrupted: {current:?}");
                        let next = Bytes::from((n + 1).to_string());
                        match backend
                            .compare_and_swap(
                                b"cas",
                                current.as_deref(),
                                Some(next),
                                PutOptions::new(),
                            )
                            .await?
                        {
                            CasOutcome::Swapped => break,
                            CasOutcome::Conflict(now) => {
                                conflicts += 1;
                                current = now;
                            }
                        }
                    }
                }
                Ok::<_, statecraft::Error>(conflicts)
            })
        })
        .collect();
    for task in tasks {
        let joined = task.await.unwrap_or_else(|e| panic!("task panicked: {e}"));
        ok(f, "cas task", joined);
    }
    let total = Bytes::from((TASKS * EACH).to_string());
    assert_eq!(ok(f, "get", f.backend.get(b"cas").await), Some(total));
}

/// The health check answers and statistics count what was done.
pub async fn health_and_stats(f: &Fixture) {
    let s = &*f.backend;
    let report = ok(f, "health_check", s.health_check().await);
    assert!(report.latency < Duration::from_secs(5));
    let before = ok(f, "stats", s.stats().await);
    ok(f, "put", s.put(b"h", b(b"v")).await);
    for _ in 0..10 {
        ok(f, "get hit", s.get(b"h").await);
        ok(f, "get miss", s.get(b"nope").await);
    }
    let after = ok(f, "stats", s.stats().await);
    assert!(
        after.hits >= before.hits + 10,
        "hits {before:?} -> {after:?}"
    );
    assert!(
        after.misses >= before.misses + 10,
        "misses {before:?} -> {after:?}"
    );
    assert!(
        after.writes > before.writes,
        "writes {before:?} -> {after:?}"
    );
    assert!(after.operations() >= before.operations() + 21);
}
