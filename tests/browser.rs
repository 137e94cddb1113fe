//! The review page in a real browser: Debian's chromium driven by `playwright-core`
//! (`tests/browser/review.test.mjs`) against `iomt review` behind OpenID Connect sign-in at the
//! real test OpenID Provider (`tests/oidc`, oidc-provider: a user in the allowed group and one
//! outside it), reading the local FHIR store (`iomt fhir-store` with a bearer token, which the
//! page sends as the connector's own FHIR credentials) seeded with 1,000 patients, one of them
//! out of range (with blood pressure and 10 s of 250 Hz ECG) and one whose device went quiet 3 h
//! ago. Screenshots go to `target/artifacts/review-list.png`, `review-loading.png` and
//! `review-patient.png`; the first page's time is printed. The audit log must name the user and
//! the patient viewed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use testkit::free_port;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const STORE_TOKEN: &str = "store-token-for-the-browser-test-0123456789";
const CLIENT_SECRET: &str = "review-client-secret-for-the-tests-only-0123";
const NORMAL: usize = 998;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn loinc(code: &str, display: &str) -> Value {
    json!({"system": "http://loinc.org", "code": code, "display": display})
}

/// An hour of heart rate, one sample a minute, ending at `end` with `last`.
fn heart_rate(id: &str, patient: &str, device: &str, end: DateTime<Utc>, last: f64) -> Value {
    let start = end - chrono::Duration::minutes(59);
    let data: Vec<String> = (0..59)
        .map(|i| format!("{}", 70 + (i * 7) % 15))
        .chain([format!("{last}")])
        .collect();
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [loinc("8867-4", "Heart rate")], "text": "heartrate"},
        "subject": {"reference": format!("Patient/{patient}")}, "device": {"reference": format!("Device/{device}")},
        "effectivePeriod": {"start": ts(start), "end": ts(end)},
        "valueSampledData": {"origin": {"value": 0, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            "period": 60000, "dimensions": 1, "data": data.join(" ")}})
}

fn patient(id: &str, identifier: &str, name: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:test:mrn", "value": identifier}], "name": [{"text": name}]})
}

fn device(id: &str, patient: &str) -> Value {
    json!({"resourceType": "Device", "id": id, "identifier": [{"system": "urn:test:device", "value": id}], "patient": {"reference": format!("Patient/{patient}")}})
}

/// A synthetic ECG: a beat a second (P, QRS, T) in mV, 250 Hz.
fn ecg_values(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = (i % 250) as f64 / 250.0;
            let g = |c: f64, w: f64, a: f64| a * (-((t - c) / w).powi(2)).exp();
            let v =
                g(0.2, 0.03, 0.12) + g(0.4, 0.008, 1.1) - g(0.38, 0.01, 0.15) + g(0.65, 0.05, 0.3);
            (v * 1000.0).round() / 1000.0
        })
        .collect()
}

async fn batch(http: &reqwest::Client, base: &str, resources: Vec<Value>) {
    for chunk in resources.chunks(500) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}}))
            .collect();
        let r = http
            .post(base)
            .bearer_auth(STORE_TOKEN)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Bundle", "type": "batch", "entry": entries}).to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "seeding: {}", r.status());
        let b: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let s = e["response"]["status"].as_str().unwrap_or_default();
            assert!(s.starts_with('2'), "seeding entry: {e}");
        }
    }
}

