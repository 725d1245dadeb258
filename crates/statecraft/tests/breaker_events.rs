//! What a local breaker tells the world: hooks before and after every
//! transition, in order; the event stream (transitions, rejections, slow
//! calls); its metrics by outcome and state; and its state exported to a
//! file and imported by another registry on another clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use statecraft::breaker::{
    BreakerConfig, BreakerEvent, CloseAfter, LocalBreaker, Phase, Transition,
};
use statecraft::ManualClock;

fn config() -> BreakerConfig {
    BreakerConfig::builder()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(10))
        .half_open(1, CloseAfter::Successes(1))
        .build()
        .expect("config")
}

#[test]
fn hooks_run_before_and_after_every_transition_in_order() {
    let clock = ManualClock::new(1_000_000);
    let breaker = LocalBreaker::with_clock("payments", config(), clock.clone());
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let push = |log: &Arc<Mutex<Vec<String>>>, line: String| {
        log.lock().expect("log").push(line);
    };
    {
        let log = log.clone();
        let seen = breaker.clone();
        // The phase is still the old one while a before-hook runs.
        breaker.before_transition(move |t: &Transition| {
            push(
                &log,
                format!("before {:?}>{:?} seen {:?}", t.from, t.to, seen.phase()),
            );
        });
    }
    {
        let log = log.clone();
        let seen = breaker.clone();
        breaker.on_transition(move |t: &Transition| {
            push(
                &log,
                format!("after {:?}>{:?} seen {:?}", t.from, t.to, seen.phase()),
            );
        });
    }
    for (name, hook) in [("open", 0), ("half-open", 1), ("close", 2)] {
        let log = log.clone();
        let line = move || push(&log, format!("on {name}"));
        match hook {
            0 => breaker.on_open(line),
            1 => breaker.on_half_open(line),
            _ => breaker.on_close(line),
        }
    }
    for _ in 0..2 {
        breaker.acquire().expect("closed").failure();
    }
    clock.advance(Duration::from_secs(10));
    let probe = breaker.acquire().expect("a probe");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.phase(), Phase::Closed);
    let log = log.lock().expect("log").clone();
    assert_eq!(
        log,
        [
            "before Closed>Open seen Closed",
            "after Closed>Open seen Open",
            "on open",
            "before Open>HalfOpen seen Open",
            "after Open>HalfOpen seen HalfOpen",
            "on half-open",
            "before HalfOpen>Closed seen HalfOpen",
            "after HalfOpen>Closed seen Closed",
            "on close",
        ]
    );
}

#[tokio::test]
async fn the_event_stream_tells_transitions_rejections_and_slow_calls() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30))
        .slow_calls(Duration::from_millis(20), 1, 1)
        .min_calls(1)
        .build()
        .expect("config");
    let breaker = LocalBreaker::new("search", config);
    let mut events = breaker.events();
    let slow = breaker.acquire().expect("closed");
    std::thread::sleep(Duration::from_millis(30));
    slow.success();
    assert!(breaker.acquire().is_err(), "one slow call of one opens it");
    let got: Vec<BreakerEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(&got[0], BreakerEvent::SlowCall { breaker } if &**breaker == "search"));
    assert!(matches!(
        &got[1],
        BreakerEvent::Transition { transition, .. }
            if *transition == Transition { from: Phase::Closed, to: Phase::Open }
    ));
    match &got[2] {
        BreakerEvent::Rejected {
            retry_after: Some(after),
            ..
        } => assert!(*after <= Duration::from_secs(30) && *after > Duration::from_secs(29)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn metrics_count_calls_by_outcome_and_show_the_state() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let breaker = metrics::with_local_recorder(&recorder, || {
        LocalBreaker::new("db", config()).with_metrics()
    });
    breaker.acquire().expect("closed").success();
    breaker.acquire().expect("closed").ignore();
    for _ in 0..2 {
        breaker.acquire().expect("closed").failure();
    }
    for _ in 0..3 {
        assert!(breaker.acquire().is_err());
    }
    let mut figures = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        assert!(labels.contains(&"breaker=db".to_string()), "{labels:?}");
        let outcome = labels
            .iter()
            .find_map(|l| l.strip_prefix("outcome="))
            .unwrap_or("")
            .to_string();
        let value = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        figures.insert(format!("{} {outcome}", key.key().name()), value);
    }
    let get = |name: &str| figures.get(name).copied();
    assert_eq!(get("statecraft_breaker_calls_total success"), Some(1.0));
    assert_eq!(get("statecraft_breaker_calls_total ignored"), Some(1.0));
    assert_eq!(get("statecraft_breaker_calls_total failure"), Some(2.0));
    assert_eq!(get("statecraft_breaker_calls_total rejected"), Some(3.0));
    assert_eq!(get("statecraft_breaker_transitions_total "), Some(1.0));
    assert_eq!(
        get("statecraft_breaker_state "),
        Some(1.0),
        "open: {figures:?}"
    );
}

#[test]
fn states_export_to_a_file_and_import_elsewhere() {
    use statecraft::breaker::BreakerRegistry;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("breakers.json");
    let clock = ManualClock::new(5_000_000);
    let make = |clock: ManualClock| {
        BreakerRegistry::new(config(), move |name, config| {
            LocalBreaker::with_clock(name, config, clock.clone())
        })
    };
    let here = make(clock.clone());
    for _ in 0..2 {
        here.get("payments").acquire().expect("closed").failure();
    }
    clock.advance(Duration::from_secs(4));
    here.get("admin").force_open();
    here.get("search").acquire().expect("closed").success();
    here.export_to(&file).expect("export");

    // Another process, its clock elsewhere.
    let there_clock = ManualClock::new(90_000_000);
    let there = make(there_clock.clone());
    {
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let log = transitions.clone();
        let payments = there.get("payments");
        payments.on_transition(move |t| log.lock().expect("log").push(*t));
        assert_eq!(there.import_from(&file).expect("import"), 3);
        assert_eq!(
            *transitions.lock().expect("log"),
            [Transition {
                from: Phase::Closed,
                to: Phase::Open
            }]
        );
    }
    let payments = there.get("payments");
    let rejected = payments.acquire().expect_err("still open");
    let left = rejected.retry_after().expect("an opening");
    assert!(
        left <= Duration::from_secs(6) && left > Duration::from_millis(5_000),
        "what was left of the 10 s, less the time since the export: {left:?}"
    );
    // An export read an hour later: the opening is over.
    let mut stale = here.get("payments").export();
    stale.exported_at_ms -= 3_600_000;
    let late = make(ManualClock::new(1_000));
    late.import(&[stale]);
    assert!(late.get("payments").acquire().expect("ended").is_probe());
    assert_eq!(there.get("admin").phase(), Phase::ForcedOpen);
    assert_eq!(there.get("search").phase(), Phase::Closed);
    there_clock.advance(Duration::from_secs(6));
    assert!(payments.acquire().expect("a probe").is_probe());

    // Not an export: an error, and nothing changes.
    std::fs::write(&file, b"{\"not\": \"a list\"}").expect("write");
    let err = there.import_from(&file).expect_err("not an export");
    assert_eq!(err.kind(), statecraft::ErrorKind::Corrupt);
    let err = there
        .import_from(dir.path().join("missing.json"))
        .expect_err("no file");
    assert_eq!(err.kind(), statecraft::ErrorKind::Io);
}
