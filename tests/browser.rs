//! The review page in a real browser: Debian's chromium driven by `playwright-core`
//! (`tests/browser/review.test.mjs`) against `iomt review` reading the real test FHIR server,
//! seeded with the heart-rate set plus one out-of-range reading. The screenshot is saved to
//! `target/artifacts/review.png`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use testkit::fhir::FhirServer;
use testkit::free_port;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_page_renders_patients_flags_and_charts_in_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    if !browser_dir.join("node_modules/playwright-core").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&browser_dir)
            .status()
            .expect("npm");
        assert!(status.success(), "npm ci in tests/browser failed");
    }
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian chromium is needed (apt-get install chromium; bash .ci/run does)"
    );

    let server = FhirServer::acquire().await;
    let set = root.join("templates/heart-rate");
    let dir = tempfile::tempdir().unwrap();
    let mut events: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(set.join("events.json")).unwrap()).unwrap();
    // The latest reading, far above the heart-rate threshold (130/min).
    events.push(json!({"body": {"deviceId": "hr-monitor-01", "patientId": "patient-001", "endDate": "2024-03-02T09:00:00Z", "heartRate": 165}}));
    let events_path = dir.path().join("events.json");
    std::fs::write(&events_path, serde_json::to_string(&events).unwrap()).unwrap();
    let out = testkit::set_command(
        env!("CARGO_BIN_EXE_iomt"),
        "replay",
        &set,
        Some(&events_path),
    )
    .args(["--fhir-url", &server.base, "--resolution", "Create"])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Points the chart must show: every non-E sample of patient-001's heart-rate Observations.
    let expected: usize = report["observations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["code"]["text"] == "heartrate")
        .filter(|o| {
            o["subject"]["reference"]
                == format!("Patient/{}", fhir_writer::logical_id("", "patient-001"))
        })
        .map(|o| {
            o["valueSampledData"]["data"]
                .as_str()
                .unwrap()
                .split(' ')
                .filter(|t| *t != "E")
                .count()
        })
        .sum();
    assert!(expected > 0);

    let port = free_port();
    let _review = Killed(
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args([
                "review",
                "--fhir-url",
                &server.base,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "review did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let artifacts = root.join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("review.png");
    let out = Command::new("node")
        .arg(browser_dir.join("review.test.mjs"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .arg(&shot)
        .arg(expected.to_string())
        .current_dir(&browser_dir)
        .output()
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "browser test failed:\n{text}");
    assert!(shot.is_file(), "no screenshot");
}
