//! The writer against the real test FHIR server (`testkit::fhir::FhirServer`): identity
//! resolution in Lookup, LookupWithEncounter and Create modes, and its errors.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use fhir_writer::{
    FhirClient, FhirClientConfig, FhirTemplates, FhirWriter, ResolutionMode, WriteReport,
    WriterConfig,
};
use normalizer::{Measurement, MeasurementProperty};
use serde_json::{json, Value};
use testkit::fhir::FhirServer;

const MAPPING: &str = r#"{
  "templateType": "CollectionFhir",
  "template": [{
    "templateType": "CodeValueFhir",
    "template": {
      "typeName": "spo2", "periodInterval": 0,
      "codes": [{"code": "59408-5", "system": "http://loinc.org", "display": "SpO2"}],
      "value": {"valueType": "Quantity", "valueName": "spo2", "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    }
  }]
}"#;

fn writer(base: &str, mode: ResolutionMode) -> FhirWriter {
    let (templates, errors) = FhirTemplates::load(MAPPING);
    assert!(errors.is_empty(), "{errors:?}");
    let client = FhirClient::new(FhirClientConfig::new(base)).unwrap();
    FhirWriter::new(
        client,
        Arc::new(templates),
        WriterConfig {
            resolution: mode,
            ..Default::default()
        },
    )
}

fn m(
    device: &str,
    patient: Option<&str>,
    encounter: Option<&str>,
    minute: u32,
    value: &str,
) -> Measurement {
    Measurement {
        type_name: "spo2".into(),
        occurrence_time_utc: Utc.with_ymd_and_hms(2024, 3, 1, 9, minute, 0).unwrap(),
        ingestion_time_utc: None,
        device_id: device.into(),
        patient_id: patient.map(Into::into),
        encounter_id: encounter.map(Into::into),
        correlation_id: None,
        properties: vec![MeasurementProperty {
            name: "spo2".into(),
            value: value.into(),
        }],
    }
}

async fn seed(server: &FhirServer) {
    server
        .put(json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "patient-1"}]}))
        .await;
    server
        .put(json!({"resourceType": "Patient", "id": "p2", "identifier": [{"value": "patient-2"}]}))
        .await;
    server
        .put(json!({"resourceType": "Device", "id": "d1", "identifier": [{"value": "dev-1"}], "patient": {"reference": "Patient/p1"}}))
        .await;
    server
        .put(json!({"resourceType": "Device", "id": "d2", "identifier": [{"value": "dev-2"}]}))
        .await;
    server.put(json!({"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "HH"}, "identifier": [{"value": "enc-1"}]})).await;
}

fn error_for(r: &WriteReport<usize>, event: usize) -> &fhir_writer::WriteErrorRecord<usize> {
    r.errors
        .iter()
        .find(|e| e.events.contains(&event))
        .unwrap_or_else(|| panic!("no error for event {event}: {:#?}", r.errors))
}

fn counts(resources: &[Value]) -> usize {
    resources.len()
}

#[tokio::test]
async fn lookup_creates_nothing_and_names_what_is_missing() {
    let server = FhirServer::acquire().await;
    seed(&server).await;
    let w = writer(&server.base, ResolutionMode::Lookup);
    let batch = vec![
        (0, m("dev-1", Some("someone-else"), None, 0, "97")), // lands on patient-1: Lookup ignores the measurement's patient
        (1, m("dev-unknown", Some("patient-1"), None, 1, "96")),
        (2, m("dev-2", Some("patient-2"), None, 2, "95")), // device without Device.patient
        (3, m("dev-1", None, Some("enc-unknown"), 3, "94")),
        (4, m("dev-1", None, Some("enc-1"), 4, "93")),
    ];
    let r = w.write_batch(batch, None).await;

    let e = error_for(&r, 1);
    assert_eq!(e.error_type, "FhirResourceNotFoundException");
    assert!(
        e.message.starts_with("Device not found") && e.message.contains("dev-unknown"),
        "{}",
        e.message
    );
    let e = error_for(&r, 2);
    assert_eq!(e.error_type, "FhirResourceNotFoundException");
    assert!(e.message.starts_with("Patient not found"), "{}", e.message);
    let e = error_for(&r, 3);
    assert_eq!(e.error_type, "FhirResourceNotFoundException");
    assert!(
        e.message.starts_with("Encounter not found") && e.message.contains("enc-unknown"),
        "{}",
        e.message
    );
    assert_eq!(r.errors.len(), 3, "{:#?}", r.errors);

    // The other events landed.
    let obs = server.all("Observation").await;
    assert_eq!(obs.len(), 2, "{obs:#?}");
    for o in &obs {
        assert_eq!(o["subject"]["reference"], "Patient/p1");
        assert_eq!(o["device"]["reference"], "Device/d1");
    }
    let with_enc: Vec<&Value> = obs
        .iter()
        .filter(|o| o.get("encounter").is_some())
        .collect();
    assert_eq!(with_enc.len(), 1);
    assert_eq!(with_enc[0]["encounter"]["reference"], "Encounter/e1");
    assert_eq!(with_enc[0]["valueQuantity"]["value"], json!(93));

    // Lookup created no Patient, Device or Encounter.
    assert_eq!(counts(&server.all("Patient").await), 2);
    assert_eq!(counts(&server.all("Device").await), 2);
    assert_eq!(counts(&server.all("Encounter").await), 1);
}

#[tokio::test]
async fn lookup_with_encounter_requires_an_encounter_id() {
    let server = FhirServer::acquire().await;
    seed(&server).await;
    let w = writer(&server.base, ResolutionMode::LookupWithEncounter);
    let r = w
        .write_batch(
            vec![
                (0, m("dev-1", None, None, 0, "97")),
                (1, m("dev-1", None, Some("enc-1"), 1, "96")),
            ],
            None,
        )
        .await;
    let e = error_for(&r, 0);
    assert_eq!(e.error_type, "ResourceIdentityNotDefinedException");
    assert!(e.message.contains("Encounter"), "{}", e.message);
    assert_eq!(r.errors.len(), 1);
    assert_eq!(server.all("Observation").await.len(), 1);
}

#[tokio::test]
async fn create_links_devices_and_reports_mismatch_and_missing_patient() {
    let server = FhirServer::acquire().await;
    seed(&server).await;
    let w = writer(&server.base, ResolutionMode::Create);
    let r = w
        .write_batch(
            vec![
                (0, m("dev-new", Some("patient-new"), None, 0, "97")), // creates Patient and Device
                (1, m("dev-2", Some("patient-2"), None, 1, "96")),     // links the unlinked device
                (2, m("dev-orphan", None, None, 2, "95")),             // no patient id
                (3, m("dev-1", Some("patient-1"), None, 3, "94")),     // already linked: fine
            ],
            None,
        )
        .await;
    let e = error_for(&r, 2);
    assert_eq!(e.error_type, "ResourceIdentityNotDefinedException");
    assert!(e.message.contains("Patient"), "{}", e.message);
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    assert_eq!(r.observations_created, 3);

    let devices = server.all("Device").await;
    let new_device = devices
        .iter()
        .find(|d| d["identifier"][0]["value"] == "dev-new")
        .expect("device created");
    assert_eq!(
        new_device["id"],
        json!(fhir_writer::logical_id("", "dev-new"))
    );
    let new_patient_id = fhir_writer::logical_id("", "patient-new");
    assert_eq!(
        new_device["patient"]["reference"],
        json!(format!("Patient/{new_patient_id}"))
    );
    let d2 = devices.iter().find(|d| d["id"] == "d2").unwrap();
    assert_eq!(
        d2["patient"]["reference"], "Patient/p2",
        "an unlinked device is linked"
    );

    // A device linked to another patient: dev-1 belongs to patient-1.
    let r = w
        .write_batch(
            vec![
                (0, m("dev-1", Some("patient-2"), None, 5, "90")),
                (1, m("dev-new", Some("patient-new"), None, 6, "91")),
            ],
            None,
        )
        .await;
    let e = error_for(&r, 0);
    assert_eq!(e.error_type, "PatientDeviceMismatchException");
    assert!(
        e.message.contains("dev-1")
            && e.message.contains("Patient/p1")
            && e.message.contains("patient-2"),
        "{}",
        e.message
    );
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.observations_created, 1, "the other event still lands");
    // Nothing was re-linked.
    let d1 = server
        .all("Device")
        .await
        .into_iter()
        .find(|d| d["id"] == "d1")
        .unwrap();
    assert_eq!(d1["patient"]["reference"], "Patient/p1");
}

/// How many tokens the token endpoint has issued.
async fn tokens_issued(server: &FhirServer) -> u64 {
    server.auth_counts().await["issued"].as_u64().unwrap()
}

fn writer_with(base: &str, auth: fhir_writer::auth::Auth) -> FhirWriter {
    let (templates, _) = FhirTemplates::load(MAPPING);
    let mut cc = FhirClientConfig::new(base);
    cc.auth = auth;
    FhirWriter::new(
        FhirClient::new(cc).unwrap(),
        Arc::new(templates),
        WriterConfig {
            resolution: ResolutionMode::Create,
            ..Default::default()
        },
    )
}

/// Against the test server's own access control and client-secret token endpoint
/// (tests/fhir-server/server.mjs); SMART Backend Services against a real authorization server
/// (oidc-provider) is in tests/smart.rs.
#[tokio::test]
async fn bearer_token_and_oauth2_client_credentials() {
    use fhir_writer::auth::{Auth, ClientCredentials};
    let server = FhirServer::acquire().await;
    server.auth(json!({"required": true, "tokens": ["static-token"], "clients": {"iomt": "s3cret"}, "expiresIn": 3600})).await;

    // No credentials: the server says 401 and the events are reported, not lost silently.
    let r = writer_with(&server.base, Auth::None)
        .write_batch(vec![(0, m("dev-a", Some("pa"), None, 0, "97"))], None)
        .await;
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].error_type, "FhirServiceException");
    assert!(
        r.errors[0].message.contains("401"),
        "{}",
        r.errors[0].message
    );

    // A static bearer token.
    let r = writer_with(&server.base, Auth::Bearer("static-token".into()))
        .write_batch(vec![(0, m("dev-a", Some("pa"), None, 1, "97"))], None)
        .await;
    assert!(r.errors.is_empty(), "{:#?}", r.errors);

    // OAuth2 client credentials: one token for many requests.
    let cc = |secret: &str| {
        Auth::ClientCredentials(ClientCredentials {
            token_url: format!("{}/oauth2/token", server.base),
            client_id: "iomt".into(),
            client_secret: secret.into(),
            scope: Some(format!("{}/.default", server.base)),
            resource: None,
        })
    };
    let w = writer_with(&server.base, cc("s3cret"));
    for minute in 2..6 {
        let r = w
            .write_batch(vec![(0, m("dev-b", Some("pb"), None, minute, "96"))], None)
            .await;
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
    }
    assert_eq!(tokens_issued(&server).await, 1, "the token is cached");
    assert!(
        w.client()
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            > 4
    );

    // A wrong secret is reported with the token endpoint's answer, never the secret itself.
    let r = writer_with(&server.base, cc("wrong-secret"))
        .write_batch(vec![(0, m("dev-c", Some("pc"), None, 7, "95"))], None)
        .await;
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].error_type, "FhirServiceUnavailableException");
    assert!(
        r.errors[0].message.contains("invalid_client")
            && !r.errors[0].message.contains("wrong-secret"),
        "{}",
        r.errors[0].message
    );

    // Short-lived tokens are refreshed before they expire (here: lifetime 1 s, refreshed at half-life).
    server
        .auth(json!({"required": true, "clients": {"iomt": "s3cret"}, "expiresIn": 1}))
        .await;
    let w = writer_with(&server.base, cc("s3cret"));
    let r = w
        .write_batch(vec![(0, m("dev-d", Some("pd"), None, 8, "94"))], None)
        .await;
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    let issued_before = tokens_issued(&server).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let r = w
        .write_batch(vec![(0, m("dev-d", Some("pd"), None, 9, "93"))], None)
        .await;
    assert!(
        r.errors.is_empty(),
        "a refreshed token is used: {:#?}",
        r.errors
    );
    let issued_after = tokens_issued(&server).await;
    assert_eq!(issued_after, issued_before + 1);
}
