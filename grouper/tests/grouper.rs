//! Grouper: windows, the streaming core and grouping invariants.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use grouper::{
    format_round_trip, group_measurements, GroupError, Grouper, GrouperConfig, Measurement,
    MeasurementProperty, PeriodInterval, Window,
};
use proptest::prelude::*;

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
fn windows_are_released_by_age_in_arrival_order() {
    let cfg = GrouperConfig {
        flush_interval: Duration::from_secs(30),
        spread: Duration::ZERO,
        max_pending: NonZeroUsize::new(1_000).expect("nonzero"),
    };
    let mut g = Grouper::new(cfg);
    let t0 = Instant::now();
    let s = Duration::from_secs;
    g.push(0, m("a", t(1, 0, 0), "1"), PeriodInterval::Hourly, t0);
    g.push(
        1,
        m("b", t(1, 0, 0), "1"),
        PeriodInterval::Hourly,
        t0 + s(10),
    );
    // Same hour as event 0: the same pending window, whatever the batch it came in.
    g.push(
        2,
        m("a", t(1, 30, 0), "2"),
        PeriodInterval::Hourly,
        t0 + s(20),
    );
    // Another hour: another window (another Observation).
    g.push(
        3,
        m("a", t(2, 0, 0), "3"),
        PeriodInterval::Hourly,
        t0 + s(20),
    );
    assert_eq!((g.pending_windows(), g.pending_measurements()), (3, 4));
    assert_eq!(g.next_deadline(), Some(t0 + s(30)));
    assert_eq!(g.oldest_age(t0 + s(25)), s(25));

    assert!(g.expire(t0 + s(29)).is_empty());
    let due: Vec<usize> = g
        .expire(t0 + s(30))
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    assert_eq!(due, vec![0, 2], "window a/01h with both its readings");
    assert_eq!(g.next_deadline(), Some(t0 + s(40)));
    // A reading for a released window opens a new pending window with a new deadline.
    g.push(
        4,
        m("a", t(1, 59, 0), "4"),
        PeriodInterval::Hourly,
        t0 + s(31),
    );
    let due: Vec<usize> = g
        .expire(t0 + s(50))
        .into_iter()
        .map(|(tag, _)| tag)
        .collect();
    assert_eq!(due, vec![1, 3]);
    let rest: Vec<usize> = g.flush_all().into_iter().map(|(tag, _)| tag).collect();
    assert_eq!(rest, vec![4]);
    assert!(g.is_empty() && g.next_deadline().is_none());
}

#[test]
fn windows_that_open_together_are_released_over_the_spread_and_stay_apart() {
    // 1,000 devices whose hour begins in the same second, one reading a second each.
    let cfg = GrouperConfig {
        flush_interval: Duration::from_secs(30),
        spread: Duration::from_secs(8),
        max_pending: NonZeroUsize::new(1_000_000).expect("nonzero"),
    };
    let mut g = Grouper::new(cfg);
    let t0 = Instant::now();
    let devices: Vec<String> = (0..1000).map(|d| format!("dev-{d}")).collect();
    // Per second of the run: how many windows were released, and each reading's wait.
    let mut released_per_second = Vec::new();
    let mut arrived = std::collections::HashMap::new();
    let mut longest_wait = Duration::ZERO;
    for second in 0..120u32 {
        let now = t0 + Duration::from_secs(u64::from(second));
        let due = g.expire(now);
        let mut windows = std::collections::HashSet::new();
        for (tag, m) in due {
            windows.insert(m.device_id.clone());
            let at: Instant = arrived.remove(&tag).expect("released once");
            longest_wait = longest_wait.max(now - at);
        }
        released_per_second.push(windows.len());
        for (d, dev) in devices.iter().enumerate() {
            let tag = (second as usize) * devices.len() + d;
            arrived.insert(tag, now);
            let reading = m(dev, t(1, second / 60, second % 60), "70");
            g.push(tag, reading, PeriodInterval::Hourly, now);
        }
    }
    assert!(longest_wait <= Duration::from_secs(30), "{longest_wait:?}");
    // Nothing before flush_interval − spread; then no second takes more than a fifth of the
    // windows (all at once would be 1,000 in one second).
    assert!(released_per_second[..22].iter().all(|&n| n == 0));
    let busiest = released_per_second.iter().copied().max().unwrap_or(0);
    assert!(busiest <= 200, "busiest second released {busiest} windows");
    // Later flushes stay apart too (the offsets are fixed per window key).
    let late = released_per_second[90..].iter().copied().max().unwrap_or(0);
    assert!(late <= 200, "a later second released {late} windows");
    let total: usize = released_per_second.iter().sum();
    assert!(
        total >= 3000,
        "every window written about every 26 s: {total}"
    );
}

#[test]
fn the_memory_cap_releases_the_oldest_windows_early() {
    let cfg = GrouperConfig {
        flush_interval: Duration::from_secs(3600),
        spread: Duration::ZERO,
        max_pending: NonZeroUsize::new(3).expect("nonzero"),
    };
    let mut g = Grouper::new(cfg);
    let t0 = Instant::now();
    for (i, dev) in ["a", "b", "c"].iter().enumerate() {
        g.push(i, m(dev, t(1, 0, 0), "1"), PeriodInterval::Hourly, t0);
    }
    assert!(g.is_over_cap());
    let due: Vec<usize> = g.expire(t0).into_iter().map(|(tag, _)| tag).collect();
    assert_eq!(due, vec![0], "only as much as brings it under the cap");
    assert!(!g.is_over_cap());
    assert_eq!(g.pending_measurements(), 2);
}

#[test]
fn instant_and_correlation_windows() {
    let mut g = Grouper::new(GrouperConfig::default());
    let t0 = Instant::now();
    g.push(0, m("a", t(1, 0, 0), "1"), PeriodInterval::Instant, t0);
    g.push(1, m("a", t(1, 0, 1), "1"), PeriodInterval::Instant, t0);
    g.push(2, m("a", t(1, 0, 1), "2"), PeriodInterval::Instant, t0);
    assert_eq!(g.pending_windows(), 2, "one per instant");
    let mut c1 = m("a", t(1, 0, 0), "1");
    c1.correlation_id = Some("run-1".into());
    let mut c2 = m("a", t(9, 0, 0), "1");
    c2.correlation_id = Some("run-1".into());
    g.push(3, c1, PeriodInterval::CorrelationId, t0);
    g.push(4, c2, PeriodInterval::CorrelationId, t0);
    assert_eq!(
        g.pending_windows(),
        3,
        "one per correlation id, whatever the times"
    );
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
