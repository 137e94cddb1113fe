//! Continuous grouping is invisible in the result: a stream of measurements released by the
//! streaming grouper in any pattern of flushes (random arrival times, flush intervals and memory
//! caps) and written flush after flush ends with the same FHIR state, resource by resource, as
//! the same measurements written as one batch (what one `iomt replay` does).
//!
//! One field differs by design: an Observation merged into (written by more than one flush) is
//! `"status": "amended"`, as the reference marks every update; written once it is `"final"`.
//! The test compares everything else, and checks that `status` is one of the two.
//!
//! Both sides write through the real FHIR writer over HTTP into the local FHIR store
//! (`fhir-store`, SQLite in memory), a fresh store each per case.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use fhir_writer::{
    FhirClient, FhirClientConfig, FhirTemplates, FhirWriter, ResolutionMode, WriterConfig,
};
use grouper::{Grouper, GrouperConfig, PeriodInterval};
use normalizer::{Measurement, MeasurementProperty};
use proptest::prelude::*;
use serde_json::Value;

const MAPPING: &str = r#"{
  "templateType": "CollectionFhir",
  "template": [
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "heartrate", "periodInterval": 60,
        "codes": [{ "code": "8867-4", "system": "http://loinc.org", "display": "Heart rate" }],
        "value": { "valueType": "SampledData", "valueName": "hr", "defaultPeriod": 1000, "unit": "/min" } } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "spo2", "periodInterval": 60,
        "codes": [{ "code": "59408-5", "system": "http://loinc.org", "display": "SpO2" }],
        "value": { "valueType": "Quantity", "valueName": "spo2", "unit": "%", "system": "http://unitsofmeasure.org", "code": "%" } } }
  ]
}"#;

/// One reading: device, type (heart rate or SpO2), second, value, and how many seconds after
/// its arrival it was stamped as ingested (ingestion times never go backwards along a stream).
#[derive(Debug, Clone)]
struct Reading {
    device: u8,
    spo2: bool,
    second: u32,
    value: u8,
}

fn arb_reading() -> impl Strategy<Value = Reading> {
    (0u8..3, any::<bool>(), 0u32..(2 * 3600 + 60), 40u8..200).prop_map(
        |(device, spo2, second, value)| Reading {
            device,
            spo2,
            // Coarse seconds: same-time readings (corrections) are common.
            second: second - second % 7,
            value,
        },
    )
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 6, 9, 30, 0)
        .single()
        .expect("time")
}

fn measurement(r: &Reading, arrival: usize) -> Measurement {
    let t = base_time() + chrono::Duration::seconds(i64::from(r.second));
    let (type_name, name) = if r.spo2 {
        ("spo2", "spo2")
    } else {
        ("heartrate", "hr")
    };
    Measurement {
        type_name: type_name.into(),
        occurrence_time_utc: t,
        ingestion_time_utc: Some(base_time() + chrono::Duration::seconds(7200 + arrival as i64)),
        device_id: format!("dev-{}", r.device).into(),
        patient_id: Some(format!("pat-{}", r.device).into()),
        encounter_id: None,
        correlation_id: None,
        properties: vec![MeasurementProperty {
            name: name.into(),
            value: r.value.to_string(),
        }],
    }
}

struct Server {
    base: String,
    store: fhir_store::Store,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server() -> Server {
    let store = fhir_store::Store::open_in_memory().expect("store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fhir_store::serve(listener, store.clone(), async move {
        let _ = rx.await;
    }));
    Server {
        base: format!("http://127.0.0.1:{port}/fhir/R4"),
        store,
        _stop: tx,
    }
}

fn writer(base: &str, templates: &Arc<FhirTemplates>) -> FhirWriter {
    FhirWriter::new(
        FhirClient::new(FhirClientConfig::new(base)).expect("client"),
        templates.clone(),
        WriterConfig {
            resolution: ResolutionMode::Create,
            ..Default::default()
        },
    )
}

/// Every resource of the types the writer touches, without what the server or the write time
/// sets.
fn snapshot(store: &fhir_store::Store) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ty in ["Observation", "Device", "Patient"] {
        let q = fhir_store::search::SearchQuery::parse(&[("_count".into(), "1000".into())])
            .expect("query");
        for mut r in store.search(ty, &q).expect("search").resources {
            if let Some(o) = r.as_object_mut() {
                o.remove("meta");
                o.remove("issued");
            }
            let id = format!("{ty}/{}", r["id"].as_str().unwrap_or_default());
            out.insert(id, r);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_pattern_of_flushes_ends_in_the_state_of_one_batch(
        readings in proptest::collection::vec(arb_reading(), 1..80),
        gaps in proptest::collection::vec(0u64..4_000, 80),
        flush_ms in 1u64..5_000,
        cap in 1usize..40,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (one, many, flushes) = rt.block_on(async {
            let (templates, errors) = FhirTemplates::load(MAPPING);
            assert!(errors.is_empty(), "{errors:?}");
            let templates = Arc::new(templates);
            let ms: Vec<(usize, Measurement)> = readings
                .iter()
                .enumerate()
                .map(|(i, r)| (i, measurement(r, i)))
                .collect();

            // One batch.
            let a = server().await;
            let report = writer(&a.base, &templates)
                .write_batch(ms.clone(), Some(base_time()))
                .await;
            assert!(report.errors.is_empty(), "{:?}", report.errors);

            // The streaming grouper; its flushes written one after another.
            let b = server().await;
            let w = writer(&b.base, &templates);
            let mut g = Grouper::new(GrouperConfig {
                flush_interval: Duration::from_millis(flush_ms),
                spread: Duration::from_millis(flush_ms / 4),
                max_pending: NonZeroUsize::new(cap).expect("nonzero"),
            });
            let mut now = Instant::now();
            let mut flushes = Vec::new();
            for ((i, m), gap) in ms.iter().cloned().zip(gaps.iter().cycle()) {
                now += Duration::from_millis(*gap);
                let due = g.expire(now);
                if !due.is_empty() {
                    flushes.push(due);
                }
                let interval = templates
                    .get(&m.type_name)
                    .map_or(PeriodInterval::Instant, |t| t.effective_interval());
                g.push(i, m, interval, now);
            }
            flushes.push(g.flush_all());
            let n = flushes.len();
            for f in flushes {
                let report = w.write_batch(f, Some(base_time())).await;
                assert!(report.errors.is_empty(), "{:?}", report.errors);
            }
            (snapshot(&a.store), snapshot(&b.store), n)
        });
        prop_assert!(flushes >= 1);
        prop_assert_eq!(one.len(), many.len());
        for (id, r) in &one {
            let Some(other) = many.get(id) else {
                return Err(TestCaseError::fail(format!("{id}: missing after the flushes")));
            };
            let (mut r, mut other) = (r.clone(), other.clone());
            if id.starts_with("Observation/") {
                prop_assert_eq!(&r["status"], "final");
                prop_assert!(other["status"] == "final" || other["status"] == "amended");
                r["status"] = Value::Null;
                other["status"] = Value::Null;
            }
            if r != other {
                return Err(TestCaseError::fail(format!(
                    "{id} differs:\none batch:   {r}\nflushes:     {other}"
                )));
            }
        }
    }
}
