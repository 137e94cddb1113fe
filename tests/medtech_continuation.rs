//! Taking over from Azure MedTech: Observations MedTech already wrote in a FHIR server are
//! merged into, never duplicated.
//!
//! The seeded resources are written here by hand, from the reference's documented format
//! (`/work/shared/reference/iomt-fhir-behaviour.md`), not by this connector's writer, so the
//! test does not agree with itself:
//! - Patient and Device as the reference's `Create` identity mode makes them (§5): Patient
//!   identifier `{value: patientId}` (no system), id = SHA-256 of `"_" + patientId`; Device
//!   identifier `{value: deviceId}` (no `DefaultDeviceIdentifierSystem`), id = SHA-256 of
//!   `"_" + deviceId`, `patient` referencing the Patient.
//! - Observations as §4.3 writes them: identifier system
//!   `https://azure.microsoft.com/en-us/services/iomt-fhir-connector/`, value
//!   `{patient id}.{device id}.{typeName}.{yyyyMMddHHmmssZ}.{yyyyMMddHHmmssZ}` (window start
//!   and end, the FHIR logical ids), id = SHA-256 of `"{system}_{value}"`, status `final`, the
//!   template codings plus the service coding, `code.text` = typeName, `effectivePeriod` as
//!   .NET round-trip strings (always a Period), `subject`/`device` references by logical id.
//!   One is the hourly heart-rate SampledData (§4.4: a slot every `defaultPeriod` from the
//!   window start to its end, `E` where empty) holding the first half of the readings; the
//!   other a point-in-time (`periodInterval` 0) SpO2 `valueQuantity`.
//!
//! The template set is `templates/simulator`; the FHIR server is the real test server
//! (`support/fhir_server.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use testkit::fhir::FhirServer;

/// The reference's service system (identifier system and extra coding).
const MEDTECH: &str = "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/";
const DEVICE: &str = "medtech-hr-01";
const PATIENT: &str = "medtech-patient-01";
/// Heart-rate readings, one every 5 s from 10:00:00 (one per SampledData slot).
const READINGS: usize = 40;
/// How many of them MedTech wrote before the cut-over.
const SEEDED: usize = READINGS / 2;
/// Slots of an hourly window at a 5 s period.
const SLOTS: usize = 3600 / 5;

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn heart_rate(i: usize) -> u32 {
    60 + (i as u32 * 7) % 40
}

fn at(i: usize) -> String {
    format!("2024-05-01T10:{:02}:{:02}Z", i * 5 / 60, i * 5 % 60)
}

/// The SampledData `data` of the hour holding the first `n` readings.
fn data_with(n: usize) -> String {
    (0..SLOTS)
        .map(|s| {
            if s < n {
                heart_rate(s).to_string()
            } else {
                "E".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn vital_signs() -> Value {
    json!([{
        "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs"
        }],
        "text": "Vital Signs"
    }])
}

/// An Observation as the reference writes it (§4.3).
fn medtech_observation(
    patient_id: &str,
    device_id: &str,
    type_name: &str,
    loinc: (&str, &str),
    (start, end): (&str, &str),
    segment: &str,
    value: (&str, Value),
) -> Value {
    let ident = format!("{patient_id}.{device_id}.{type_name}.{segment}");
    let mut o = json!({
        "resourceType": "Observation",
        "id": sha256_hex(&format!("{MEDTECH}_{ident}")),
        "identifier": [{"system": MEDTECH, "value": ident}],
        "status": "final",
        "category": vital_signs(),
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": loinc.0, "display": loinc.1},
                {"system": MEDTECH, "code": type_name, "display": type_name}
            ],
            "text": type_name
        },
        "subject": {"reference": format!("Patient/{patient_id}")},
        "device": {"reference": format!("Device/{device_id}")},
        "effectivePeriod": {"start": start, "end": end},
        "issued": "2024-05-01T10:01:50.1234567+00:00"
    });
    o[value.0] = value.1;
    o
}

