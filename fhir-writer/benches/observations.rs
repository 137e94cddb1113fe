//! Throughput of the pure mapping: observation groups → Observation JSON.
//!
//! `groups_to_observations`: 100 hourly heart-rate groups (60 readings each, 5 s SampledData
//! slots = 720 per Observation) plus 100 point-in-time SpO2 Quantity groups, built and
//! serialized to JSON. Throughput is reported per observation group.

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fhir_writer::{build_observation, observation_groups, FhirTemplates, ObservationIdentity};
use grouper::{group_measurements, ObservationGroup};
use normalizer::{Measurement, MeasurementProperty};

const MAPPING: &str = r#"{"templateType":"CollectionFhir","template":[
  {"templateType":"CodeValueFhir","template":{"typeName":"heartrate","periodInterval":60,
    "codes":[{"code":"8867-4","system":"http://loinc.org","display":"Heart rate"}],
    "value":{"valueType":"SampledData","valueName":"hr","defaultPeriod":5000,"unit":"/min"}}},
  {"templateType":"CodeValueFhir","template":{"typeName":"spo2","periodInterval":60,
    "codes":[{"code":"59408-5","system":"http://loinc.org"}],
    "value":{"valueType":"Quantity","valueName":"spo2","unit":"%","system":"http://unitsofmeasure.org","code":"%"}}}
]}"#;

fn measurements() -> Vec<(usize, Measurement)> {
    let start = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let mut out = Vec::new();
    for device in 0..100 {
        for i in 0..60 {
            out.push(Measurement {
                type_name: "heartrate".into(),
                occurrence_time_utc: start + Duration::seconds(i * 55),
                ingestion_time_utc: None,
                device_id: format!("device-{device}").into(),
                patient_id: Some(format!("patient-{device}").into()),
                encounter_id: None,
                correlation_id: None,
                properties: vec![MeasurementProperty {
                    name: "hr".into(),
                    value: (60 + i).to_string(),
                }],
            });
        }
        out.push(Measurement {
            type_name: "spo2".into(),
            occurrence_time_utc: start + Duration::seconds(30),
            ingestion_time_utc: None,
            device_id: format!("device-{device}").into(),
            patient_id: Some(format!("patient-{device}").into()),
            encounter_id: None,
            correlation_id: None,
            properties: vec![MeasurementProperty {
                name: "spo2".into(),
                value: "97.5".into(),
            }],
        });
    }
    out.into_iter().enumerate().collect()
}

fn bench(c: &mut Criterion) {
    let templates = FhirTemplates::parse(MAPPING).unwrap_or_default();
    let groups: Vec<ObservationGroup<usize>> = group_measurements(measurements())
        .iter()
        .filter_map(|g| {
            let t = templates.get(&g.key.type_name)?;
            observation_groups(t, g).ok()
        })
        .flatten()
        .collect();
    let mut bench_group = c.benchmark_group("fhir_writer");
    bench_group.throughput(Throughput::Elements(groups.len() as u64));
    bench_group.bench_function("groups_to_observation_json", |b| {
        b.iter_batched(
            || groups.clone(),
            |groups| {
                let mut bytes = 0;
                for og in &groups {
                    let Some(t) = templates.get(&og.key.type_name) else {
                        continue;
                    };
                    let identity = ObservationIdentity::logical(&og.key);
                    if let Ok(obs) = build_observation(t, og, &identity, None) {
                        bytes += serde_json::to_vec(&obs).map(|v| v.len()).unwrap_or(0);
                    }
                }
                bytes
            },
            BatchSize::SmallInput,
        )
    });
    bench_group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
