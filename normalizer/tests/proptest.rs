//! Property tests: nothing a device or a template author can send panics the normalizer.
//!
//! Arbitrary JSON (deep nesting up to serde_json's 128-level limit and beyond, huge
//! numbers, odd Unicode, non-object roots), raw bytes that are not JSON at all, template
//! text and JSONPath expressions go through the public API; every call must return,
//! `Ok` or `Err`, without panicking. Case counts keep the whole file at a few seconds in
//! a debug build; raise `PROPTEST_CASES` to search longer.

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

// ---------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_documents_never_panic(body in document_body(), props in properties(), sys in properties()) {
        normalize_everywhere(body.to_string().as_bytes(), &props, &sys);
        // The document as the templates see it, and every other root as a document.
        let doc = normalizer::envelope(body.clone(), props, sys);
        for (_, n) in mappings() {
            let _ = n.normalize_document(&doc, None);
            let _ = n.normalize_document(&body, None);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in raw_body(), props in properties()) {
        normalize_everywhere(&body, &props, &Map::new());
    }

    /// `normalize` reads the event's property maps in place (a virtual envelope); it must
    /// give exactly what the envelope built as a value gives.
    #[test]
    fn virtual_envelope_normalizes_as_the_built_one(body in document_body(), props in properties(), sys in properties()) {
        let bytes = body.to_string();
        let parsed: Value = serde_json::from_str(&bytes).expect("serialized JSON parses");
        let doc = normalizer::envelope(parsed, props.clone(), sys.clone());
        let ingestion = Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
        for (name, n) in mappings() {
            prop_assert_eq!(
                n.normalize(bytes.as_bytes(), &props, &sys, ingestion),
                n.normalize_document(&doc, ingestion),
                "{}", name
            );
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Documents built in memory are not limited by the parser: nest far past 128.
    #[test]
    fn deep_documents_never_panic(depth in 120usize..400, object in any::<bool>(), msg in shaped_message()) {
        let mut v = msg;
        for _ in 0..depth {
            v = if object { json!({"x": v}) } else { json!([v]) };
        }
        for (_, n) in mappings() {
            let _ = n.normalize_document(&v, None);
            let _ = n.normalize_document(&normalizer::envelope(v.clone(), Map::new(), Map::new()), None);
        }
    }
}

/// serde_json refuses more than 128 levels: that is an invalid event, not a panic.
#[test]
fn nesting_past_the_parser_limit_is_invalid_data_format() {
    for object in [false, true] {
        let ok = nested_text(100, object);
        let too_deep = nested_text(200, object);
        for (name, n) in mappings() {
            // 100 levels parse; what the templates make of them is another matter.
            let r = n.normalize(ok.as_bytes(), &Map::new(), &Map::new(), None);
            if let Err(e) = r {
                assert_ne!(
                    e.error_type,
                    ErrorType::InvalidDataFormatException,
                    "{name}: 100 levels: {e}"
                );
            }
            let e = n
                .normalize(too_deep.as_bytes(), &Map::new(), &Map::new(), None)
                .unwrap_err();
            assert_eq!(
                e.error_type,
                ErrorType::InvalidDataFormatException,
                "{name}: {e}"
            );
        }
    }
}

/// Huge numbers parse to doubles and render as .NET does; one past `f64::MAX` is invalid.
#[test]
fn huge_numbers() {
    let (_, n) = &mappings()[0];
    let body = br#"{"heartRate": 123456789012345678901234567890, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "1.2345678901234568E+29");
    let body = br#"{"heartRate": 1e308, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "1E+308");
    let body = br#"{"heartRate": 1e309, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let e = n
        .normalize(body, &Map::new(), &Map::new(), None)
        .unwrap_err();
    assert_eq!(e.error_type, ErrorType::InvalidDataFormatException);
}

/// NUL survives; a lone surrogate escape is rejected by the parser as invalid data.
#[test]
fn odd_unicode() {
    let (_, n) = &mappings()[0];
    let body = br#"{"heartRate": "\u0000", "deviceId": "\ud83d\ude00", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "\u{0}");
    assert_eq!(ms[0].device_id, "\u{1f600}".into());
    for lone in [r#""\ud800""#, r#""\udc00""#, r#""\ud800\u0041""#] {
        let body = format!(
            r#"{{"heartRate": {lone}, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}}"#
        );
        let e = n
            .normalize(body.as_bytes(), &Map::new(), &Map::new(), None)
            .unwrap_err();
        assert_eq!(
            e.error_type,
            ErrorType::InvalidDataFormatException,
            "{lone}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Template text.

/// JSONPath pieces; joined at random they make mostly-plausible, often-broken paths.
const JSONPATH_TOKENS: &[&str] = &[
    "$",
    "$",
    ".",
    "..",
    "*",
    "[",
    "]",
    "[*]",
    "[?(",
    ")]",
    "(",
    ")",
    "@",
    "@.",
    "$.",
    "'a'",
    "\"b\"",
    "'\\''",
    "a",
    "heartRate",
    "Body",
    "matchedToken",
    "deviceId",
    "0",
    "1",
    "-1",
    ":",
    "::",
    ",",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "=~",
    "/a.*/i",
    "/(/",
    "/x/q",
    "true",
    "false",
    "null",
    "1e308",
    "-0.5",
    " ",
    "\\",
    "'",
    "\u{0}",
    "\u{1f600}",
    "[0,1]",
    "[1::9223372036854775807]",
    "[::-9223372036854775808]",
    "[-9223372036854775808:]",
    "[?(@a)]",
    "..[?(@.a == 1)]",
];

fn jsonpath_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(proptest::sample::select(JSONPATH_TOKENS), 0..12).prop_map(|t| t.concat()),
        1 => any::<String>(),
        1 => "[$@.\\[\\]?()*'\"=!<>&|~/0-9:a-c -]{0,24}",
    ]
    .boxed()
}

/// JMESPath pieces, including the custom functions.
const JMES_TOKENS: &[&str] = &[
    "@",
    ".",
    "[",
    "]",
    "[]",
    "[?",
    "[*]",
    "|",
    "(",
    ")",
    ",",
    "`1`",
    "`0`",
    "`1e308`",
    "`-1`",
    "`\"x\"`",
    "'s'",
    "a",
    "b",
    "matchedToken",
    "Body",
    "to_array(",
    "divide(",
    "pow(",
    "add(",
    "subtract(",
    "multiply(",
    "insertString(",
    "fromUnixTimestamp(",
    "fromUnixTimestampMs(",
    "to_number(",
    "length(",
    "&&",
    "||",
    "==",
    "!",
    ":",
    "::",
    "-1",
    "0",
    "{",
    "}",
    "k:",
    "&",
    "`9223372036854775807`",
    "`-9223372036854775808`",
    "[::0]",
    "[::-1]",
    " ",
];

fn jmes_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::collection::vec(proptest::sample::select(JMES_TOKENS), 0..12).prop_map(|t| t.concat()),
        1 => any::<String>(),
    ]
    .boxed()
}

