//! Normalization throughput against the cost of merely parsing the same bytes.
//!
//! A deterministic corpus (seeded, built in code, no files) of realistic device messages
//! in five shapes — plain JSON (`JsonPathContent`), IoT Hub (`IotJsonPathContent`), IoT
//! Central exports (`IotCentralJsonPathContent`), batches of 10 readings
//! (`CalculatedContent`, JSONPath on `matchedToken`) and JMESPath-calculated messages
//! (`CalculatedContent`, custom functions) — is serialized to bytes up front. One
//! normalizer holds every template, as a deployment with one device mapping for all its
//! devices does, so each message is tested against every template.
//!
//! * `normalize/normalize`: `Normalizer::normalize` on every message;
//! * `normalize/parse_only`: `serde_json::from_slice::<Value>` on the same bytes;
//! * `per_shape/...`: the same two, one shape at a time.
//!
//! Run: `cargo bench -p normalizer --bench normalize`. `docs/PERFORMANCE.md` has figures.

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, FixedOffset, SecondsFormat, Utc};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use normalizer::{load_device_mapping, Normalizer};
use serde_json::{json, Map, Value};

/// Messages per shape; five shapes make the corpus.
const PER_SHAPE: usize = 2_000;

/// The device mapping: every template of every shape, in one collection.
const MAPPING: &str = r#"{
  "templateType": "CollectionContent",
  "template": [
    {"templateType": "JsonPathContent", "template": {
      "typeName": "heartrate", "typeMatchExpression": "$..[?(@heartrate)]",
      "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
      "patientIdExpression": "$.patientId",
      "values": [{"valueName": "hr", "valueExpression": "$.heartrate", "required": true}]}},
    {"templateType": "JsonPathContent", "template": {
      "typeName": "spo2", "typeMatchExpression": "$..[?(@spo2)]",
      "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
      "patientIdExpression": "$.patientId",
      "values": [{"valueName": "spo2", "valueExpression": "$.spo2", "required": true},
                 {"valueName": "perfusionIndex", "valueExpression": "$.perfusionIndex", "required": false}]}},
    {"templateType": "JsonPathContent", "template": {
      "typeName": "steps", "typeMatchExpression": "$..[?(@steps)]",
      "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
      "patientIdExpression": "$.patientId",
      "values": [{"valueName": "steps", "valueExpression": "$.steps", "required": true}]}},

    {"templateType": "IotJsonPathContent", "template": {
      "typeName": "hubHeartRate", "typeMatchExpression": "$..[?(@Body.heartRate)]",
      "patientIdExpression": "$.Body.patientId",
      "values": [{"valueName": "hr", "valueExpression": "$.Body.heartRate", "required": true}]}},
    {"templateType": "IotJsonPathContent", "template": {
      "typeName": "hubBloodPressure",
      "typeMatchExpression": "$..[?(@Body.bloodPressure.systolic && @Body.bloodPressure.diastolic)]",
      "patientIdExpression": "$.Body.patientId",
      "values": [{"valueName": "systolic", "valueExpression": "$.Body.bloodPressure.systolic", "required": true},
                 {"valueName": "diastolic", "valueExpression": "$.Body.bloodPressure.diastolic", "required": true}]}},

    {"templateType": "IotCentralJsonPathContent", "template": {
      "typeName": "centralHeartRate", "typeMatchExpression": "$..[?(@telemetry.HeartRate)]",
      "values": [{"valueName": "hr", "valueExpression": "$.telemetry.HeartRate", "required": true}]}},
    {"templateType": "IotCentralJsonPathContent", "template": {
      "typeName": "centralRespiratoryRate", "typeMatchExpression": "$..[?(@telemetry.RespiratoryRate)]",
      "values": [{"valueName": "rr", "valueExpression": "$.telemetry.RespiratoryRate", "required": true}]}},

    {"templateType": "CalculatedContent", "template": {
      "typeName": "batchPulse", "typeMatchExpression": "$..[?(@pulseRate)]",
      "deviceIdExpression": "$.Body.deviceId",
      "patientIdExpression": "$.Body.patientId",
      "timestampExpression": "$.matchedToken.timestamp",
      "values": [{"valueName": "pulse", "valueExpression": "$.matchedToken.pulseRate", "required": true},
                 {"valueName": "motion", "valueExpression": "$.matchedToken.motion", "required": false}]}},

    {"templateType": "CalculatedContent", "template": {
      "typeName": "scaleWeight", "defaultExpressionLanguage": "JmesPath",
      "typeMatchExpression": "to_array(@)[?Body.weightLbs]",
      "deviceIdExpression": "matchedToken.Body.deviceId",
      "patientIdExpression": "matchedToken.Body.user.id",
      "timestampExpression": "fromUnixTimestampMs(matchedToken.Body.tsMs)",
      "values": [{"valueName": "weightKg", "valueExpression": "multiply(matchedToken.Body.weightLbs, `0.45359237`)", "required": true},
                 {"valueName": "bmi", "valueExpression": "divide(multiply(matchedToken.Body.weightLbs, `0.45359237`), multiply(matchedToken.Body.user.heightM, matchedToken.Body.user.heightM))", "required": false}]}}
  ]
}"#;

