//! Observation windows (`periodInterval`) and observation groups.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use serde::{Serialize, Serializer};

use crate::group::{GroupKey, MeasurementGroup};

/// The FHIR template's `periodInterval`: how measurements are windowed into Observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeriodInterval {
    /// `0` ("Single"): one window per distinct instant.
    Instant,
    /// `60`: the UTC hour, `[hh:00:00, hh:59:59.9999999]`.
    Hourly,
    /// `1440`: the UTC day, `[00:00:00, 23:59:59.9999999]`.
    Daily,
    /// `-1`: one window per correlation id, spanning its first to last measurement.
    CorrelationId,
}

impl PeriodInterval {
    /// The interval for a template's integer value (minutes), if it is one of 0, 60, 1440, -1.
    pub fn from_minutes(minutes: i64) -> Option<Self> {
        match minutes {
            0 => Some(PeriodInterval::Instant),
            60 => Some(PeriodInterval::Hourly),
            1440 => Some(PeriodInterval::Daily),
            -1 => Some(PeriodInterval::CorrelationId),
            _ => None,
        }
    }

    /// The interval for the reference's enum names (`Single`, `Hourly`, `Daily`,
    /// `CorrelationId`), compared case-insensitively.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "single" => Some(PeriodInterval::Instant),
            "hourly" => Some(PeriodInterval::Hourly),
            "daily" => Some(PeriodInterval::Daily),
            "correlationid" => Some(PeriodInterval::CorrelationId),
            _ => None,
        }
    }

    /// The template value in minutes (0, 60, 1440 or -1).
    pub fn minutes(self) -> i64 {
        match self {
            PeriodInterval::Instant => 0,
            PeriodInterval::Hourly => 60,
            PeriodInterval::Daily => 1440,
            PeriodInterval::CorrelationId => -1,
        }
    }
}

impl Serialize for PeriodInterval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.minutes())
    }
}

/// One .NET tick: the reference's time resolution.
const TICK: Duration = Duration::nanoseconds(100);

/// An observation window, both ends inclusive (`end` is the last tick of an hour or day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First instant of the window.
    pub start: DateTime<Utc>,
    /// Last instant of the window (inclusive).
    pub end: DateTime<Utc>,
}

impl Window {
    /// The window `[t, t]`.
    pub fn instant(t: DateTime<Utc>) -> Self {
        Window { start: t, end: t }
    }

    /// The UTC hour holding `t`: `[hh:00:00, hh:59:59.9999999]`.
    pub fn hour_of(t: DateTime<Utc>) -> Self {
        let start = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), 0, 0)
            .single()
            .unwrap_or(t);
        Window {
            start,
            end: start + Duration::hours(1) - TICK,
        }
    }

    /// The UTC day holding `t`: `[00:00:00, 23:59:59.9999999]`.
    pub fn day_of(t: DateTime<Utc>) -> Self {
        let start = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
            .single()
            .unwrap_or(t);
        Window {
            start,
            end: start + Duration::days(1) - TICK,
        }
    }

    /// The window's part of the Observation identifier: `yyyyMMddHHmmssZ.yyyyMMddHHmmssZ`.
    pub fn id_segment(&self) -> String {
        format!(
            "{}.{}",
            self.start.format("%Y%m%d%H%M%SZ"),
            self.end.format("%Y%m%d%H%M%SZ")
        )
    }
}

/// Formats an instant as .NET's round-trip `"o"` format for UTC times:
/// `2019-01-01T00:00:00.0000000Z` (always seven fractional digits, sub-tick digits dropped).
pub fn format_round_trip(t: &DateTime<Utc>) -> String {
    let ticks = t.timestamp_subsec_nanos() / 100;
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        ticks.min(9_999_999)
    )
}

/// One value of one property at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimeValue {
    /// When the value was measured.
    #[serde(serialize_with = "ser_time")]
    pub time: DateTime<Utc>,
    /// The value, as the normalizer rendered it.
    pub value: String,
}

fn ser_time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_round_trip(t))
}

