//! The document tree (`Doc`) is what `serde_json::Value` is: parsed from the same bytes,
//! member names repeated and strings escaped included, and normalized the same.

use super::*;

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