fn wait_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_page_signs_in_triages_and_shows_real_ecg_samples_in_chromium() {
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
    let dir = tempfile::tempdir().unwrap();

    // The local FHIR store, behind a bearer token.
    let store_port = free_port();
    let _store = Killed(
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args(["fhir-store", "--db"])
            .arg(dir.path().join("store.sqlite"))
            .args(["--listen", &format!("127.0.0.1:{store_port}")])
            .args(["--bearer-token-env", "IOMT_TEST_STORE_TOKEN"])
            .env("IOMT_TEST_STORE_TOKEN", STORE_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    wait_port(store_port, "the FHIR store");
    let base = format!("http://127.0.0.1:{store_port}/fhir/R4");
    let http = reqwest::Client::new();
    let unauthorized = http.get(format!("{base}/Patient")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401, "the store wants its token");

    // 1,000 patients: 998 in range and recent, one out of range, one gone quiet.
    let now = Utc::now();
    let mut resources = Vec::new();
    for i in 1..=NORMAL {
        let (p, d) = (format!("pat-{i:04}"), format!("dev-{i:04}"));
        resources.push(patient(
            &p,
            &format!("patient-{i:04}"),
            &format!("Test Patient {i}"),
        ));
        resources.push(device(&d, &p));
        resources.push(heart_rate(
            &format!("hr-{i:04}"),
            &p,
            &d,
            now - chrono::Duration::minutes(2),
            72.0,
        ));
    }
    resources.push(patient("pat-quiet", "patient-quiet", "Quentin Quiet"));
    resources.push(device("dev-quiet", "pat-quiet"));
    resources.push(heart_rate(
        "hr-quiet",
        "pat-quiet",
        "dev-quiet",
        now - chrono::Duration::hours(3),
        75.0,
    ));
    resources.push(patient("pat-oor", "patient-oor", "Olive Outofrange"));
    resources.push(device("dev-oor-hr", "pat-oor"));
    resources.push(device("dev-oor-ecg", "pat-oor"));
    resources.push(heart_rate(
        "hr-oor",
        "pat-oor",
        "dev-oor-hr",
        now - chrono::Duration::minutes(1),
        165.0,
    ));
    for k in 0..12 {
        let t = now - chrono::Duration::minutes(30 * k + 5);
        resources.push(json!({"resourceType": "Observation", "id": format!("bp-oor-{k}"), "status": "final",
            "code": {"coding": [loinc("85354-9", "Blood pressure panel with all children optional")], "text": "bloodpressure"},
            "subject": {"reference": "Patient/pat-oor"}, "device": {"reference": "Device/dev-oor-hr"},
            "effectiveDateTime": ts(t),
            "component": [
                {"code": {"coding": [loinc("8480-6", "Systolic blood pressure")], "text": "systolic"},
                 "valueQuantity": {"value": 120 + (k * 3) % 20, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [loinc("8462-4", "Diastolic blood pressure")], "text": "diastolic"},
                 "valueQuantity": {"value": 75 + (k * 5) % 15, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}));
    }
    let ecg_start = now - chrono::Duration::seconds(90);
    let ecg = ecg_values(2500);
    resources.push(json!({"resourceType": "Observation", "id": "ecg-oor", "status": "final",
        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.24", "code": "131329", "display": "MDC_ECG_ELEC_POTL_I"}], "text": "ecg"},
        "subject": {"reference": "Patient/pat-oor"}, "device": {"reference": "Device/dev-oor-ecg"},
        "effectivePeriod": {"start": ts(ecg_start), "end": ts(ecg_start + chrono::Duration::milliseconds(9996))},
        "valueSampledData": {"origin": {"value": 0, "unit": "mV"}, "period": 4, "dimensions": 1,
            "data": ecg.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" ")}}));
    let seeding = Instant::now();
    batch(&http, &base, resources).await;
    eprintln!("seeded 1,000 patients in {:?}", seeding.elapsed());

    // The OpenID Provider: the review page's client, a nurse of ward-3 and a visitor.
    let review_port = free_port();
    let review_url = format!("http://127.0.0.1:{review_port}");
    let mut client = testkit::oidc_users::web_client(
        "iomt-review",
        CLIENT_SECRET,
        &format!("{review_url}/auth/callback"),
    );
    client["post_logout_redirect_uris"] = json!([format!("{review_url}/auth/signed-out")]);
    let provider = testkit::oidc_users::start_with_users(
        vec![client],
        vec![
            // Her groups in the ID token; his only at the userinfo endpoint: both ways of
            // reading the claim.
            testkit::oidc_users::user("nurse", "Nora Nurse", &["ward-3", "staff"]),
            testkit::oidc_users::userinfo_only_user("visitor", "Victor Visitor", &["cafeteria"]),
        ],
        true,
    );

    let audit_path = dir.path().join("review.log");
    let review = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["review", "--fhir-url", &base, "--listen"])
        .arg(format!("127.0.0.1:{review_port}"))
        .args([
            "--oidc-issuer",
            &provider.issuer,
            "--oidc-client-id",
            "iomt-review",
        ])
        .args([
            "--oidc-allowed-group",
            "ward-3",
            "--oidc-scopes",
            "profile groups",
        ])
        .env("IOMT_FHIR_BEARER_TOKEN", STORE_TOKEN)
        .env("IOMT_REVIEW_OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&audit_path).unwrap())
        .spawn()
        .unwrap();
    let review = Killed(review);
    wait_port(review_port, "iomt review");

    let artifacts = root.join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let config = dir.path().join("browser.json");
    std::fs::write(
        &config,
        json!({
            "url": format!("{review_url}/"),
            "issuer": provider.issuer,
            "artifacts": artifacts,
            "allowed": "nurse",
            "refused": "visitor",
            "oor": "pat-oor",
            "oorIdentifier": "patient-oor",
            "quiet": "pat-quiet",
            "quietIdentifier": "patient-quiet",
            "total": NORMAL + 2,
            "ecg": {"start": ts(ecg_start), "periodMs": 4, "values": ecg},
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(browser_dir.join("review.test.mjs"))
        .arg(&config)
        .current_dir(&browser_dir)
        .output()
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    drop(review);
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        out.status.success(),
        "browser test failed:\n{text}\nreview log:\n{log}"
    );
    for f in [
        "review-list.png",
        "review-loading.png",
        "review-patient.png",
    ] {
        assert!(artifacts.join(f).is_file(), "no screenshot {f}");
    }
    // The audit log: who viewed which patient, by FHIR id only.
    let views: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("iomt_review_audit") && l.contains("Patient data viewed"))
        .collect();
    assert!(
        views.iter().any(|l| l.contains("user=nurse")
            && l.contains("patient=Patient/pat-oor")
            && l.contains("view-patient")),
        "no audit line for the nurse's view of pat-oor:\n{log}"
    );
    assert!(
        !log.contains("Olive") && !log.contains("patient-oor"),
        "the audit log holds a name or identifier:\n{log}"
    );
    // The refusal is logged; the visitor's groups were read at the userinfo endpoint, the
    // nurse's from the ID token.
    assert!(
        log.lines().any(|l| l.contains("Sign-in refused")
            && l.contains("user=visitor")
            && l.contains("claims=\"userinfo\"")),
        "the refusal is logged:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("Signed in.")
            && l.contains("user=nurse")
            && l.contains("claims=\"id_token\"")),
        "the nurse's sign-in is logged:\n{log}"
    );
}
