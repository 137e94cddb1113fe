//! Every device mapping shipped in `conformance/` loads with the validity the
//! conformance README states, and the wild corpus' events normalize.

use std::path::Path;

use normalizer::{load_content_template, load_device_mapping, Loaded, Normalizer};
use serde_json::Value;
use testkit::conformance::conformance_dir;

fn read(rel: &str) -> String {
    std::fs::read_to_string(conformance_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn messages(l: &Loaded) -> Vec<String> {
    l.errors.iter().map(|e| e.message.clone()).collect()
}

#[test]
fn single_templates_load_as_the_reference_says() {
    for f in [
        "data_JsonPathContentTemplateValid.json",
        "data_JsonPathContentTemplateValidWithOptional.json",
        "data_IotJsonPathContentTemplateValid.json",
        "data_IotJsonPathContentTemplateValidWithOptional.json",
        "data_IotCentralJsonPathContentTemplateValid.json",
        "data_IotCentralJsonPathContentTemplateValidWithOptional.json",
        "data_CalculatedFunctionContentTemplateValid.json",
        "data_CalculatedFunctionContentTemplateValidExpressionObject.json",
        "data_CalculatedFunctionContentTemplateValidOptional.json",
    ] {
        let l = load_content_template(&read(&format!("template-tests/{f}")));
        assert!(l.errors.is_empty(), "{f}: {:?}", messages(&l));
        assert_eq!(l.mapping.templates.len(), 1, "{f}");
    }
    let invalid: [(&str, &[&str]); 5] = [
        (
            "data_JsonPathContentTemplateInvalidMissingExpression.json",
            &["'DeviceIdExpression'", "'TimestampExpression'"],
        ),
        (
            "data_IotJsonPathContentTemplateInvalidMissingTypeMetadata.json",
            &["'TypeName'", "'TypeMatchExpression'"],
        ),
        (
            "data_IotJsonPathContentTemplateInvalidMissingValueField.json",
            &["'ValueName'"],
        ),
        (
            "data_IotCentralJsonPathContentTemplateInvalidMissingTypeMetadata.json",
            &["'TypeName'", "'TypeMatchExpression'"],
        ),
        (
            "data_IotCentralJsonPathContentTemplateInvalidMissingValueField.json",
            &["'ValueName'"],
        ),
    ];
    for (f, wants) in invalid {
        let l = load_content_template(&read(&format!("template-tests/{f}")));
        let msgs = messages(&l);
        assert_eq!(msgs.len(), wants.len(), "{f}: {msgs:?}");
        for w in wants {
            assert!(
                msgs.iter().any(|m| m.contains(w)),
                "{f}: no error names {w}: {msgs:?}"
            );
        }
        assert!(l.mapping.templates.is_empty(), "{f}");
    }
}

#[test]
fn unknown_and_missing_members_are_all_reported_with_lines() {
    let l = load_content_template(&read(
        "template-tests/data_CalculatedFunctionContentTemplateValidInvalidAndMissingMembers.json",
    ));
    let mut got: Vec<(usize, String)> = l
        .errors
        .iter()
        .map(|e| (e.line, e.message.clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].0, 3);
    assert_eq!(got[1].0, 3);
    assert!(got[..2]
        .iter()
        .any(|(_, m)| m.contains("'TypeMatchExpression'")));
    assert!(got[..2]
        .iter()
        .any(|(_, m)| m.contains("'DeviceIdExpression'")));
    assert_eq!(got[2].0, 5);
    assert!(got[2].1.contains("typeMatchExpressionFake"));
    assert_eq!(got[3].0, 6);
    assert!(got[3].1.contains("deviceIdExpressionFake"));
    for e in &l.errors {
        assert_eq!(e.template_type.as_deref(), Some("CalculatedContent"));
        assert!(e.pointer.starts_with("/template"), "{}", e.pointer);
    }
}

#[test]
fn expression_object_form_equals_string_form() {
    let a = load_content_template(&read(
        "template-tests/data_CalculatedFunctionContentTemplateValid.json",
    ));
    let b = load_content_template(&read(
        "template-tests/data_CalculatedFunctionContentTemplateValidExpressionObject.json",
    ));
    let (a, b) = (&a.mapping.templates[0], &b.mapping.templates[0]);
    let key = |t: &normalizer::ContentTemplate| {
        (
            t.type_name.clone(),
            t.type_match.source.clone(),
            t.type_match.language,
            t.device_id.as_ref().map(|e| (e.source.clone(), e.language)),
            t.timestamp.as_ref().map(|e| (e.source.clone(), e.language)),
            t.values
                .iter()
                .map(|v| {
                    (
                        v.name.clone(),
                        v.expression.source.clone(),
                        v.expression.language,
                        v.required,
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(key(a), key(b));
}

#[test]
fn shipped_mappings_load() {
    let mut files: Vec<String> = vec![
        "samples/basic/devicecontent.json".into(),
        "samples/healthkitOnFhir/devicecontent.json".into(),
        "samples/sandbox/devicecontent.json".into(),
        "samples/sandbox/legacy/devicecontent.json".into(),
        "template-tests/data_CollectionContentTemplateMixed.json".into(),
        "template-tests/data_CollectionContentTemplateHrAndSteps.json".into(),
        "template-tests/data_CollectionContentTemplateHrAndStepsJmesPath.json".into(),
        "template-tests/data_CollectionContentTemplateMultipleIotCentralJsonPath.json".into(),
        "validation-tests/data_CollectionContentTemplateHrAndBloodPressureValid.json".into(),
    ];
    for f in std::fs::read_dir(conformance_dir().join("template-tests")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        if name.starts_with("data_Documentation_") && name.ends_with("_Template.json") {
            files.push(format!("template-tests/{name}"));
        }
    }
    for f in &files {
        let l = load_device_mapping(&read(f));
        assert!(l.errors.is_empty(), "{f}: {:?}", messages(&l));
        assert!(
            !l.mapping.templates.is_empty() || f.contains("Empty"),
            "{f}"
        );
    }
    // The template generator's outputs are single CalculatedContent templates.
    for kind in ["BloodPressure", "HeartRate", "OxygenSaturation"] {
        let f = format!("mapping-generator/Expected/deviceData_{kind}.json");
        let l = load_content_template(&read(&f));
        assert!(l.errors.is_empty(), "{f}: {:?}", messages(&l));
    }
    // The "projection" output is an array of such templates.
    let f = "mapping-generator/Expected/deviceData_Projection.json";
    let items: Vec<Value> = serde_json::from_str(&read(f)).unwrap();
    assert!(!items.is_empty());
    for item in items {
        let l = load_content_template(&item.to_string());
        assert!(l.errors.is_empty(), "{f}: {:?}", messages(&l));
    }
    let mocks = load_device_mapping(&read(
        "template-tests/data_CollectionContentTemplateMultipleMocks.json",
    ));
    assert_eq!(mocks.errors.len(), 2);
    assert!(mocks.errors[0]
        .message
        .starts_with("No match found for template type mockA"));
}

#[test]
fn wild_corpus_loads_and_normalizes() {
    let wild = conformance_dir().join("../wild");
    let index: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(wild.join("index.json")).unwrap()).unwrap();
    assert!(index.len() >= 6);
    for sample in &index {
        let name = sample["name"].as_str().unwrap();
        let text =
            std::fs::read_to_string(wild.join(sample["device_mapping"].as_str().unwrap())).unwrap();
        let l = load_device_mapping(&text);
        assert!(l.errors.is_empty(), "{name}: {:?}", messages(&l));
        let n = Normalizer::new(l.mapping);
        let mut total = 0;
        for ev in sample["events"].as_array().unwrap() {
            let path = wild.join(ev.as_str().unwrap());
            match normalize_file(&n, &path, sample["envelope"].as_str().unwrap()) {
                Ok(ms) => total += ms.len(),
                // The README: HealthKit's test payloads carry no deviceId, a real defect
                // in the wild that must be reported clearly.
                Err(e) if name == "healthkit-on-fhir" => {
                    assert_eq!(e.type_name(), "IncompatibleDataException");
                    assert!(
                        e.reason.starts_with(
                            "Unable to extract required value for [DeviceIdExpression]"
                        ),
                        "{e}"
                    );
                    assert!(e.message.contains("JsonPathContent template"), "{e}");
                }
                Err(e) => panic!("{name}: {}: {e}", path.display()),
            }
        }
        if name != "healthkit-on-fhir" {
            assert!(total > 0, "{name}: no measurement from its events");
        }
    }
}

fn normalize_file(
    n: &Normalizer,
    path: &Path,
    envelope: &str,
) -> Result<Vec<normalizer::Measurement>, normalizer::NormalizeError> {
    let bytes = std::fs::read(path).unwrap();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    match envelope {
        "document" => {
            let doc: Value = serde_json::from_slice(bytes)
                .map_err(normalizer::NormalizeError::invalid_format)?;
            n.normalize_document(&doc, None)
        }
        _ => n.normalize(bytes, &Default::default(), &Default::default(), None),
    }
}
