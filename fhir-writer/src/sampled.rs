//! SampledData streams: building the `data` string over a window, decoding it back to time/value
//! pairs, and merging time/value lists (as the reference's `SampledDataProcessor`).

use chrono::{DateTime, Duration, Utc};
use grouper::TimeValue;

/// Largest number of slots one SampledData stream may have (a day at 10 ms is 8.64 M).
pub const MAX_SLOTS: u64 = 10_000_000;

/// The slot width for `defaultPeriod` milliseconds, truncated to .NET ticks (100 ns), at least
/// one tick.
pub fn period_duration(period_ms: f64) -> Duration {
    let ticks = (period_ms * 10_000.0).trunc();
    let ticks = if ticks.is_finite() && ticks >= 1.0 {
        ticks.min(1e15) as i64
    } else {
        1
    };
    Duration::nanoseconds(ticks * 100)
}

/// How many slots `[start, end]` holds at `period_ms` (slot starts `<= end`).
pub fn slot_count(start: DateTime<Utc>, end: DateTime<Utc>, period_ms: f64) -> u64 {
    if end < start {
        return 0;
    }
    let period = period_duration(period_ms)
        .num_nanoseconds()
        .unwrap_or(i64::MAX)
        .max(1) as i128;
    let span = (end - start)
        .num_nanoseconds()
        .map(i128::from)
        .unwrap_or(i128::MAX / 4);
    u64::try_from(span / period + 1).unwrap_or(u64::MAX)
}

/// Builds the SampledData `data` string for the window `[start, end]`: one slot per `period_ms`
/// from `start` while the slot start is `<= end`; a slot holds the last value whose time is in
/// `[slot, slot + period)`; empty slots are `E`; tokens are space separated. Values outside the
/// window are ignored. Callers bound the slot count with [`slot_count`] / [`MAX_SLOTS`].
pub fn build_sampled_data(
    values: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: f64,
) -> String {
    let mut sorted: Vec<&TimeValue> = values.iter().collect();
    sorted.sort_by_key(|v| v.time);
    let period = period_duration(period_ms);
    let mut out = String::new();
    let mut i = 0;
    let mut slot = start;
    while slot <= end {
        let next = slot + period;
        while i < sorted.len() && sorted[i].time < slot {
            i += 1;
        }
        let mut value: Option<&str> = None;
        while i < sorted.len() && sorted[i].time < next {
            value = Some(&sorted[i].value);
            i += 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(value.unwrap_or("E"));
        slot = next;
    }
    out
}

/// Decodes a `data` string laid out from `start` at `period_ms`, dropping `E` (and empty)
/// tokens; each value gets its slot's start time.
pub fn sampled_data_to_time_values(
    data: &str,
    start: DateTime<Utc>,
    period_ms: f64,
) -> Vec<TimeValue> {
    let period = period_duration(period_ms);
    let mut time = start;
    let mut out = Vec::new();
    for token in data.split(' ') {
        if token != "E" && !token.is_empty() {
            out.push(TimeValue {
                time,
                value: token.to_string(),
            });
        }
        time += period;
    }
    out
}

/// Merges two time-sorted lists; on equal times the incoming value replaces the existing one.
pub fn merge_time_values(existing: &[TimeValue], incoming: &[TimeValue]) -> Vec<TimeValue> {
    let mut out = Vec::with_capacity(existing.len() + incoming.len());
    let (mut a, mut b) = (0, 0);
    while a < existing.len() || b < incoming.len() {
        match (existing.get(a), incoming.get(b)) {
            (Some(x), Some(y)) if x.time < y.time => {
                out.push(x.clone());
                a += 1;
            }
            (Some(x), Some(y)) if x.time > y.time => {
                out.push(y.clone());
                b += 1;
            }
            (Some(_), Some(y)) => {
                out.push(y.clone());
                a += 1;
                b += 1;
            }
            (Some(x), None) => {
                out.push(x.clone());
                a += 1;
            }
            (None, Some(y)) => {
                out.push(y.clone());
                b += 1;
            }
            (None, None) => break,
        }
    }
    out
}
