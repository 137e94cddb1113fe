//! FHIR mapping and writing: `CollectionFhir` / `CodeValueFhir` templates, observation groups to
//! FHIR R4 Observations, merges into existing Observations, and the writer that puts them on a
//! FHIR server ([`FhirWriter`]: identities, batch Bundles, retries, the version cache).
//!
//! The mapping core is pure: no I/O and no clock reads (`issued` and the Patient/Device
//! references are inputs).
//!
//! * [`FhirTemplates::load`] loads a mapping and reports every problem with line:column and
//!   JSON pointer ([`TemplateError`]).
//! * [`observation_groups`] windows a measurement group for a template, [`to_observation`] builds
//!   an Observation or merges into an existing one ([`Outcome`]), exactly as the open-source
//!   reference (identifier, logical id, SampledData), except that Quantity, String and
//!   CodeableConcept values are one point-in-time Observation per reading, as the MedTech docs
//!   state (see `docs/FHIR.md` in the repository).
//! * [`map_batch`] runs all of it on one batch, offline — what `iomt map` prints.
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use fhir_writer::{map_batch, FhirTemplates};
//! use normalizer::{Measurement, MeasurementProperty};
//!
//! let (templates, errors) = FhirTemplates::load(r#"{
//!   "templateType": "CollectionFhir",
//!   "template": [{
//!     "templateType": "CodeValueFhir",
//!     "template": {
//!       "typeName": "heartrate", "periodInterval": 60,
//!       "codes": [{ "code": "8867-4", "system": "http://loinc.org", "display": "Heart rate" }],
//!       "value": { "valueType": "SampledData", "valueName": "hr", "defaultPeriod": 600000, "unit": "/min" }
//!     }
//!   }]
//! }"#);
//! assert!(errors.is_empty());
//!
//! let hr = |minute, value: &str| Measurement {
//!     type_name: "heartrate".into(),
//!     occurrence_time_utc: Utc.with_ymd_and_hms(2024, 1, 1, 10, minute, 0).unwrap(),
//!     ingestion_time_utc: None,
//!     device_id: "dev-1".into(),
//!     patient_id: Some("pat-1".into()),
//!     encounter_id: None,
//!     correlation_id: None,
//!     properties: vec![MeasurementProperty { name: "hr".into(), value: value.into() }],
//! };
//! let report = map_batch(&templates, &[(0, hr(5, "70")), (1, hr(25, "72"))], None);
//! assert!(report.errors.is_empty());
//! let obs = &report.observations[0];
//! assert_eq!(obs["valueSampledData"]["data"], "70 E 72 E E E");
//! assert_eq!(obs["effectivePeriod"]["start"], "2024-01-01T10:00:00.0000000Z");
//! assert_eq!(
//!     obs["identifier"][0]["value"],
//!     "pat-1.dev-1.heartrate.20240101100000Z.20240101105959Z"
//! );
//! assert_eq!(obs["subject"]["identifier"]["value"], "pat-1");
//! ```
#![deny(missing_docs)]

pub mod auth;
mod batch;
pub mod bundle;
mod cache;
pub mod client;
mod error;
pub mod exchange;
pub mod identity;
mod observation;
pub mod retry;
pub mod sampled;
mod template;
pub mod vital_signs;
mod writer;

pub use batch::{map_batch, GroupRecord, MapReport, MappingErrorRecord};
pub use cache::{CacheConfig, TtlCache};
pub use client::{FhirClient, FhirClientConfig, Versioned};
pub use error::{Location, MappingError, TemplateError, TemplateErrorRecord, WriteError};
pub use identity::{IdentityError, ResolutionMode, ResolvedIdentity};
pub use observation::{
    build_observation, identifier_value, logical_id, merge_observation, observation_groups,
    parse_fhir_datetime, to_observation, Merged, ObservationIdentity, Outcome, SERVICE_SYSTEM,
};
pub use template::{
    CodeValueFhirTemplate, FhirCode, FhirCodeableConcept, FhirComponent, FhirTemplates, FhirValue,
    FhirValueKind,
};
pub use writer::{
    FhirWriter, WriteErrorRecord, WriteReport, WriterConfig, WriterStats,
    DEFAULT_BUNDLE_CONCURRENCY, DEFAULT_BUNDLE_SIZE,
};
