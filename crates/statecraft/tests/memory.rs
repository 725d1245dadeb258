//! Memory-backend specifics: default TTL, the background sweeper, typed views.

use std::time::Duration;

use statecraft::typed::{Json, Postcard};
use statecraft::{ErrorKind, KeyTtl, ManualClock, MemoryBackend, PutOptions, StateBackend, Typed};

#[tokio::test]
async fn default_ttl_applies_to_writes_without_one() {
    let clock = ManualClock::starting_now();
    let backend = MemoryBackend::builder()
        .clock(clock.clone())
        .default_ttl(Duration::from_secs(5))
        .sweep_interval(None)
        .build();
    backend.put(b"k", "v".into()).await.expect("put");
    assert!(matches!(
        backend.ttl(b"k").await.expect("ttl"),
        KeyTtl::ExpiresIn(_)
    ));
    clock.advance(Duration::from_secs(6));
    assert_eq!(backend.get(b"k").await.expect("get"), None);
}

/// `PutOptions::no_expiry` overrides a default TTL, for single and batch
/// writes, on memory and on sled (a restored checkpoint relies on it).
#[tokio::test]
async fn no_expiry_overrides_the_default_ttl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = MemoryBackend::builder()
        .default_ttl(Duration::from_secs(5))
        .sweep_interval(None)
        .build();
    let sled = statecraft::SledBackend::builder()
        .path(dir.path())
        .default_ttl(Duration::from_secs(5))
        .sweep_interval(None)
        .open()
        .expect("sled");
    for backend in [&memory as &dyn StateBackend, &sled] {
        let forever = PutOptions::new().no_expiry();
        backend
            .put_with(b"one", "v".into(), forever)
            .await
            .expect("put");
        backend
            .batch_put(vec![("two".into(), "v".into())], forever)
            .await
            .expect("batch");
        backend.put(b"default", "v".into()).await.expect("put");
        for key in [&b"one"[..], b"two"] {
            assert_eq!(backend.ttl(key).await.expect("ttl"), KeyTtl::Persistent);
        }
        assert!(matches!(
            backend.ttl(b"default").await.expect("ttl"),
            KeyTtl::ExpiresIn(_)
        ));
        let explicit = PutOptions::new().no_expiry().ttl(Duration::from_secs(1));
        backend
            .put_with(b"ttl", "v".into(), explicit)
            .await
            .expect("put");
        assert!(matches!(
            backend.ttl(b"ttl").await.expect("ttl"),
            KeyTtl::ExpiresIn(left) if left <= Duration::from_secs(1)
        ));
    }
}

/// Compare-and-swap, set-if-absent, increment and transactions take the
/// same write options as a put, on memory, on sled, and through the
/// trait's provided implementations.
#[tokio::test]
async fn write_options_on_a_default_ttl_backend() {
    let dir = tempfile::tempdir().expect("temp dir");
    let memory = || {
        MemoryBackend::builder()
            .default_ttl(Duration::from_secs(60))
            .sweep_interval(None)
            .build()
    };
    let sled = statecraft::SledBackend::builder()
        .path(dir.path())
        .default_ttl(Duration::from_secs(60))
        .sweep_interval(None)
        .open()
        .expect("sled");
    statecraft_testkit::conformance::write_options_on_default_ttl(&memory()).await;
    statecraft_testkit::conformance::write_options_on_default_ttl(&sled).await;
    let defaults = statecraft_testkit::ProvidedDefaults(memory());
    statecraft_testkit::conformance::write_options_on_default_ttl(&defaults).await;
}

#[tokio::test]
async fn sweeper_thread_removes_expired_entries() {
    let clock = ManualClock::starting_now();
    let backend = MemoryBackend::builder()
        .clock(clock.clone())
        .sweep_interval(Some(Duration::from_millis(5)))
        .build();
    for i in 0..50 {
        backend
            .put_with_ttl(
                format!("k{i}").as_bytes(),
                "v".into(),
                Duration::from_secs(1),
            )
            .await
            .expect("put");
    }
    backend.put(b"keep", "v".into()).await.expect("put");
    assert_eq!(backend.raw_len(), 51);
    clock.advance(Duration::from_secs(2));
    // The sweeper runs on its own thread; wait (bounded) for it to act.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while backend.raw_len() > 1 && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    assert_eq!(
        backend.raw_len(),
        1,
        "the sweeper did not remove expired entries"
    );
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
struct Session {
    user: String,
    visits: u32,
    roles: Vec<String>,
}

#[tokio::test]
async fn typed_views_round_trip_with_both_codecs() {
    let session = Session {
        user: "ada".into(),
        visits: 3,
        roles: vec!["admin".into()],
    };
    let json: Typed<Session, _, Json> = Typed::new(MemoryBackend::new());
    json.put(b"s", &session).await.expect("put");
    assert_eq!(json.get(b"s").await.expect("get"), Some(session.clone()));
    let raw = json
        .get_ref()
        .get(b"s")
        .await
        .expect("raw")
        .expect("stored");
    assert!(raw.starts_with(b"{\"user\":\"ada\""));

    let compact: Typed<Session, _, Postcard> = Typed::new(MemoryBackend::new());
    compact.put(b"s", &session).await.expect("put");
    assert_eq!(compact.get(b"s").await.expect("get"), Some(session.clone()));
    let raw = compact
        .get_ref()
        .get(b"s")
        .await
        .expect("raw")
        .expect("stored");
    assert!(raw.len() < 20, "postcard is compact: {} bytes", raw.len());

    let bumped = compact
        .update(b"s", PutOptions::new().ttl(Duration::from_secs(60)), |s| {
            s.map(|s| Session {
                visits: s.visits + 1,
                ..s
            })
        })
        .await
        .expect("update");
    assert_eq!(bumped.map(|s| s.visits), Some(4));
    let ttl = compact.get_ref().ttl(b"s").await.expect("ttl");
    assert!(
        matches!(ttl, KeyTtl::ExpiresIn(_)),
        "update applies its ttl: {ttl:?}"
    );
    assert!(compact.delete(b"s").await.expect("delete"));
}

#[tokio::test]
async fn typed_decode_failure_is_a_codec_error() {
    let backend = MemoryBackend::new();
    backend.put(b"s", "not json".into()).await.expect("put");
    let typed: Typed<Session, _, Json> = Typed::new(backend);
    let err = typed.get(b"s").await.expect_err("decoding garbage fails");
    assert_eq!(err.kind(), ErrorKind::Codec);
    assert!(!err.is_temporary());
}
