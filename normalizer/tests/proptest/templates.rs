//! Template text and JSONPath expressions, assembled from random pieces, never panic the
//! loaders or the evaluator; paths below a member ignore the match.

use super::*;

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

pub(super) fn jsonpath_text() -> BoxedStrategy<String> {
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

pub(super) fn jmes_text() -> BoxedStrategy<String> {
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
