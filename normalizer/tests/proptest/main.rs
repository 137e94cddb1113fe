//! Property tests: nothing a device or a template author can send panics the normalizer.
//!
//! Arbitrary JSON (deep nesting up to serde_json's 128-level limit and beyond, huge
//! numbers, odd Unicode, non-object roots), raw bytes that are not JSON at all, template
//! text and JSONPath expressions go through the public API; every call must return,
//! `Ok` or `Err`, without panicking. Case counts keep the whole file at a few seconds in
//! a debug build; raise `PROPTEST_CASES` to search longer.

mod doc_tree;
mod documents;
mod numbers;
mod required_names;
mod templates;

use std::sync::OnceLock;

use chrono::{TimeZone, Utc};
use normalizer::doc::Doc;
use normalizer::jsonpath::{Envelope, JsonPath, Scope, Token};
use normalizer::{load_content_template, load_device_mapping, ErrorType, Normalizer};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Mappings under test.

/// `JsonPathContent`: the legacy dialect, everything relative to the matched token.
const JSON_PATH: &str = r#"{"templateType": "CollectionContent", "template": [
  {"templateType": "JsonPathContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
    "patientIdExpression": "$.patient",
    "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true},
               {"valueName": "unit", "valueExpression": "$.unit", "required": false}]}},
  {"templateType": "JsonPathContentTemplate", "template": {
    "typeName": "spo2", "typeMatchExpression": "$..[?(@.type == 'spo2' && @.value >= 0 || @.kind =~ /^sp[o0]2$/i)]",
    "deviceIdExpression": "$['device id']", "timestampExpression": "$.t",
    "values": [{"valueName": "spo2", "valueExpression": "$.value", "required": "true"},
               {"valueName": "first", "valueExpression": "$.readings[0]"},
               {"valueName": "last", "valueExpression": "$.readings[-1:]"}]}},
  {"templateType": "JsonPathContent", "template": {
    "typeName": "steps", "typeMatchExpression": "$.Body[?(@.steps > 0)]",
    "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
    "values": [{"valueName": "steps", "valueExpression": "$.steps", "required": true}]}}
]}"#;

/// `IotJsonPathContent`: device id and time from the IoT Hub properties.
const IOT_HUB: &str = r#"{"templateType": "CollectionContent", "template": [
  {"templateType": "IotJsonPathContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@Body.heartRate)]",
    "patientIdExpression": "$.Body.patientId",
    "values": [{"valueName": "hr", "valueExpression": "$.Body.heartRate", "required": true}]}},
  {"templateType": "IotJsonPathContentTemplate", "template": {
    "typeName": "bp", "typeMatchExpression": "$..[?(@Body.bp.sys && @Body.bp.dia)]",
    "values": [{"valueName": "sys", "valueExpression": "$.Body.bp.sys", "required": true},
               {"valueName": "dia", "valueExpression": "$.Body.bp.dia", "required": true}]}}
]}"#;

/// `IotCentralJsonPathContent`: device id and time from the IoT Central export.
const IOT_CENTRAL: &str = r#"{"templateType": "CollectionContent", "template": [
  {"templateType": "IotCentralJsonPathContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@telemetry.HeartRate)]",
    "patientIdExpression": "$.deviceId",
    "values": [{"valueName": "hr", "valueExpression": "$.telemetry.HeartRate", "required": "true"}]}},
  {"templateType": "iotcentraljsonpathcontent", "template": {
    "typeName": "bp", "typeMatchExpression": "$..[?(@telemetry.BloodPressure.Systolic)]",
    "values": [{"valueName": "sys", "valueExpression": "$.telemetry.BloodPressure.Systolic", "required": true},
               {"valueName": "dia", "valueExpression": "$.telemetry.BloodPressure.Diastolic"}]}}
]}"#;

