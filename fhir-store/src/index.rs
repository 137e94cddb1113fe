//! What of a resource goes into the side tables that searches use (pure; no I/O).

use serde_json::Value;

use crate::search::{date_range, parse_reference_string};

/// The index entries of one resource version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexEntries {
    /// (parameter, system or "", value).
    pub tokens: Vec<(&'static str, String, String)>,
    /// (parameter, target type, target id).
    pub references: Vec<(&'static str, String, String)>,
    /// The clinical date range in epoch ms (inclusive; open ends are `i64::MIN` / `i64::MAX`).
    pub date: Option<(i64, i64)>,
}

fn push_token(
    out: &mut Vec<(&'static str, String, String)>,
    param: &'static str,
    v: &Value,
    system_key: &str,
    value_key: &str,
) {
    if let Some(value) = v.get(value_key).and_then(Value::as_str) {
        let system = v
            .get(system_key)
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.push((param, system.to_string(), value.to_string()));
    }
}

fn items(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(_)) => vec![o],
        _ => Vec::new(),
    }
}

fn reference(v: Option<&Value>) -> Option<(String, String)> {
    let r = v?.get("reference")?.as_str()?;
    let t = parse_reference_string(r, false)?;
    Some((t.resource_type?, t.id))
}

fn period(p: &Value) -> Option<(i64, i64)> {
    let start = p.get("start").and_then(Value::as_str).and_then(date_range);
    let end = p.get("end").and_then(Value::as_str).and_then(date_range);
    match (start, end) {
        (None, None) => None,
        (s, e) => Some((
            s.map_or(i64::MIN, |(a, _)| a),
            e.map_or(i64::MAX, |(_, b)| b),
        )),
    }
}

/// The index entries of `resource` (of type `resource_type`).
pub(crate) fn entries(resource_type: &str, resource: &Value) -> IndexEntries {
    let mut out = IndexEntries::default();
    for i in items(resource.get("identifier")) {
        push_token(&mut out.tokens, "identifier", i, "system", "value");
    }
    if let Some(code) = resource.get("code") {
        for c in items(code.get("coding")) {
            push_token(&mut out.tokens, "code", c, "system", "code");
        }
    }
    out.tokens.sort();
    out.tokens.dedup();

    for (param, field) in [
        ("subject", "subject"),
        ("device", "device"),
        ("encounter", "encounter"),
        ("patient", "patient"),
    ] {
        if let Some((t, id)) = reference(resource.get(field)) {
            out.references.push((param, t, id));
        }
    }
    if let Some((t, id)) = reference(resource.get("subject")) {
        if t == "Patient" {
            out.references.push(("patient", t, id));
        }
    }
    out.references.sort();
    out.references.dedup();

    out.date = if let Some(d) = resource.get("effectiveDateTime").and_then(Value::as_str) {
        date_range(d)
    } else if let Some(d) = resource.get("effectiveInstant").and_then(Value::as_str) {
        date_range(d)
    } else if let Some(p) = resource.get("effectivePeriod") {
        period(p)
    } else if resource_type == "Encounter" {
        resource.get("period").and_then(period)
    } else {
        None
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn observation_entries() {
        let e = entries(
            "Observation",
            &json!({
                "resourceType": "Observation",
                "identifier": [{"system": "s", "value": "v"}, {"value": "w"}, {"system": "x"}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, {"code": 5}]},
                "subject": {"reference": "Patient/p1"},
                "device": {"reference": "http://h/fhir/Device/d1/_history/3"},
                "encounter": {"display": "no reference"},
                "effectivePeriod": {"start": "2024-03-01T10:00:00Z"}
            }),
        );
        assert_eq!(
            e.tokens,
            vec![
                ("code", "http://loinc.org".into(), "8867-4".into()),
                ("identifier", "".into(), "w".into()),
                ("identifier", "s".into(), "v".into()),
            ]
        );
        assert_eq!(
            e.references,
            vec![
                ("device", "Device".into(), "d1".into()),
                ("patient", "Patient".into(), "p1".into()),
                ("subject", "Patient".into(), "p1".into()),
            ]
        );
        let (start, end) = e.date.unwrap();
        assert_eq!(end, i64::MAX);
        assert_eq!(Some(start), date_range("2024-03-01T10:00:00Z").map(|r| r.0));
    }

    #[test]
    fn odd_shapes_index_nothing() {
        for v in [
            json!(null),
            json!([1, 2]),
            json!({"identifier": "x", "code": [1], "subject": "Patient/1", "effectiveDateTime": 5}),
        ] {
            assert_eq!(entries("Observation", &v), IndexEntries::default());
        }
    }
}
