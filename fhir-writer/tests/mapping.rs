//! Observation construction, merge rules, error records and template errors.

use chrono::{DateTime, TimeZone, Utc};
use fhir_writer::{
    map_batch, merge_observation, observation_groups, to_observation, FhirTemplates,
    ObservationIdentity, Outcome, TemplateError,
};
use grouper::group_measurements;
use normalizer::{Measurement, MeasurementProperty};
use serde_json::{json, Value};

const MAPPING: &str = r#"{
  "templateType": "CollectionFhir",
  "template": [
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "heartrate", "periodInterval": 60,
        "category": [{ "text": "Vital Signs", "codes": [{ "code": "vital-signs",
          "system": "http://terminology.hl7.org/CodeSystem/observation-category" }] }],
        "codes": [{ "code": "8867-4", "system": "http://loinc.org", "display": "Heart rate" }],
        "value": { "valueType": "SampledData", "valueName": "hr", "defaultPeriod": 60000, "unit": "/min" } } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "spo2", "periodInterval": 60,
        "codes": [{ "code": "59408-5", "system": "http://loinc.org" }],
        "value": { "valueType": "Quantity", "valueName": "spo2", "unit": "%",
                   "system": "http://unitsofmeasure.org", "code": "%" } } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "session", "periodInterval": -1,
        "codes": [{ "code": "session" }],
        "value": { "valueType": "SampledData", "valueName": "v", "defaultPeriod": 1000 } } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "bp", "periodInterval": 60,
        "codes": [{ "code": "85354-9", "system": "http://loinc.org" }],
        "components": [
          { "codes": [{ "code": "8480-6", "system": "http://loinc.org" }],
            "value": { "valueType": "SampledData", "valueName": "systolic", "defaultPeriod": 1800000, "unit": "mm[Hg]" } },
          { "codes": [{ "code": "8462-4", "system": "http://loinc.org" }],
            "value": { "valueType": "SampledData", "valueName": "diastolic", "defaultPeriod": 1800000, "unit": "mm[Hg]" } } ] } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "fall", "periodInterval": 1440,
        "codes": [{ "code": "fall" }],
        "value": { "valueType": "CodeableConcept", "valueName": "fall", "text": "Fall detected",
                   "codes": [{ "code": "217082002", "system": "http://snomed.info/sct" }] } } },
    { "templateType": "CodeValueFhir", "template": {
        "typeName": "status", "codes": [{ "code": "status" }],
        "value": { "valueType": "String", "valueName": "text" } } }
  ]
}"#;

fn templates() -> FhirTemplates {
    FhirTemplates::parse(MAPPING).expect("valid mapping")
}

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, h, m, s)
        .single()
        .expect("time")
}

fn m(type_name: &str, t: DateTime<Utc>, props: &[(&str, &str)]) -> Measurement {
    Measurement {
        type_name: type_name.into(),
        occurrence_time_utc: t,
        ingestion_time_utc: None,
        device_id: "dev-1".into(),
        patient_id: Some("pat-1".into()),
        encounter_id: None,
        correlation_id: None,
        properties: props
            .iter()
            .map(|(n, v)| MeasurementProperty {
                name: n.to_string().into(),
                value: v.to_string(),
            })
            .collect(),
    }
}

