//! The offline batch entry point behind `iomt map`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use grouper::{group_measurements, ObservationGroup};
use normalizer::Measurement;
use serde::Serialize;
use serde_json::Value;

use crate::error::MappingError;
use crate::observation::{
    build_observation, identifier_value, logical_id, merge_observation, observation_groups,
    ObservationIdentity, SERVICE_SYSTEM,
};
use crate::template::FhirTemplates;

/// One observation group of the batch, with the id of the Observation it became (if it did).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRecord {
    /// The group (key, periodInterval, window, values, events).
    #[serde(flatten)]
    pub group: ObservationGroup<usize>,
    /// Logical id of the Observation built from it; `null` when mapping failed.
    pub observation_id: Option<String>,
}

/// A mapping error with the events it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingErrorRecord {
    /// The reference's exception name, e.g. `TemplateNotFoundException`.
    #[serde(rename = "type")]
    pub error_type: &'static str,
    /// Human message naming the template and the value.
    pub message: String,
    /// Indexes of the events whose measurements are involved.
    pub events: Vec<usize>,
    /// The measurement type.
    pub measurement_type: String,
    /// The device.
    pub device_id: String,
}

impl MappingErrorRecord {
    fn new(
        error: &MappingError,
        events: Vec<usize>,
        measurement_type: &str,
        device_id: &str,
    ) -> Self {
        MappingErrorRecord {
            error_type: error.type_name(),
            message: error.to_string(),
            events,
            measurement_type: measurement_type.to_string(),
            device_id: device_id.to_string(),
        }
    }
}

/// What [`map_batch`] produced.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MapReport {
    /// Observation groups, in order of first appearance of their measurement group, then window.
    pub groups: Vec<GroupRecord>,
    /// The Observations (one per distinct identifier; groups sharing an identifier are merged).
    pub observations: Vec<Value>,
    /// Errors; the rest of the batch still maps.
    pub errors: Vec<MappingErrorRecord>,
}

/// Maps one batch of measurements (each tagged with the index of the event it came from) to
/// Observations, offline: Patient and Device are referenced by identifier
/// ([`ObservationIdentity::logical`]). `issued` is stamped on every Observation (`None` leaves
/// it out, which keeps outputs reproducible).
///
/// Grouping is the reference's per-batch grouping; an observation group whose identifier was
/// already produced earlier in the batch is merged into that Observation, as the reference's
/// sequential per-device writes would do.
pub fn map_batch(
    templates: &FhirTemplates,
    measurements: &[(usize, Measurement)],
    issued: Option<DateTime<Utc>>,
) -> MapReport {
    let mut report = MapReport::default();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for group in group_measurements(measurements.iter().cloned()) {
        let key = &group.key;
        let all_events = || {
            let mut e: Vec<usize> = group.all_tags().copied().collect();
            e.sort_unstable();
            e
        };
        let Some(template) = templates.get(&key.type_name) else {
            let err = MappingError::TemplateNotFound {
                type_name: key.type_name.to_string(),
                device_id: key.device_id.to_string(),
            };
            report.errors.push(MappingErrorRecord::new(
                &err,
                all_events(),
                &key.type_name,
                &key.device_id,
            ));
            continue;
        };
        let obs_groups = match observation_groups(template, &group) {
            Ok(g) => g,
            Err(err) => {
                report.errors.push(MappingErrorRecord::new(
                    &err,
                    all_events(),
                    &key.type_name,
                    &key.device_id,
                ));
                continue;
            }
        };
        for og in obs_groups {
            let identity = ObservationIdentity::logical(&og.key);
            let id = logical_id(SERVICE_SYSTEM, &identifier_value(&identity, &og));
            let result = match by_id.get(&id) {
                Some(&i) => merge_observation(template, &og, &report.observations[i]).map(|m| {
                    report.observations[i] = m.observation;
                }),
                None => build_observation(template, &og, &identity, issued).map(|obs| {
                    by_id.insert(id.clone(), report.observations.len());
                    report.observations.push(obs);
                }),
            };
            let observation_id = match result {
                Ok(()) => Some(id),
                Err(err) => {
                    report.errors.push(MappingErrorRecord::new(
                        &err,
                        og.tags.clone(),
                        &og.key.type_name,
                        &og.key.device_id,
                    ));
                    None
                }
            };
            report.groups.push(GroupRecord {
                group: og,
                observation_id,
            });
        }
    }
    report
}
