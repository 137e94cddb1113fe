//! `iomt bench` end to end at a tiny scale, against the real peers it starts itself (the
//! system's Mosquitto, the local FHIR store, the connector as a child process): the JSON
//! report has every figure, and the FHIR store holds exactly the heart-rate samples published.
//! A correctness check only; no figure's size is asserted.

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_at_tiny_scale_reports_every_figure_and_fhir_holds_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "bench",
            "--devices",
            "5",
            "--readings",
            "10",
            "--flush-interval",
            "1s",
            "--timeout",
            "60s",
            "--json",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("run iomt bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "iomt bench failed:\n{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    // Every figure is there, a number or null (n/a) where the connector lacks the metric.
    for key in [
        "complete",
        "written",
        "writtenMetric",
        "publisherEventsPerSec",
        "sustainedEndToEndEventsPerSec",
        "endToEndSecs",
        "sustainedSteadyEventsPerSec",
        "headline",
        "latencyP50",
        "latencyP99",
        "httpRequestsPerMeasurement",
        "resourceWritesPerMeasurement",
        "memory",
        "brokerOnly",
        "parseOnlyEventsPerSec",
        "ratioToBrokerOnly",
        "ratioToParseOnly",
        "fhir",
        "fhirSamplesMatch",
        "drainSecs",
        "exitCode",
        "absentMetrics",
        "setup",
    ] {
        assert!(r.get(key).is_some(), "{key} missing from {r:#}");
    }
    for key in [
        "idleRssBytes",
        "peakRssBytes",
        "sampledPeakRssBytes",
        "rssPerActiveWindowBytes",
        "rssPerPendingMeasurementBytes",
    ] {
        assert!(r["memory"].get(key).is_some(), "memory.{key} missing");
    }
    assert_eq!(r["setup"]["events"], 50);
    assert_eq!(r["complete"], true);
    assert_eq!(r["written"], 50);
    assert!(r["sustainedEndToEndEventsPerSec"].as_f64().unwrap() > 0.0);
    assert!(r["brokerOnly"]["eventsPerSec"].as_f64().unwrap() > 0.0);
    assert!(r["parseOnlyEventsPerSec"].as_f64().unwrap() > 0.0);
    assert!(
        r["memory"]["peakRssBytes"].as_u64().unwrap()
            >= r["memory"]["idleRssBytes"].as_u64().unwrap()
    );
    assert_eq!(
        r["exitCode"], 0,
        "the connector drains and exits 0 on SIGTERM"
    );
    assert_eq!(r["brokerDropWarnings"], serde_json::json!([]));

    // The FHIR store holds every reading published: 5 heart-rate devices x 10 readings.
    assert_eq!(r["fhir"]["heartRateReadingsPublished"], 50);
    assert_eq!(r["fhir"]["heartRateSamples"], 50, "{:#}", r["fhir"]);
    assert_eq!(r["fhir"]["heartRateObservations"], 5);
    assert_eq!(r["fhirSamplesMatch"], true);

    // Progress goes to stderr, the files stay in --dir.
    assert!(stderr.contains("bench: broker-only"), "{stderr}");
    assert!(dir.path().join("connector.toml").exists());
    assert!(dir.path().join("connector.log").exists());
}

#[test]
fn skip_broker_only_reports_it_as_null() {
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "bench",
            "--devices",
            "2",
            "--readings",
            "3",
            "--flush-interval",
            "1s",
            "--timeout",
            "60s",
            "--json",
            "--skip-broker-only",
        ])
        .output()
        .expect("run iomt bench");
    assert!(
        out.status.success(),
        "iomt bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["brokerOnly"], Value::Null);
    assert_eq!(r["ratioToBrokerOnly"], Value::Null);
    assert_eq!(r["fhir"]["heartRateSamples"], 6);
    // The temporary folder is removed without --keep.
    let dir = r["setup"]["dir"].as_str().unwrap();
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}
