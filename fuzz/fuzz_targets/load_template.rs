//! Template text: whatever loads (the reference keeps the valid templates of a mapping
//! with errors) then normalizes a fixed set of sample events.
//!
//! `RUNS=1000000 bash fuzz/run load_template`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use normalizer::{envelope, load_content_template, load_device_mapping, Normalizer};
use serde_json::{json, Map, Value};

fn samples() -> &'static [Value] {
    static S: OnceLock<Vec<Value>> = OnceLock::new();
    S.get_or_init(|| {
        let body = json!([
            {"heartRate": 60, "deviceId": "d1", "endDate": "2020-01-01T00:00:00Z", "a": 4, "b": 2, "s": "ab", "ts": 1600000000},
            {"type": "spo2", "value": 97.5, "device id": "d2", "t": "2020-01-01T00:00:00+01:00", "readings": [1, 2]},
            {"telemetry": {"HeartRate": 70}, "deviceId": "c1", "enqueuedTime": "2020-01-01T00:00:00Z"}
        ]);
        let properties = match json!({"iothub-creation-time-utc": "2020-01-01T00:00:00Z"}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let system = match json!({"iothub-connection-device-id": "hub-device", "iothub-enqueuedtime": "2020-01-01T00:00:01Z"}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        vec![
            envelope(body.clone(), properties, system),
            json!({"deviceId": "c1", "enqueuedTime": "2020-01-01T00:00:00Z", "telemetry": {"HeartRate": 70}}),
            body,
            Value::Null,
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for loaded in [load_device_mapping(text), load_content_template(text)] {
        for e in &loaded.errors {
            let _ = e.to_string();
        }
        let n = Normalizer::new(loaded.mapping);
        for doc in samples() {
            if let Err(e) = n.normalize_document(doc, None) {
                let _ = e.to_string();
            }
        }
    }
});