/// An expression field as a template may hold it: a string, an expression object, or junk.
fn expression(jmes_default: bool) -> BoxedStrategy<Value> {
    let text = if jmes_default {
        jmes_text().boxed()
    } else {
        jsonpath_text().boxed()
    };
    prop_oneof![
        4 => text.prop_map(Value::String),
        2 => (jmes_text(), proptest::sample::select(vec!["JmesPath", "jmespath", "JsonPath", "xpath"]))
            .prop_map(|(v, l)| json!({"value": v, "language": l})),
        1 => (jsonpath_text(), any::<bool>()).prop_map(|(v, b)| if b { json!({"value": v}) } else { json!({"value": v, "extra": 1}) }),
        1 => leaf(),
    ]
    .boxed()
}

fn template_type() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => proptest::sample::select(vec![
            "JsonPathContent", "JsonPathContentTemplate", "IotJsonPathContent", "IotJsonPathContentTemplate",
            "IotCentralJsonPathContent", "IotCentralJsonPathContentTemplate", "CalculatedContent",
            "CalculatedContentTemplate", "calculatedcontent", "CollectionContent", "Template", "",
        ])
        .prop_map(|s| Value::String(s.into())),
        1 => leaf(),
    ]
    .boxed()
}

fn value_entry(jmes: bool) -> BoxedStrategy<Value> {
    (
        key(),
        expression(jmes),
        prop_oneof![
            Just(json!(true)),
            Just(json!("true")),
            Just(json!("no")),
            leaf()
        ],
        any::<u8>(),
    )
        .prop_map(|(name, expr, required, drop)| {
            let mut m = Map::new();
            if drop % 5 != 0 {
                m.insert("valueName".into(), Value::String(name));
            }
            if drop % 7 != 0 {
                m.insert("valueExpression".into(), expr);
            }
            m.insert("required".into(), required);
            if drop == 255 {
                m.insert("unknownMember".into(), json!(1));
            }
            Value::Object(m)
        })
        .boxed()
}

