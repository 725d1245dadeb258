//! Conformance cases for [`StateBackend::update_atomic`](statecraft::StateBackend::update_atomic),
//! with the [`BoundedCounter`](crate::BoundedCounter) update.

use std::sync::Arc;

use statecraft::{ErrorKind, KeyTtl};

use super::{b, kind_of, ok};
use crate::atomic::{BoundedCounter, BOUNDED_COUNTER_TTL};
use crate::Fixture;

/// Puts, keeps, deletes and refuses as the update decides; its TTL holds.
pub async fn atomic_update_contract(f: &Fixture) {
    let s = &*f.backend;
    let update = BoundedCounter;
    for want in ["admitted 1", "admitted 2", "denied 2"] {
        let got = ok(f, "update", s.update_atomic(b"a", &update, b"2").await);
        assert_eq!(got, b(want.as_bytes()), "{}", s.name());
    }
    assert_eq!(ok(f, "get", s.get(b"a").await), Some(b(b"2")));
    match ok(f, "ttl", s.ttl(b"a").await) {
        KeyTtl::ExpiresIn(left) => assert!(left <= BOUNDED_COUNTER_TTL, "{left:?}"),
        other => panic!("{}: the update's TTL was lost: {other:?}", s.name()),
    }
    let reset = ok(f, "reset", s.update_atomic(b"a", &update, b"reset").await);
    assert_eq!(reset, b(b"reset"));
    assert_eq!(ok(f, "get", s.get(b"a").await), None, "{}", s.name());
    let reset = ok(
        f,
        "reset again",
        s.update_atomic(b"a", &update, b"reset").await,
    );
    assert_eq!(reset, b(b"reset"));
    assert_eq!(
        kind_of(s.update_atomic(b"a", &update, b"lots").await),
        Some(ErrorKind::InvalidArgument),
        "{}",
        s.name()
    );
    ok(f, "put", s.put(b"c", b(b"not a count")).await);
    assert_eq!(
        kind_of(s.update_atomic(b"c", &update, b"5").await),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        ok(f, "unchanged", s.get(b"c").await),
        Some(b(b"not a count"))
    );
    assert_eq!(ok(f, "nothing written", s.get(b"a").await), None);
}

/// Eight tasks race 50 updates each against a limit of 100: exactly 100
/// are admitted, each count once, and the key holds 100.
pub async fn concurrent_atomic_updates_are_exact(f: &Fixture) {
    let backend = Arc::clone(&f.backend);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let backend = Arc::clone(&backend);
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            for _ in 0..50 {
                let out = backend
                    .update_atomic(b"race", &BoundedCounter, b"100")
                    .await
                    .expect("update");
                if let Some(n) = out.strip_prefix(b"admitted ") {
                    admitted.push(String::from_utf8_lossy(n).parse::<u64>().expect("a count"));
                }
            }
            admitted
        }));
    }
    let mut counts = Vec::new();
    for task in tasks {
        counts.extend(task.await.expect("task"));
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<u64>>(),
        "{}",
        f.backend.name()
    );
    assert_eq!(ok(f, "get", f.backend.get(b"race").await), Some(b(b"100")));
}
