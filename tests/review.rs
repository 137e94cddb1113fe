//! `iomt review` against the real test FHIR server seeded by `iomt replay`: the patient list
//! (with device freshness classes), the series API (SampledData expanded, gaps kept) and the
//! dead-letter API. The browser test of the page itself is `tests/browser.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use testkit::fhir::FhirServer;
use testkit::free_port;

fn get(port: u16, path: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Kills the review process however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `heart-rate` template set's events, replayed into the test FHIR server; returns the set.
fn replay_heart_rate(server: &FhirServer) -> std::path::PathBuf {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
    let out = testkit::set_command(
        env!("CARGO_BIN_EXE_iomt"),
        "replay",
        &set,
        Some(&set.join("events.json")),
    )
    .args(["--fhir-url", &server.base, "--resolution", "Create"])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_api_lists_patients_and_expands_sampled_data() {
    let server = FhirServer::acquire().await;
    let set = replay_heart_rate(&server);
    // A dead letter as the connector stores it, for the health panel's list and link.
    let dl_dir = tempfile::tempdir().unwrap();
    let dl = serde_json::json!({"id": "20240301T100000.000000Z-000000-1", "time": "2024-03-01T10:00:00Z", "stage": "normalize",
        "errorType": "InvalidDataFormatException", "message": "The event body is not valid JSON", "origin": "devices/x/telemetry",
        "ingestionTime": "2024-03-01T10:00:00Z", "body": "{\"heartRate\": ", "properties": {}, "systemProperties": {}});
    std::fs::write(
        dl_dir.path().join("20240301T100000.000000Z-000000-1.json"),
        dl.to_string(),
    )
    .unwrap();
    let port = free_port();
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args([
                "review",
                "--fhir-url",
                &server.base,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--dead-letters",
                dl_dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let patients = loop {
        if let Some(p) = get(port, "/api/patients") {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "review did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let list = patients.as_array().unwrap();
    assert!(!list.is_empty());
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(set.join("expected.json")).unwrap()).unwrap();
    let expected_points: usize = golden["observations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["subject"]["identifier"]["value"] == "patient-001")
        .map(|o| {
            o["valueSampledData"]["data"]
                .as_str()
                .unwrap()
                .split(' ')
                .filter(|t| *t != "E")
                .count()
        })
        .sum();
    let p = list
        .iter()
        .find(|p| p["identifier"] == "patient-001")
        .expect("patient-001 listed");
    assert!(p["vitals"]["heartrate"]["value"].is_number(), "{p}");
    assert!(!p["devices"].as_array().unwrap().is_empty());
    // The readings are from 2024: stale with the default freshness (10 min / 1 h).
    assert_eq!(p["devices"][0]["freshness"], "stale", "{p}");
    // The series behind the page's charts.
    let started = Instant::now();
    let series = loop {
        if let Some(s) = get(
            port,
            &format!(
                "/api/patients/{}/series?points=5000",
                p["id"].as_str().unwrap()
            ),
        ) {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hr = series["heartrate"].as_array().unwrap();
    assert_eq!(
        hr.iter().filter(|p| p["v"].is_number()).count(),
        expected_points
    );
    assert!(hr.iter().any(|p| p["v"].is_null()), "gaps stay visible");
    let list = get(port, "/api/dead-letters").unwrap();
    assert_eq!(list[0]["errorType"], "InvalidDataFormatException");
    let one = get(
        port,
        &format!("/api/dead-letters/{}", list[0]["id"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(one["body"], "{\"heartRate\": ");
}

/// `--fresh-minutes` / `--stale-minutes` decide a device's freshness class on the page (the
/// server classifies, the page only colours); an inconsistent pair is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_freshness_thresholds_are_configurable() {
    let server = FhirServer::acquire().await;
    replay_heart_rate(&server);
    // The sample readings are about 1.4 million minutes old (2024) at the time of writing.
    for (fresh, stale, want) in [
        ("100000000", "100000001", "fresh"),
        ("1", "100000000", "aging"),
        ("10", "60", "stale"),
    ] {
        let port = free_port();
        let _child = Killed(
            Command::new(env!("CARGO_BIN_EXE_iomt"))
                .args(["review", "--fhir-url", &server.base, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--fresh-minutes", fresh, "--stale-minutes", stale])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        let patients = loop {
            if let Some(p) = get(port, "/api/patients") {
                break p;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "review did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let classes: Vec<&Value> = patients
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["devices"].as_array().unwrap())
            .map(|d| &d["freshness"])
            .collect();
        assert!(!classes.is_empty());
        assert!(
            classes.iter().all(|c| *c == want),
            "{fresh}/{stale}: {classes:?}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "review",
            "--fhir-url",
            &server.base,
            "--fresh-minutes",
            "90",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--fresh-minutes (90) must be at least 1 and at most --stale-minutes (60)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Without sign-in, `iomt review` listens only on loopback: `--listen 0.0.0.0:…` is refused
/// with a message that says how to configure sign-in; sign-in without an allowed group is
/// refused too.
#[test]
fn review_refuses_a_non_loopback_address_without_sign_in() {
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_iomt"));
        c.args(["review", "--fhir-url", "http://127.0.0.1:9/fhir/R4"])
            .args(args);
        for v in [
            "IOMT_REVIEW_OIDC_ISSUER",
            "IOMT_REVIEW_OIDC_CLIENT_ID",
            "IOMT_REVIEW_OIDC_ALLOWED_GROUPS",
        ] {
            c.env_remove(v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--listen", "0.0.0.0:0"]);
    for want in [
        "refusing to serve the review page on 0.0.0.0:0 without sign-in",
        "--listen 127.0.0.1:8090",
        "--oidc-issuer URL --oidc-client-id ID --oidc-allowed-group GROUP",
        "IOMT_REVIEW_OIDC_CLIENT_SECRET",
        "docs/REVIEW.md",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    let err = run(&[
        "--listen",
        "0.0.0.0:0",
        "--oidc-issuer",
        "http://127.0.0.1:9",
        "--oidc-client-id",
        "review",
    ]);
    assert!(err.contains("needs --oidc-allowed-group"), "{err}");
    // `iomt demo --bind` likewise: the page needs sign-in, the FHIR store a token.
    let dir = tempfile::tempdir().unwrap();
    let demo = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
            .arg("demo")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .env_remove("IOMT_REVIEW_OIDC_ISSUER")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = demo(&["--bind", "0.0.0.0"]);
    assert!(
        err.contains("refusing to serve the review page on 0.0.0.0:8090 without sign-in")
            && err.contains("--bind 127.0.0.1"),
        "{err}"
    );
    let err = demo(&[
        "--bind",
        "0.0.0.0",
        "--oidc-issuer",
        "http://127.0.0.1:9",
        "--oidc-client-id",
        "review",
        "--oidc-allowed-group",
        "ward",
    ]);
    assert!(
        err.contains("sign-in on 0.0.0.0:8090 needs --public-url"),
        "{err}"
    );
    let err = demo(&[
        "--bind",
        "0.0.0.0",
        "--oidc-issuer",
        "http://127.0.0.1:9",
        "--oidc-client-id",
        "review",
        "--oidc-allowed-group",
        "ward",
        "--public-url",
        "http://demo-host.invalid:8090",
    ]);
    assert!(
        err.contains("refusing to serve the FHIR store on 0.0.0.0 without a token")
            && err.contains("--fhir-bearer-token-env VAR"),
        "{err}"
    );
}

/// The triage list is rebuilt in the background from what changed on the FHIR server
/// (`_lastUpdated`): a new out-of-range reading moves its patient to the top within a refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_triage_list_picks_up_new_readings() {
    let server = FhirServer::acquire().await;
    replay_heart_rate(&server);
    let port = free_port();
    let _child = Killed(
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args(["review", "--fhir-url", &server.base, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--refresh-seconds", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let first = loop {
        if let Some(p) = get(port, "/api/triage?count=10") {
            break p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "review did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = first["patients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["identifier"] == "patient-001")
        .expect("patient-001 listed")
        .clone();
    assert_eq!(p["status"], "quiet", "2024 readings: quiet ({p})");
    let id = p["id"].as_str().unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let obs = serde_json::json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "heartrate"},
        "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": now,
        "valueQuantity": {"value": 171, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
    let r = reqwest::Client::new()
        .post(format!("{}/Observation", server.base))
        .header("content-type", "application/fhir+json")
        .body(obs.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let started = Instant::now();
    loop {
        let page = get(port, "/api/triage?count=10").unwrap();
        let top = &page["patients"][0];
        if top["id"] == id && top["status"] == "out-of-range" {
            assert_eq!(top["vitals"]["heartrate"]["value"], 171.0, "{top}");
            assert_eq!(top["vitals"]["heartrate"]["display"], "Heart rate");
            assert_eq!(top["vitals"]["heartrate"]["unit"], "/min");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new reading did not reach the list: {page}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
