//! The streaming core: measurements accumulate per Observation (group key and window) across
//! source batches, and a window is released for writing once `flush_interval` has passed since
//! its first pending measurement, when pending memory passes a cap, or at shutdown. Time is an
//! input: no clock is read.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::group::GroupKey;
use crate::window::{PeriodInterval, Window};
use crate::Measurement;

/// Streaming settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrouperConfig {
    /// A window's pending measurements are released this long after the first of them arrived.
    pub flush_interval: Duration,
    /// Most measurements pending in all windows together; past it the oldest windows are
    /// released early (bounds memory whatever the load).
    pub max_pending: NonZeroUsize,
}

impl Default for GrouperConfig {
    fn default() -> Self {
        GrouperConfig {
            flush_interval: Duration::from_secs(30),
            max_pending: NonZeroUsize::new(500_000).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// What one pending window is: the measurement group it belongs to and its window
/// (`None` for [`PeriodInterval::CorrelationId`], whose window is the correlation id itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowKey {
    /// The measurement group.
    pub key: GroupKey,
    /// The time window, for hourly, daily and instant intervals.
    pub window: Option<Window>,
}

impl WindowKey {
    /// The pending window a measurement goes to under `interval`.
    pub fn of(m: &Measurement, interval: PeriodInterval) -> Self {
        let t = m.occurrence_time_utc;
        WindowKey {
            key: GroupKey::of(m),
            window: match interval {
                PeriodInterval::Instant => Some(Window::instant(t)),
                PeriodInterval::Hourly => Some(Window::hour_of(t)),
                PeriodInterval::Daily => Some(Window::day_of(t)),
                PeriodInterval::CorrelationId => None,
            },
        }
    }
}

/// Accumulates tagged measurements per Observation window and releases whole windows.
///
/// ```
/// use std::time::{Duration, Instant};
/// use chrono::{TimeZone, Utc};
/// use grouper::{Grouper, GrouperConfig, Measurement, MeasurementProperty, PeriodInterval};
///
/// let hr = |second| Measurement {
///     type_name: "heartrate".into(),
///     occurrence_time_utc: Utc.with_ymd_and_hms(2024, 1, 1, 10, 0, second).unwrap(),
///     ingestion_time_utc: None,
///     device_id: "dev-1".into(),
///     patient_id: Some("pat-1".into()),
///     encounter_id: None,
///     correlation_id: None,
///     properties: vec![MeasurementProperty { name: "hr".into(), value: "70".into() }],
/// };
/// let mut g = Grouper::new(GrouperConfig { flush_interval: Duration::from_secs(30), ..Default::default() });
/// let t0 = Instant::now();
/// g.push(0, hr(0), PeriodInterval::Hourly, t0);
/// g.push(1, hr(1), PeriodInterval::Hourly, t0 + Duration::from_secs(1));
/// assert_eq!(g.pending_windows(), 1);
/// assert!(g.expire(t0 + Duration::from_secs(29)).is_empty());
/// let due = g.expire(t0 + Duration::from_secs(30));
/// assert_eq!(due.len(), 2); // both readings, one Observation
/// assert_eq!(g.pending_measurements(), 0);
/// ```
#[derive(Debug)]
pub struct Grouper<T> {
    config: GrouperConfig,
    windows: HashMap<WindowKey, Vec<(T, Measurement)>>,
    /// Windows in order of their first pending measurement (so also of their deadlines).
    order: VecDeque<(Instant, WindowKey)>,
    pending: usize,
}

impl<T> Grouper<T> {
    /// An empty grouper.
    pub fn new(config: GrouperConfig) -> Self {
        Grouper {
            config,
            windows: HashMap::new(),
            order: VecDeque::new(),
            pending: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &GrouperConfig {
        &self.config
    }

    /// Adds a measurement to its window (`interval` is its FHIR template's effective interval).
    pub fn push(
        &mut self,
        tag: T,
        measurement: Measurement,
        interval: PeriodInterval,
        now: Instant,
    ) {
        let key = WindowKey::of(&measurement, interval);
        match self.windows.get_mut(&key) {
            Some(items) => items.push((tag, measurement)),
            None => {
                self.order.push_back((now, key.clone()));
                self.windows.insert(key, vec![(tag, measurement)]);
            }
        }
        self.pending += 1;
    }

    /// Whether pending measurements have reached the cap (the caller should [`Self::expire`]).
    pub fn is_over_cap(&self) -> bool {
        self.pending >= self.config.max_pending.get()
    }

    /// Releases every window whose first pending measurement is `flush_interval` old, then the
    /// oldest windows while the cap is exceeded. Measurements come out window by window, each
    /// window's in arrival order.
    pub fn expire(&mut self, now: Instant) -> Vec<(T, Measurement)> {
        let mut out = Vec::new();
        while let Some((first_at, _)) = self.order.front() {
            let due = now.saturating_duration_since(*first_at) >= self.config.flush_interval;
            if !due && !self.is_over_cap() {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.release(&key, &mut out);
            }
        }
        out
    }

    /// Releases every pending window (shutdown, end of a file).
    pub fn flush_all(&mut self) -> Vec<(T, Measurement)> {
        let mut out = Vec::with_capacity(self.pending);
        while let Some((_, key)) = self.order.pop_front() {
            self.release(&key, &mut out);
        }
        out
    }

    fn release(&mut self, key: &WindowKey, out: &mut Vec<(T, Measurement)>) {
        if let Some(items) = self.windows.remove(key) {
            self.pending -= items.len();
            out.extend(items);
        }
    }

    /// When the oldest pending window is due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order
            .front()
            .map(|(t, _)| *t + self.config.flush_interval)
    }

    /// How long the oldest pending measurement has waited.
    pub fn oldest_age(&self, now: Instant) -> Duration {
        // Windows leave only from the front of `order`, so its front is the oldest.
        self.order
            .front()
            .map(|(t, _)| now.saturating_duration_since(*t))
            .unwrap_or_default()
    }

    /// Measurements pending in all windows.
    pub fn pending_measurements(&self) -> usize {
        self.pending
    }

    /// Windows (future Observation writes) pending.
    pub fn pending_windows(&self) -> usize {
        self.windows.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }
}
