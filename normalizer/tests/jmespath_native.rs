//! Our JMESPath evaluator (`normalizer::jmespath_eval`) against the `jmespath` crate:
//! on every expression and document where the native evaluation gives a result, the crate
//! gives the same one (objects compared without regard to key order, which is the one
//! documented difference); where it gives up, the crate decides. And it must actually
//! cover the expressions device mappings use, or the speed it exists for is lost.

use std::collections::BTreeMap;

use normalizer::doc::Doc;
use normalizer::jmespath_eval::{eval, JmesValue};
use normalizer::jmespath_fallback::{self, JmesExpression};
use normalizer::jsonpath::{Envelope, Token};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Expressions of every kind the native evaluation covers, and some it leaves to the crate.
const EXPRESSIONS: &[&str] = &[
    "a",
    "a.b",
    "a.b.c",
    "Body.hr",
    "Body",
    "Properties",
    "SystemProperties.seq",
    "matchedToken.hr",
    "matchedToken",
    "@",
    "a[0]",
    "a[-1]",
    "a[1].b",
    "a[*].b",
    "a[].b",
    "a[]",
    "*.b",
    "a.*",
    "a[0:2]",
    "a[::-1]",
    "a[1:]",
    "a[:-1:2]",
    "a[::0]",
    "a || b",
    "a && b",
    "!a",
    "a == b",
    "a != b",
    "a < b",
    "a <= b",
    "a > b",
    "a >= b",
    "a == `1`",
    "a == 'x'",
    "a[?b > `1`]",
    "a[?b == 'x'].c",
    "a[?b && c]",
    "a[?!b]",
    "to_array(@)[?hr]",
    "to_array(Body)[?hr && hr > `60`]",
    "to_array(@.Body) | [? d && starts_with(d, 'dev')].data[]",
    "[a, b]",
    "{x: a, y: b, x: c}",
    "a | [0]",
    "`[1, 2, {\"k\": 3}]`",
    "`{\"z\": 1, \"a\": [true, null]}`",
    "'literal'",
    "to_number(a)",
    "to_number('12.5')",
    "to_string(a)",
    "to_string(@)",
    "length(a)",
    "length(@)",
    "not_null(x, a, b)",
    "abs(a)",
    "ceil(a)",
    "floor(b)",
    "contains(a, b)",
    "contains(a, `1`)",
    "starts_with(a, b)",
    "ends_with(a, 'x')",
    "type(a)",
    "type(@)",
    "add(a, b)",
    "subtract(a, `1`)",
    "multiply(a, `0.0254`)",
    "divide(a, b)",
    "pow(a, `2`)",
    "insertString(a, b, `1`)",
    "fromUnixTimestamp(a)",
    "fromUnixTimestampMs(a)",
    "fromUnixTimestampMs(ceil(multiply(a, `0.000001`)))",
    "a.b | [{\"v\":@,\"n\":`0`,\"s\":'zero'},{\"v\":@,\"n\":`1`,\"s\":'one'}][?v == n].s | @[0]",
    "sort_by(a, &b)",
    "keys(a)",
    "values(@)",
    "max(a)",
    "unknown_fn(a)",
];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d", "hr", "data", "x"]).prop_map(String::from)
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..100).prop_map(|n| json!(n)),
        (-1e3f64..1e3).prop_map(|f| json!(f)),
        Just(json!(1_626_799_080_000i64)),
        prop::sample::select(vec!["", "x", "dev-1", "12.5", "[1]", "\"q\"", "héllo"])
            .prop_map(|s| json!(s)),
    ]
}

fn doc() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((key(), doc()), 0..4).prop_map(|kv| kv.into_iter().collect())
}

/// JSON with object keys sorted, so that key order does not matter in comparisons.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        Value::Object(m) => {
            let sorted: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        other => other.clone(),
    }
}

fn compiled() -> Vec<(&'static str, JmesExpression)> {
    EXPRESSIONS
        .iter()
        .map(|e| {
            (
                *e,
                jmespath_fallback::compile(e).unwrap_or_else(|err| panic!("{e}: {err}")),
            )
        })
        .collect()
}

