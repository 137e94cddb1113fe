//! The FHIR writer (`fhir_writer::FhirWriter` through `fhir_writer::FhirClient`) against the
//! store, compared with the same writes on the real test FHIR server
//! (`testkit::fhir::FhirServer`: Node + `@medplum/fhir-router`, a third-party FHIR
//! implementation), for every template set in `templates/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fhir_writer::retry::RetryPolicy;
use fhir_writer::sampled::sampled_data_to_time_values;
use fhir_writer::{
    parse_fhir_datetime, FhirClient, FhirClientConfig, FhirTemplates, FhirWriter, ResolutionMode,
    WriteReport, WriterConfig,
};
use normalizer::Measurement;
use serde_json::{json, Value};

use crate::support::Running;
use testkit::fhir::FhirServer;
use testkit::writer::{
    device_normalizer, fhir_templates, normalize, number, one_hz_hour, read, write_batches,
    HR_1HZ_FHIR_MAPPING,
};

fn writer(base: &str, templates: &Arc<FhirTemplates>, resolution: ResolutionMode) -> FhirWriter {
    let mut c = FhirClientConfig::new(base);
    c.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        deadline: Duration::from_secs(8),
    };
    c.request_timeout = Duration::from_secs(10);
    FhirWriter::new(
        FhirClient::new(c).expect("FHIR client"),
        Arc::clone(templates),
        WriterConfig {
            resolution,
            ..Default::default()
        },
    )
}

fn template_sets() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    let mut sets: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("templates/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            ["devicecontent.json", "fhirmapping.json", "events.json"]
                .iter()
                .all(|f| p.join(f).is_file())
        })
        .collect();
    sets.sort();
    sets
}

/// A resource without what a server sets (`meta`) or a write stamps (`issued`).
fn content(r: &Value) -> Value {
    let mut c = r.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("meta");
        o.remove("issued");
    }
    c
}

fn by_id(list: &[Value]) -> BTreeMap<String, Value> {
    list.iter()
        .map(|r| (r["id"].as_str().expect("id").to_string(), content(r)))
        .collect()
}

fn versions(list: &[Value]) -> BTreeMap<String, String> {
    list.iter()
        .map(|r| {
            (
                r["id"].as_str().expect("id").to_string(),
                r["meta"]["versionId"]
                    .as_str()
                    .expect("versionId")
                    .to_string(),
            )
        })
        .collect()
}

/// Everything of the types the writer touches.
async fn snapshot_store(s: &Running) -> [Vec<Value>; 3] {
    [
        s.all("Observation").await,
        s.all("Device").await,
        s.all("Patient").await,
    ]
}

async fn snapshot_node(n: &FhirServer) -> [Vec<Value>; 3] {
    [
        n.all("Observation").await,
        n.all("Device").await,
        n.all("Patient").await,
    ]
}

/// What a write report says, comparable across servers: created, updated, unchanged,
/// (error type, events), and the Observations by id.
type Summary = (
    u64,
    u64,
    u64,
    Vec<(String, Vec<usize>)>,
    BTreeMap<String, Value>,
);

fn report_summary(r: &WriteReport<usize>) -> Summary {
    (
        r.observations_created,
        r.observations_updated,
        r.observations_unchanged,
        {
            let mut e: Vec<(String, Vec<usize>)> = r
                .errors
                .iter()
                .map(|e| (e.error_type.to_string(), e.events.clone()))
                .collect();
            e.sort();
            e
        },
        by_id(&r.observations),
    )
}

fn assert_same(name: &str, what: &str, store: &[Vec<Value>; 3], node: &[Vec<Value>; 3]) {
    for (i, kind) in ["Observation", "Device", "Patient"].iter().enumerate() {
        let (a, b) = (by_id(&store[i]), by_id(&node[i]));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{name} ({what}): {kind} ids differ between the store and the test FHIR server"
        );
        for (id, r) in &a {
            assert_eq!(r, &b[id], "{name} ({what}): {kind}/{id} differs");
        }
    }
}