/// One content template: the known members with arbitrary expressions, some missing,
/// some of the wrong type, sometimes an unknown member.
fn content_template() -> BoxedStrategy<Value> {
    (any::<bool>(), template_type())
        .prop_flat_map(|(jmes, ttype)| {
            (
                Just(jmes),
                Just(ttype),
                key(),
                expression(jmes),
                expression(jmes),
                expression(jmes),
                prop::option::of(expression(jmes)),
                prop::collection::vec(value_entry(jmes), 0..4),
                any::<u16>(),
            )
                .prop_map(|(jmes, ttype, name, tm, dev, ts, pat, values, mask)| {
                    let mut body = Map::new();
                    let mut put = |bit: u16, k: &str, v: Value| {
                        if mask & (1 << bit) == 0 {
                            body.insert(k.into(), v);
                        }
                    };
                    put(0, "typeName", Value::String(name));
                    put(1, "typeMatchExpression", tm);
                    put(2, "deviceIdExpression", dev);
                    put(3, "timestampExpression", ts);
                    if let Some(p) = pat {
                        put(4, "patientIdExpression", p);
                    }
                    put(5, "values", Value::Array(values));
                    if jmes {
                        put(6, "defaultExpressionLanguage", json!("JmesPath"));
                    }
                    if mask & (1 << 7) != 0 && mask & (1 << 8) != 0 {
                        body.insert("bogus".into(), json!(null));
                    }
                    let body = if mask & (1 << 9) != 0 && mask & (1 << 10) != 0 {
                        json!([body])
                    } else {
                        Value::Object(body)
                    };
                    json!({"templateType": ttype, "template": body})
                })
        })
        .boxed()
}

fn mapping_text() -> BoxedStrategy<String> {
    let collection = prop::collection::vec(content_template(), 0..4)
        .prop_map(|ts| json!({"templateType": "CollectionContent", "template": ts}));
    prop_oneof![
        // Structured, pretty or compact, possibly with a BOM.
        4 => (collection, any::<bool>(), any::<bool>()).prop_map(|(v, pretty, bom)| {
            let s = if pretty { serde_json::to_string_pretty(&v).unwrap_or_default() } else { v.to_string() };
            if bom { format!("\u{feff}{s}") } else { s }
        }),
        // A valid mapping with one edit: truncated, a character inserted or removed.
        2 => (proptest::sample::select(vec![JSON_PATH, IOT_HUB, IOT_CENTRAL, CALCULATED_JSON_PATH, CALCULATED_JMES_PATH]),
              any::<prop::sample::Index>(), any::<char>(), 0u8..3)
            .prop_map(|(text, at, c, op)| {
                let mut chars: Vec<char> = text.chars().collect();
                let i = at.index(chars.len());
                match op {
                    0 => chars.truncate(i),
                    1 => chars.insert(i, c),
                    _ => { chars.remove(i); }
                }
                chars.into_iter().collect()
            }),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => (0usize..300).prop_map(|n| format!("{}{}", "{\"template\": [".repeat(n), "]}".repeat(n))),
    ]
    .boxed()
}