/// SplitMix64: a tiny deterministic generator, so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }

    fn float(&mut self, lo: f64, hi: f64, decimals: i32) -> f64 {
        let x = lo + (self.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo);
        let p = 10f64.powi(decimals);
        (x * p).round() / p
    }
}

/// One event: the body bytes and the Event Hubs / IoT Hub metadata beside it.
struct Event {
    body: Vec<u8>,
    properties: Map<String, Value>,
    system_properties: Map<String, Value>,
}

#[derive(Clone, Copy)]
enum Shape {
    Plain,
    IotHub,
    IotCentral,
    Batch,
    Jmes,
}

const SHAPES: [(Shape, &str); 5] = [
    (Shape::Plain, "plain_json"),
    (Shape::IotHub, "iot_hub"),
    (Shape::IotCentral, "iot_central"),
    (Shape::Batch, "batch_of_10"),
    (Shape::Jmes, "jmespath"),
];

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Event Hubs' system properties, which every event carries.
fn event_hub_system(seq: usize, enqueued: DateTime<Utc>) -> Map<String, Value> {
    object(json!({
        "x-opt-sequence-number": seq,
        "x-opt-offset": (seq * 512).to_string(),
        "x-opt-enqueued-time": rfc3339(enqueued),
        "x-opt-partition-key": Value::Null,
    }))
}

