//! Conformance with the open-source reference: `fhir_cases.json` and every FHIR mapping in the
//! repository's conformance corpus, with the validity its README states.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use fhir_writer::sampled::{build_sampled_data, merge_time_values};
use fhir_writer::{map_batch, CodeValueFhirTemplate, FhirTemplates, TemplateError};
use grouper::{group_measurements, TimeValue, Window};
use normalizer::{Measurement, MeasurementProperty};
use serde_json::Value;

/// The repository's `conformance/` folder, or the parent of `$IOMT_CONFORMANCE_DIR`.
fn shared() -> PathBuf {
    if let Ok(d) = std::env::var("IOMT_CONFORMANCE_DIR") {
        return Path::new(&d).join("..");
    }
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance")).to_path_buf()
}

fn iomt(path: &str) -> PathBuf {
    shared().join("iomt-fhir").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time string"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

fn time_values(list: &Value, start: Option<DateTime<Utc>>) -> Vec<TimeValue> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|v| {
            let t = match (v.get("time"), v.get("offsetMs"), start) {
                (Some(t), _, _) => time(t),
                (None, Some(ms), Some(s)) => s + Duration::milliseconds(ms.as_i64().expect("ms")),
                _ => panic!("value without time: {v}"),
            };
            TimeValue {
                time: t,
                value: v["value"].as_str().expect("value").to_string(),
            }
        })
        .collect()
}

fn pascal_measurement(v: &Value) -> Measurement {
    let opt = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(std::sync::Arc::<str>::from)
    };
    Measurement {
        type_name: v["Type"].as_str().expect("Type").to_string().into(),
        occurrence_time_utc: time(&v["OccurrenceTimeUtc"]),
        ingestion_time_utc: v.get("IngestionTimeUtc").filter(|t| !t.is_null()).map(time),
        device_id: v["DeviceId"].as_str().expect("DeviceId").to_string().into(),
        patient_id: opt("PatientId"),
        encounter_id: opt("EncounterId"),
        correlation_id: opt("CorrelationId"),
        properties: v["Properties"]
            .as_array()
            .expect("Properties")
            .iter()
            .map(|p| MeasurementProperty {
                name: p["Name"].as_str().expect("Name").to_string().into(),
                value: p["Value"].as_str().expect("Value").to_string(),
            })
            .collect(),
    }
}

#[test]
fn fhir_cases_all_pass() {
    let cases: Value = serde_json::from_str(&read(&iomt("fhir_cases.json"))).expect("json");
    let cases = cases.as_array().expect("array");
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let input = &case["input"];
        let expect = &case["expect"];
        match case["operation"].as_str().expect("operation") {
            "build_sampled_data" => {
                let start = time(&input["start"]);
                let end = time(&input["end"]);
                let values = time_values(&input["values"], Some(start));
                let period = input["periodMs"].as_f64().expect("periodMs");
                let data = build_sampled_data(&values, start, end, period);
                assert_eq!(data, expect["data"].as_str().expect("data"), "{name}");
            }
            "merge_time_values" => {
                let merged = merge_time_values(
                    &time_values(&input["existing"], None),
                    &time_values(&input["incoming"], None),
                );
                assert_eq!(merged, time_values(&expect["merged"], None), "{name}");
            }
            "time_period_id_segment" => {
                let w = Window {
                    start: time(&input["start"]),
                    end: time(&input["end"]),
                };
                assert_eq!(
                    w.id_segment(),
                    expect["segment"].as_str().expect("segment"),
                    "{name}"
                );
            }
            "group_measurements" => {
                let ms: Vec<(usize, Measurement)> = input["measurements"]
                    .as_array()
                    .expect("measurements")
                    .iter()
                    .map(pascal_measurement)
                    .enumerate()
                    .collect();
                let groups = group_measurements(ms);
                assert_eq!(
                    groups.len() as u64,
                    expect["groups"].as_u64().expect("groups"),
                    "{name}"
                );
                let data: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = groups[0]
                    .entries
                    .iter()
                    .map(|e| {
                        (
                            e.measurement.occurrence_time_utc,
                            e.measurement.ingestion_time_utc,
                        )
                    })
                    .collect();
                let want: Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> = expect["groupData"]
                    .as_array()
                    .expect("groupData")
                    .iter()
                    .map(|d| {
                        (
                            time(&d["OccurrenceTimeUtc"]),
                            Some(time(&d["IngestionTimeUtc"])),
                        )
                    })
                    .collect();
                assert_eq!(data, want, "{name}");
            }
            other => panic!("unknown operation {other} in {name}"),
        }
    }
}

