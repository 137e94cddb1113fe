//! FHIR-mapping text (`CollectionFhir`, or one `CodeValueFhir` container): whatever loads
//! (entries without errors are kept, as in the reference) then maps a few measurements of
//! every loaded type to Observations, as `iomt map` does.
//!
//! `RUNS=1000000 bash fuzz/run fhir_mapping`
#![no_main]

use chrono::{TimeZone, Utc};
use fhir_writer::{map_batch, CodeValueFhirTemplate, FhirTemplates};
use libfuzzer_sys::fuzz_target;
use normalizer::{Measurement, MeasurementProperty};

/// Readings of every value of every template: numbers, a string, across an hour and a day.
fn measurements(templates: &FhirTemplates) -> Vec<(usize, Measurement)> {
    let mut out = Vec::new();
    for t in templates.templates() {
        let names: Vec<&str> = t.values().filter_map(|v| v.value_name.as_deref()).collect();
        for (i, (minute, value)) in [(5, "70"), (25, "72.5"), (59, "-1e3"), (5, "text")]
            .into_iter()
            .enumerate()
        {
            let hour = if i == 3 { 23 } else { 10 };
            out.push((
                out.len(),
                Measurement {
                    type_name: t.type_name.as_str().into(),
                    occurrence_time_utc: Utc.with_ymd_and_hms(2024, 1, 1, hour, minute, 0).unwrap(),
                    ingestion_time_utc: None,
                    device_id: "dev-1".into(),
                    patient_id: (i != 2).then(|| "pat-1".into()),
                    encounter_id: (i == 1).then(|| "enc-1".into()),
                    correlation_id: None,
                    properties: names
                        .iter()
                        .map(|n| MeasurementProperty {
                            name: (*n).into(),
                            value: value.into(),
                        })
                        .collect(),
                },
            ));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (templates, errors) = FhirTemplates::load(text);
    for e in &errors {
        let _ = e.to_string();
        let _ = e.to_record();
    }
    let report = map_batch(&templates, &measurements(&templates), None);
    let _ = serde_json::to_string(&report.observations);
    let (one, errors) = CodeValueFhirTemplate::load(text);
    for e in &errors {
        let _ = e.to_string();
    }
    if let Some(t) = one {
        let templates = FhirTemplates::from_templates([t]);
        let _ = map_batch(&templates, &measurements(&templates), None);
    }
});