/// Every template set, written by the writer in Create mode and (onto the Devices and Patients
/// that created) in Lookup mode, gives the same Observations, Devices and Patients on the store as
/// on the test FHIR server; writing the same events again writes nothing.
#[tokio::test]
async fn every_template_set_writes_the_same_resources_as_on_the_test_fhir_server() {
    let sets = template_sets();
    assert!(sets.len() >= 5, "template sets: {sets:?}");
    let store = Running::start().await;
    let http = reqwest::Client::new();
    for set in sets {
        let name = set.file_name().unwrap().to_string_lossy().to_string();
        let node = FhirServer::acquire().await;
        let r = http
            .post(format!("{}/$reset", store.base))
            .send()
            .await
            .expect("reset");
        assert!(r.status().is_success());

        let templates = fhir_templates(&read(set.join("fhirmapping.json")));
        let events: Vec<Value> =
            serde_json::from_str(&read(set.join("events.json"))).expect("events.json");
        let measurements = normalize(
            &device_normalizer(&read(set.join("devicecontent.json"))),
            &events,
            0,
        );
        assert!(!measurements.is_empty(), "{name}: no measurements");

        // Create mode.
        let on_store = writer(&store.base, &templates, ResolutionMode::Create)
            .write_batch(measurements.clone(), None)
            .await;
        let on_node = writer(&node.base, &templates, ResolutionMode::Create)
            .write_batch(measurements.clone(), None)
            .await;
        assert_eq!(
            report_summary(&on_store),
            report_summary(&on_node),
            "{name}: Create reports"
        );
        assert!(on_store.observations_created > 0, "{name}: nothing written");
        let created = snapshot_store(&store).await;
        assert_same(&name, "Create", &created, &snapshot_node(&node).await);

        // The same writes again, by a fresh writer (no cache): no new version of anything.
        let again = writer(&store.base, &templates, ResolutionMode::Create)
            .write_batch(measurements.clone(), None)
            .await;
        assert!(
            again.errors.is_empty() || again.errors.len() == on_store.errors.len(),
            "{name}: {:?}",
            again.errors
        );
        assert_eq!(
            (again.observations_created, again.observations_updated),
            (0, 0),
            "{name}: replay"
        );
        assert_eq!(
            again.observations_unchanged, on_store.observations_created,
            "{name}: replay"
        );
        let after = snapshot_store(&store).await;
        for i in 0..3 {
            assert_eq!(
                versions(&created[i]),
                versions(&after[i]),
                "{name}: a replay wrote new versions"
            );
        }

        // Lookup mode, onto the Devices and Patients that Create made.
        let seed: Vec<Value> = created[1]
            .iter()
            .chain(created[2].iter())
            .map(content)
            .collect();
        node.reset().await;
        let r = http
            .post(format!("{}/$reset", store.base))
            .send()
            .await
            .expect("reset");
        assert!(r.status().is_success());
        for res in &seed {
            node.put(res.clone()).await;
            let url = format!(
                "{}/{}/{}",
                store.base,
                res["resourceType"].as_str().unwrap(),
                res["id"].as_str().unwrap()
            );
            let r = http
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(res.to_string())
                .send()
                .await
                .expect("seed");
            assert!(r.status().is_success());
        }
        let on_store = writer(&store.base, &templates, ResolutionMode::Lookup)
            .write_batch(measurements.clone(), None)
            .await;
        let on_node = writer(&node.base, &templates, ResolutionMode::Lookup)
            .write_batch(measurements.clone(), None)
            .await;
        assert_eq!(
            report_summary(&on_store),
            report_summary(&on_node),
            "{name}: Lookup reports"
        );
        assert!(
            on_store.observations_created > 0,
            "{name}: nothing written in Lookup mode"
        );
        assert_same(
            &name,
            "Lookup",
            &snapshot_store(&store).await,
            &snapshot_node(&node).await,
        );
        eprintln!(
            "PARITY {name}: {} Observations, {} Devices, {} Patients identical",
            created[0].len(),
            created[1].len(),
            created[2].len()
        );
    }
}

