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
    // Slot of each value by integer arithmetic (the window's slots are `slot_count`; a value
    // at or after the last slot's start but before its end still falls in it), then the string
    // in one pass: no date arithmetic per slot, which at 3,600 slots an hour and thousands of
    // Observations a flush was the writer's largest cost.
    let n = usize::try_from(slot_count(start, end, period_ms)).unwrap_or(usize::MAX);
    let period = period_nanos(period_ms);
    let mut slots: Vec<Option<&str>> = vec![None; n.min(MAX_SLOTS as usize)];
    let mut sorted: Vec<&TimeValue> = values.iter().collect();
    // Stable: of values at one time, the last given wins (as it does slot by slot).
    sorted.sort_by_key(|v| v.time);
    for v in sorted {
        let Some(offset) = (v.time - start).num_nanoseconds().map(i128::from) else {
            continue;
        };
        if offset < 0 {
            continue;
        }
        if let Some(slot) = usize::try_from(offset / period)
            .ok()
            .and_then(|i| slots.get_mut(i))
        {
            *slot = Some(&v.value);
        }
    }
    let mut out = String::with_capacity(slots.len() * 4);
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(slot.unwrap_or("E"));
    }
    out
}

/// [`period_duration`] in nanoseconds (at least one tick, 100 ns).
fn period_nanos(period_ms: f64) -> i128 {
    period_duration(period_ms)
        .num_nanoseconds()
        .unwrap_or(i64::MAX)
        .max(1) as i128
}

