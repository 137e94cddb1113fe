//! The normalizer skips a template when a name its `typeMatchExpression` needs occurs
//! nowhere in the document: that must never change a result.

use super::templates::{jmes_text, jsonpath_text};
use super::*;

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
