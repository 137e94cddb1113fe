//! The 88 reference normalization cases through the CLI (`iomt validate`,
//! `iomt normalize --input P --document`), read from `conformance/iomt-fhir`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use testkit::conformance as cases;

fn iomt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(args)
        .output()
        .expect("run iomt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn run_case(case: &Value, dir: &Path) -> cases::Outcome {
    let name = case["name"].as_str().unwrap_or("case");
    let template = dir.join(format!("{name}.template.json"));
    std::fs::write(&template, cases::template_text(case)).unwrap();
    let t = template.to_str().unwrap();

    let (code, stdout, stderr) = iomt(&["validate", "--device-mapping", t, "--format", "json"]);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name}: validate output is not JSON ({e}): {stdout} {stderr}"));
    let valid = report["valid"].as_bool().unwrap();
    assert_eq!(
        code == 0,
        valid,
        "{name}: exit code {code} disagrees with valid={valid}"
    );
    let template_errors: Vec<String> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();

    let result = cases::payload_path(case, dir).map(|payload| {
        let p = payload.to_str().unwrap();
        let mut args = vec![
            "normalize",
            "--device-mapping",
            t,
            "--input",
            p,
            "--document",
        ];
        if !valid {
            args.push("--skip-invalid-templates");
        }
        let (code, stdout, stderr) = iomt(&args);
        assert_eq!(code, 0, "{name}: normalize failed: {stderr}");
        let out: Value = serde_json::from_str(&stdout).unwrap();
        let errors = out["errors"].as_array().unwrap();
        let ms = out["measurements"].as_array().unwrap();
        for m in ms {
            assert_eq!(m["event"], 0, "{name}: every measurement names its event");
        }
        match errors.first() {
            Some(e) => {
                assert_eq!(e["event"], 0);
                Err(e.clone())
            }
            None => {
                if ms.is_empty() {
                    assert_eq!(
                        out["dropped"],
                        serde_json::json!([0]),
                        "{name}: an event with no measurement is listed as dropped"
                    );
                }
                Ok(ms.clone())
            }
        }
    });
    cases::Outcome {
        template_errors,
        result,
    }
}

#[test]
fn all_reference_cases_pass_through_the_cli() {
    let dir = scratch();
    let all = cases::cases();
    assert_eq!(all.len(), 88);
    let failures: Vec<String> = all
        .iter()
        .filter_map(|c| {
            cases::check(c, &run_case(c, dir.path()))
                .err()
                .map(|e| format!("{}: {e}", c["name"]))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} cases fail through the CLI:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_mapping_exits_1_with_every_error_located() {
    let dir = scratch();
    let t = cases::conformance_dir()
        .join("validation-tests/data_CollectionContentTemplateInvalid.json");
    let t = t.to_str().unwrap();
    let (code, stdout, _) = iomt(&["validate", "--device-mapping", t, "--format", "json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let errors = report["errors"].as_array().unwrap();
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    // As the reference's validator reports them: line 6 twice, then line 20.
    assert_eq!(lines, vec![6, 6, 20], "{errors:#?}");
    for e in errors {
        assert!(
            e["pointer"].as_str().unwrap().starts_with("/template/"),
            "{e}"
        );
        assert!(
            e["templateIndex"].is_u64() && e["templateType"].is_string(),
            "{e}"
        );
    }
    // Text output names file:line:column.
    let (code, stdout, _) = iomt(&["validate", "--device-mapping", t]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("data_CollectionContentTemplateInvalid.json:6:"),
        "{stdout}"
    );
    // Normalizing with an invalid mapping refuses (exit 1), naming the errors.
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, "{}").unwrap();
    let (code, _, stderr) = iomt(&[
        "normalize",
        "--device-mapping",
        t,
        "--input",
        payload.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Required property 'DeviceIdExpression' not found in JSON."),
        "{stderr}"
    );
}