fn messages(errors: &[TemplateError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

fn assert_collection_valid(path: &Path) -> FhirTemplates {
    let (t, errors) = FhirTemplates::load(&read(path));
    assert!(
        errors.is_empty(),
        "{}: {}",
        path.display(),
        messages(&errors)
    );
    t
}

fn assert_single_valid(path: &Path) {
    let (t, errors) = CodeValueFhirTemplate::load(&read(path));
    assert!(
        errors.is_empty() && t.is_some(),
        "{}: {}",
        path.display(),
        messages(&errors)
    );
}

fn collection_errors(path: &Path) -> (FhirTemplates, String) {
    let (t, errors) = FhirTemplates::load(&read(path));
    assert!(!errors.is_empty(), "{} should be invalid", path.display());
    for e in &errors {
        assert!(e.location().line >= 1, "{e}");
    }
    (t, messages(&errors))
}

#[test]
fn template_tests_code_value_containers() {
    for f in [
        "data_CodeValueFhirTemplate_SampledData.json",
        "data_CodeValueFhirTemplate_Components.json",
        "data_CodeValueFhirTemplate_Quantity.json",
        "data_CodeValueFhirTemplate_String.json",
        "data_CodeValueFhirTemplate_CodeableConceptData.json",
        "data_CodeValueFhirTemplate_CodeableConceptAndStringComponent.json",
    ] {
        assert_single_valid(&iomt("template-tests").join(f));
    }
    let (_, errors) = CodeValueFhirTemplate::load(&read(&iomt(
        "template-tests/data_CodeValueFhirTemplateInvalid_MissingFields.json",
    )));
    assert!(
        messages(&errors).contains("\"typeName\""),
        "{}",
        messages(&errors)
    );
    // This file starts with a UTF-8 BOM.
    let (_, errors) = CodeValueFhirTemplate::load(&read(&iomt(
        "template-tests/data_CodeValueFhirTemplateInvalid_MissingCodeField.json",
    )));
    assert_eq!(errors.len(), 1, "{}", messages(&errors));
    assert!(
        messages(&errors).contains("\"codes\""),
        "{}",
        messages(&errors)
    );
    assert_eq!(errors[0].location().line, 3);
}

#[test]
fn template_tests_collections() {
    let dir = iomt("template-tests");
    let valid = assert_collection_valid(&dir.join("data_CollectionFhirTemplateValid.json"));
    assert_eq!(valid.templates().len(), 6);
    assert!(
        valid.get("HeartRate").is_some(),
        "lookup is case-insensitive"
    );
    assert!(
        assert_collection_valid(&dir.join("data_CollectionFhirTemplateEmptyWithType.json"))
            .templates()
            .is_empty()
    );

    let (_, m) = collection_errors(&dir.join("data_CollectionFhirTemplateEmpty.json"));
    assert!(
        m.contains("expected templateType value CollectionFhirTemplate"),
        "{m}"
    );
    let (_, m) =
        collection_errors(&dir.join("data_InvalidCollectionFhirTemplateWithNoTemplateArray.json"));
    assert!(m.contains("expected an array"), "{m}");

    let (t, m) = collection_errors(&dir.join("data_CollectionFhirTemplateInvalid.json"));
    assert!(m.contains("required member \"typeName\" is missing"), "{m}");
    assert!(
        m.contains("duplicate template defined for type name 'steps'"),
        "{m}"
    );
    assert!(m.contains("empty type name"), "{m}");
    assert!(m.contains("\"valueType\""), "{m}");
    // Entries with errors are not registered, and the later "steps" entries are duplicates.
    assert_eq!(t.templates().len(), 0);

    let (t, m) = collection_errors(&dir.join("data_CollectionFhirTemplateMixedValidity.json"));
    assert!(m.contains("typeName"), "{m}");
    assert!(
        t.get("bloodpressure").is_some(),
        "the valid entry is still registered"
    );

    let (_, m) = collection_errors(&dir.join("data_CollectionFhirTemplateMultipleMocks.json"));
    assert!(m.contains("no match found for template type mockA"), "{m}");
    assert!(m.contains("mockB"), "{m}");

    // A device mapping (CollectionContent) is not a FHIR mapping.
    let (_, m) = collection_errors(&dir.join("data_CollectionFhirTemplateMixed.json"));
    assert!(m.contains("actual CollectionContent"), "{m}");
}

#[test]
fn samples_and_generator_outputs_load() {
    for s in ["basic", "healthkitOnFhir", "sandbox"] {
        assert_collection_valid(&iomt("samples").join(s).join("fhirmapping.json"));
    }
    for f in ["BloodPressure", "HeartRate", "OxygenSaturation"] {
        assert_single_valid(
            &iomt("mapping-generator/Expected").join(format!("fhirMapping_{f}.json")),
        );
    }
}

#[test]
fn validation_tests() {
    let dir = iomt("validation-tests");
    for f in [
        "data_CollectionFhirTemplateValid.json",
        "data_CollectionFhirTemplateIncorrectValueNameInvalid.json",
        "data_CollectionFhirTemplateMissingTypeInvalid.json",
    ] {
        assert_collection_valid(&dir.join(f));
    }
    let (_, errors) = FhirTemplates::load(&read(
        &dir.join("data_CodeValueFhirTemplateInvalid_MissingFields.json"),
    ));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .contains("expected templateType value CollectionFhirTemplate, actual CodeValueFhir"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].location().line, 2);
    assert_eq!(errors[0].location().pointer, "/templateType");
}

fn bp(systolic: &str, diastolic: &str) -> Measurement {
    Measurement {
        type_name: "bloodpressure".into(),
        occurrence_time_utc: "2023-05-01T10:20:30Z".parse().expect("time"),
        ingestion_time_utc: None,
        device_id: "abc".into(),
        patient_id: Some("patient123".into()),
        encounter_id: None,
        correlation_id: None,
        properties: vec![
            MeasurementProperty {
                name: "systolic".into(),
                value: systolic.into(),
            },
            MeasurementProperty {
                name: "diastolic".into(),
                value: diastolic.into(),
            },
        ],
    }
}

/// `validator_bloodpressure_with_patient` and its incorrect-value-name and missing-type variants.
#[test]
fn validator_cases() {
    let dir = iomt("validation-tests");
    let valid = assert_collection_valid(&dir.join("data_CollectionFhirTemplateValid.json"));
    let r = map_batch(&valid, &[(0, bp("60", "80"))], None);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let obs = &r.observations[0];
    assert_eq!(obs["code"]["text"], "bloodpressure");
    let comps = obs["component"].as_array().expect("components");
    assert_eq!(comps[0]["code"]["text"], "diastolic");
    assert!(comps[0]["valueSampledData"]["data"]
        .as_str()
        .expect("data")
        .contains("80"));
    assert_eq!(comps[1]["code"]["text"], "systolic");
    assert!(comps[1]["valueSampledData"]["data"]
        .as_str()
        .expect("data")
        .contains("60"));

    let bad_name = assert_collection_valid(
        &dir.join("data_CollectionFhirTemplateIncorrectValueNameInvalid.json"),
    );
    let r = map_batch(&bad_name, &[(0, bp("60", "180"))], None);
    let comps = r.observations[0]["component"]
        .as_array()
        .expect("components");
    assert_eq!(comps.len(), 1);
    assert!(comps[0]["valueSampledData"]["data"]
        .as_str()
        .expect("data")
        .contains("180"));

    let missing =
        assert_collection_valid(&dir.join("data_CollectionFhirTemplateMissingTypeInvalid.json"));
    let r = map_batch(&missing, &[(0, bp("60", "80"))], None);
    assert!(r.observations.is_empty());
    assert_eq!(r.errors[0].error_type, "TemplateNotFoundException");
    assert_eq!(r.errors[0].events, vec![0]);
}

#[test]
fn wild_fhir_mappings_load() {
    let wild = shared().join("wild");
    let index: Value = serde_json::from_str(&read(&wild.join("index.json"))).expect("index");
    let entries = index.as_array().expect("array");
    assert!(entries.len() >= 6);
    for e in entries {
        assert_collection_valid(&wild.join(e["fhir_mapping"].as_str().expect("fhir_mapping")));
    }
}

/// Every FHIR mapping shipped in `templates/` loads without errors.
#[test]
fn shipped_template_sets_load() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("templates/") {
        let path = entry.expect("entry").path().join("fhirmapping.json");
        if path.exists() {
            assert_collection_valid(&path);
            n += 1;
        }
    }
    assert!(n >= 5, "{n} template sets");
}
