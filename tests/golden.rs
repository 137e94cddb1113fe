//! Golden tests: for every template set in `templates/` (device mapping + FHIR mapping +
//! events), `iomt map` prints exactly the committed `expected.json`. A new set needs no new
//! Rust. After a deliberate change, regenerate with `UPDATE_GOLDENS=1 cargo test golden` and
//! review the diff.

use std::path::Path;

use serde_json::Value;

fn map(set: &Path) -> Value {
    let out = testkit::set_command(
        env!("CARGO_BIN_EXE_iomt"),
        "map",
        set,
        Some(&set.join("events.json")),
    )
    .output()
    .expect("run iomt map");
    assert!(
        out.status.success(),
        "{}: {}",
        set.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("map prints JSON")
}

#[test]
fn every_template_set_maps_to_its_golden_output() {
    let sets = testkit::template_sets();
    assert!(
        sets.len() >= 5,
        "expected at least five template sets, found {sets:?}"
    );
    let update = std::env::var_os("UPDATE_GOLDENS").is_some();
    let mut failures = Vec::new();
    for set in &sets {
        let got = map(set);
        let path = set.join("expected.json");
        if update {
            std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
            continue;
        }
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        if got != want {
            failures.push(format!(
                "{}: `iomt map` output differs from expected.json:\n{}",
                set.display(),
                first_difference(&want, &got, String::new())
            ));
        }
        // Every set must produce Observations, each with the reference's identifier and id.
        let obs = got["observations"].as_array().unwrap();
        assert!(!obs.is_empty(), "{}: no Observation", set.display());
        for o in obs {
            assert_eq!(o["identifier"][0]["system"], fhir_writer::SERVICE_SYSTEM);
            let value = o["identifier"][0]["value"].as_str().unwrap();
            assert_eq!(
                o["id"].as_str().unwrap(),
                fhir_writer::logical_id(fhir_writer::SERVICE_SYSTEM, value)
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn first_difference(want: &Value, got: &Value, at: String) -> String {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys().chain(b.keys()) {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                if x != y {
                    return first_difference(x, y, format!("{at}/{k}"));
                }
            }
            format!("{at}: objects differ")
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, format!("{at}/{i}"));
                }
            }
            format!("{at}: arrays differ")
        }
        _ => format!("at {at}: want {want}, got {got}"),
    }
}
