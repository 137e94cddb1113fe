//! The streaming core: measurements accumulate per Observation (group key and window) across
//! source batches, and a window is released for writing once `flush_interval` (less the
//! window's fixed share of `spread`) has passed since its first pending measurement, when
//! pending memory passes a cap, or at shutdown. Time is an input: no clock is read.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::group::GroupKey;
use crate::window::{PeriodInterval, Window};
use crate::Measurement;

/// Streaming settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrouperConfig {
    /// A window's pending measurements are released at most this long after the first of
    /// them arrived.
    pub flush_interval: Duration,
    /// Windows are released up to this much earlier than `flush_interval`, each by a fixed
    /// offset derived from its key. Windows that opened together (every device's hour begins
    /// in the same second) are then written over `spread` rather than all at once, and stay
    /// apart afterwards; a window is never held longer than `flush_interval`. Zero: every
    /// window exactly `flush_interval`.
    pub spread: Duration,
    /// Most measurements pending in all windows together; past it the windows due soonest are
    /// released early (bounds memory whatever the load).
    pub max_pending: NonZeroUsize,
}

impl GrouperConfig {
    /// The settings for `flush_interval`: a quarter of it as `spread`, the default cap.
    pub fn with_flush_interval(flush_interval: Duration) -> Self {
        GrouperConfig {
            flush_interval,
            spread: flush_interval / 4,
            ..GrouperConfig::default()
        }
    }
}

impl Default for GrouperConfig {
    fn default() -> Self {
        let flush_interval = Duration::from_secs(30);
        GrouperConfig {
            flush_interval,
            spread: flush_interval / 4,
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
/// let mut g = Grouper::new(GrouperConfig {
///     flush_interval: Duration::from_secs(30),
///     spread: Duration::ZERO,
///     ..Default::default()
/// });
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
    windows: HashMap<WindowKey, Pending<T>>,
    /// Pending windows by release time (ties: opening order).
    by_due: BTreeMap<(Instant, u64), WindowKey>,
    /// Pending windows by their first measurement's arrival (for the oldest's age).
    by_age: BTreeSet<(Instant, u64)>,
    /// Opening order of windows, to tell apart two windows opened at the same instant.
    opened: u64,
    pending: usize,
}

#[derive(Debug)]
struct Pending<T> {
    id: u64,
    first_at: Instant,
    due_at: Instant,
    items: Vec<(T, Measurement)>,
}

impl<T> Grouper<T> {
    /// An empty grouper.
    pub fn new(config: GrouperConfig) -> Self {
        Grouper {
            config,
            windows: HashMap::new(),
            by_due: BTreeMap::new(),
            by_age: BTreeSet::new(),
            opened: 0,
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
            Some(w) => w.items.push((tag, measurement)),
            None => {
                let id = self.opened;
                self.opened += 1;
                let due_at = now + self.config.flush_interval - self.offset(&key);
                self.by_due.insert((due_at, id), key.clone());
                self.by_age.insert((now, id));
                self.windows.insert(
                    key,
                    Pending {
                        id,
                        first_at: now,
                        due_at,
                        items: vec![(tag, measurement)],
                    },
                );
            }
        }
        self.pending += 1;
    }

    /// The window's fixed share of `spread`: its key's hash, scaled (the same key always
    /// gets the same offset, so windows stay apart from one flush to the next).
    fn offset(&self, key: &WindowKey) -> Duration {
        let spread = self.config.spread.min(self.config.flush_interval);
        if spread.is_zero() {
            return Duration::ZERO;
        }
        // A fixed-key hasher: the same offsets in every run.
        let mut h = DefaultHasher::new();
        key.key.hash(&mut h);
        let share = h.finish() % 1024;
        let nanos = spread.as_nanos() * u128::from(share) / 1024;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Whether pending measurements have reached the cap (the caller should [`Self::expire`]).
    pub fn is_over_cap(&self) -> bool {
        self.pending >= self.config.max_pending.get()
    }

    /// Releases every window that is due, then the windows due soonest while the cap is
    /// exceeded. Measurements come out window by window (in order of release time), each
    /// window's in arrival order.
    pub fn expire(&mut self, now: Instant) -> Vec<(T, Measurement)> {
        let mut out = Vec::new();
        while let Some((&(due_at, _), _)) = self.by_due.first_key_value() {
            if due_at > now && !self.is_over_cap() {
                break;
            }
            if let Some((_, key)) = self.by_due.pop_first() {
                self.release(&key, &mut out);
            }
        }
        out
    }

    /// Releases every pending window (shutdown, end of a file).
    pub fn flush_all(&mut self) -> Vec<(T, Measurement)> {
        let mut out = Vec::with_capacity(self.pending);
        while let Some((_, key)) = self.by_due.pop_first() {
            self.release(&key, &mut out);
        }
        out
    }

    fn release(&mut self, key: &WindowKey, out: &mut Vec<(T, Measurement)>) {
        if let Some(w) = self.windows.remove(key) {
            self.by_due.remove(&(w.due_at, w.id));
            self.by_age.remove(&(w.first_at, w.id));
            self.pending -= w.items.len();
            out.extend(w.items);
        }
    }

    /// When the next pending window is due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_due
            .first_key_value()
            .map(|(&(due_at, _), _)| due_at)
    }

    /// How long the oldest pending measurement has waited.
    pub fn oldest_age(&self, now: Instant) -> Duration {
        self.by_age
            .first()
            .map(|&(first_at, _)| now.saturating_duration_since(first_at))
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
