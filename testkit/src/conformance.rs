//! The reference's normalization cases (`conformance/iomt-fhir/cases.json`): reading them, and
//! checking one case against an outcome. Shared by the library test (`normalizer/tests`) and the
//! CLI test (`tests/cli_normalize.rs`).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The reference's conformance folder, `conformance/iomt-fhir` in the repository (or
/// `$IOMT_CONFORMANCE_DIR`).
pub fn conformance_dir() -> PathBuf {
    if let Ok(d) = std::env::var("IOMT_CONFORMANCE_DIR") {
        return PathBuf::from(d);
    }
    let dir = crate::workspace_root().join("conformance/iomt-fhir");
    assert!(
        dir.join("cases.json").is_file(),
        "{}/cases.json not found",
        dir.display()
    );
    dir
}

/// All cases.
pub fn cases() -> Vec<Value> {
    let text =
        std::fs::read_to_string(conformance_dir().join("cases.json")).expect("read cases.json");
    serde_json::from_str::<Vec<Value>>(&text).expect("parse cases.json")
}

/// The device template of a case as text (a file's bytes, or the inline object).
pub fn template_text(case: &Value) -> String {
    match &case["device_template"] {
        Value::String(p) => {
            std::fs::read_to_string(conformance_dir().join(p)).expect("read template")
        }
        other => other.to_string(),
    }
}

/// The payload document of a case, as a file path to hand to a CLI, or `None`.
pub fn payload_path(case: &Value, scratch: &Path) -> Option<PathBuf> {
    match &case["payload"] {
        Value::Null => None,
        Value::String(p) => Some(conformance_dir().join(p)),
        other => {
            let p = scratch.join(format!(
                "{}.payload.json",
                case["name"].as_str().unwrap_or("case")
            ));
            std::fs::write(&p, other.to_string()).expect("write payload");
            Some(p)
        }
    }
}

/// The payload document of a case.
pub fn payload(case: &Value) -> Option<Value> {
    match &case["payload"] {
        Value::Null => None,
        Value::String(p) => {
            let text = std::fs::read_to_string(conformance_dir().join(p)).expect("read payload");
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
            Some(serde_json::from_str(&text).expect("parse payload"))
        }
        other => Some(other.clone()),
    }
}

/// What running a case produced.
pub struct Outcome {
    /// Template load error messages.
    pub template_errors: Vec<String>,
    /// `None`: no payload. `Ok`: measurements as JSON. `Err`: the error record as JSON.
    pub result: Option<Result<Vec<Value>, Value>>,
}

fn instant(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
        .with_timezone(&chrono::Utc)
}

