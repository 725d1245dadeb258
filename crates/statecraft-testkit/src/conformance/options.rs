//! Conformance cases on what reads report and what writes take:
//! `get_with_ttl`, and the write options on a backend with a default TTL.

use std::time::Duration;

use statecraft::{CasOutcome, KeyTtl, PutOptions, Result, StateBackend};

use super::{b, ok};
use crate::Fixture;

/// `get_with_ttl` returns the value with the time it has left, and nothing
/// for an absent or expired key.
pub async fn get_with_ttl_reads_both(f: &Fixture) {
    let s = &*f.backend;
    assert_eq!(ok(f, "missing", s.get_with_ttl(b"g").await), None);
    ok(f, "put", s.put(b"g", b(b"v")).await);
    assert_eq!(
        ok(f, "persistent", s.get_with_ttl(b"g").await),
        Some((b(b"v"), KeyTtl::Persistent))
    );
    let ttl = Duration::from_millis(800);
    ok(f, "put_with_ttl", s.put_with_ttl(b"e", b(b"w"), ttl).await);
    match ok(f, "expiring", s.get_with_ttl(b"e").await) {
        Some((value, KeyTtl::ExpiresIn(left))) => {
            assert_eq!(value, b(b"w"));
            assert!(left <= ttl && left > Duration::ZERO, "{left:?}");
        }
        other => panic!("{}: expected a value with a TTL, got {other:?}", s.name()),
    }
    f.advance(Duration::from_millis(1_000)).await;
    assert_eq!(ok(f, "expired", s.get_with_ttl(b"e").await), None);
}

/// On `backend`, which must have a default TTL, every write takes the same
/// options: without a TTL a write gets the default, with
/// [`PutOptions::no_expiry`] it stays persistent, and an increment of an
/// existing persistent counter keeps it persistent.
pub async fn write_options_on_default_ttl(backend: &dyn StateBackend) {
    let name = backend.name();
    let check = |what: &str, result: Result<KeyTtl>, persistent: bool| match result {
        Ok(KeyTtl::Persistent) if persistent => {}
        Ok(KeyTtl::ExpiresIn(_)) if !persistent => {}
        other => panic!("{name}: {what}: persistent={persistent}, got {other:?}"),
    };
    let forever = PutOptions::new().no_expiry();
    let plain = PutOptions::new();
    let expect = |what: &str, result: Result<bool>| match result {
        Ok(true) => {}
        other => panic!("{name}: {what}: {other:?}"),
    };
    expect(
        "put",
        backend
            .put_with(b"o:put", b(b"v"), forever)
            .await
            .map(|()| true),
    );
    check("put no_expiry", backend.ttl(b"o:put").await, true);
    let swapped = |r: Result<CasOutcome>| r.map(|o| o.is_swapped());
    expect(
        "cas",
        swapped(
            backend
                .compare_and_swap(b"o:cas", None, Some(b(b"1")), forever)
                .await,
        ),
    );
    check("cas no_expiry", backend.ttl(b"o:cas").await, true);
    expect(
        "cas again",
        swapped(
            backend
                .compare_and_swap(b"o:cas", Some(b"1"), Some(b(b"2")), plain)
                .await,
        ),
    );
    check("cas default", backend.ttl(b"o:cas").await, false);
    expect(
        "sin",
        backend.set_if_not_exists(b"o:sin", b(b"v"), forever).await,
    );
    check("sin no_expiry", backend.ttl(b"o:sin").await, true);
    expect(
        "sin default",
        backend.set_if_not_exists(b"o:sin2", b(b"v"), plain).await,
    );
    check("sin default", backend.ttl(b"o:sin2").await, false);
    expect(
        "increment",
        backend.increment(b"o:n", 1, forever).await.map(|n| n == 1),
    );
    check("increment no_expiry", backend.ttl(b"o:n").await, true);
    expect(
        "increment existing",
        backend.increment(b"o:n", 1, plain).await.map(|n| n == 2),
    );
    check(
        "increment keeps persistent",
        backend.ttl(b"o:n").await,
        true,
    );
    expect(
        "increment default",
        backend.increment(b"o:m", 1, plain).await.map(|n| n == 1),
    );
    check("increment default", backend.ttl(b"o:m").await, false);
    expect(
        "increment expiring",
        backend.increment(b"o:m", 1, forever).await.map(|n| n == 2),
    );
    check("increment keeps its TTL", backend.ttl(b"o:m").await, false);
    let txn = statecraft::Transaction::new().put_with("o:t", "v", forever);
    if backend.capabilities().transactions {
        expect("transaction", backend.transaction(txn).await);
        check("transaction no_expiry", backend.ttl(b"o:t").await, true);
    }
}