/// `CalculatedContent` with JSONPath: the document plus `matchedToken`.
const CALCULATED_JSON_PATH: &str = r#"{"templateType": "CollectionContent", "template": [
  {"templateType": "CalculatedContent", "template": {
    "typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    "deviceIdExpression": "$.matchedToken.deviceId",
    "timestampExpression": "$.matchedToken.endDate",
    "patientIdExpression": "$.Body.patient", "encounterIdExpression": "$.Properties.encounter",
    "correlationIdExpression": "$.matchedToken.session",
    "values": [{"valueName": "hr", "valueExpression": "$.matchedToken.heartRate", "required": true},
               {"valueName": "any", "valueExpression": "$.matchedToken.*"}]}},
  {"templateType": "CalculatedContent", "template": {
    "typeName": "readings", "typeMatchExpression": "$.Body.readings[*]",
    "deviceIdExpression": "$.Body.deviceId", "timestampExpression": "$.matchedToken.t",
    "values": [{"valueName": "v", "valueExpression": "$.matchedToken.v", "required": true},
               {"valueName": "root", "valueExpression": "$..matchedToken"}]}}
]}"#;

/// `CalculatedContent` with JMESPath and the custom functions.
const CALCULATED_JMES_PATH: &str = r#"{"templateType": "CollectionContent", "template": [
  {"templateType": "CalculatedContent", "template": {
    "typeName": "calc", "defaultExpressionLanguage": "JmesPath",
    "typeMatchExpression": "to_array(@.Body)[?a]",
    "deviceIdExpression": "matchedToken.deviceId",
    "timestampExpression": "fromUnixTimestamp(matchedToken.ts)",
    "patientIdExpression": "Body.patient",
    "values": [{"valueName": "div", "valueExpression": "divide(matchedToken.a, matchedToken.b)", "required": true},
               {"valueName": "pow", "valueExpression": "pow(matchedToken.a, matchedToken.b)"},
               {"valueName": "sum", "valueExpression": "add(matchedToken.a, `1e308`)"},
               {"valueName": "sub", "valueExpression": "subtract(matchedToken.a, matchedToken.b)"},
               {"valueName": "mul", "valueExpression": "multiply(to_number(matchedToken.s), `0.0254`)"},
               {"valueName": "ins", "valueExpression": "insertString(matchedToken.s, 'x', matchedToken.b)"},
               {"valueName": "ms", "valueExpression": "fromUnixTimestampMs(matchedToken.a)"},
               {"valueName": "mixed", "valueExpression": {"value": "$.matchedToken.s", "language": "JsonPath"}}]}},
  {"templateType": "CalculatedContent", "template": {
    "typeName": "projected",
    "typeMatchExpression": {"value": "Body.readings[].data[] ", "language": "JmesPath"},
    "deviceIdExpression": {"value": "Body.deviceId", "language": "JmesPath"},
    "timestampExpression": {"value": "fromUnixTimestampMs(matchedToken.ms)", "language": "JmesPath"},
    "values": [{"valueName": "v", "valueExpression": {"value": "matchedToken.v", "language": "JmesPath"}, "required": true}]}}
]}"#;