fn replay(events: &Path, base: &str) -> Value {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/simulator");
    let out = testkit::set_command(env!("CARGO_BIN_EXE_iomt"), "replay", &set, Some(events))
        .args(["--fhir-url", base, "--resolution", "Create"])
        .output()
        .expect("run iomt replay");
    assert!(
        out.status.success(),
        "iomt replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("replay prints JSON");
    assert_eq!(report["errorsByType"], json!({}), "{:#}", report["errors"]);
    report
}

/// Type/id → versionId of every Patient, Device and Observation.
async fn versions(server: &FhirServer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in ["Patient", "Device", "Observation"] {
        for r in server.all(t).await {
            out.insert(
                format!("{t}/{}", r["id"].as_str().unwrap()),
                r["meta"]["versionId"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

/// How many versions the server holds of `Type/id`.
async fn history_len(server: &FhirServer, type_and_id: &str) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{}/{type_and_id}/_history", server.base))
        .send()
        .await
        .expect("history");
    assert!(
        r.status().is_success(),
        "{type_and_id}/_history: {}",
        r.status()
    );
    let b: Value = serde_json::from_slice(&r.bytes().await.expect("history body")).unwrap();
    b["entry"].as_array().map_or(0, Vec::len)
}

fn without_meta(r: &Value) -> Value {
    let mut r = r.clone();
    r.as_object_mut().unwrap().remove("meta");
    r
}

/// MedTech wrote the first half of an hour's heart rate (SampledData) and a point-in-time SpO2;
/// `iomt replay` of the whole stream (all readings, those already written included) merges the
/// rest into MedTech's heart-rate Observation (same id, seeded slots unchanged), leaves the
/// SpO2 of the same value untouched (no new version), creates only the SpO2 MedTech never saw,
/// and adds no Device or Patient; a second replay writes nothing.
#[tokio::test]
async fn observations_written_by_medtech_are_merged_not_duplicated() {
    let server = FhirServer::acquire().await;
    let patient_id = sha256_hex(&format!("_{PATIENT}"));
    let device_id = sha256_hex(&format!("_{DEVICE}"));
    server
        .put(json!({
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"value": PATIENT}]
        }))
        .await;
    server
        .put(json!({
            "resourceType": "Device",
            "id": device_id,
            "identifier": [{"value": DEVICE}],
            "patient": {"reference": format!("Patient/{patient_id}")}
        }))
        .await;
    let hr = medtech_observation(
        &patient_id,
        &device_id,
        "heartrate",
        ("8867-4", "Heart rate"),
        (
            "2024-05-01T10:00:00.0000000Z",
            "2024-05-01T10:59:59.9999999Z",
        ),
        "20240501100000Z.20240501105959Z",
        (
            "valueSampledData",
            json!({
                "origin": {"value": 0, "unit": "/min"},
                "period": 5000,
                "dimensions": 1,
                "data": data_with(SEEDED)
            }),
        ),
    );
    let spo2 = medtech_observation(
        &patient_id,
        &device_id,
        "spo2",
        (
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
        ),
        (
            "2024-05-01T10:00:00.0000000Z",
            "2024-05-01T10:00:00.0000000Z",
        ),
        "20240501100000Z.20240501100000Z",
        (
            "valueQuantity",
            json!({"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}),
        ),
    );
    server.put(hr.clone()).await;
    server.put(spo2.clone()).await;
    let seeded = versions(&server).await;
    let stored = |list: &[Value], id: &Value| list.iter().find(|o| &o["id"] == id).cloned();
    let spo2_seeded = stored(&server.all("Observation").await, &spo2["id"]).unwrap();

    // The device stream: every reading, those MedTech wrote included; SpO2 in the first
    // message (the one MedTech wrote, same value) and in the last (after the cut-over).
    let events: Vec<Value> = (0..READINGS)
        .map(|i| {
            let mut body = json!({
                "deviceId": DEVICE,
                "patientId": PATIENT,
                "endDate": at(i),
                "heartRate": heart_rate(i),
            });
            if i == 0 {
                body["spo2"] = json!(97);
            }
            if i + 1 == READINGS {
                body["spo2"] = json!(95);
            }
            json!({ "body": body })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    std::fs::write(&file, serde_json::to_vec(&events).unwrap()).unwrap();

    let report = replay(&file, &server.base);
    assert_eq!(report["incoming"], READINGS);
    assert_eq!(
        (
            &report["observationsCreated"],
            &report["observationsUpdated"],
            &report["observationsUnchanged"]
        ),
        (&json!(1), &json!(1), &json!(1)),
        "created (the later SpO2), updated (heart rate), unchanged (MedTech's SpO2)"
    );

    // One Observation per identifier; MedTech's two kept their ids.
    let observations = server.all("Observation").await;
    let mut idents: Vec<&str> = observations
        .iter()
        .map(|o| o["identifier"][0]["value"].as_str().unwrap())
        .collect();
    idents.sort();
    idents.dedup();
    assert_eq!(observations.len(), 3, "{observations:#?}");
    assert_eq!(idents.len(), 3, "duplicated identifiers: {observations:#?}");
    let hr_now = stored(&observations, &hr["id"]).expect("MedTech's heart-rate Observation");
    let spo2_now = stored(&observations, &spo2["id"]).expect("MedTech's SpO2 Observation");
    let heart_rates = observations
        .iter()
        .filter(|o| o["code"]["text"] == "heartrate")
        .count();
    assert_eq!(heart_rates, 1, "one heart-rate Observation for the hour");

    // Heart rate: every reading, the seeded slots as MedTech wrote them; the rest as seeded.
    let data = hr_now["valueSampledData"]["data"].as_str().unwrap();
    let slots: Vec<&str> = data.split(' ').collect();
    let seeded_slots: Vec<&str> = hr["valueSampledData"]["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(slots.len(), SLOTS);
    assert_eq!(&slots[..SEEDED], &seeded_slots[..SEEDED], "seeded half");
    assert_eq!(data, data_with(READINGS), "all readings");
    assert_eq!(hr_now["identifier"], hr["identifier"]);
    assert_eq!(hr_now["effectivePeriod"], hr["effectivePeriod"]);
    for k in ["origin", "period", "dimensions"] {
        assert_eq!(
            hr_now["valueSampledData"][k], hr["valueSampledData"][k],
            "{k}"
        );
    }
    for k in ["code", "category", "subject", "device"] {
        assert_eq!(hr_now[k], hr[k], "{k}");
    }
    assert_eq!(
        hr_now["status"], "amended",
        "changed, as the reference marks it"
    );
    let hr_key = format!("Observation/{}", hr["id"].as_str().unwrap());
    assert_ne!(
        hr_now["meta"]["versionId"].as_str(),
        Some(seeded[&hr_key].as_str()),
        "a new version"
    );
    assert_eq!(history_len(&server, &hr_key).await, 2, "one update");

    // SpO2 of the same value: not written again.
    assert_eq!(spo2_now, spo2_seeded, "MedTech's SpO2 untouched");
    assert_eq!(without_meta(&spo2_now), spo2);
    let spo2_key = format!("Observation/{}", spo2["id"].as_str().unwrap());
    assert_eq!(
        history_len(&server, &spo2_key).await,
        1,
        "no new SpO2 version"
    );

    // The SpO2 MedTech never saw: created with the id the reference would give it.
    let later = observations
        .iter()
        .find(|o| o["code"]["text"] == "spo2" && o["id"] != spo2["id"])
        .expect("the later SpO2");
    let ident = format!("{patient_id}.{device_id}.spo2.20240501100315Z.20240501100315Z");
    assert_eq!(
        later["identifier"],
        json!([{"system": MEDTECH, "value": ident}])
    );
    assert_eq!(later["id"], sha256_hex(&format!("{MEDTECH}_{ident}")));
    assert_eq!(later["valueQuantity"]["value"], 95);

    // No new Device or Patient, none rewritten.
    let after = versions(&server).await;
    for (k, v) in &seeded {
        if k.starts_with("Patient/") || k.starts_with("Device/") {
            assert_eq!(after.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(server.all("Patient").await.len(), 1);
    assert_eq!(server.all("Device").await.len(), 1);

    // The same stream again: nothing written.
    let again = replay(&file, &server.base);
    assert_eq!(again["observationsCreated"], 0);
    assert_eq!(again["observationsUpdated"], 0);
    assert_eq!(versions(&server).await, after, "a second replay wrote");
    let hr_again = stored(&server.all("Observation").await, &hr["id"]).unwrap();
    assert_eq!(hr_again, hr_now);
    assert_eq!(history_len(&server, &hr_key).await, 2);
    assert_eq!(history_len(&server, &spo2_key).await, 1);
}