/// Two independent writers (own clients and caches, like two processes) merge interleaved
/// batches into one hourly SampledData Observation on the store, concurrently, with `If-Match`
/// (as `fhir-writer/tests/faults/` does against the test FHIR server). Writer B's update
/// leaves writer A's cached version stale, so A's first concurrent update gets a real 412 from
/// the store; in the end every sample is in the Observation exactly once, at its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_merge_one_hourly_sampled_data_observation() {
    let store = Running::start().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let a = writer(&store.base, &templates, ResolutionMode::Create);
    let b = writer(&store.base, &templates, ResolutionMode::Create);

    write_batches(&a, vec![all[..10].to_vec()]).await;
    assert_eq!(a.stats().created.load(Ordering::SeqCst), 1);
    write_batches(&b, vec![all[10..60].to_vec()]).await;
    assert_eq!(b.stats().updated.load(Ordering::SeqCst), 1);

    let (mut for_a, mut for_b) = (Vec::new(), Vec::new());
    for (i, chunk) in all[60..].chunks(60).enumerate() {
        if i % 2 == 0 {
            for_a.push(chunk.to_vec());
        } else {
            for_b.push(chunk.to_vec());
        }
    }
    tokio::join!(write_batches(&a, for_a), write_batches(&b, for_b));
    let (ca, cb) = (
        a.stats().conflicts.load(Ordering::SeqCst),
        b.stats().conflicts.load(Ordering::SeqCst),
    );
    eprintln!(
        "CONCURRENCY conflicts_a={ca} conflicts_b={cb} updates_a={} updates_b={}",
        a.stats().updated.load(Ordering::SeqCst),
        b.stats().updated.load(Ordering::SeqCst)
    );
    assert!(
        ca >= 1,
        "writer A wrote from a stale cache without a conflict"
    );

    let obs = store.all("Observation").await;
    assert_eq!(obs.len(), 1, "one hourly Observation expected");
    let sd = &obs[0]["valueSampledData"];
    let data = sd["data"].as_str().expect("data");
    assert_eq!(data.split(' ').count(), 3600, "slots");
    let start = obs[0]
        .pointer("/effectivePeriod/start")
        .and_then(Value::as_str)
        .and_then(parse_fhir_datetime)
        .expect("start");
    let decoded = sampled_data_to_time_values(data, start, 1000.0);
    assert_eq!(decoded.len(), 3600, "samples present");
    for (i, (tv, (_, m))) in decoded.iter().zip(&all).enumerate() {
        assert_eq!(tv.time, m.occurrence_time_utc, "slot {i}");
        assert_eq!(
            number(&tv.value),
            number(&m.properties[0].value),
            "value at slot {i}"
        );
    }
    // Versions: one per successful write, none lost or doubled.
    let version: u64 = obs[0]["meta"]["versionId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let writes = a.stats().created.load(Ordering::SeqCst)
        + a.stats().updated.load(Ordering::SeqCst)
        + b.stats().created.load(Ordering::SeqCst)
        + b.stats().updated.load(Ordering::SeqCst);
    assert_eq!(version, writes);
}

const SPO2_MAPPING: &str = r#"{
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

fn spo2(
    device: &str,
    patient: Option<&str>,
    encounter: Option<&str>,
    minute: u32,
    value: &str,
) -> Measurement {
    Measurement {
        type_name: "spo2".into(),
        occurrence_time_utc: Utc
            .with_ymd_and_hms(2024, 3, 1, 9, minute, 0)
            .single()
            .expect("time"),
        ingestion_time_utc: None,
        device_id: device.into(),
        patient_id: patient.map(Into::into),
        encounter_id: encounter.map(Into::into),
        correlation_id: None,
        properties: vec![normalizer::MeasurementProperty {
            name: "spo2".into(),
            value: value.into(),
        }],
    }
}