/// A few events to run through whatever a fuzzed mapping loaded.
fn sample_documents() -> &'static [Value] {
    static D: OnceLock<Vec<Value>> = OnceLock::new();
    D.get_or_init(|| {
        let body = json!([
            {"heartRate": 60, "deviceId": "d1", "endDate": "2020-01-01T00:00:00Z", "a": 4, "b": 2, "s": "ab", "ts": 1600000000},
            {"type": "spo2", "value": 97, "device id": "d2", "t": "2020-01-01T00:00:00+01:00", "readings": [1, 2]},
        ]);
        let mut sys = Map::new();
        sys.insert("iothub-connection-device-id".into(), json!("hub-device"));
        sys.insert("iothub-enqueuedtime".into(), json!("2020-01-01T00:00:00Z"));
        vec![
            normalizer::envelope(body.clone(), Map::new(), sys),
            json!({"deviceId": "c1", "enqueuedTime": "2020-01-01T00:00:00Z", "telemetry": {"HeartRate": 70}}),
            body,
            json!(null),
        ]
    })
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn arbitrary_template_text_never_panics(text in mapping_text()) {
        for loaded in [load_device_mapping(&text), load_content_template(&text)] {
            for e in &loaded.errors {
                let _ = e.to_string();
            }
            let n = Normalizer::new(loaded.mapping);
            for doc in sample_documents() {
                if let Err(e) = n.normalize_document(doc, None) {
                    let _ = e.to_string();
                }
            }
            // The first sample is an envelope: the virtual one must give the same.
            if let Some(Value::Object(env)) = sample_documents().first() {
                let (body, props, sys) = (&env["Body"], &env["Properties"], &env["SystemProperties"]);
                if let (Some(props), Some(sys)) = (props.as_object(), sys.as_object()) {
                    prop_assert_eq!(
                        n.normalize(body.to_string().as_bytes(), props, sys, None),
                        n.normalize_document(&sample_documents()[0], None)
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn arbitrary_jsonpath_never_panics(path in jsonpath_text(), doc in json_value(), matched in json_value()) {
        if let Ok(p) = JsonPath::compile(&path) {
            let arr = json!([doc, [0, 1, 2, 3, 4], {"a": [1, 2, 3]}]);
            let (doc, matched, arr) = (Doc::from_value(&doc), Doc::from_value(&matched), Doc::from_value(&arr));
            let _ = p.select(Scope::new(&doc));
            let _ = p.select(Scope::with_match(&doc, &matched));
            let _ = p.select(Scope::new(&arr));
        }
    }

    /// A path that `reads_below_document_member` selects the same whatever the match is
    /// (the normalizer then evaluates it once for all matches of a document).
    #[test]
    fn paths_below_a_document_member_ignore_the_match(
        path in jsonpath_text(), doc in json_value(), m1 in json_value(), m2 in json_value()
    ) {
        if let Ok(p) = JsonPath::compile(&path) {
            if p.reads_below_document_member() {
                let (doc, m1, m2) = (Doc::from_value(&doc), Doc::from_value(&m1), Doc::from_value(&m2));
                let owned = |v: Vec<std::borrow::Cow<'_, Doc<'_>>>| v.into_iter().map(|c| c.to_value()).collect::<Vec<_>>();
                let with = |m: &Doc<'_>| owned(p.select(Scope::with_match(&doc, m)));
                prop_assert_eq!(with(&m1), with(&m2));
                prop_assert_eq!(with(&m1), with(&doc));
            }
        }
    }

    /// A path over the virtual envelope selects what it selects from the envelope built
    /// as a value, with and without `matchedToken`.
    #[test]
    fn jsonpath_sees_the_virtual_envelope_as_the_built_one(
        path in jsonpath_text(), body in json_value(), props in properties(), sys in properties(), matched in json_value()
    ) {
        if let Ok(p) = JsonPath::compile(&path) {
            let (body, props, sys, matched) =
                (Doc::from_value(&body), Doc::from_map(&props), Doc::from_map(&sys), Doc::from_value(&matched));
            let env = Envelope { body: &body, properties: &props, system_properties: &sys };
            let built = env.to_doc();
            let owned = |v: Vec<std::borrow::Cow<'_, Doc<'_>>>| v.into_iter().map(|c| c.to_value()).collect::<Vec<_>>();
            prop_assert_eq!(
                owned(p.select(Scope::of(Token::Envelope(&env)))),
                owned(p.select(Scope::new(&built)))
            );
            prop_assert_eq!(
                owned(p.select(Scope::of_match(Token::Envelope(&env), Token::Value(&matched)))),
                owned(p.select(Scope::with_match(&built, &matched)))
            );
            prop_assert_eq!(
                owned(p.select(Scope::of_match(Token::Value(&built), Token::Envelope(&env)))),
                owned(p.select(Scope::with_match(&built, &built)))
            );
            prop_assert_eq!(
                p.select_one(Scope::of(Token::Envelope(&env))).map(|o| o.map(|c| c.to_value())),
                p.select_one(Scope::new(&built)).map(|o| o.map(|c| c.to_value()))
            );
        }
    }
}

/// Regression: a slice step near `i64::MAX` overflowed the cursor (a panic in debug
/// builds, an out-of-bounds index in release).
#[test]
fn slice_with_huge_step() {
    let doc = json!({"a": [0, 1, 2, 3, 4]});
    let doc = Doc::from_value(&doc);
    for path in [
        "$.a[1::9223372036854775807]",
        "$.a[::9223372036854775807]",
        "$.a[3::-9223372036854775808]",
        "$.a[-9223372036854775808:9223372036854775807:9223372036854775807]",
        "$.a[9223372036854775807::-1]",
        "$.a[-9223372036854775808::-1]",
    ] {
        let p = JsonPath::compile(path).unwrap();
        let _ = p.select(Scope::new(&doc));
    }
    let p = JsonPath::compile("$.a[1::9223372036854775807]").unwrap();
    assert_eq!(p.select(Scope::new(&doc)).len(), 1);
}

// ---------------------------------------------------------------------------------------
// The normalizer skips a template when a name its `typeMatchExpression` needs occurs
// nowhere in the document: that must never change a result.

fn keys_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                keys_in(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys_in(x, out)),
        _ => {}
    }
}

/// A filter projection (or path) as type-match expressions are written, with predicates
/// the analysis understands and some it must leave alone.
fn jmes_type_match() -> BoxedStrategy<String> {
    let source = proptest::sample::select(vec![
        "@",
        "to_array(@)",
        "to_array(@.Body)",
        "Body",
        "Body.readings",
        "abs(@)",
        "*",
        "@.*",
        "Body[]",
        "to_array(@)[]",
    ]);
    let atom = proptest::sample::select(vec![
        "a",
        "Body.a",
        "b[0]",
        "a.b",
        "a > `1`",
        "`1` <= b",
        "a == 'x'",
        "a == `null`",
        "a != 'x'",
        "!a",
        "starts_with(a, 'x')",
        "to_number(b) > `0`",
        "a == b",
        "a > b",
        "@",
        "`true`",
        "Body",
        "readings[?v]",
        "length(a) > `0`",
        "a.b == `2`",
    ]);
    let pred = (
        atom.clone(),
        proptest::sample::select(vec!["", " && ", " || "]),
        atom,
    )
        .prop_map(|(x, op, y)| {
            if op.is_empty() {
                x.to_string()
            } else {
                format!("{x}{op}{y}")
            }
        });
    let tail = proptest::sample::select(vec!["", ".data[]", "[]", " | [0]", ".a", "[*].b", " | a"]);
    prop_oneof![
        (source.clone(), pred, tail.clone()).prop_map(|(s, p, t)| format!("{s}[?{p}]{t}")),
        (source, tail).prop_map(|(s, t)| format!("{s}{t}")),
        jmes_text(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn jsonpath_required_names_are_needed(path in jsonpath_text(), doc in json_value()) {
        if let Ok(p) = JsonPath::compile(&path) {
            let mut keys = Vec::new();
            keys_in(&doc, &mut keys);
            if p.required_names().iter().any(|n| !keys.iter().any(|k| k == n)) {
                prop_assert!(p.select(Scope::new(&Doc::from_value(&doc))).is_empty(), "{path} selected from {doc}");
            }
        }
    }

    #[test]
    fn jmespath_required_names_are_needed(text in jmes_type_match(), doc in json_value()) {
        if let Ok(e) = normalizer::jmespath_fallback::compile(&text) {
            let mut keys = Vec::new();
            keys_in(&doc, &mut keys);
            let names = normalizer::jmespath_fallback::required_names(&e);
            if names.iter().any(|n| !keys.iter().any(|k| k == n)) {
                let r = normalizer::jmespath_fallback::search(&e, &normalizer::jmespath_fallback::to_variable(&doc));
                let nothing = match &r {
                    Ok(v) => v.is_null() || v.as_array().is_some_and(|a| a.iter().all(|x| x.is_null())),
                    Err(_) => false,
                };
                prop_assert!(nothing, "{text} needs {names:?}, yet on {doc} gives {r:?}");
            }
        }
    }
}

/// .NET's `double.ToString()` as the normalizer first wrote it: shortest round-trip
/// digits from `{:e}`, placed by hand. The fast path must agree with it everywhere.
fn reference_format_double(x: f64) -> String {
    let e = format!("{x:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (-4..15).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{sign}{digits}{}", "0".repeat((int_len - n) as usize))
            } else {
                let (a, b) = digits.split_at(int_len as usize);
                format!("{sign}{a}.{b}")
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}E{esign}{:02}", exp.abs())
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn format_double_matches_the_reference(
        x in prop_oneof![
            any::<f64>().prop_filter("finite, non-zero", |x| x.is_finite() && *x != 0.0),
            (-1e16f64..1e16),
            (-1e-3f64..1e-3),
            // Readings with a few decimals, which take `format_double`'s short path.
            (-10_000_000_000i64..10_000_000_000, 0i32..10).prop_map(|(m, k)| m as f64 / 10f64.powi(k)),
            proptest::sample::select(vec![1e-4, -1e-4, 9.999999999999999e-5, 1e15, 999999999999999.9, 1e15 - 0.125, 0.1, 100.0]),
        ]
    ) {
        prop_assert_eq!(normalizer::value::format_double(x), reference_format_double(x));
    }
}

// ---------------------------------------------------------------------------------------
// The document tree (`Doc`) is what `serde_json::Value` is: parsed from the same bytes,
// member names repeated and strings escaped included, and normalized the same.

/// JSON text as a tree: strings and names written plainly or with every character
/// escaped, objects that may repeat a name (and large ones that outgrow the linear check).
#[derive(Debug, Clone)]
enum Text {
    Leaf(Value),
    Str(String, bool),
    Arr(Vec<Text>),
    Obj(Vec<((String, bool), Text)>),
}

fn quoted(s: &str, escaped: bool, out: &mut String) {
    if escaped {
        out.push('"');
        for u in s.encode_utf16() {
            out.push_str(&format!("\\u{u:04x}"));
        }
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string serializes"));
    }
}

fn render(t: &Text, out: &mut String) {
    match t {
        Text::Leaf(v) => out.push_str(&v.to_string()),
        Text::Str(s, escaped) => quoted(s, *escaped, out),
        Text::Arr(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(x, out);
            }
            out.push(']');
        }
        Text::Obj(members) => {
            out.push('{');
            for (i, ((k, escaped), x)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quoted(k, *escaped, out);
                out.push(':');
                render(x, out);
            }
            out.push('}');
        }
    }
}

fn text_tree() -> BoxedStrategy<Text> {
    prop_oneof![
        2 => leaf().prop_map(Text::Leaf),
        1 => (odd_string(), any::<bool>()).prop_map(|(s, e)| Text::Str(s, e)),
    ]
    .prop_recursive(5, 160, 40, |inner| {
        prop_oneof![
            3 => prop::collection::vec(inner.clone(), 0..6).prop_map(Text::Arr),
            4 => prop::collection::vec(((key(), any::<bool>()), inner.clone()), 0..8).prop_map(Text::Obj),
            1 => prop::collection::vec((((0u8..48).prop_map(|n| format!("k{n}")), any::<bool>()), inner), 30..70)
                .prop_map(Text::Obj),
        ]
    })
    .boxed()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn doc_parses_as_value_does(tree in text_tree(), props in properties(), sys in properties()) {
        let mut text = String::new();
        render(&tree, &mut text);
        let bytes = text.as_bytes();
        let value = serde_json::from_slice::<Value>(bytes);
        let doc = serde_json::from_slice::<Doc<'_>>(bytes);
        match (&value, &doc) {
            (Ok(v), Ok(d)) => {
                prop_assert_eq!(d, &Doc::from_value(v));
                prop_assert_eq!(&d.to_value(), v);
                prop_assert_eq!(d.to_string(), v.to_string());
            }
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "{text}: {value:?} but {doc:?}"),
        }
        if let Ok(v) = value {
            let envelope = normalizer::envelope(v.clone(), props.clone(), sys.clone());
            let ingestion = Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
            for (name, n) in mappings() {
                prop_assert_eq!(
                    n.normalize(bytes, &props, &sys, ingestion),
                    n.normalize_document(&envelope, ingestion),
                    "{}", name
                );
                let _ = n.normalize_document(&v, ingestion);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Bytes that are not quite JSON fail as `Doc` exactly as they fail as `Value` (the
    /// same deserializer), and parse to the same document when they do parse.
    #[test]
    fn doc_rejects_what_value_rejects(body in raw_body()) {
        let value = serde_json::from_slice::<Value>(&body);
        let doc = serde_json::from_slice::<Doc<'_>>(&body);
        match (&value, &doc) {
            (Ok(v), Ok(d)) => prop_assert_eq!(d, &Doc::from_value(v)),
            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
            _ => prop_assert!(false, "{value:?} but {doc:?}"),
        }
    }
}
