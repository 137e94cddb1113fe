//! JSONPath in the dialect of Json.NET's `SelectToken`/`SelectTokens`, which is what
//! MedTech and IoMT FHIR Connector templates are written against.
//!
//! Supported (see `docs/TEMPLATES.md` for the full dialect description):
//! * `$` root (optional: `a.b` is read as `$.a.b`), `.name`, `['name']`, `["name"]`,
//!   `.['name']`, `['a','b']`, `.*`, `[*]`, `[0]`, `[0,2]`, `[start:end:step]`;
//! * recursive descent `..name`, `..*`, `..['a']`, `..[0]`;
//! * filters `[?(...)]` on the children of an array or object, and the Json.NET scan
//!   filter `..[?(...)]`, which tests the node itself and every descendant (so
//!   `$..[?(@heartrate)]` matches the root when it has `heartrate`);
//! * in filters: `@path` with or without a dot after `@` (`@x`, `@.x`, `@['x']`,
//!   `@Body.x`), `$path`, single- or double-quoted strings, numbers, `true`,
//!   `false`, `null`; `==`, `!=`, `<`, `<=`, `>`, `>=`, `&&`, `||`, parentheses;
//!   `=~ /pattern/flags` (flags `i`, `m`, `s`, `x`; Rust `regex` syntax, which lacks
//!   .NET's look-around and back-references).
//!   A path alone is an existence test (a `null` value exists).
//!
//! As in Json.NET, a negative index (`[-1]`) selects nothing (slices do take negative
//! bounds), a name on an array and an index on an object select nothing, and a
//! comparison between a string and a number compares their text.
//!
//! Why our own: no JSONPath crate speaks this dialect, and templates written for the reference
//! depend on its quirks (the scan filter that tests the node itself, `@x` without a dot, a
//! negative index that selects nothing, comparisons by text), so a standard (RFC 9535) engine
//! would match different tokens and silently change what existing device mappings produce.
//!
//! The modules: `ast` (the compiled form, and what it tells without a document), `parse`
//! (text → [`JsonPath`]), `eval` (selecting tokens from a [`Scope`]). The document types an
//! expression sees ([`Scope`], [`Token`], [`Envelope`]) live in [`crate::scope`], shared with
//! the JMESPath evaluators; they are re-exported here.

mod ast;
mod eval;
mod parse;

pub use crate::scope::{Envelope, Scope, Token};

use ast::Step;

/// A compiled JSONPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSONPath at character {position}: {message}")]
pub struct JsonPathError {
    /// Zero-based character offset in the expression.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::Doc;
    use serde_json::{json, Value};

    fn sel(path: &str, doc: &Value) -> Vec<Value> {
        let doc = Doc::from_value(doc);
        JsonPath::compile(path)
            .unwrap()
            .select(Scope::new(&doc))
            .into_iter()
            .map(|d| d.to_value())
            .collect()
    }

    #[test]
    fn scan_filter_matches_root_and_descendants() {
        let doc = json!({"heartrate": 1, "Body": [{"heartrate": 2}, {"x": {"heartrate": 3}}]});
        let r = sel("$..[?(@heartrate)]", &doc);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["heartrate"], 1);
        assert_eq!(r[2]["heartrate"], 3);
    }

    #[test]
    fn filters_and_comparisons() {
        let doc = json!({"Body": [
            {"type": "Heart Rate", "v": 60, "unit": "inches"},
            {"type": "Steps", "v": "7"},
            {"type": "Heart Rate", "v": 80.5}
        ]});
        assert_eq!(sel("$..[?(@.type=='Heart Rate')]", &doc).len(), 2);
        assert_eq!(sel("$..[?(@unit == 'inches')]", &doc).len(), 1);
        assert_eq!(sel("$.Body[?(@.v > 70)]", &doc).len(), 1);
        assert_eq!(
            sel("$.Body[?(@.v >= 60 && @.type != 'Steps')]", &doc).len(),
            2
        );
        assert_eq!(
            sel("$.Body[?(@.type == 'Steps' || @.v < 61)]", &doc).len(),
            2
        );
        assert_eq!(sel("$.Body[?((@.v == 60))]", &doc).len(), 1);
        assert_eq!(
            sel("$.Body[?(@.v == 80.5)].type", &doc),
            vec![json!("Heart Rate")]
        );
        assert_eq!(sel("$.Body[?(@.type =~ /^heart/i)]", &doc).len(), 2);
        assert_eq!(
            sel(
                "$..[?(@.type =~ /rate$/ && $.Body[0].unit == 'inches')]",
                &doc
            )
            .len(),
            0
        );
        assert_eq!(
            sel(
                "$..[?(@.type =~ /Rate$/ && $.Body[0].unit == 'inches')]",
                &doc
            )
            .len(),
            2
        );
    }

    #[test]
    fn names_indexes_slices_wildcards() {
        let doc =
            json!({"My Property": "x", "a-b": 1, "arr": [0, 1, 2, 3, 4], "o": {"p": {"q": 5}}});
        assert_eq!(sel("$.['My Property']", &doc), vec![json!("x")]);
        assert_eq!(sel("$['a-b']", &doc), vec![json!(1)]);
        assert_eq!(sel("$.a-b", &doc), vec![json!(1)]);
        assert_eq!(sel("$.arr[1]", &doc), vec![json!(1)]);
        assert_eq!(sel("$.arr[-1]", &doc), Vec::<Value>::new());
        assert_eq!(sel("$.arr[1,3]", &doc), vec![json!(1), json!(3)]);
        assert_eq!(sel("$.arr[1:3]", &doc), vec![json!(1), json!(2)]);
        assert_eq!(sel("$.arr[-2:]", &doc), vec![json!(3), json!(4)]);
        assert_eq!(sel("$.arr[::2]", &doc), vec![json!(0), json!(2), json!(4)]);
        assert_eq!(sel("$.arr[*]", &doc).len(), 5);
        assert_eq!(sel("$..q", &doc), vec![json!(5)]);
        assert_eq!(sel("$.o.*.q", &doc), vec![json!(5)]);
        assert_eq!(sel("o.p.q", &doc), vec![json!(5)]);
        assert_eq!(sel("$", &doc).len(), 1);
    }

    #[test]
    fn matched_token_scope() {
        let doc = json!({"Body": {"deviceId": "d1"}});
        let m = json!({"hr": 70});
        let (doc, m) = (Doc::from_value(&doc), Doc::from_value(&m));
        let p = JsonPath::compile("$.matchedToken.hr").unwrap();
        let r = p.select(Scope::with_match(&doc, &m));
        assert_eq!(r[0].to_value(), json!(70));
        let p = JsonPath::compile("$.Body.deviceId").unwrap();
        assert_eq!(
            p.select(Scope::with_match(&doc, &m))[0].to_value(),
            json!("d1")
        );
    }
}