fn check_measurement(want: &Value, got: &Value) -> Result<(), String> {
    for key in [
        "type",
        "deviceId",
        "patientId",
        "encounterId",
        "correlationId",
    ] {
        if let Some(w) = want.get(key) {
            let g = got.get(key).unwrap_or(&Value::Null);
            if w != g {
                return Err(format!("{key}: want {w}, got {g}"));
            }
        }
    }
    if let Some(w) = want.get("occurrenceTimeUtc").and_then(Value::as_str) {
        let g = got["occurrenceTimeUtc"]
            .as_str()
            .ok_or("no occurrenceTimeUtc")?;
        if instant(w) != instant(g) {
            return Err(format!("occurrenceTimeUtc: want {w}, got {g}"));
        }
    }
    if let Some(w) = want
        .get("occurrenceTimeUtcToSecond")
        .and_then(Value::as_str)
    {
        let g = got["occurrenceTimeUtc"]
            .as_str()
            .ok_or("no occurrenceTimeUtc")?;
        let g = instant(g).format("%Y-%m-%dT%H:%M:%S").to_string();
        if w != g {
            return Err(format!(
                "occurrenceTimeUtc to the second: want {w}, got {g}"
            ));
        }
    }
    if let Some(w) = want.get("properties").and_then(Value::as_array) {
        let g = got["properties"].as_array().ok_or("no properties")?;
        if w.len() != g.len() {
            return Err(format!("properties: want {w:?}, got {g:?}"));
        }
        for (w, g) in w.iter().zip(g) {
            if w["name"] != g["name"] {
                return Err(format!(
                    "property name: want {}, got {}",
                    w["name"], g["name"]
                ));
            }
            if let Some(v) = w.get("value") {
                if v != &g["value"] {
                    return Err(format!(
                        "property {}: want {v}, got {}",
                        w["name"], g["value"]
                    ));
                }
            }
            if let Some(approx) = w.get("valueApprox").and_then(Value::as_f64) {
                let places = w["decimalPlaces"].as_i64().unwrap_or(4) as i32;
                let gv: f64 = g["value"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or("value is not a number")?;
                let scale = 10f64.powi(places);
                if (gv * scale).round() != (approx * scale).round() {
                    return Err(format!("property {}: want ≈{approx}, got {gv}", w["name"]));
                }
            }
        }
    }
    Ok(())
}

/// Checks an outcome against the case's `expect`.
pub fn check(case: &Value, outcome: &Outcome) -> Result<(), String> {
    let expect = &case["expect"];
    if let Some(valid) = expect.get("templateValid").and_then(Value::as_bool) {
        if valid != outcome.template_errors.is_empty() {
            return Err(format!(
                "templateValid: want {valid}, errors {:?}",
                outcome.template_errors
            ));
        }
    }
    if let Some(list) = expect
        .get("templateErrorsContain")
        .and_then(Value::as_array)
    {
        for s in list.iter().filter_map(Value::as_str) {
            if !outcome.template_errors.iter().any(|e| e.contains(s)) {
                return Err(format!(
                    "no template error contains {s:?}: {:?}",
                    outcome.template_errors
                ));
            }
        }
    }
    let Some(result) = &outcome.result else {
        if expect.get("measurements").is_some() || expect.get("error").is_some() {
            return Err("the case has a payload expectation but nothing ran".into());
        }
        return Ok(());
    };
    if let Some(err) = expect.get("error") {
        let got = match result {
            Ok(ms) => {
                return Err(format!(
                    "want error {err}, got {} measurements: {ms:?}",
                    ms.len()
                ))
            }
            Err(e) => e,
        };
        if err["type"] != got["type"] {
            return Err(format!(
                "error type: want {}, got {}",
                err["type"], got["type"]
            ));
        }
        let reason = got["reason"].as_str().unwrap_or_default();
        if let Some(m) = err.get("messageEquals").and_then(Value::as_str) {
            if reason != m {
                return Err(format!("error message: want {m:?}, got {reason:?}"));
            }
        }
        if let Some(m) = err.get("messageStartsWith").and_then(Value::as_str) {
            if !reason.starts_with(m) {
                return Err(format!("error message: want prefix {m:?}, got {reason:?}"));
            }
        }
        if let Some(m) = err.get("messageContains").and_then(Value::as_str) {
            if !reason.contains(m) {
                return Err(format!("error message: want {m:?} inside, got {reason:?}"));
            }
        }
        return Ok(());
    }
    let got = match result {
        Ok(ms) => ms,
        Err(e) => return Err(format!("unexpected error {e}")),
    };
    if let Some(want) = expect.get("measurements").and_then(Value::as_array) {
        if want.len() != got.len() {
            return Err(format!(
                "want {} measurements, got {}: {got:?}",
                want.len(),
                got.len()
            ));
        }
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            check_measurement(w, g).map_err(|e| format!("measurement {i}: {e}"))?;
        }
    }
    if let Some(n) = expect.get("measurementCount").and_then(Value::as_u64) {
        if n as usize != got.len() {
            return Err(format!("want {n} measurements, got {}", got.len()));
        }
    }
    if let Some(by) = expect.get("countByType").and_then(Value::as_object) {
        for (t, n) in by {
            let c = got.iter().filter(|m| m["type"] == t.as_str()).count();
            if Some(c as u64) != n.as_u64() {
                return Err(format!("type {t}: want {n}, got {c}"));
            }
        }
    }
    if let Some(first) = expect.get("firstOfType").and_then(Value::as_object) {
        for (t, w) in first {
            let g = got
                .iter()
                .find(|m| m["type"] == t.as_str())
                .ok_or(format!("no measurement of type {t}"))?;
            check_measurement(w, g).map_err(|e| format!("first {t}: {e}"))?;
        }
    }
    Ok(())
}