#[test]
fn sampled_data_observation_matches_reference_shape() {
    let batch = vec![
        (0, m("heartrate", at(10, 0, 0), &[("hr", "70")])),
        (1, m("heartrate", at(10, 2, 30), &[("hr", "72")])),
    ];
    let r = map_batch(&templates(), &batch, Some(at(12, 0, 0)));
    assert!(r.errors.is_empty());
    let obs = &r.observations[0];
    let value = "pat-1.dev-1.heartrate.20240301100000Z.20240301105959Z";
    assert_eq!(
        obs["identifier"],
        json!([{ "system": "https://azure.microsoft.com/en-us/services/iomt-fhir-connector/", "value": value }])
    );
    assert_eq!(
        obs["id"],
        fhir_writer::logical_id(fhir_writer::SERVICE_SYSTEM, value)
    );
    assert_eq!(obs["status"], "final");
    assert_eq!(obs["code"]["text"], "heartrate");
    assert_eq!(obs["code"]["coding"][1]["code"], "heartrate");
    assert_eq!(obs["code"]["coding"][1]["display"], "heartrate");
    assert_eq!(obs["category"][0]["text"], "Vital Signs");
    assert_eq!(
        obs["effectivePeriod"],
        json!({ "start": "2024-03-01T10:00:00.0000000Z", "end": "2024-03-01T10:59:59.9999999Z" })
    );
    assert_eq!(obs["issued"], "2024-03-01T12:00:00.0000000Z");
    let sd = &obs["valueSampledData"];
    assert_eq!(sd["origin"], json!({ "value": 0, "unit": "/min" }));
    assert_eq!(sd["period"], 60000);
    assert_eq!(sd["dimensions"], 1);
    let data: Vec<&str> = sd["data"].as_str().expect("data").split(' ').collect();
    assert_eq!(data.len(), 60);
    assert_eq!(&data[..4], &["70", "E", "72", "E"]);
    assert_eq!(
        obs["subject"],
        json!({ "identifier": { "value": "pat-1" } })
    );
    assert_eq!(obs["device"], json!({ "identifier": { "value": "dev-1" } }));
    assert_eq!(r.groups[0].group.tags, vec![0, 1]);
    assert_eq!(r.groups[0].observation_id.as_deref(), obs["id"].as_str());
}

#[test]
fn logical_id_is_sha256_of_system_and_value() {
    assert_eq!(
        fhir_writer::logical_id(
            fhir_writer::SERVICE_SYSTEM,
            "pat-1.dev-1.heartrate.20240101100000Z.20240101105959Z"
        ),
        "f8cd22dc632d4e81114d8035212c35031596e90bfe9f9ba81efdf65ecd8a64cd"
    );
}

