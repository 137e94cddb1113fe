//! Property tests: merging is idempotent, and for SampledData independent of batch order.

use chrono::{DateTime, Duration, TimeZone, Utc};
use fhir_writer::{
    build_observation, merge_observation, observation_groups, FhirTemplates, ObservationIdentity,
};
use grouper::group_measurements;
use normalizer::{Measurement, MeasurementProperty};
use proptest::prelude::*;
use serde_json::Value;

const MAPPING: &str = r#"{"templateType":"CollectionFhir","template":[
  {"templateType":"CodeValueFhir","template":{"typeName":"hr","periodInterval":60,
    "codes":[{"code":"8867-4","system":"http://loinc.org"}],
    "value":{"valueType":"SampledData","valueName":"v","defaultPeriod":60000,"unit":"/min"}}},
  {"templateType":"CodeValueFhir","template":{"typeName":"bp","periodInterval":60,
    "codes":[{"code":"85354-9","system":"http://loinc.org"}],
    "components":[
      {"codes":[{"code":"8480-6"}],"value":{"valueType":"SampledData","valueName":"v","defaultPeriod":60000}},
      {"codes":[{"code":"8462-4"}],"value":{"valueType":"SampledData","valueName":"w","defaultPeriod":60000}}]}},
  {"templateType":"CodeValueFhir","template":{"typeName":"q","periodInterval":1440,
    "codes":[{"code":"59408-5"}],
    "value":{"valueType":"Quantity","valueName":"v","unit":"%"}}}
]}"#;

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 2, 2, 10, 0, 0)
        .single()
        .expect("time")
}

/// A reading: type, offset in milliseconds inside the hour, property name, value.
type Reading = (&'static str, i64, &'static str, u16);

fn measurement(r: &Reading) -> Measurement {
    Measurement {
        type_name: r.0.into(),
        occurrence_time_utc: start() + Duration::milliseconds(r.1),
        ingestion_time_utc: None,
        device_id: "dev".into(),
        patient_id: Some("pat".into()),
        encounter_id: None,
        correlation_id: None,
        properties: vec![MeasurementProperty {
            name: r.2.into(),
            value: r.3.to_string(),
        }],
    }
}

/// Applies a batch to a store of Observations keyed by id: create or merge, as the writer does.
fn apply(store: &mut Vec<Value>, templates: &FhirTemplates, batch: &[Reading]) -> bool {
    let mut changed = false;
    let groups = group_measurements(batch.iter().map(|r| ((), measurement(r))));
    for g in groups {
        let template = templates.get(&g.key.type_name).expect("template");
        for og in observation_groups(template, &g).expect("groups") {
            let identity = ObservationIdentity::logical(&og.key);
            let fresh = build_observation(template, &og, &identity, None).expect("build");
            match store.iter_mut().find(|o| o["id"] == fresh["id"]) {
                Some(existing) => {
                    let merged = merge_observation(template, &og, existing).expect("merge");
                    changed |= merged.changed;
                    *existing = merged.observation;
                }
                None => {
                    store.push(fresh);
                    changed = true;
                }
            }
        }
    }
    store.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    changed
}

fn arb_reading() -> impl Strategy<Value = Reading> {
    (
        prop_oneof![Just("hr"), Just("bp"), Just("q")],
        0..3_600_000i64,
        prop_oneof![Just("v"), Just("w")],
        0..300u16,
    )
}

proptest! {
    /// Applying a batch a second time changes nothing (no write), whatever came before.
    #[test]
    fn merge_is_idempotent(
        first in proptest::collection::vec(arb_reading(), 0..20),
        second in proptest::collection::vec(arb_reading(), 1..20),
    ) {
        let templates = FhirTemplates::parse(MAPPING).expect("mapping");
        let mut store = Vec::new();
        apply(&mut store, &templates, &first);
        // A batch merged into the Observations it created itself changes nothing.
        let snapshot = store.clone();
        prop_assert!(!apply(&mut store, &templates, &first));
        prop_assert_eq!(&store, &snapshot);

        apply(&mut store, &templates, &second);
        let once = store.clone();
        prop_assert!(!apply(&mut store, &templates, &second));
        prop_assert_eq!(store, once);
    }

    /// SampledData readings (on distinct slots) give the same Observations whatever order their
    /// batches arrive in.
    #[test]
    fn sampled_data_merge_is_order_independent(
        slots in proptest::collection::btree_map((0..2usize, 0..60i64, 0..2usize), (0..300u16, 0..4usize), 1..40),
        order in Just((0..4usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let templates = FhirTemplates::parse(MAPPING).expect("mapping");
        let mut batches: Vec<Vec<Reading>> = vec![Vec::new(); 4];
        for (&(ty, minute, prop), &(value, batch)) in &slots {
            let ty = ["hr", "bp"][ty];
            let prop = ["v", "w"][prop];
            batches[batch].push((ty, minute * 60_000, prop, value));
        }
        let mut in_order = Vec::new();
        for b in &batches {
            apply(&mut in_order, &templates, b);
        }
        let mut shuffled = Vec::new();
        for &i in &order {
            apply(&mut shuffled, &templates, &batches[i]);
        }
        // `status` tells whether an Observation was ever amended, which is history (a batch with
        // no value for a template creates a value-less Observation that a later batch amends),
        // so compare everything else.
        let strip = |v: &mut Vec<Value>| {
            for o in v.iter_mut() {
                if let Some(m) = o.as_object_mut() {
                    m.remove("status");
                }
            }
        };
        strip(&mut in_order);
        strip(&mut shuffled);
        prop_assert_eq!(in_order, shuffled);
    }
}

proptest! {
    /// Loading never panics, whatever the text (well-formed or not).
    #[test]
    fn loading_any_text_never_panics(text in "\\PC{0,200}", pick in 0..3usize) {
        let candidates = [
            text.clone(),
            format!("{{\"templateType\":\"CollectionFhir\",\"template\":[{text}]}}"),
            format!("{{\"templateType\":\"CollectionFhir\",\"template\":[{{\"templateType\":\"CodeValueFhir\",\"template\":{{\"typeName\":{text}}}}}]}}"),
        ];
        let _ = FhirTemplates::load(&candidates[pick]);
    }
}