fn mappings() -> &'static [(&'static str, Normalizer)] {
    static M: OnceLock<Vec<(&'static str, Normalizer)>> = OnceLock::new();
    M.get_or_init(|| {
        let texts = [
            ("JsonPathContent", JSON_PATH),
            ("IotJsonPathContent", IOT_HUB),
            ("IotCentralJsonPathContent", IOT_CENTRAL),
            ("CalculatedContent/JSONPath", CALCULATED_JSON_PATH),
            ("CalculatedContent/JMESPath", CALCULATED_JMES_PATH),
        ];
        let mut all = Vec::new();
        let mut combined = Vec::new();
        for (name, text) in texts {
            let mapping = load_device_mapping(text)
                .into_result()
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            combined.extend(mapping.templates.iter().cloned());
            all.push((name, Normalizer::new(mapping)));
        }
        all.push((
            "combined",
            Normalizer::new(normalizer::DeviceMapping {
                templates: combined,
            }),
        ));
        all
    })
}

/// Feeds one event through every mapping, as bytes and (when it parses) as a document.
fn normalize_everywhere(body: &[u8], properties: &Map<String, Value>, system: &Map<String, Value>) {
    let ingestion = Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    for (_, n) in mappings() {
        let _ = n.normalize(body, properties, system, ingestion);
        let _ = n.normalize(body, &Map::new(), &Map::new(), None);
        if let Some(doc) = &parsed {
            let _ = n.normalize_document(doc, None);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strategies.

/// Keys the templates look for, so that arbitrary documents do match them.
const KEYS: &[&str] = &[
    "heartRate",
    "deviceId",
    "endDate",
    "patient",
    "session",
    "unit",
    "type",
    "value",
    "kind",
    "device id",
    "t",
    "readings",
    "steps",
    "Body",
    "Properties",
    "SystemProperties",
    "bp",
    "sys",
    "dia",
    "patientId",
    "telemetry",
    "HeartRate",
    "BloodPressure",
    "Systolic",
    "Diastolic",
    "enqueuedTime",
    "iothub-connection-device-id",
    "iothub-creation-time-utc",
    "iothub-enqueuedtime",
    "matchedToken",
    "a",
    "b",
    "s",
    "ts",
    "ms",
    "data",
    "v",
    "encounter",
    "",
];

fn key() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
        1 => odd_string(),
    ]
    .boxed()
}

/// Strings with the Unicode a JSON parser finds hard: NUL, controls, BOM, non-BMP,
/// right-to-left marks, combining characters, replacement characters, plus timestamps.
fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\u{feff}\\u{fffd}\\u{200f}\\u{0301}\\u{10ffff}\\u{1f600}a-z ]{0,12}",
        proptest::sample::select(vec![
            "2019-02-01T22:46:01+01:00",
            "2019-02-01T22:46:01.875Z",
            "2023-05-01 10:20:30",
            "2023-05-01",
            "+275760-09-13T00:00:00Z",
            "9999-12-31T23:59:59.9999999-14:00",
            "0000-01-01T00:00:00+14:00",
            "2019-02-30T00:00:00Z",
            "   ",
            "spo2",
            "SPO2",
            "\u{0}",
            "12",
            "-1e308",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        proptest::sample::select(vec![
            0.0,
            -0.0,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            1e15,
            1e-5,
            0.1,
            9.007_199_254_740_993e15,
        ])
        .prop_map(Value::from),
        (-3i64..3).prop_map(Value::from),
        (1_600_000_000i64..1_700_000_000).prop_map(Value::from),
        (1_600_000_000_000i64..1_700_000_000_000).prop_map(Value::from),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        odd_string().prop_map(Value::String),
    ]
    .boxed()
}

/// Arbitrary JSON, biased towards the keys the templates use.
fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A message that has the shape a template expects, with arbitrary field values.
fn shaped_message() -> BoxedStrategy<Value> {
    let field = || prop_oneof![3 => leaf(), 1 => json_value()];
    prop_oneof![
        (field(), field(), field(), field()).prop_map(|(hr, d, t, p)| json!({
            "heartRate": hr, "deviceId": d, "endDate": t, "patient": p, "session": "s1"
        })),
        (field(), field(), field()).prop_map(|(v, d, t)| json!({
            "type": "spo2", "value": v, "device id": d, "t": t, "readings": [v, d]
        })),
        (field(), field(), field(), field()).prop_map(|(a, b, s, ts)| json!({
            "a": a, "b": b, "s": s, "ts": ts, "deviceId": "d1"
        })),
        (field(), field()).prop_map(|(v, ms)| json!({
            "deviceId": "d2", "readings": [{"data": [{"v": v, "ms": ms}, {"v": 1, "ms": 1}]}, {"t": ms, "v": v}]
        })),
        (field(), field(), field()).prop_map(|(hr, sys, t)| json!({
            "deviceId": "c1", "enqueuedTime": t,
            "telemetry": {"HeartRate": hr, "BloodPressure": {"Systolic": sys, "Diastolic": hr}}
        })),
    ]
    .boxed()
}

/// Any root: objects, arrays, strings, numbers, null; shaped messages, alone or nested.
fn document_body() -> BoxedStrategy<Value> {
    prop_oneof![
        2 => json_value(),
        3 => shaped_message(),
        2 => prop::collection::vec(shaped_message(), 0..4).prop_map(Value::Array),
        1 => (json_value(), shaped_message()).prop_map(|(outer, m)| json!({"outer": outer, "inner": [m]})),
        1 => leaf(),
    ]
    .boxed()
}

fn properties() -> BoxedStrategy<Map<String, Value>> {
    prop_oneof![
        Just(Map::new()),
        (leaf(), leaf(), leaf()).prop_map(|(d, c, e)| {
            let mut m = Map::new();
            m.insert("iothub-connection-device-id".into(), d);
            m.insert("iothub-creation-time-utc".into(), c);
            m.insert("iothub-enqueuedtime".into(), e);
            m
        }),
        prop::collection::vec((key(), json_value()), 0..4).prop_map(|kv| kv.into_iter().collect()),
    ]
    .boxed()
}

/// `n` levels of nesting around a heart-rate message, as text.
fn nested_text(n: usize, object: bool) -> String {
    let inner =
        r#"{"heartRate": 60, "deviceId": "d", "session": "s", "endDate": "2020-01-01T00:00:00Z"}"#;
    if object {
        format!("{}{inner}{}", r#"{"a":"#.repeat(n), "}".repeat(n))
    } else {
        format!("{}{inner}{}", "[".repeat(n), "]".repeat(n))
    }
}

/// Bytes that are or are almost JSON: odd number and string literals, deep nesting,
/// truncations, invalid UTF-8.
fn raw_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::sample::select(vec![
            "1e308", "-1e308", "1e309", "123456789012345678901234567890", "-0", "0.0000000000000000000001",
            r#"{"heartRate": 123456789012345678901234567890, "deviceId": 1e308, "endDate": "2020-01-01T00:00:00Z"}"#,
            r#"{"heartRate": 1e309, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#,
            r#"{"heartRate": "\ud800", "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#,
            r#"{"heartRate": "\udc00\ud800", "deviceId": "\u0000", "endDate": "2020-01-01T00:00:00Z"}"#,
            r#"{"heartRate": "\ud83d\ude00", "deviceId": "\u0000\u0001", "endDate": "2020-01-01T00:00:00Z"}"#,
            r#"{"a": 1e308, "b": 1e-308, "s": "1e308", "ts": 1e308, "deviceId": "d"}"#,
            r#"{"a": 9223372036854775807, "b": -1, "s": "x", "ts": -9223372036854775808, "deviceId": "d"}"#,
            r#"{"a": 2, "b": 0, "s": "", "ts": 0, "deviceId": "d"}"#,
            r#"{"a": 10, "b": 400, "s": "ab", "ts": 1e20, "deviceId": "d"}"#,
            r#""\u0000""#, "null", "true", "[]", "{}", "\"\"", "", " ", "\u{feff}{}", "[1,]", "{\"a\":}", "nul",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        (100usize..200, any::<bool>()).prop_map(|(n, o)| nested_text(n, o).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        (document_body(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            let at = cut.index(s.len() + 1);
            s[..at].to_vec()
        }),
    ]
    .boxed()
}

/// `cases` per property, unless `PROPTEST_CASES` asks for a longer (or shorter) search.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        // No regression files next to the sources: found cases become named tests below.
        failure_persistence: None,
        ..Config::default()
    }
}