/// Decodes a `data` string laid out from `start` at `period_ms`, dropping `E` (and empty)
/// tokens; each value gets its slot's start time.
pub fn sampled_data_to_time_values(
    data: &str,
    start: DateTime<Utc>,
    period_ms: f64,
) -> Vec<TimeValue> {
    let period = period_duration(period_ms);
    let mut out = Vec::new();
    for (i, token) in data.split(' ').enumerate() {
        if token == "E" || token.is_empty() {
            continue;
        }
        // The slot's start, computed only for slots that hold a value.
        let Some(time) = i32::try_from(i)
            .ok()
            .and_then(|i| period.checked_mul(i))
            .and_then(|d| start.checked_add_signed(d))
        else {
            break;
        };
        out.push(TimeValue {
            time,
            value: token.to_string(),
        });
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

/// The `data` of an existing SampledData (`old`, laid out from `old_start`) merged with
/// `incoming` (time-sorted) and rebuilt over `[start, end]`: what
/// `build_sampled_data(&merge_time_values(&sampled_data_to_time_values(old, old_start, p), incoming), start, end, p)`
/// gives, without a `TimeValue` (and its `String`) per existing sample. An hourly 1 Hz
/// Observation holds up to 3,600 of them, and a flush merges into thousands of Observations.
pub fn merge_sampled_data(
    old: &str,
    old_start: DateTime<Utc>,
    incoming: &[TimeValue],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period_ms: f64,
) -> String {
    let n = usize::try_from(slot_count(start, end, period_ms)).unwrap_or(usize::MAX);
    let period = period_nanos(period_ms);
    // Per slot: the value and its time (ns from `start`); a later time wins, and on equal
    // times an incoming value wins over an existing one (the merge's rule), a later incoming
    // one over an earlier.
    let mut slots: Vec<Option<(&str, i128)>> = vec![None; n.min(MAX_SLOTS as usize)];
    let shift = (old_start - start).num_nanoseconds().map(i128::from);
    let old_period = period_duration(period_ms);
    if let Some(shift) = shift {
        // As the decoder does: each token at its slot's start, stopping at the first slot
        // whose start cannot be computed (past an `i32` index, `i64` nanoseconds, or the
        // latest representable time). That bound is worked out once, so the loop (an hourly
        // 1 Hz window is 3,600 tokens per merge) is integer arithmetic only.
        let old_period_ns = i128::from(old_period.num_nanoseconds().unwrap_or(i64::MAX)).max(1);
        let room = (DateTime::<Utc>::MAX_UTC - old_start)
            .num_nanoseconds()
            .unwrap_or(i64::MAX);
        let last = (i128::from(room) / old_period_ns).min(i128::from(i32::MAX));
        for (i, token) in old.split(' ').enumerate() {
            if token == "E" || token.is_empty() {
                continue;
            }
            let i = i as i128;
            if i > last {
                break;
            }
            place(&mut slots, token, shift + i * old_period_ns, period, false);
        }
    } else {
        // Too far apart for nanoseconds: by times, as the definition does.
        return build_sampled_data(
            &merge_time_values(
                &sampled_data_to_time_values(old, old_start, period_ms),
                incoming,
            ),
            start,
            end,
            period_ms,
        );
    }
    let mut sorted: Vec<&TimeValue> = incoming.iter().collect();
    sorted.sort_by_key(|v| v.time);
    for v in sorted {
        if let Some(offset) = (v.time - start).num_nanoseconds().map(i128::from) {
            place(&mut slots, &v.value, offset, period, true);
        }
    }
    let mut out = String::with_capacity(slots.len() * 4);
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(slot.map_or("E", |(v, _)| v));
    }
    out
}

/// Puts `value` at time `offset` (ns from the window start) into its slot, if it falls in one
/// and wins against what is there.
fn place<'a>(
    slots: &mut [Option<(&'a str, i128)>],
    value: &'a str,
    offset: i128,
    period: i128,
    incoming: bool,
) {
    if offset < 0 {
        return;
    }
    let Some(slot) = usize::try_from(offset / period)
        .ok()
        .and_then(|i| slots.get_mut(i))
    else {
        return;
    };
    let wins = match slot {
        None => true,
        Some((_, at)) => offset > *at || (incoming && offset == *at),
    };
    if wins {
        *slot = Some((value, offset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The slot-by-slot definition the fast versions must equal.
    fn build_slot_by_slot(
        values: &[TimeValue],
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        period_ms: f64,
    ) -> String {
        let mut sorted: Vec<&TimeValue> = values.iter().collect();
        sorted.sort_by_key(|v| v.time);
        let period = period_duration(period_ms);
        let mut out = Vec::new();
        let (mut i, mut slot) = (0, start);
        while slot <= end {
            let next = slot + period;
            while i < sorted.len() && sorted[i].time < slot {
                i += 1;
            }
            let mut value = "E";
            while i < sorted.len() && sorted[i].time < next {
                value = &sorted[i].value;
                i += 1;
            }
            out.push(value);
            slot = next;
        }
        out.join(" ")
    }

    fn decode_slot_by_slot(data: &str, start: DateTime<Utc>, period_ms: f64) -> Vec<TimeValue> {
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

    /// The merge's precomputed bound stops where the decoder stops: at the last slot whose
    /// start is representable.
    #[test]
    fn merge_near_the_latest_time_stops_where_the_decoder_does() {
        let max = DateTime::<Utc>::MAX_UTC;
        for back_ms in [0i64, 1, 999, 1000, 2500, 4000] {
            let old_start = max - Duration::milliseconds(back_ms);
            let start = old_start - Duration::milliseconds(1500);
            let old = "1 2 E 4 5 6";
            let incoming = [TimeValue {
                time: start,
                value: "9".into(),
            }];
            let definition = build_sampled_data(
                &merge_time_values(
                    &sampled_data_to_time_values(old, old_start, 1000.0),
                    &incoming,
                ),
                start,
                max,
                1000.0,
            );
            assert_eq!(
                merge_sampled_data(old, old_start, &incoming, start, max, 1000.0),
                definition,
                "{back_ms} ms before the latest time"
            );
        }
    }

    proptest! {
        #[test]
        fn merge_equals_decode_merge_and_build(
            period_ms in prop_oneof![Just(1000.0), Just(5000.0), Just(7.5), 0.001f64..100_000.0],
            old_shift_ms in -20_000i64..20_000,
            span_ms in 0i64..200_000,
            old in proptest::collection::vec(prop_oneof![Just(None), (0u32..1000).prop_map(Some)], 0..80),
            incoming in proptest::collection::vec((-30_000i64..250_000, 0u32..1000), 0..40),
        ) {
            let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
            let end = start + Duration::milliseconds(span_ms);
            let old_start = start + Duration::milliseconds(old_shift_ms);
            prop_assume!(slot_count(start, end, period_ms) <= 200_000);
            let old: String = old
                .iter()
                .map(|v| v.map_or("E".to_string(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(" ");
            let mut incoming: Vec<TimeValue> = incoming
                .iter()
                .map(|(ms, v)| TimeValue {
                    time: start + Duration::milliseconds(*ms),
                    value: v.to_string(),
                })
                .collect();
            incoming.sort_by_key(|v| v.time);
            let definition = build_sampled_data(
                &merge_time_values(&sampled_data_to_time_values(&old, old_start, period_ms), &incoming),
                start,
                end,
                period_ms,
            );
            prop_assert_eq!(
                merge_sampled_data(&old, old_start, &incoming, start, end, period_ms),
                definition
            );
        }

        #[test]
        fn fast_build_and_decode_equal_the_slot_by_slot_definition(
            period_ms in prop_oneof![Just(1000.0), Just(5000.0), Just(7.5), 0.00001f64..100_000.0],
            span_ms in 0i64..400_000,
            values in proptest::collection::vec((-50_000i64..500_000, 0u32..1000), 0..60),
        ) {
            let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
            let end = start + Duration::milliseconds(span_ms);
            prop_assume!(slot_count(start, end, period_ms) <= 200_000);
            let values: Vec<TimeValue> = values
                .iter()
                .map(|(ms, v)| TimeValue {
                    time: start + Duration::milliseconds(*ms),
                    value: v.to_string(),
                })
                .collect();
            let data = build_sampled_data(&values, start, end, period_ms);
            prop_assert_eq!(&data, &build_slot_by_slot(&values, start, end, period_ms));
            prop_assert_eq!(
                sampled_data_to_time_values(&data, start, period_ms),
                decode_slot_by_slot(&data, start, period_ms)
            );
        }
    }
}
