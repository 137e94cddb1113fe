//! The streaming core: tumbling batches closed by size or age. Time is an input.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use crate::Measurement;
use serde::Deserialize;

use crate::group::{Accumulator, MeasurementGroup};

/// Batching settings (strict serde; every field has a documented default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GrouperConfig {
    /// Close the batch once it holds this many measurements. Default 300 (the reference's batch
    /// size).
    #[serde(default = "default_max_events")]
    pub max_events: NonZeroUsize,
    /// Close the batch once its oldest measurement has waited this long, in milliseconds.
    /// Default 5000 (5 s; the reference waits about 5 minutes).
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
}

fn default_max_events() -> NonZeroUsize {
    NonZeroUsize::new(300).unwrap_or(NonZeroUsize::MIN)
}

fn default_max_delay_ms() -> u64 {
    5_000
}

impl Default for GrouperConfig {
    fn default() -> Self {
        GrouperConfig {
            max_events: default_max_events(),
            max_delay_ms: default_max_delay_ms(),
        }
    }
}

impl GrouperConfig {
    /// The maximum delay as a [`Duration`].
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }
}

/// Groups measurements into tumbling batches of [`MeasurementGroup`]s.
///
/// A batch closes when it holds `max_events` measurements ([`Grouper::push`] returns it) or when
/// its first measurement is `max_delay` old ([`Grouper::expire`] returns it). No clock is read:
/// every call takes `now`.
#[derive(Debug)]
pub struct Grouper<T = ()> {
    config: GrouperConfig,
    acc: Accumulator<T>,
    len: usize,
    opened_at: Option<Instant>,
}

impl<T> Grouper<T> {
    /// An empty grouper.
    pub fn new(config: GrouperConfig) -> Self {
        Grouper {
            config,
            acc: Accumulator::default(),
            len: 0,
            opened_at: None,
        }
    }

    /// Adds a measurement; returns the closed batch when this one filled it.
    pub fn push(
        &mut self,
        tag: T,
        measurement: Measurement,
        now: Instant,
    ) -> Option<Vec<MeasurementGroup<T>>> {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
        self.acc.push(tag, measurement);
        self.len += 1;
        if self.len >= self.config.max_events.get() {
            Some(self.flush_all())
        } else {
            None
        }
    }

    /// Returns the open batch if its first measurement has waited `max_delay` or longer.
    pub fn expire(&mut self, now: Instant) -> Option<Vec<MeasurementGroup<T>>> {
        match self.deadline() {
            Some(deadline) if now >= deadline => Some(self.flush_all()),
            _ => None,
        }
    }

    /// Closes the open batch whatever its size and age (empty when nothing is pending).
    pub fn flush_all(&mut self) -> Vec<MeasurementGroup<T>> {
        self.len = 0;
        self.opened_at = None;
        self.acc.take()
    }

    /// When the open batch expires, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.config.max_delay())
    }

    /// Number of measurements in the open batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.acc.is_empty()
    }
}
