//! Fixtures the FHIR writer's tests share (`fhir-writer/tests/faults/`, and the local store's
//! `fhir-store/tests/writer.rs`): loading mappings, normalizing `events.json`-style events into
//! tagged measurements, and an hour of 1 Hz heart rate into hourly SampledData.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use fhir_writer::{FhirTemplates, FhirWriter};
use normalizer::{Measurement, Normalizer};
use serde_json::{json, Value};

/// The file's text; panics naming the file.
pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads a FHIR mapping; panics unless it loads without errors.
pub fn fhir_templates(text: &str) -> Arc<FhirTemplates> {
    let (templates, errors) = FhirTemplates::load(text);
    assert!(errors.is_empty(), "FHIR mapping: {errors:?}");
    Arc::new(templates)
}

/// A normalizer for a device mapping; panics unless it loads without errors.
pub fn device_normalizer(text: &str) -> Normalizer {
    Normalizer::new(
        normalizer::load_device_mapping(text)
            .into_result()
            .expect("device mapping"),
    )
}

/// `2024-03-01T10:00:00Z`: whole seconds, `Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A value in a canonical form, so `97`, `97.0` and `"97"` compare equal.
pub fn number(v: &str) -> String {
    match v.trim().parse::<f64>() {
        Ok(f) => f.to_string(),
        Err(_) => v.to_string(),
    }
}

/// Normalizes events in the `events.json` format (`body` or `bodyText`, `properties`,
/// `systemProperties`), tagging measurements with `first_tag + index`. Events that fail or
/// match nothing are left out, as the pipeline dead-letters them before the writer.
pub fn normalize(n: &Normalizer, events: &[Value], first_tag: usize) -> Vec<(usize, Measurement)> {
    let mut out = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let body = match (&ev["body"], ev["bodyText"].as_str()) {
            (_, Some(text)) => text.as_bytes().to_vec(),
            (b, None) => b.to_string().into_bytes(),
        };
        let map = |k: &str| ev[k].as_object().cloned().unwrap_or_default();
        let (properties, system_properties) = (map("properties"), map("systemProperties"));
        let ingestion = ["iothub-enqueuedtime", "x-opt-enqueued-time", "enqueuedTime"]
            .iter()
            .find_map(|k| system_properties.get(*k)?.as_str())
            .and_then(normalizer::value::parse_timestamp);
        if let Ok(ms) = n.normalize(&body, &properties, &system_properties, ingestion) {
            out.extend(ms.into_iter().map(|m| (first_tag + i, m)));
        }
    }
    out
}

/// A device mapping for [`one_hz_hour`]'s bodies: heart rate (`hr`) by device and patient.
pub const HR_1HZ_DEVICE_MAPPING: &str = r#"{"templateType": "CollectionContent", "template": [{
  "templateType": "JsonPathContent",
  "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
               "deviceIdExpression": "$.deviceId", "patientIdExpression": "$.patientId",
               "timestampExpression": "$.endDate",
               "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}
}]}"#;

/// A FHIR mapping of heart rate into hourly SampledData with 1 s slots.
pub const HR_1HZ_FHIR_MAPPING: &str = r#"{"templateType": "CollectionFhir", "template": [{
  "templateType": "CodeValueFhir",
  "template": {"typeName": "heartrate", "periodInterval": 60,
               "codes": [{"code": "8867-4", "system": "http://loinc.org", "display": "Heart rate"}],
               "value": {"valueType": "SampledData", "valueName": "hr", "defaultPeriod": 1000, "unit": "/min"}}
}]}"#;

/// One hour of 1 Hz heart rate from one device of one patient; every value distinct.
pub fn one_hz_hour() -> Vec<(usize, Measurement)> {
    let start = Utc
        .with_ymd_and_hms(2024, 3, 1, 10, 0, 0)
        .single()
        .expect("time");
    let events: Vec<Value> = (0..3600)
        .map(|s| {
            json!({"body": {
                "deviceId": "hr-1hz-01", "patientId": "patient-1hz",
                "endDate": rfc3339(start + chrono::Duration::seconds(s)),
                "heartRate": 40.0 + s as f64 / 100.0,
            }})
        })
        .collect();
    let ms = normalize(&device_normalizer(HR_1HZ_DEVICE_MAPPING), &events, 0);
    assert_eq!(ms.len(), 3600);
    ms
}

/// Writes the batches in order; every one must be written. A failure the writer marks
/// retryable (a conflict that outlasted its re-merges while another writer kept winning, the
/// server unavailable) is written again, as the service does with a batch it could not finish,
/// up to [`RETRY_ROUNDS`] times; any other error fails the test.
pub async fn write_batches(w: &FhirWriter, batches: Vec<Vec<(usize, Measurement)>>) {
    for batch in batches {
        let mut pending = batch;
        for round in 0.. {
            let r = w.write_batch(pending.clone(), None).await;
            if r.errors.is_empty() {
                break;
            }
            assert!(
                round < RETRY_ROUNDS && r.errors.iter().all(|e| e.retryable),
                "round {round}: {:?}",
                r.errors
            );
            eprintln!("write_batches: round {round}, retrying {:?}", r.errors);
            let failed: std::collections::HashSet<usize> = r
                .errors
                .iter()
                .flat_map(|e| e.events.iter().copied())
                .collect();
            pending.retain(|(tag, _)| failed.contains(tag));
        }
    }
}

/// How many times [`write_batches`] writes a batch's retryable failures again.
pub const RETRY_ROUNDS: usize = 3;