/// The identity scenarios of `fhir-writer/tests/writer.rs` (Lookup, LookupWithEncounter and
/// Create: missing Device, Patient and Encounter, an unlinked Device linked with `If-Match`, a
/// Device linked to another Patient) give the same reports and resources on the store as on the
/// test FHIR server.
#[tokio::test]
async fn identity_resolution_matches_the_test_fhir_server() {
    let store = Running::start().await;
    let http = reqwest::Client::new();
    let templates = fhir_templates(SPO2_MAPPING);
    let seed = [
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "patient-1"}]}),
        json!({"resourceType": "Patient", "id": "p2", "identifier": [{"value": "patient-2"}]}),
        json!({"resourceType": "Device", "id": "d1", "identifier": [{"value": "dev-1"}], "patient": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Device", "id": "d2", "identifier": [{"value": "dev-2"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "in-progress", "class": {"code": "HH"}, "identifier": [{"value": "enc-1"}]}),
    ];
    type Batch = Vec<(usize, Measurement)>;
    let batches: Vec<(ResolutionMode, Vec<Batch>)> = vec![
        (
            ResolutionMode::Lookup,
            vec![vec![
                (0, spo2("dev-1", Some("someone-else"), None, 0, "97")),
                (1, spo2("dev-unknown", Some("patient-1"), None, 1, "96")),
                (2, spo2("dev-2", Some("patient-2"), None, 2, "95")),
                (3, spo2("dev-1", None, Some("enc-unknown"), 3, "94")),
                (4, spo2("dev-1", None, Some("enc-1"), 4, "93")),
            ]],
        ),
        (
            ResolutionMode::LookupWithEncounter,
            vec![vec![
                (0, spo2("dev-1", None, None, 0, "97")),
                (1, spo2("dev-1", None, Some("enc-1"), 1, "96")),
            ]],
        ),
        (
            ResolutionMode::Create,
            vec![
                vec![
                    (0, spo2("dev-new", Some("patient-new"), None, 0, "97")),
                    (1, spo2("dev-2", Some("patient-2"), None, 1, "96")),
                    (2, spo2("dev-orphan", None, None, 2, "95")),
                    (3, spo2("dev-1", Some("patient-1"), None, 3, "94")),
                ],
                vec![
                    (0, spo2("dev-1", Some("patient-2"), None, 5, "90")),
                    (1, spo2("dev-new", Some("patient-new"), None, 6, "91")),
                ],
            ],
        ),
    ];
    for (mode, mode_batches) in batches {
        let node = FhirServer::acquire().await;
        let r = http
            .post(format!("{}/$reset", store.base))
            .send()
            .await
            .expect("reset");
        assert!(r.status().is_success());
        for res in &seed {
            node.put(res.clone()).await;
            let url = format!(
                "{}/{}/{}",
                store.base,
                res["resourceType"].as_str().unwrap(),
                res["id"].as_str().unwrap()
            );
            let r = http
                .put(url)
                .body(res.to_string())
                .send()
                .await
                .expect("seed");
            assert!(r.status().is_success());
        }
        let (ws, wn) = (
            writer(&store.base, &templates, mode),
            writer(&node.base, &templates, mode),
        );
        for (i, batch) in mode_batches.into_iter().enumerate() {
            let on_store = ws.write_batch(batch.clone(), None).await;
            let on_node = wn.write_batch(batch, None).await;
            assert!(
                !on_store.errors.is_empty(),
                "{mode:?} batch {i}: the scenarios include errors"
            );
            assert_eq!(
                report_summary(&on_store),
                report_summary(&on_node),
                "{mode:?} batch {i}"
            );
            let messages = |r: &WriteReport<usize>| {
                let mut m: Vec<String> = r.errors.iter().map(|e| e.message.clone()).collect();
                m.sort();
                m
            };
            assert_eq!(
                messages(&on_store),
                messages(&on_node),
                "{mode:?} batch {i}: error messages"
            );
        }
        let what = format!("{mode:?}");
        assert_same(
            "identity",
            &what,
            &snapshot_store(&store).await,
            &snapshot_node(&node).await,
        );
        let enc = |list: Vec<Value>| by_id(&list);
        assert_eq!(
            enc(store.all("Encounter").await),
            enc(node.all("Encounter").await),
            "{what}: Encounters"
        );
    }
}
