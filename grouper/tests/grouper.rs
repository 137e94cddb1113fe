//! Grouper: windows, batching core, async shell (paused tokio time) and grouping invariants.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use grouper::{
    format_round_trip, group_measurements, GroupError, Grouper, GrouperConfig, Measurement,
    MeasurementProperty, PeriodInterval, Window,
};
use proptest::prelude::*;
use tokio::sync::mpsc;

fn m(device: &str, t: DateTime<Utc>, value: &str) -> Measurement {
    Measurement {
        type_name: "hr".into(),
        occurrence_time_utc: t,
        ingestion_time_utc: None,
        device_id: device.into(),
        patient_id: None,
        encounter_id: None,
        correlation_id: None,
        properties: vec![MeasurementProperty {
            name: "hr".into(),
            value: value.into(),
        }],
    }
}

fn t(h: u32, min: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 6, h, min, s)
        .single()
        .expect("time")
}

#[test]
fn windows_and_formats() {
    let w = Window::hour_of(t(13, 45, 10));
    assert_eq!(format_round_trip(&w.start), "2024-05-06T13:00:00.0000000Z");
    assert_eq!(format_round_trip(&w.end), "2024-05-06T13:59:59.9999999Z");
    let d = Window::day_of(t(13, 45, 10));
    assert_eq!(d.id_segment(), "20240506000000Z.20240506235959Z");
    assert_eq!(
        PeriodInterval::from_minutes(1440),
        Some(PeriodInterval::Daily)
    );
    assert_eq!(PeriodInterval::from_minutes(30), None);
    assert_eq!(
        PeriodInterval::from_name("correlationId"),
        Some(PeriodInterval::CorrelationId)
    );
}

#[test]
fn latest_ingestion_wins_and_ties_go_to_the_later_arrival() {
    let mut a = m("d", t(1, 0, 0), "1");
    a.ingestion_time_utc = Some(t(2, 0, 1));
    let mut b = m("d", t(1, 0, 0), "2");
    b.ingestion_time_utc = Some(t(2, 0, 0));
    let c = m("d", t(1, 0, 1), "3");
    let d = m("d", t(1, 0, 1), "4");
    let g = group_measurements([(0, a), (1, b), (2, c), (3, d)]);
    let kept: Vec<(usize, &str)> = g[0]
        .entries
        .iter()
        .map(|e| (e.tag, e.measurement.properties[0].value.as_str()))
        .collect();
    assert_eq!(kept, vec![(0, "1"), (3, "4")]);
    assert_eq!(g[0].superseded, vec![1, 2]);
}

#[test]
fn correlation_window_needs_a_correlation_id() {
    let g = group_measurements([(0, m("d", t(1, 0, 0), "1"))]);
    let err = g[0]
        .observation_groups(PeriodInterval::CorrelationId)
        .expect_err("no correlation id");
    assert_eq!(err.type_name(), "CorrelationIdNotDefinedException");
    assert!(matches!(err, GroupError::CorrelationIdNotDefined { .. }));

    let mut a = m("d", t(1, 0, 0), "1");
    a.correlation_id = Some("c".into());
    let mut b = m("d", t(3, 0, 0), "2");
    b.correlation_id = Some("c".into());
    let g = group_measurements([(0, a), (1, b)]);
    let og = g[0]
        .observation_groups(PeriodInterval::CorrelationId)
        .expect("ok");
    assert_eq!(og.len(), 1);
    assert_eq!(
        og[0].window,
        Window {
            start: t(1, 0, 0),
            end: t(3, 0, 0)
        }
    );
    assert_eq!(og[0].id_segment(), "c");
}

#[test]
fn batcher_closes_by_size_and_by_age() {
    let cfg = GrouperConfig {
        max_events: NonZeroUsize::new(3).expect("nonzero"),
        max_delay_ms: 1_000,
    };
    let mut g = Grouper::new(cfg);
    let t0 = Instant::now();
    assert!(g.push(0, m("a", t(1, 0, 0), "1"), t0).is_none());
    assert!(g.push(1, m("b", t(1, 0, 0), "1"), t0).is_none());
    let batch = g.push(2, m("a", t(1, 0, 1), "1"), t0).expect("full");
    assert_eq!(batch.len(), 2);
    assert!(g.is_empty() && g.deadline().is_none());

    assert!(g
        .push(3, m("a", t(1, 0, 0), "1"), t0 + Duration::from_millis(10))
        .is_none());
    assert!(g.expire(t0 + Duration::from_millis(500)).is_none());
    assert_eq!(g.deadline(), Some(t0 + Duration::from_millis(1_010)));
    let batch = g
        .expire(t0 + Duration::from_millis(1_010))
        .expect("expired");
    assert_eq!(batch[0].entries[0].tag, 3);
    assert!(g.flush_all().is_empty());
}

#[test]
fn config_defaults_and_strictness() {
    let c: GrouperConfig = serde_json::from_str("{}").expect("defaults");
    assert_eq!(c, GrouperConfig::default());
    assert_eq!(c.max_events.get(), 300);
    assert_eq!(c.max_delay(), Duration::from_secs(5));
    assert!(serde_json::from_str::<GrouperConfig>("{\"max_events\": 0}").is_err());
    assert!(serde_json::from_str::<GrouperConfig>("{\"max_delay\": 5}").is_err());
}