fn message(shape: Shape, i: usize, rng: &mut Rng) -> Event {
    let start: DateTime<Utc> = "2024-03-01T08:00:00Z".parse().expect("a valid time");
    let t = start + Span::milliseconds(i as i64 * 1_250 + rng.range(0, 999));
    let enqueued = t + Span::milliseconds(rng.range(50, 2_000));
    let device = format!("device-{:05}", rng.range(0, 5_000));
    let patient = format!("patient-{:05}", rng.range(0, 5_000));
    let (body, properties, system_properties) = match shape {
        Shape::Plain => {
            let plus_one_hour = FixedOffset::east_opt(3600).expect("a valid offset");
            let mut m = object(json!({
                "deviceId": device,
                "patientId": patient,
                "endDate": t.with_timezone(&plus_one_hour).to_rfc3339(),
                "startDate": rfc3339(t - Span::seconds(60)),
                "source": {"name": "Contoso Watch", "version": "4.2.1", "os": "watchOS 10.3"},
            }));
            match i % 3 {
                0 => m.insert("heartrate".into(), json!(rng.range(48, 180))),
                1 => {
                    m.insert("perfusionIndex".into(), json!(rng.float(0.2, 20.0, 2)));
                    m.insert("spo2".into(), json!(rng.float(88.0, 100.0, 1)))
                }
                _ => m.insert("steps".into(), json!(rng.range(0, 2_500))),
            };
            (Value::Object(m), Map::new(), event_hub_system(i, enqueued))
        }
        Shape::IotHub => {
            let body = if i % 2 == 0 {
                json!({"heartRate": rng.range(48, 180), "patientId": patient, "battery": rng.range(5, 100), "firmware": "1.8.0"})
            } else {
                json!({"bloodPressure": {"systolic": rng.range(95, 170), "diastolic": rng.range(55, 110)},
                       "patientId": patient, "battery": rng.range(5, 100), "firmware": "1.8.0"})
            };
            let properties = object(
                json!({"iothub-creation-time-utc": rfc3339(t), "content-type": "application/json"}),
            );
            let mut system = event_hub_system(i, enqueued);
            system.insert("iothub-connection-device-id".into(), json!(device));
            system.insert(
                "iothub-connection-auth-method".into(),
                json!(r#"{"scope":"device","type":"sas","issuer":"iothub"}"#),
            );
            system.insert(
                "iothub-connection-auth-generation-id".into(),
                json!("638447120010000000"),
            );
            system.insert("iothub-enqueuedtime".into(), json!(rfc3339(enqueued)));
            system.insert("iothub-message-source".into(), json!("Telemetry"));
            (body, properties, system)
        }
        Shape::IotCentral => {
            let telemetry = if i % 2 == 0 {
                json!({"HeartRate": rng.range(48, 180), "Activity": "walking", "BodyTemperature": rng.float(35.5, 39.5, 1)})
            } else {
                json!({"RespiratoryRate": rng.range(8, 30), "Activity": "resting"})
            };
            let body = json!({
                "applicationId": "1dffa667-9bee-4f16-b243-25ad4151475e",
                "messageSource": "telemetry",
                "deviceId": device,
                "schema": "default@v1",
                "templateId": "urn:qugj6vbw5:___qbj_27r",
                "enqueuedTime": rfc3339(enqueued),
                "telemetry": telemetry,
                "enrichments": {"ward": "4B"},
                "messageProperties": {"messageProp": "value"},
            });
            (body, Map::new(), event_hub_system(i, enqueued))
        }
        Shape::Batch => {
            let readings: Vec<Value> = (0..10)
                .map(|k| {
                    json!({
                        "timestamp": rfc3339(t + Span::seconds(k * 6)),
                        "pulseRate": rng.range(48, 180),
                        "motion": rng.float(0.0, 3.0, 3),
                    })
                })
                .collect();
            let body = json!({"deviceId": device, "patientId": patient, "model": "Fabrikam Band 2", "batch": readings});
            (body, Map::new(), event_hub_system(i, enqueued))
        }
        Shape::Jmes => {
            let body = json!({
                "deviceId": device,
                "deviceType": "scale-b",
                "tsMs": t.timestamp_millis(),
                "weightLbs": rng.float(90.0, 330.0, 1),
                "user": {"id": patient, "heightM": rng.float(1.45, 2.05, 2)},
            });
            (body, Map::new(), event_hub_system(i, enqueued))
        }
    };
    Event {
        body: serde_json::to_vec(&body).expect("serializable"),
        properties,
        system_properties,
    }
}

/// The corpus, shape by shape: `PER_SHAPE` messages of each.
fn corpus() -> Vec<(&'static str, Vec<Event>)> {
    let mut rng = Rng(0x10_4d7f_2024);
    SHAPES
        .iter()
        .map(|&(shape, name)| {
            (
                name,
                (0..PER_SHAPE)
                    .map(|i| message(shape, i, &mut rng))
                    .collect(),
            )
        })
        .collect()
}

fn normalize_all(n: &Normalizer, events: &[&Event], ingestion: DateTime<Utc>) -> usize {
    let mut count = 0;
    for e in events {
        let r = n.normalize(
            &e.body,
            &e.properties,
            &e.system_properties,
            Some(ingestion),
        );
        count += black_box(r).map_or(0, |ms| ms.len());
    }
    count
}

fn parse_all(events: &[&Event]) -> usize {
    let mut count = 0;
    for e in events {
        let v: Result<Value, _> = serde_json::from_slice(&e.body);
        count += usize::from(black_box(v).is_ok());
    }
    count
}

fn bench_pair(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    suffix: &str,
    n: &Normalizer,
    events: &[&Event],
) {
    let ingestion: DateTime<Utc> = "2024-03-01T12:00:00Z".parse().expect("a valid time");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function(format!("normalize{suffix}"), |b| {
        b.iter(|| normalize_all(n, events, ingestion))
    });
    g.bench_function(format!("parse_only{suffix}"), |b| {
        b.iter(|| parse_all(events))
    });
}

fn benches(c: &mut Criterion) {
    let loaded = load_device_mapping(MAPPING);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let n = Normalizer::new(loaded.mapping);
    let shapes = corpus();

    // Every message normalizes without error; report what the corpus is.
    let mut total_bytes = 0;
    for (name, events) in &shapes {
        let mut measurements = 0;
        for e in events {
            let ms = n
                .normalize(&e.body, &e.properties, &e.system_properties, None)
                .unwrap_or_else(|err| {
                    panic!("{name}: {err}: {}", String::from_utf8_lossy(&e.body))
                });
            assert!(
                !ms.is_empty(),
                "{name}: no measurement from {}",
                String::from_utf8_lossy(&e.body)
            );
            measurements += ms.len();
        }
        let bytes: usize = events.iter().map(|e| e.body.len()).sum();
        total_bytes += bytes;
        eprintln!(
            "corpus {name}: {} messages, {measurements} measurements, {:.0} bytes/message",
            events.len(),
            bytes as f64 / events.len() as f64
        );
    }
    let all: Vec<&Event> = shapes
        .iter()
        .flat_map(|(_, events)| events.iter())
        .collect();
    eprintln!("corpus: {} messages, {total_bytes} bytes", all.len());

    let mut g = c.benchmark_group("normalize");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    bench_pair(&mut g, "", &n, &all);
    g.finish();

    let mut g = c.benchmark_group("per_shape");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for (name, events) in &shapes {
        let events: Vec<&Event> = events.iter().collect();
        bench_pair(&mut g, &format!("/{name}"), &n, &events);
    }
    g.finish();
}

criterion_group!(normalize, benches);
criterion_main!(normalize);
