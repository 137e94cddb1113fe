//! `iomt demo` smoke test (README's first command): within 60 s the local FHIR store holds
//! Observations for every simulated device kind, linked to Devices and Patients; SIGTERM stops
//! everything cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::free_port;

fn get(port: u16, path: &str) -> Option<Value> {
    get_with(port, path, "")
}

/// `get` with more request header lines (`extra`, each ending in CRLF).
fn get_with(port: u16, path: &str, extra: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{extra}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Decode chunked framing.
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            joined.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        return serde_json::from_str(&joined).ok();
    }
    serde_json::from_str(body).ok()
}

/// Also: a quiet start. Its log (stderr, a file here, not a terminal) has no ERROR or WARN line
/// and no ANSI colour codes, and none of the embedded broker's own lines.
#[test]
fn demo_fills_the_local_store_with_every_kind_within_60_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("demo.log");
    let (mqtt, fhir, metrics, review) = (free_port(), free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args([
            "--mqtt-port",
            &mqtt.to_string(),
            "--fhir-port",
            &fhir.to_string(),
            "--metrics-port",
            &metrics.to_string(),
            "--review-port",
            &review.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let kinds = [
        "bloodglucose",
        "bloodpressure",
        "bodytemperature",
        "bodyweight",
        "ecg",
        "heartrate",
        "spo2",
        "steps",
    ];
    let mut last = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after 60 s the store has only {last:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        let Some(bundle) = get(fhir, "/fhir/R4/Observation?_count=500") else {
            continue;
        };
        let obs: Vec<Value> = bundle["entry"]
            .as_array()
            .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default();
        let mut seen: Vec<String> = obs
            .iter()
            .filter_map(|o| o["code"]["text"].as_str().map(str::to_string))
            .collect();
        seen.sort();
        seen.dedup();
        last = seen.clone();
        if seen != kinds {
            continue;
        }
        // Every Observation links to a Device and a Patient that exist.
        for o in &obs {
            for (field, rt) in [("device", "Device"), ("subject", "Patient")] {
                let reference = o[field]["reference"].as_str().unwrap_or_default();
                assert!(reference.starts_with(&format!("{rt}/")), "{o}");
                let r = get(fhir, &format!("/fhir/R4/{reference}")).unwrap_or(Value::Null);
                assert_eq!(r["resourceType"], rt, "{reference} does not resolve");
            }
        }
        break;
    }
    eprintln!("DEMO every kind in the store after {:?}", started.elapsed());
    // The review page is part of the demo.
    let patients = get(review, "/api/patients").expect("the demo serves the review page");
    assert!(!patients.as_array().unwrap().is_empty());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "demo exit status {status:?}");
            break;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(30),
            "demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(" ERROR ")
                || l.contains(" WARN ")
                || l.contains('\x1b')
                || l.contains("rumqttd")
        })
        .collect();
    assert!(noisy.is_empty(), "the demo's log is not quiet:\n{log}");
    assert!(log.contains("Connector running."), "{log}");
}

/// `iomt demo --fhir-bearer-token-env VAR`: the local FHIR store refuses requests without the
/// token, and the connector (its `[fhir.auth]` bearer) and the review page (the connector's own
/// FHIR credentials) still read and write it.
#[test]
fn demo_with_a_store_token_still_fills_the_store_and_the_review_page() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, fhir, metrics, review) = (free_port(), free_port(), free_port(), free_port());
    let token = "demo-store-token-for-the-test-0123456789";
    let mut child = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .args([
            "--mqtt-port",
            &mqtt.to_string(),
            "--fhir-port",
            &fhir.to_string(),
        ])
        .args([
            "--metrics-port",
            &metrics.to_string(),
            "--review-port",
            &review.to_string(),
        ])
        .args([
            "--fhir-bearer-token-env",
            "IOMT_DEMO_STORE_TOKEN",
            "--interval",
            "1",
        ])
        .env("IOMT_DEMO_STORE_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let patients = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no patient on the review page after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
        match get(review, "/api/patients") {
            Some(Value::Array(p))
                if p.iter()
                    .any(|p| !p["vitals"].as_object().unwrap().is_empty()) =>
            {
                break p
            }
            _ => continue,
        }
    };
    assert!(!patients.is_empty());
    // Without the token the store answers 401 (an OperationOutcome), with it a Bundle.
    let refused = get(fhir, "/fhir/R4/Observation?_count=1").unwrap();
    assert_eq!(refused["resourceType"], "OperationOutcome", "{refused}");
    let bundle = get_with(
        fhir,
        "/fhir/R4/Observation?_count=1",
        &format!("authorization: Bearer {token}\r\n"),
    )
    .unwrap();
    assert_eq!(bundle["resourceType"], "Bundle", "{bundle}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stop = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            stop.elapsed() < Duration::from_secs(30),
            "demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