/// The shell closes a batch after `max_delay` of virtual time; no test sleeps in real time.
#[tokio::test(start_paused = true)]
async fn shell_flushes_by_delay_and_on_shutdown() {
    let cfg = GrouperConfig {
        max_events: NonZeroUsize::new(100).expect("nonzero"),
        max_delay_ms: 2_000,
    };
    let (in_tx, in_rx) = mpsc::channel(8);
    let (out_tx, mut out_rx) = mpsc::channel(8);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Grouper::new(cfg).run(in_rx, out_tx, async {
        let _ = stop_rx.await;
    }));

    in_tx
        .send((0usize, m("a", t(1, 0, 0), "1")))
        .await
        .expect("send");
    in_tx
        .send((1usize, m("a", t(1, 0, 5), "2")))
        .await
        .expect("send");
    tokio::time::advance(Duration::from_millis(1_500)).await;
    assert!(out_rx.try_recv().is_err(), "not yet expired");
    tokio::time::advance(Duration::from_millis(600)).await;
    let batch = out_rx.recv().await.expect("batch by delay");
    assert_eq!(batch[0].entries.len(), 2);

    in_tx
        .send((2usize, m("b", t(1, 0, 0), "3")))
        .await
        .expect("send");
    tokio::task::yield_now().await;
    stop_tx.send(()).expect("stop");
    let batch = out_rx.recv().await.expect("flushed on shutdown");
    assert_eq!(batch[0].key.device_id, "b".into());
    task.await.expect("run ends");
    assert!(out_rx.recv().await.is_none(), "sender dropped after run");
}

#[tokio::test(start_paused = true)]
async fn shell_flushes_by_size_and_when_input_closes() {
    let cfg = GrouperConfig {
        max_events: NonZeroUsize::new(2).expect("nonzero"),
        max_delay_ms: 60_000,
    };
    let (in_tx, in_rx) = mpsc::channel(8);
    let (out_tx, mut out_rx) = mpsc::channel(8);
    let task = tokio::spawn(Grouper::new(cfg).run(in_rx, out_tx, std::future::pending()));
    for i in 0..3usize {
        in_tx
            .send((i, m("a", t(1, 0, i as u32), "1")))
            .await
            .expect("send");
    }
    let first = out_rx.recv().await.expect("size batch");
    assert_eq!(first[0].entries.len(), 2);
    drop(in_tx);
    let rest = out_rx.recv().await.expect("rest on close");
    assert_eq!(rest[0].entries[0].tag, 2);
    task.await.expect("run ends");
}

fn arb_measurement() -> impl Strategy<Value = Measurement> {
    (
        0..3u8,
        0..2u8,
        proptest::option::of(0..2u8),
        proptest::option::of(0..2u8),
        0..(3 * 86_400i64),
        proptest::option::of(0..5i64),
        proptest::collection::vec((0..3u8, 0..100u8), 0..3),
    )
        .prop_map(|(d, ty, p, c, secs, ingest, props)| Measurement {
            type_name: format!("type{ty}").into(),
            occurrence_time_utc: t(0, 0, 0) + chrono::Duration::seconds(secs / 600 * 600),
            ingestion_time_utc: ingest.map(|i| t(0, 0, 0) + chrono::Duration::seconds(i)),
            device_id: format!("dev{d}").into(),
            patient_id: p.map(|p| format!("pat{p}").into()),
            encounter_id: None,
            correlation_id: c.map(|c| format!("corr{c}").into()),
            properties: props
                .into_iter()
                .map(|(n, v)| MeasurementProperty {
                    name: format!("p{n}").into(),
                    value: v.to_string(),
                })
                .collect(),
        })
}

proptest! {
    /// Every measurement lands in exactly one observation group (or is superseded by a
    /// measurement of the same key and time), for every periodInterval.
    #[test]
    fn every_measurement_lands_in_exactly_one_observation_group(
        ms in proptest::collection::vec(arb_measurement(), 0..60)
    ) {
        let groups = group_measurements(ms.iter().cloned().enumerate());
        for interval in [
            PeriodInterval::Instant,
            PeriodInterval::Hourly,
            PeriodInterval::Daily,
            PeriodInterval::CorrelationId,
        ] {
            let mut seen: HashMap<usize, usize> = HashMap::new();
            let mut superseded = 0;
            for g in &groups {
                superseded += g.superseded.len();
                for &s in &g.superseded {
                    *seen.entry(s).or_default() += 1;
                }
                match g.observation_groups(interval) {
                    Ok(ogs) => {
                        for og in ogs {
                            for &tag in &og.tags {
                                *seen.entry(tag).or_default() += 1;
                                let mm = &ms[tag];
                                prop_assert!(og.window.start <= mm.occurrence_time_utc);
                                prop_assert!(mm.occurrence_time_utc <= og.window.end);
                                prop_assert_eq!(&grouper::GroupKey::of(mm), &og.key);
                            }
                        }
                    }
                    Err(_) => {
                        prop_assert_eq!(interval, PeriodInterval::CorrelationId);
                        prop_assert!(g.key.correlation_id.is_none());
                        for e in &g.entries {
                            *seen.entry(e.tag).or_default() += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(seen.len(), ms.len());
            prop_assert!(seen.values().all(|&n| n == 1));
            prop_assert!(superseded <= ms.len());
        }
    }
}
