//! Measurement groups: measurements that share device, type, patient, encounter and correlation id.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::Measurement;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The key measurements are grouped by: (deviceId, type, patientId, encounterId, correlationId).
///
/// The reference concatenates these into one string (`"{DeviceId}-{Type}-…"`); a structured key
/// groups the same measurements without the accidental collisions of the concatenation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupKey {
    /// The measurement's device identifier.
    pub device_id: Arc<str>,
    /// The measurement type (the device template's `typeName`).
    #[serde(rename = "type")]
    pub type_name: Arc<str>,
    /// The patient identifier, if any.
    pub patient_id: Option<Arc<str>>,
    /// The encounter identifier, if any.
    pub encounter_id: Option<Arc<str>>,
    /// The correlation identifier, if any.
    pub correlation_id: Option<Arc<str>>,
}

impl GroupKey {
    /// The key of one measurement.
    pub fn of(m: &Measurement) -> Self {
        GroupKey {
            device_id: m.device_id.clone(),
            type_name: m.type_name.clone(),
            patient_id: m.patient_id.clone(),
            encounter_id: m.encounter_id.clone(),
            correlation_id: m.correlation_id.clone(),
        }
    }
}

/// One measurement in a group, with the caller's tag (an event index, an ack handle, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    /// What the caller attached to the measurement when it was pushed.
    pub tag: T,
    /// The measurement.
    pub measurement: Measurement,
}

/// Measurements sharing one [`GroupKey`], at most one per occurrence time, sorted by time.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementGroup<T = ()> {
    /// The shared key.
    pub key: GroupKey,
    /// The kept measurements, sorted by occurrence time (all times distinct).
    pub entries: Vec<Entry<T>>,
    /// Tags of measurements that lost to another one with the same occurrence time
    /// (an earlier or equal ingestion time); they contribute nothing.
    pub superseded: Vec<T>,
}

impl<T> MeasurementGroup<T> {
    /// Tags of every measurement that reached this group, kept or superseded.
    pub fn all_tags(&self) -> impl Iterator<Item = &T> {
        self.entries
            .iter()
            .map(|e| &e.tag)
            .chain(self.superseded.iter())
    }
}

/// Accumulates measurements into groups; the core of [`group_measurements`].
#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    index: HashMap<GroupKey, usize>,
    groups: Vec<Pending<T>>,
}

/// One group being filled: kept entries by occurrence time, and superseded tags.
#[derive(Debug)]
struct Pending<T> {
    key: GroupKey,
    by_time: BTreeMap<DateTime<Utc>, Entry<T>>,
    superseded: Vec<T>,
}

impl<T> Default for Accumulator<T> {
    fn default() -> Self {
        Accumulator {
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }
}

impl<T> Accumulator<T> {
    /// Adds one measurement. For an occurrence time already in the group, the measurement with
    /// the later ingestion time is kept; on equal (or both missing) ingestion times the later
    /// arrival wins ("only the latest is persisted", as the MedTech docs put it).
    pub(crate) fn push(&mut self, tag: T, measurement: Measurement) {
        let key = GroupKey::of(&measurement);
        let slot = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.groups.push(Pending {
                    key: key.clone(),
                    by_time: BTreeMap::new(),
                    superseded: Vec::new(),
                });
                self.index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let Some(Pending {
            by_time,
            superseded,
            ..
        }) = self.groups.get_mut(slot)
        else {
            return;
        };
        let time = measurement.occurrence_time_utc;
        match by_time.get_mut(&time) {
            Some(existing) => {
                if measurement.ingestion_time_utc >= existing.measurement.ingestion_time_utc {
                    let old = std::mem::replace(existing, Entry { tag, measurement });
                    superseded.push(old.tag);
                } else {
                    superseded.push(tag);
                }
            }
            None => {
                by_time.insert(time, Entry { tag, measurement });
            }
        }
    }

    /// Takes every group out, in order of first appearance.
    pub(crate) fn take(&mut self) -> Vec<MeasurementGroup<T>> {
        self.index.clear();
        std::mem::take(&mut self.groups)
            .into_iter()
            .map(|p| MeasurementGroup {
                key: p.key,
                entries: p.by_time.into_values().collect(),
                superseded: p.superseded,
            })
            .collect()
    }
}

/// Groups a batch of tagged measurements by [`GroupKey`] (groups in order of first appearance),
/// keeping one measurement per occurrence time: the one with the latest ingestion time.
pub fn group_measurements<T>(
    items: impl IntoIterator<Item = (T, Measurement)>,
) -> Vec<MeasurementGroup<T>> {
    let mut acc = Accumulator::default();
    for (tag, m) in items {
        acc.push(tag, m);
    }
    acc.take()
}
