//! The normalized measurement: what the normalizer emits and the grouper consumes.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One named value of a measurement. Values are always strings, as in the reference.
///
/// Names and identifiers are shared (`Arc<str>`): every measurement of a template carries
/// the same type and value names, and the readings of one message usually the same device
/// and patient, so a measurement costs one allocation per value instead of one per string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementProperty {
    /// The template's `valueName`.
    pub name: Arc<str>,
    /// The extracted value, rendered as the reference renders it.
    pub value: String,
}

/// A normalized measurement, serialized camelCase as the reference's `Measurement` is
/// (`type`, `occurrenceTimeUtc`, `ingestionTimeUtc`, `deviceId`, ..., `properties`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// The template's `typeName`.
    #[serde(rename = "type")]
    pub type_name: Arc<str>,
    /// When the reading was taken, in UTC.
    #[serde(with = "utc")]
    pub occurrence_time_utc: DateTime<Utc>,
    /// When the event reached the connector (enqueued time), if known.
    #[serde(with = "utc_opt", default)]
    pub ingestion_time_utc: Option<DateTime<Utc>>,
    /// The device identifier the template extracted.
    pub device_id: Arc<str>,
    /// The patient identifier, if the template has one.
    #[serde(default)]
    pub patient_id: Option<Arc<str>>,
    /// The encounter identifier, if the template has one.
    #[serde(default)]
    pub encounter_id: Option<Arc<str>>,
    /// The correlation identifier, if the template has one.
    #[serde(default)]
    pub correlation_id: Option<Arc<str>>,
    /// Named values in template order (duplicates allowed).
    pub properties: Vec<MeasurementProperty>,
}

/// Formats a UTC instant as RFC 3339 with `Z` and only the fractional digits it needs.
pub fn format_utc(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

mod utc {
    use super::*;
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_utc(t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod utc_opt {
    use super::*;
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_utc(t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}
