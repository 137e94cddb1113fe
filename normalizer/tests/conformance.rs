//! Every normalization case of the reference (`conformance/iomt-fhir/cases.json`,
//! read from that path) through the library.

use normalizer::{load_device_mapping, Normalizer};
use testkit::conformance::{self as cases, Outcome};

fn run(case: &serde_json::Value) -> Outcome {
    let loaded = load_device_mapping(&cases::template_text(case));
    let template_errors = loaded.errors.iter().map(|e| e.to_string()).collect();
    let normalizer = Normalizer::new(loaded.mapping);
    let result = cases::payload(case).map(|doc| {
        normalizer
            .normalize_document(&doc, None)
            .map(|ms| {
                ms.iter()
                    .map(|m| serde_json::to_value(m).unwrap())
                    .collect()
            })
            .map_err(|e| serde_json::to_value(&e).unwrap())
    });
    Outcome {
        template_errors,
        result,
    }
}

#[test]
fn all_reference_cases_pass() {
    let all = cases::cases();
    assert_eq!(
        all.len(),
        88,
        "cases.json should hold the 88 reference cases"
    );
    let mut failures = Vec::new();
    for case in &all {
        if let Err(e) = cases::check(case, &run(case)) {
            failures.push(format!("{}: {e}", case["name"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// The checker itself must reject wrong outcomes (guards against a vacuous pass).
#[test]
fn checker_rejects_wrong_outcomes() {
    let all = cases::cases();
    let mut rejected = 0;
    for case in &all {
        let mut o = run(case);
        match &mut o.result {
            Some(Ok(ms)) if !ms.is_empty() => {
                ms[0]["properties"] = serde_json::json!([{"name": "x", "value": "0"}]);
                ms[0]["deviceId"] = serde_json::json!("not-the-device");
            }
            Some(Ok(ms)) => ms.push(serde_json::json!({"type": "bogus"})),
            Some(Err(_)) => o.result = Some(Ok(vec![])),
            None => {
                o.template_errors = if o.template_errors.is_empty() {
                    vec!["bogus".into()]
                } else {
                    vec![]
                }
            }
        }
        assert!(
            cases::check(case, &o).is_err(),
            "{} accepted a wrong outcome",
            case["name"]
        );
        rejected += 1;
    }
    assert_eq!(rejected, 88);
}
