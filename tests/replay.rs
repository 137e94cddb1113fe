//! `iomt replay` of every template set into the real test FHIR server (see
//! `testkit::fhir::FhirServer`): exactly the Observations `iomt map` predicts (its golden
//! `expected.json`), linked to Devices and Patients created with the reference's identifiers;
//! a second replay changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use testkit::fhir::FhirServer;

fn replay(set: &Path, base: &str, resolution: &str) -> Value {
    let out = testkit::set_command(
        env!("CARGO_BIN_EXE_iomt"),
        "replay",
        set,
        Some(&set.join("events.json")),
    )
    .args(["--fhir-url", base, "--resolution", resolution])
    .output()
    .expect("run iomt replay");
    assert!(
        out.status.success(),
        "{}: {}",
        set.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("replay prints JSON")
}

/// The clinical content of an Observation, without server- or identity-specific parts.
fn content(o: &Value) -> Value {
    let mut c = o.clone();
    for k in [
        "id",
        "meta",
        "identifier",
        "subject",
        "device",
        "encounter",
        "issued",
        "text",
    ] {
        c.as_object_mut().unwrap().remove(k);
    }
    c
}

fn by_id(list: &[Value]) -> BTreeMap<String, Value> {
    list.iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn reference_id(r: &Value) -> String {
    r["reference"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_template_set_replays_into_exactly_the_expected_resources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let mut sets: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    sets.sort();
    assert!(sets.len() >= 5);
    for set in sets {
        let name = set.file_name().unwrap().to_string_lossy().to_string();
        let server = FhirServer::acquire().await;
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(set.join("expected.json")).unwrap())
                .unwrap();
        let report = replay(&set, &server.base, "Create");

        let observations = server.all("Observation").await;
        let devices = by_id(&server.all("Device").await);
        let patients = by_id(&server.all("Patient").await);
        let expected = golden["observations"].as_array().unwrap();
        assert_eq!(
            observations.len(),
            expected.len(),
            "{name}: Observations on the server"
        );
        assert_eq!(
            report["observationsCreated"],
            json!(expected.len()),
            "{name}"
        );

        // Match each server Observation to the predicted one: same content, and references that
        // resolve to the Device and Patient carrying the predicted identifiers.
        let mut unmatched: Vec<&Value> = expected.iter().collect();
        for o in &observations {
            let device = &devices[&reference_id(&o["device"])];
            let patient = &patients[&reference_id(&o["subject"])];
            let device_value = device["identifier"][0]["value"].as_str().unwrap();
            let patient_value = patient["identifier"][0]["value"].as_str().unwrap();
            assert_eq!(
                reference_id(&device["patient"]),
                patient["id"].as_str().unwrap(),
                "{name}: Device.patient"
            );
            // The identifier uses the FHIR logical ids, as the reference's writer does.
            let ident = o["identifier"][0]["value"].as_str().unwrap();
            assert!(
                ident.starts_with(&format!(
                    "{}.{}.",
                    patient["id"].as_str().unwrap(),
                    device["id"].as_str().unwrap()
                )),
                "{name}: {ident}"
            );
            assert_eq!(
                o["id"].as_str().unwrap(),
                fhir_writer::logical_id(fhir_writer::SERVICE_SYSTEM, ident)
            );
            let pos = unmatched.iter().position(|e| {
                e["device"]["identifier"]["value"] == device_value
                    && e["subject"]["identifier"]["value"] == patient_value
                    && content(e) == content(o)
            });
            match pos {
                Some(i) => {
                    unmatched.remove(i);
                }
                None => panic!(
                    "{name}: unexpected Observation on the server:\n{}",
                    serde_json::to_string_pretty(&content(o)).unwrap()
                ),
            }
        }
        assert!(
            unmatched.is_empty(),
            "{name}: predicted but not written: {unmatched:#?}"
        );

        // Devices and Patients: exactly those of the measurements that became Observations.
        let mut want_devices: Vec<&str> = expected
            .iter()
            .map(|e| e["device"]["identifier"]["value"].as_str().unwrap())
            .collect();
        want_devices.sort();
        want_devices.dedup();
        let mut got_devices: Vec<&str> = devices
            .values()
            .map(|d| d["identifier"][0]["value"].as_str().unwrap())
            .collect();
        got_devices.sort();
        assert_eq!(got_devices, want_devices, "{name}: Devices");
        let mut want_patients: Vec<&str> = expected
            .iter()
            .map(|e| e["subject"]["identifier"]["value"].as_str().unwrap())
            .collect();
        want_patients.sort();
        want_patients.dedup();
        let mut got_patients: Vec<&str> = patients
            .values()
            .map(|p| p["identifier"][0]["value"].as_str().unwrap())
            .collect();
        got_patients.sort();
        assert_eq!(got_patients, want_patients, "{name}: Patients");

        // The same replay again changes nothing: no write, every version unchanged.
        let versions = |list: Vec<Value>| -> BTreeMap<String, String> {
            list.iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap().to_string(),
                        r["meta"]["versionId"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let before = (
            versions(observations),
            versions(devices.into_values().collect()),
            versions(patients.into_values().collect()),
        );
        let again = replay(&set, &server.base, "Create");
        assert_eq!(again["observationsCreated"], 0, "{name}");
        assert_eq!(again["observationsUpdated"], 0, "{name}");
        assert_eq!(
            again["observationsUnchanged"],
            json!(expected.len()),
            "{name}"
        );
        let after = (
            versions(server.all("Observation").await),
            versions(server.all("Device").await),
            versions(server.all("Patient").await),
        );
        assert_eq!(before, after, "{name}: a second replay changed the server");
    }
}

fn replay_events(events: &Path, base: &str, extra: &[&str]) -> Value {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/simulator");
    let out = testkit::set_command(env!("CARGO_BIN_EXE_iomt"), "replay", &set, Some(events))
        .args(["--fhir-url", base, "--resolution", "Create"])
        .args(extra)
        .output()
        .expect("run iomt replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("replay prints JSON")
}

/// Every resource of the types the connector writes, by type and id, without what the server
/// sets (`meta`) and the time of writing (`issued`).
async fn state(server: &FhirServer) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for t in ["Observation", "Device", "Patient"] {
        let all = server.all(t).await;
        assert!(all.len() < 1000, "more {t} than one page holds");
        for mut r in all {
            let id = r["id"].as_str().unwrap().to_string();
            let o = r.as_object_mut().unwrap();
            o.remove("meta");
            o.remove("issued");
            out.insert((t.to_string(), id), r);
        }
    }
    out
}

/// On the test FHIR server (Medplum): `iomt replay` of simulated SpO2
/// (point-in-time Quantity) and heart-rate (hourly SampledData) readings with batch Bundles of 50
/// leaves the same FHIR state, resource by resource, as `--no-bundles` (single requests), with
/// a tenth of the requests or fewer; a second replay with Bundles changes nothing.
#[tokio::test]
async fn replay_with_bundles_leaves_what_single_requests_leave() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.json");
    let sim = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "simulate",
            "--devices",
            "20",
            "--kinds",
            "spo2,heart-rate",
            "--readings",
            "10",
        ])
        .arg("--target")
        .arg(format!("file:{}", events.display()))
        .output()
        .expect("run iomt simulate");
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );

    let server = FhirServer::acquire().await;
    let single = replay_events(&events, &server.base, &["--no-bundles"]);
    let single_state = state(&server).await;
    assert_eq!(single["fhirBundles"], 0);
    assert_eq!(single["errorsByType"], json!({}));

    server.reset().await;
    // Bundles of 50: the test server's in-memory searches take a good part of a second each
    // once it holds a few hundred Observations.
    let bundled = replay_events(&events, &server.base, &["--bundle-size", "50"]);
    let bundled_state = state(&server).await;
    for k in [
        "observationsCreated",
        "observationsUpdated",
        "observationsUnchanged",
    ] {
        assert_eq!(bundled[k], single[k], "{k}");
    }
    let created = bundled["observationsCreated"].as_u64().unwrap();
    assert!(
        created > 50,
        "{created} Observations created: more than one Bundle's worth (50)"
    );
    assert_eq!(
        bundled_state.keys().collect::<Vec<_>>(),
        single_state.keys().collect::<Vec<_>>(),
        "the same resources"
    );
    for (k, r) in &single_state {
        assert_eq!(&bundled_state[k], r, "{k:?}");
    }
    let (n_single, n_bundled) = (
        single["fhirRequests"].as_u64().unwrap(),
        bundled["fhirRequests"].as_u64().unwrap(),
    );
    eprintln!("REPLAY_REQUESTS single={n_single} bundles={n_bundled} observations={created}");
    assert!(
        n_bundled * 10 <= n_single,
        "{n_bundled} requests with Bundles, {n_single} without"
    );

    let versions = |list: Vec<Value>| -> BTreeMap<String, String> {
        list.iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["meta"]["versionId"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let before = versions(server.all("Observation").await);
    let again = replay_events(&events, &server.base, &["--bundle-size", "50"]);
    assert_eq!(again["errorsByType"], json!({}));
    assert_eq!(again["observationsCreated"], 0);
    assert_eq!(again["observationsUpdated"], 0);
    // Counted per flush that touched an Observation (an hourly one can be in several).
    let unchanged = again["observationsUnchanged"].as_u64().unwrap();
    eprintln!("REPLAY_AGAIN unchanged={unchanged} created_first={created}");
    assert!(unchanged >= created, "{unchanged} unchanged of {created}");
    assert_eq!(
        versions(server.all("Observation").await),
        before,
        "a second replay wrote"
    );
}

/// The state comparison the service tests rely on (`testkit::fhir::state`) finds what it is
/// there to find: two replays of the same events are the same state; a replay without one
/// heart-rate reading and one blood pressure, with one value changed, and with a second
/// Observation of one identifier, differs by exactly one lost sample, one wrong sample, one
/// missing Observation and one duplicate, and says which resource and which slot.
#[tokio::test]
async fn the_state_comparison_finds_lost_and_wrong_samples_missing_observations_and_duplicates() {
    use testkit::fhir::{Comparison, FhirState};
    use testkit::vitals;
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("cmp", 3, 30);
    vitals::replay(env!("CARGO_BIN_EXE_iomt"), &server.base, &readings);
    let expected = FhirState::fetch(&server.base).await;
    server.reset().await;
    vitals::replay(env!("CARGO_BIN_EXE_iomt"), &server.base, &readings);
    let same = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    same.assert_same("two replays of the same events");
    assert_eq!(same.compared, expected.len());
    assert_eq!(same.samples_compared, 90);

    let mut other = readings.clone();
    let lost = other
        .iter()
        .rposition(|r| r.device == "cmp-01" && r.body.get("spo2").is_none())
        .unwrap();
    let lost_at = other.remove(lost).body["endDate"].clone();
    other.retain(|r| !(r.device == "cmp-02" && r.body["systolic"].is_number()));
    let changed = other.iter().position(|r| r.device == "cmp-00").unwrap();
    other[changed].body["heartRate"] = json!(1);
    server.reset().await;
    vitals::replay(env!("CARGO_BIN_EXE_iomt"), &server.base, &other);
    let mut copy = server
        .all("Observation")
        .await
        .into_iter()
        .find(|o| o["code"]["text"] == "spo2")
        .unwrap();
    copy["id"] = json!("a-second-one");
    server.put(copy).await;
    let cmp = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    let report = cmp.report();
    assert!(!cmp.is_same(), "{report}");
    assert_eq!(
        (
            cmp.lost_samples,
            cmp.wrong_samples,
            cmp.missing,
            cmp.duplicates,
            cmp.extra
        ),
        (1, 1, 1, 1, 0),
        "{report}"
    );
    assert_eq!(cmp.differences.len(), 4, "{report}");
    assert!(
        report.contains("Observation bloodpressure") && report.contains("of Device cmp-02"),
        "{report}"
    );
    assert!(report.contains("found 1"), "{report}");
    assert!(report.contains("found E"), "{lost_at}: {report}");
    assert!(report.contains("(duplicates)"), "{report}");
}

/// Regression: `@medplum/fhir-router` 4.5's in-memory repository reversed its stored history
/// on every `_history` read, so every other read listed the versions oldest first; the
/// writer's create-race repair then missed the version its create replaced, and three
/// instances on one shared subscription lost a writer's samples. `tests/fhir-server/server.mjs`
/// lists the history without that; every read must give newest first, as FHIR says.
#[tokio::test]
async fn the_test_fhir_server_lists_history_newest_first_on_every_read() {
    let server = FhirServer::acquire().await;
    let client = reqwest::Client::new();
    let history = || async {
        let r = client
            .get(format!("{}/Patient/h1/_history", server.base))
            .send()
            .await
            .unwrap();
        let b: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["resource"]["identifier"][0]["value"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    for v in ["v1", "v2"] {
        server
            .put(json!({"resourceType": "Patient", "id": "h1", "identifier": [{"value": v}]}))
            .await;
    }
    assert_eq!(history().await, ["v2", "v1"]);
    assert_eq!(history().await, ["v2", "v1"]);
    server
        .put(json!({"resourceType": "Patient", "id": "h1", "identifier": [{"value": "v3"}]}))
        .await;
    assert_eq!(history().await, ["v3", "v2", "v1"]);
    assert_eq!(history().await, ["v3", "v2", "v1"]);
}