/// Compares both on one input; returns whether the native evaluation covered it.
fn agree(
    e: &str,
    x: &JmesExpression,
    native: &JmesValue<'_>,
    crate_input: &jmespath::Rcvar,
) -> bool {
    let expected = jmespath_fallback::search(x, crate_input)
        .map(|v| canonical(&jmespath_fallback::to_value(&v)))
        .map_err(|err| jmespath_fallback::error_message(&err));
    match eval(x.as_ast(), native) {
        Ok(r) => {
            let got = canonical(&r.to_value());
            assert_eq!(Ok(got), expected, "{e}: native and crate differ");
            true
        }
        Err(_) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn native_agrees_with_the_crate_on_values(v in doc()) {
        for (e, x) in compiled() {
            agree(e, &x, &JmesValue::Val(&Doc::from_value(&v)), &jmespath_fallback::to_variable(&v));
        }
    }

    #[test]
    fn native_agrees_with_the_crate_on_envelopes_and_roots(
        body in doc(), properties in object(), system in object(), matched in doc()
    ) {
        let (body_doc, properties_doc, system_doc, matched_doc) = (
            Doc::from_value(&body),
            Doc::from_map(&properties),
            Doc::from_map(&system),
            Doc::from_value(&matched),
        );
        let env = Envelope { body: &body_doc, properties: &properties_doc, system_properties: &system_doc };
        // The crate's input built from the `serde_json` values, not from the documents.
        let mut crate_env = std::collections::BTreeMap::new();
        crate_env.insert("Body".to_string(), jmespath_fallback::to_variable(&body));
        crate_env.insert("Properties".to_string(), jmespath_fallback::to_variable(&Value::Object(properties.clone())));
        crate_env.insert("SystemProperties".to_string(), jmespath_fallback::to_variable(&Value::Object(system.clone())));
        let crate_env = std::sync::Arc::new(jmespath::Variable::Object(crate_env));
        prop_assert_eq!(&crate_env, &jmespath_fallback::token_to_variable(Token::Envelope(&env)));
        let mut root = match &*crate_env {
            jmespath::Variable::Object(o) => o.clone(),
            _ => unreachable!("the envelope is an object"),
        };
        root.insert("matchedToken".into(), jmespath_fallback::to_variable(&matched));
        let crate_root = std::sync::Arc::new(jmespath::Variable::Object(root));
        for (e, x) in compiled() {
            agree(e, &x, &JmesValue::Env(&env), &crate_env);
            agree(e, &x, &JmesValue::Root(Token::Envelope(&env), Token::Value(&matched_doc)), &crate_root);
            agree(e, &x, &JmesValue::Val(&properties_doc), &jmespath_fallback::to_variable(&Value::Object(properties.clone())));
        }
    }
}

/// The native evaluation must cover what device mappings use, not give up on it.
#[test]
fn native_covers_what_templates_use() {
    let doc = json!({
        "Body": {"hr": 72, "d": "dev-1", "data": [{"hr": 60}, {"hr": 58}], "ts": 1625677200},
        "matchedToken": {"hr": 72, "heightInInches": 70, "tempF": 98.6, "value": [{"intVal": 1}, {"intVal": 2}]},
        "a": [{"b": 1, "c": "x"}, {"b": 2}],
    });
    for e in [
        "matchedToken.hr",
        "to_array(@)[?Body.hr]",
        "to_array(Body)[?hr && hr > `60`]",
        "to_array(@.Body) | [? d && starts_with(d, 'dev')].data[]",
        "multiply(matchedToken.heightInInches, `0.0254`)",
        "divide(multiply(subtract(matchedToken.tempF, `32`), `5`), `9`)",
        "fromUnixTimestamp(Body.ts)",
        "matchedToken.value[1].intVal | [{\"v\":@,\"n\":`1`,\"s\":'one'},{\"v\":@,\"n\":`2`,\"s\":'two'}][?v == n].s | @[0]",
        "a[?b > `1`].b",
        "length(a)",
    ] {
        let x = jmespath_fallback::compile(e).unwrap();
        assert!(
            agree(e, &x, &JmesValue::Val(&Doc::from_value(&doc)), &jmespath_fallback::to_variable(&doc)),
            "{e}: the native evaluation gave up"
        );
    }
    // And what it leaves to the crate: errors (exact messages) and expression references.
    for e in [
        "divide(Body.hr, `0`)",
        "sort_by(a, &b)",
        "add(Body.d, `1`)",
        "a[::0]",
    ] {
        let x = jmespath_fallback::compile(e).unwrap();
        assert!(
            eval(x.as_ast(), &JmesValue::Val(&Doc::from_value(&doc))).is_err(),
            "{e}"
        );
    }
}
