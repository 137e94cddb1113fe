//! Event bodies against built-in device mappings: the first byte picks the mapping
//! (and whether the event carries IoT Hub properties), the rest is the body.
//!
//! `RUNS=1000000 bash fuzz/run normalize`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use normalizer::{load_device_mapping, Normalizer};
use serde_json::{json, Map, Value};

const MAPPINGS: [&str; 5] = [
    // JsonPathContent: everything relative to the matched token.
    r#"{"templateType": "CollectionContent", "template": [
      {"templateType": "JsonPathContent", "template": {
        "typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
        "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
        "patientIdExpression": "$.patientId",
        "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}},
      {"templateType": "JsonPathContent", "template": {
        "typeName": "spo2", "typeMatchExpression": "$..[?(@.type == 'spo2' && @.value >= 0 || @.kind =~ /^sp[o0]2$/i)]",
        "deviceIdExpression": "$['device id']", "timestampExpression": "$.t",
        "values": [{"valueName": "spo2", "valueExpression": "$.value", "required": true},
                   {"valueName": "last", "valueExpression": "$.readings[-1:]"}]}}]}"#,
    // IotJsonPathContent: device id and time from the IoT Hub properties.
    r#"{"templateType": "CollectionContent", "template": [
      {"templateType": "IotJsonPathContent", "template": {
        "typeName": "heartrate", "typeMatchExpression": "$..[?(@Body.heartRate)]",
        "patientIdExpression": "$.Body.patientId",
        "values": [{"valueName": "hr", "valueExpression": "$.Body.heartRate", "required": true}]}}]}"#,
    // IotCentralJsonPathContent.
    r#"{"templateType": "CollectionContent", "template": [
      {"templateType": "IotCentralJsonPathContent", "template": {
        "typeName": "heartrate", "typeMatchExpression": "$..[?(@telemetry.HeartRate)]",
        "values": [{"valueName": "hr", "valueExpression": "$.telemetry.HeartRate", "required": true}]}}]}"#,
    // CalculatedContent with JSONPath on the document plus matchedToken.
    r#"{"templateType": "CollectionContent", "template": [
      {"templateType": "CalculatedContent", "template": {
        "typeName": "readings", "typeMatchExpression": "$..[?(@v)]",
        "deviceIdExpression": "$.Body.deviceId", "timestampExpression": "$.matchedToken.t",
        "values": [{"valueName": "v", "valueExpression": "$.matchedToken.v", "required": true},
                   {"valueName": "any", "valueExpression": "$.matchedToken.*"}]}}]}"#,
    // CalculatedContent with JMESPath and the custom functions.
    r#"{"templateType": "CollectionContent", "template": [
      {"templateType": "CalculatedContent", "template": {
        "typeName": "calc", "defaultExpressionLanguage": "JmesPath",
        "typeMatchExpression": "to_array(@.Body)[?a]",
        "deviceIdExpression": "matchedToken.deviceId",
        "timestampExpression": "fromUnixTimestampMs(matchedToken.ts)",
        "values": [{"valueName": "div", "valueExpression": "divide(matchedToken.a, matchedToken.b)", "required": true},
                   {"valueName": "pow", "valueExpression": "pow(matchedToken.a, matchedToken.b)"},
                   {"valueName": "ins", "valueExpression": "insertString(matchedToken.s, 'x', matchedToken.b)"},
                   {"valueName": "t", "valueExpression": "fromUnixTimestamp(matchedToken.a)"}]}}]}"#,
];

fn normalizers() -> &'static [Normalizer] {
    static N: OnceLock<Vec<Normalizer>> = OnceLock::new();
    N.get_or_init(|| {
        MAPPINGS
            .iter()
            .map(|text| {
                let loaded = load_device_mapping(text);
                assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
                Normalizer::new(loaded.mapping)
            })
            .collect()
    })
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let all = normalizers();
    let n = &all[usize::from(selector) % all.len()];
    let (properties, system) = if selector & 0x80 != 0 {
        (
            object(json!({"iothub-creation-time-utc": "2024-01-01T00:00:00Z"})),
            object(
                json!({"iothub-connection-device-id": "hub-device", "iothub-enqueuedtime": "2024-01-01T00:00:01Z"}),
            ),
        )
    } else {
        (Map::new(), Map::new())
    };
    if let Err(e) = n.normalize(body, &properties, &system, None) {
        let _ = e.to_string();
    }
    if let Ok(doc) = serde_json::from_slice::<Value>(body) {
        let _ = n.normalize_document(&doc, None);
    }
});