/// Issue #82 of the reference: several Quantity readings in one hourly window.
#[test]
fn regression_issue_82_quantity_is_one_observation_per_reading() {
    let batch = vec![
        (0, m("spo2", at(10, 1, 0), &[("spo2", "97")])),
        (1, m("spo2", at(10, 2, 0), &[("spo2", "96.5")])),
        (2, m("status", at(10, 3, 0), &[("text", "battery low")])),
        (3, m("fall", at(10, 4, 0), &[("fall", "true")])),
        (4, m("fall", at(11, 4, 0), &[("fall", "true")])),
    ];
    let r = map_batch(&templates(), &batch, None);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.observations.len(), 5);
    let q = &r.observations[1];
    assert_eq!(
        q["valueQuantity"],
        json!({ "value": 96.5, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%" })
    );
    assert_eq!(q["effectivePeriod"]["start"], q["effectivePeriod"]["end"]);
    assert!(q["identifier"][0]["value"]
        .as_str()
        .expect("id")
        .ends_with(".spo2.20240301100200Z.20240301100200Z"));
    assert_eq!(r.observations[2]["valueString"], "battery low");
    assert_eq!(
        r.observations[3]["valueCodeableConcept"],
        json!({ "coding": [{ "system": "http://snomed.info/sct", "code": "217082002" }], "text": "Fall detected" })
    );
}

#[test]
fn new_value_for_same_timestamp_updates_the_observation() {
    let t = templates();
    let tpl = t.get("spo2").expect("template");
    let first = group_measurements([(0, m("spo2", at(10, 1, 0), &[("spo2", "97")]))]);
    let og = &observation_groups(tpl, &first[0]).expect("groups")[0];
    let identity = ObservationIdentity::logical(&og.key);
    let Outcome::Create(existing) = to_observation(tpl, og, &identity, None, None).expect("ok")
    else {
        panic!("expected create")
    };
    assert_eq!(
        to_observation(tpl, og, &identity, None, Some(&existing)).expect("ok"),
        Outcome::Unchanged
    );
    let second = group_measurements([(1, m("spo2", at(10, 1, 0), &[("spo2", "95")]))]);
    let og2 = &observation_groups(tpl, &second[0]).expect("groups")[0];
    let Outcome::Update(updated) =
        to_observation(tpl, og2, &identity, None, Some(&existing)).expect("ok")
    else {
        panic!("expected update")
    };
    assert_eq!(updated["valueQuantity"]["value"], 95);
    assert_eq!(updated["status"], "amended");
    assert_eq!(updated["id"], existing["id"]);
}

#[test]
fn errors_name_type_and_value_and_the_rest_of_the_batch_maps() {
    let mut no_corr = m("session", at(10, 0, 0), &[("v", "1")]);
    no_corr.device_id = "dev-2".into();
    let mut with_corr = m("session", at(10, 0, 0), &[("v", "1")]);
    with_corr.correlation_id = Some("run-7".into());
    let batch = vec![
        (0, m("unknownType", at(10, 0, 0), &[("x", "1")])),
        (1, m("spo2", at(10, 0, 0), &[("spo2", "ninety")])),
        (2, m("spo2", at(10, 5, 0), &[("spo2", "98")])),
        (3, no_corr),
        (4, with_corr),
        (5, m("heartrate", at(10, 0, 0), &[("hr", "60")])),
    ];
    let r = map_batch(&templates(), &batch, None);
    let types: Vec<(&str, Vec<usize>)> = r
        .errors
        .iter()
        .map(|e| (e.error_type, e.events.clone()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("TemplateNotFoundException", vec![0]),
            ("InvalidQuantityFhirValueException", vec![1]),
            ("CorrelationIdNotDefinedException", vec![3]),
        ]
    );
    assert!(r.errors[0].message.contains("unknownType"));
    assert!(r.errors[1].message.contains("\"spo2\"") && r.errors[1].message.contains("ninety"));
    assert!(r.errors[2].message.contains("session") && r.errors[2].message.contains("dev-2"));
    // spo2 at 10:05, session run-7 and heartrate still map.
    assert_eq!(r.observations.len(), 3);
    let session = &r.observations[1];
    assert!(session["identifier"][0]["value"]
        .as_str()
        .expect("value")
        .ends_with(".session.run-7"));
    let failed: Vec<_> = r
        .groups
        .iter()
        .filter(|g| g.observation_id.is_none())
        .collect();
    assert_eq!(failed.len(), 1);
    // The report serializes with camelCase names.
    let v = serde_json::to_value(&r).expect("serialize");
    assert_eq!(v["errors"][0]["type"], "TemplateNotFoundException");
    assert_eq!(v["errors"][0]["measurementType"], "unknownType");
    assert_eq!(v["groups"][0]["periodInterval"], 0);
    assert_eq!(
        v["groups"][0]["window"]["start"],
        "2024-03-01T10:00:00.0000000Z"
    );
    assert_eq!(v["groups"][0]["events"], json!([1]));
    assert_eq!(v["groups"][0]["observationId"], Value::Null);
}

#[test]
fn merge_widens_period_appends_components_and_replaces_category() {
    let t = templates();
    let bp = t.get("bp").expect("bp");
    let g1 = group_measurements([(0, m("bp", at(10, 0, 0), &[("systolic", "120")]))]);
    let og1 = &observation_groups(bp, &g1[0]).expect("groups")[0];
    let identity = ObservationIdentity::logical(&og1.key);
    let Outcome::Create(mut existing) = to_observation(bp, og1, &identity, None, None).expect("ok")
    else {
        panic!("create")
    };
    assert_eq!(existing["component"].as_array().expect("c").len(), 1);
    existing["category"] = json!([{ "text": "stale" }]);
    // A reading in the next hour merged into the same Observation (as if the writer found it).
    let g2 = group_measurements([(
        1,
        m(
            "bp",
            at(11, 40, 0),
            &[("systolic", "130"), ("diastolic", "80")],
        ),
    )]);
    let og2 = &observation_groups(bp, &g2[0]).expect("groups")[0];
    let merged = merge_observation(bp, og2, &existing).expect("merge");
    assert!(merged.changed);
    let o = &merged.observation;
    assert_eq!(o["status"], "amended");
    assert!(
        o.get("category").is_none(),
        "template has no category: removed"
    );
    assert_eq!(
        o["effectivePeriod"]["start"],
        "2024-03-01T10:00:00.0000000Z"
    );
    assert_eq!(o["effectivePeriod"]["end"], "2024-03-01T11:59:59.9999999Z");
    let comps = o["component"].as_array().expect("components");
    assert_eq!(comps.len(), 2);
    assert_eq!(comps[0]["valueSampledData"]["data"], "120 E E 130");
    assert_eq!(comps[1]["code"]["text"], "diastolic");
    assert_eq!(comps[1]["valueSampledData"]["data"], "E E E 80");
    let again = merge_observation(bp, og2, o).expect("merge");
    assert!(!again.changed);
    assert_eq!(&again.observation, o);
}

#[test]
fn merge_rejects_wrong_existing_value_type() {
    let t = templates();
    let hr = t.get("heartrate").expect("hr");
    let g = group_measurements([(0, m("heartrate", at(10, 0, 0), &[("hr", "70")]))]);
    let og = &observation_groups(hr, &g[0]).expect("groups")[0];
    let existing = json!({
        "resourceType": "Observation", "status": "final",
        "effectivePeriod": { "start": "2024-03-01T10:00:00Z", "end": "2024-03-01T10:59:59.9999999Z" },
        "valueQuantity": { "value": 1 }
    });
    let err = merge_observation(hr, og, &existing).expect_err("type mismatch");
    assert_eq!(err.type_name(), "NotSupportedException");
    // Any JSON at all never panics.
    for v in [
        json!(null),
        json!([]),
        json!({"effectivePeriod": 3}),
        json!({"valueSampledData": "x"}),
    ] {
        let _ = merge_observation(hr, og, &v);
    }
}

#[test]
fn template_errors_have_pointer_line_and_column() {
    let text = "{\n  \"templateType\": \"CollectionFhirTemplate\",\n  \"template\": [\n    { \"templateType\": \"CodeValueFhir\", \"template\": {\n        \"TYPENAME\": \"hr\", \"codes\": [], \"periodInterval\": 30,\n        \"colour\": \"red\",\n        \"value\": { \"valueType\": \"Histogram\" } } }\n  ]\n}";
    let (t, errors) = FhirTemplates::load(text);
    assert!(t.templates().is_empty());
    let summary: Vec<(String, usize, usize)> = errors
        .iter()
        .map(|e| {
            (
                e.location().pointer.clone(),
                e.location().line,
                e.location().column,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/template/0/template/colour".to_string(), 6, 9),
            ("/template/0/template/periodInterval".to_string(), 5, 58),
            ("/template/0/template/value/valueType".to_string(), 7, 33),
        ]
    );
    assert!(matches!(errors[0], TemplateError::UnknownMember { .. }));
    assert_eq!(errors[0].type_name(), "InvalidTemplateException");
    let rec = serde_json::to_value(errors[2].to_record()).expect("record");
    assert_eq!(rec["line"], 7);
    assert!(rec["message"].as_str().expect("m").contains("Histogram"));

    let (_, errors) = FhirTemplates::load("{ \"templateType\": ");
    assert!(matches!(errors[0], TemplateError::InvalidJson { .. }));
    for bad in [
        "",
        "[]",
        "null",
        "{\"templateType\":\"CollectionFhir\",\"template\":[1,[],null]}",
    ] {
        let (_, errors) = FhirTemplates::load(bad);
        assert!(!errors.is_empty(), "{bad}");
    }
}

#[test]
fn names_are_case_insensitive_and_strings_coerced() {
    let text = r#"{"TemplateType":"collectionfhirtemplate","Template":[{"templatetype":"codevaluefhirtemplate","template":{
        "TypeName":"Temp","PeriodInterval":"Hourly","Codes":[{"Code":8310,"System":"http://loinc.org"}],
        "Value":{"ValueType":"quantity","ValueName":"t","Unit":"Cel"}}}]}"#;
    let t = FhirTemplates::parse(text).expect("valid");
    let tpl = t.get("TEMP").expect("found case-insensitively");
    assert_eq!(tpl.codes[0].code.as_deref(), Some("8310"));
    assert_eq!(tpl.period_interval, grouper::PeriodInterval::Hourly);
    let v: Value = serde_json::to_value(map_batch(
        &t,
        &[(0, m("temp", at(1, 0, 0), &[("t", " 1,037.5 ")]))],
        None,
    ))
    .expect("json");
    assert_eq!(v["observations"][0]["valueQuantity"]["value"], 1037.5);
}