/// Why a measurement group could not be split into observation groups.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The template groups by correlation id but the measurements have none.
    #[error(
        "measurement type \"{type_name}\" of device \"{device_id}\" is grouped by correlation id \
         (periodInterval -1) but the measurement has no correlation id"
    )]
    CorrelationIdNotDefined {
        /// The measurement type.
        type_name: String,
        /// The device identifier.
        device_id: String,
    },
}

impl GroupError {
    /// The reference's exception name for this error.
    pub fn type_name(&self) -> &'static str {
        match self {
            GroupError::CorrelationIdNotDefined { .. } => "CorrelationIdNotDefinedException",
        }
    }
}

/// The values of one window of one measurement group: what one Observation is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservationGroup<T = ()> {
    /// The measurement group's key.
    #[serde(flatten)]
    pub key: GroupKey,
    /// The interval the window was made with.
    pub period_interval: PeriodInterval,
    /// The window.
    #[serde(serialize_with = "ser_window", rename = "window")]
    pub window: Window,
    /// Values per property name, sorted by time; for one property and one time the first value
    /// is kept (as the reference's `SortedObservationGroup`).
    pub values: BTreeMap<Arc<str>, Vec<TimeValue>>,
    /// Tags of the measurements in this window, in time order.
    #[serde(rename = "events")]
    pub tags: Vec<T>,
}

fn ser_window<S: Serializer>(w: &Window, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Window", 2)?;
    st.serialize_field("start", &format_round_trip(&w.start))?;
    st.serialize_field("end", &format_round_trip(&w.end))?;
    st.end()
}

impl<T> ObservationGroup<T> {
    /// The window's part of the Observation identifier: the correlation id for
    /// [`PeriodInterval::CorrelationId`], otherwise `yyyyMMddHHmmssZ.yyyyMMddHHmmssZ`.
    pub fn id_segment(&self) -> String {
        match (self.period_interval, &self.key.correlation_id) {
            (PeriodInterval::CorrelationId, Some(c)) => c.to_string(),
            _ => self.window.id_segment(),
        }
    }
}

fn has_text(s: &Option<Arc<str>>) -> bool {
    s.as_deref().is_some_and(|s| !s.trim().is_empty())
}

impl<T: Clone> MeasurementGroup<T> {
    /// Splits the group into observation groups by `interval`, in window order.
    ///
    /// [`PeriodInterval::CorrelationId`] needs a correlation id
    /// ([`GroupError::CorrelationIdNotDefined`] otherwise) and gives one window from the first to
    /// the last measurement. An empty group gives no observation group.
    pub fn observation_groups(
        &self,
        interval: PeriodInterval,
    ) -> Result<Vec<ObservationGroup<T>>, GroupError> {
        if interval == PeriodInterval::CorrelationId && !has_text(&self.key.correlation_id) {
            return Err(GroupError::CorrelationIdNotDefined {
                type_name: self.key.type_name.to_string(),
                device_id: self.key.device_id.to_string(),
            });
        }
        let mut windows: BTreeMap<Window, ObservationGroup<T>> = BTreeMap::new();
        let correlation_window = match (self.entries.first(), self.entries.last()) {
            (Some(first), Some(last)) => Window {
                start: first.measurement.occurrence_time_utc,
                end: last.measurement.occurrence_time_utc,
            },
            _ => return Ok(Vec::new()),
        };
        for entry in &self.entries {
            let t = entry.measurement.occurrence_time_utc;
            let window = match interval {
                PeriodInterval::Instant => Window::instant(t),
                PeriodInterval::Hourly => Window::hour_of(t),
                PeriodInterval::Daily => Window::day_of(t),
                PeriodInterval::CorrelationId => correlation_window,
            };
            let group = windows.entry(window).or_insert_with(|| ObservationGroup {
                key: self.key.clone(),
                period_interval: interval,
                window,
                values: BTreeMap::new(),
                tags: Vec::new(),
            });
            group.tags.push(entry.tag.clone());
            for p in &entry.measurement.properties {
                let values = group.values.entry(p.name.clone()).or_default();
                // Entries come in time order, so a value at the same time can only be the last.
                if values.last().is_some_and(|v| v.time == t) {
                    continue;
                }
                values.push(TimeValue {
                    time: t,
                    value: p.value.clone(),
                });
            }
        }
        Ok(windows.into_values().collect())
    }
}
