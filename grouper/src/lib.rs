//! Groups normalized measurements into observation groups.
//!
//! Two layers, as everywhere in this workspace:
//!
//! * a pure core with no I/O and no clock reads: [`group_measurements`] groups a batch by
//!   [`GroupKey`] (deviceId, type, patientId, encounterId, correlationId), keeping per occurrence
//!   time the measurement with the latest ingestion time;
//!   [`MeasurementGroup::observation_groups`] splits a group into windows by the FHIR template's
//!   [`PeriodInterval`]; [`Grouper`] accumulates a stream per Observation window across
//!   batches and releases a window `flush_interval` after its first pending measurement (less
//!   a fixed per-window share of `spread`, so windows that opened together are written apart),
//!   past a memory cap, or at shutdown (`push(tag, m, interval, now)` / `expire(now)` / `flush_all()`).
//!   Its async shell is the pipeline's group stage (`pipeline/src/group.rs`).
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use grouper::{group_measurements, PeriodInterval};
//! use grouper::{Measurement, MeasurementProperty};
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
//! let groups = group_measurements([(0, hr(5, "70")), (1, hr(6, "72")), (2, hr(5, "71"))]);
//! assert_eq!(groups.len(), 1);
//! // Same occurrence time, no ingestion times: the later arrival wins.
//! assert_eq!(groups[0].entries.len(), 2);
//! assert_eq!(groups[0].superseded, vec![0]);
//!
//! let windows = groups[0].observation_groups(PeriodInterval::Hourly).unwrap();
//! assert_eq!(windows.len(), 1);
//! assert_eq!(windows[0].id_segment(), "20240101100000Z.20240101105959Z");
//! assert_eq!(windows[0].values["hr"].len(), 2);
//! ```
#![deny(missing_docs)]

mod group;
mod stream;
mod window;

pub use group::{group_measurements, Entry, GroupKey, MeasurementGroup};
pub use normalizer::{Measurement, MeasurementProperty};
pub use stream::{Grouper, GrouperConfig, WindowKey};
pub use window::{
    format_round_trip, GroupError, ObservationGroup, PeriodInterval, TimeValue, Window,
};
