//! The local store's write rate: Observations created (`PUT` to their id) in one `batch` Bundle
//! of 250 entries (one SQLite transaction), against the same 250 written one `update` (one
//! transaction) each; a Bundle of 250 identifier searches (what the writer reads before
//! point-in-time writes); and a Bundle of 250 `If-Match` updates of existing Observations whose
//! value changed (what a streaming flush of SampledData windows sends). A file-backed store in WAL mode, as `iomt demo` and `iomt fhir-store`
//! open it; a fresh one per iteration (setup not timed).
//!
//! `cargo bench -p fhir-store --bench writes`; throughput is in Observations per second.

use chrono::Utc;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fhir_store::Store;
use serde_json::{json, Value};

const N: usize = 250;

fn observation(i: usize) -> Value {
    let identifier = format!(
        "patient-{}.device-{}.spo2.20260101080{:03}Z",
        i % 100,
        i % 100,
        i
    );
    json!({
        "resourceType": "Observation",
        "id": format!("obs-{i}"),
        "identifier": [{"system": "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/", "value": identifier}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}], "text": "spo2"},
        "subject": {"reference": format!("Patient/p{}", i % 100)},
        "device": {"reference": format!("Device/d{}", i % 100)},
        "effectivePeriod": {"start": "2026-01-01T08:00:00.0000000Z", "end": "2026-01-01T08:00:00.0000000Z"},
        "valueQuantity": {"value": 95 + (i % 5), "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    })
}

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path().join("bench.sqlite")).expect("open");
    (dir, store)
}

fn puts() -> Value {
    let entries: Vec<Value> = (0..N)
        .map(|i| {
            let o = observation(i);
            let url = format!("Observation/{}", o["id"].as_str().unwrap_or_default());
            json!({"resource": o, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

fn searches() -> Value {
    let entries: Vec<Value> = (0..N)
        .map(|i| {
            let o = observation(i);
            let token = format!(
                "{}|{}",
                o["identifier"][0]["system"].as_str().unwrap_or_default(),
                o["identifier"][0]["value"].as_str().unwrap_or_default()
            );
            let url = format!("Observation?identifier={}", token.replace('|', "%7C"));
            json!({"request": {"method": "GET", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("writes");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    let bundle = puts();
    g.bench_function("batch_bundle_250_creates", |b| {
        b.iter_batched(
            fresh,
            |(_dir, store)| {
                let r = store
                    .bundle(&bundle, "http://bench/fhir/R4", Utc::now())
                    .expect("bundle");
                assert_eq!(r["entry"][N - 1]["response"]["status"], "201 Created");
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("single_updates_250_creates", |b| {
        b.iter_batched(
            fresh,
            |(_dir, store)| {
                for i in 0..N {
                    let o = observation(i);
                    let id = o["id"].as_str().unwrap_or_default().to_string();
                    store
                        .update("Observation", &id, o, None, Utc::now())
                        .expect("update");
                }
            },
            BatchSize::PerIteration,
        )
    });
    let reads = searches();
    g.bench_function("batch_bundle_250_identifier_searches", |b| {
        b.iter_batched(
            || {
                let (dir, store) = fresh();
                store
                    .bundle(&bundle, "http://bench/fhir/R4", Utc::now())
                    .expect("fill");
                (dir, store)
            },
            |(_dir, store)| {
                let r = store
                    .bundle(&reads, "http://bench/fhir/R4", Utc::now())
                    .expect("bundle");
                assert_eq!(r["entry"][0]["resource"]["total"], 1);
            },
            BatchSize::PerIteration,
        )
    });
    let updates = if_match_updates();
    g.bench_function("batch_bundle_250_if_match_updates", |b| {
        b.iter_batched(
            || {
                let (dir, store) = fresh();
                store
                    .bundle(&bundle, "http://bench/fhir/R4", Utc::now())
                    .expect("fill");
                (dir, store)
            },
            |(_dir, store)| {
                let r = store
                    .bundle(&updates, "http://bench/fhir/R4", Utc::now())
                    .expect("bundle");
                assert_eq!(r["entry"][N - 1]["response"]["status"], "200 OK");
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Every Observation of [`puts`] again at version 1, with a new value.
fn if_match_updates() -> Value {
    let entries: Vec<Value> = (0..N)
        .map(|i| {
            let mut o = observation(i);
            o["valueQuantity"]["value"] = json!(90);
            o["status"] = json!("amended");
            let url = format!("Observation/{}", o["id"].as_str().unwrap_or_default());
            json!({"resource": o, "request": {"method": "PUT", "url": url, "ifMatch": "W/\"1\""}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

criterion_group!(benches, writes);
criterion_main!(benches);
