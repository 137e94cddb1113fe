//! `iomt review`: a page for remote-monitoring teams, reading any FHIR R4 server with the
//! connector's own FHIR credentials. Its JSON API does the FHIR work and the downsampling
//! server-side, so the page stays light:
//!
//! * `GET /api/triage?offset=&count=&q=` — one page of the triage list (out-of-range first, then
//!   devices gone quiet, then the rest; `q` filters by patient identifier or name), from a
//!   snapshot rebuilt in the background ([`triage`]);
//! * `GET /api/patients/{id}` — one patient: devices with last-seen times, latest vitals;
//! * `GET /api/patients/{id}/charts?from=&to=&points=N` — one chart per Observation kind
//!   (components as lines of one chart), thresholds, gaps, downsampled to N points per line;
//! * `GET /api/patients/{id}/waveform?key=&from=&to=` — the real samples of a high-rate
//!   SampledData series in a window (the ECG viewer);
//! * `GET /api/patients` (every patient, in triage order) and
//!   `GET /api/patients/{id}/series?points=N` (name → points) — the first version's API;
//! * `GET /api/health` — the connector's pipeline counters from its `/metrics`.
//!
//! With sign-in configured ([`auth`]) every page and API call needs a session; each call that
//! returns one patient's data writes an audit line (target `iomt_review_audit`, level info:
//! who, which patient by FHIR id, what). Every answer carries security headers (CSP without
//! inline script or style, `frame-ancestors 'none'`, `X-Frame-Options: DENY`, `no-store`).

pub mod auth;
mod server;
pub mod triage;

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

/// Out-of-range thresholds: code → (low, high), inclusive.
pub type Thresholds = BTreeMap<String, (f64, f64)>;

/// Default thresholds by LOINC code: heart rate, SpO2, blood pressure, temperature, glucose.
/// `iomt review --thresholds FILE` replaces them (`{"8867-4": [40, 130], ...}`).
pub fn default_thresholds() -> Thresholds {
    [
        ("8867-4", (40.0, 130.0)),
        ("59408-5", (92.0, 100.0)),
        ("2708-6", (92.0, 100.0)),
        ("8480-6", (90.0, 160.0)),
        ("8462-4", (50.0, 100.0)),
        ("8310-5", (35.5, 38.0)),
        ("2339-0", (70.0, 180.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Reads a thresholds file: `{"<code>": [low, high], ...}`.
pub fn load_thresholds(path: &std::path::Path) -> Result<Thresholds> {
    let text = std::fs::read_to_string(path)?;
    let raw: BTreeMap<String, (f64, f64)> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (expected {{\"<code>\": [low, high]}})",
            path.display()
        )
    })?;
    Ok(raw)
}

/// One point of a series; `None` value = a gap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Time (RFC 3339).
    pub t: DateTime<Utc>,
    /// Value, or `None` for a gap.
    pub v: Option<f64>,
}

/// The Observation's label: `code.text` (the template's type name), the key of its series.
pub(crate) fn label_of(o: &Value) -> String {
    o["code"]["text"]
        .as_str()
        .unwrap_or("observation")
        .to_string()
}

/// Display names for codes whose coding display is a term id rather than words.
const KNOWN_DISPLAYS: &[(&str, &str)] = &[("131329", "ECG lead I"), ("131330", "ECG lead II")];

/// What a code means, for people: the display of its first coding that is not the service's
/// own, else its text.
pub(crate) fn display_of(cc: &Value) -> Option<String> {
    let codings = cc["coding"].as_array().into_iter().flatten();
    for c in codings.filter(|c| c["system"] != fhir_writer::SERVICE_SYSTEM) {
        if let Some((_, d)) = KNOWN_DISPLAYS
            .iter()
            .find(|(code, _)| c["code"].as_str() == Some(code))
        {
            return Some(d.to_string());
        }
        if let Some(d) = c["display"].as_str() {
            return Some(d.to_string());
        }
    }
    cc["text"].as_str().map(str::to_string)
}

/// The unit of a value element (`valueQuantity.unit`/`code`, `valueSampledData.origin`).
pub(crate) fn unit_of(el: &Value) -> Option<String> {
    let q = if el.get("valueQuantity").is_some() {
        &el["valueQuantity"]
    } else {
        &el["valueSampledData"]["origin"]
    };
    q["unit"]
        .as_str()
        .or_else(|| q["code"].as_str())
        .map(str::to_string)
}

/// A UCUM unit as people write it.
pub(crate) fn unit_display(u: &str) -> String {
    match u {
        "Cel" => "°C".into(),
        "[degF]" => "°F".into(),
        "/min" | "{beats}/min" => "/min".into(),
        other => other.to_string(),
    }
}

pub(crate) fn code_of(cc: &Value) -> Option<String> {
    cc["coding"]
        .as_array()?
        .iter()
        .find(|c| c["system"] != fhir_writer::SERVICE_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .map(str::to_string)
}

pub(crate) fn start_of(o: &Value) -> Option<DateTime<Utc>> {
    let s = o["effectiveDateTime"]
        .as_str()
        .or_else(|| o["effectivePeriod"]["start"].as_str())?;
    normalizer::value::parse_timestamp(s)
}

/// The points of one value element (`valueQuantity` / `valueSampledData` / `valueString`).
pub fn points_of(element: &Value, start: DateTime<Utc>) -> Vec<Point> {
    if let Some(q) = element.get("valueQuantity") {
        return q["value"]
            .as_f64()
            .map(|v| {
                vec![Point {
                    t: start,
                    v: Some(v),
                }]
            })
            .unwrap_or_default();
    }
    if let Some(sd) = element.get("valueSampledData") {
        let origin = sd["origin"]["value"].as_f64().unwrap_or(0.0);
        let factor = sd["factor"].as_f64().unwrap_or(1.0);
        let period = sd["period"].as_f64().unwrap_or(0.0);
        let data = sd["data"].as_str().unwrap_or("");
        return data
            .split_whitespace()
            .enumerate()
            .map(|(i, tok)| Point {
                t: start + chrono::Duration::microseconds((period * 1000.0 * i as f64) as i64),
                v: tok.parse::<f64>().ok().map(|x| origin + x * factor),
            })
            .collect();
    }
    Vec::new()
}

/// Downsamples to at most `max` points: per bucket the min and max (peaks survive); gaps stay.
pub fn downsample(points: &[Point], max: usize) -> Vec<Point> {
    if points.len() <= max || max < 4 {
        return points.to_vec();
    }
    let buckets = max / 2;
    let size = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(size) {
        let vals: Vec<&Point> = chunk.iter().filter(|p| p.v.is_some()).collect();
        if vals.is_empty() {
            out.push(Point {
                t: chunk[0].t,
                v: None,
            });
            continue;
        }
        let min = vals
            .iter()
            .min_by(|a, b| a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal))
            .copied();
        let max_p = vals
            .iter()
            .max_by(|a, b| a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal))
            .copied();
        let (Some(a), Some(b)) = (min, max_p) else {
            continue;
        };
        let (first, second) = if a.t <= b.t { (a, b) } else { (b, a) };
        out.push(first.clone());
        if first != second {
            out.push(second.clone());
        }
        if vals.len() < chunk.len() {
            // The bucket held a gap: keep it visible.
            out.push(Point {
                t: chunk[chunk.len() - 1].t,
                v: None,
            });
        }
    }
    out
}

/// Series of one patient's Observations: name → points, sorted by time.
pub fn series<V: std::borrow::Borrow<Value>>(
    observations: &[V],
    max_points: usize,
) -> BTreeMap<String, Vec<Point>> {
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for o in observations {
        let o: &Value = o.borrow();
        let Some(start) = start_of(o) else { continue };
        let name = o["code"]["text"]
            .as_str()
            .unwrap_or("observation")
            .to_string();
        let pts = points_of(o, start);
        if !pts.is_empty() {
            out.entry(name.clone()).or_default().extend(pts);
        }
        for c in o["component"].as_array().into_iter().flatten() {
            let cname = format!(
                "{name}/{}",
                c["code"]["text"].as_str().unwrap_or("component")
            );
            out.entry(cname).or_default().extend(points_of(c, start));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|p| p.t);
        *v = downsample(v, max_points);
    }
    out
}

/// The latest values and out-of-range flags of one patient's Observations.
pub fn latest<V: std::borrow::Borrow<Value>>(
    observations: &[V],
    now: DateTime<Utc>,
    thresholds: &Thresholds,
) -> Value {
    let mut vitals: BTreeMap<String, Value> = BTreeMap::new();
    let mut freshness: BTreeMap<String, i64> = BTreeMap::new();
    for o in observations {
        let o: &Value = o.borrow();
        let Some(start) = start_of(o) else { continue };
        let name = o["code"]["text"]
            .as_str()
            .unwrap_or("observation")
            .to_string();
        let period = o["valueSampledData"]["period"].as_f64();
        let mut elements: Vec<(String, Option<String>, &Value)> =
            vec![(name.clone(), code_of(&o["code"]), o)];
        for c in o["component"].as_array().into_iter().flatten() {
            elements.push((
                format!(
                    "{name}/{}",
                    c["code"]["text"].as_str().unwrap_or("component")
                ),
                code_of(&c["code"]),
                c,
            ));
        }
        for (label, code, el) in elements {
            let Some(last) = points_of(el, start)
                .into_iter()
                .rev()
                .find(|p| p.v.is_some())
            else {
                continue;
            };
            let newer = vitals
                .get(&label)
                .and_then(|v| v["time"].as_str())
                .and_then(normalizer::value::parse_timestamp)
                .is_none_or(|t| last.t > t);
            if newer {
                let value = last.v.unwrap_or(f64::NAN);
                let out_of_range = code
                    .as_deref()
                    .and_then(|c| thresholds.get(c))
                    .is_some_and(|(lo, hi)| value < *lo || value > *hi);
                let band = code.as_deref().and_then(|c| thresholds.get(c));
                let cc = if std::ptr::eq(el, o) {
                    &o["code"]
                } else {
                    &el["code"]
                };
                vitals.insert(
                    label.clone(),
                    json!({
                        "value": value,
                        "time": last.t,
                        "outOfRange": out_of_range,
                        "code": code,
                        "display": display_of(cc).unwrap_or(label),
                        "unit": unit_of(el).as_deref().map(unit_display),
                        "low": band.map(|b| b.0),
                        "high": band.map(|b| b.1),
                        "waveform": period.is_some_and(|p| p < 1000.0) && std::ptr::eq(el, o),
                    }),
                );
            }
        }
        if let Some(d) = o["device"]["reference"].as_str() {
            let end = o["effectivePeriod"]["end"]
                .as_str()
                .and_then(normalizer::value::parse_timestamp)
                .unwrap_or(start);
            let age = (now - end).num_seconds().max(0);
            let e = freshness.entry(d.to_string()).or_insert(age);
            *e = (*e).min(age);
        }
    }
    json!({"vitals": vitals, "deviceAgeSeconds": freshness})
}

/// How recent a device's last reading must be to count as fresh, or at least aging; older
/// (or none) is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Fresh below this age, in seconds (default 10 minutes).
    pub fresh_secs: i64,
    /// Aging below this age, stale from it, in seconds (default 1 hour).
    pub stale_secs: i64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            fresh_secs: 600,
            stale_secs: 3600,
        }
    }
}

impl Freshness {
    /// `fresh`, `aging` or `stale` for a device whose last reading is `age` seconds old
    /// (`None`: no reading at all).
    pub fn class(&self, age: Option<i64>) -> &'static str {
        match age {
            Some(a) if a < self.fresh_secs => "fresh",
            Some(a) if a < self.stale_secs => "aging",
            _ => "stale",
        }
    }
}

/// Where the review page finds things besides the FHIR server.
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// The connector's `/metrics` URL.
    pub metrics_url: Option<String>,
    /// Out-of-range thresholds.
    pub thresholds: Thresholds,
    /// The connector's dead-letter directory, to list and inspect dead letters.
    pub dead_letters: Option<std::path::PathBuf>,
    /// Device freshness classes.
    pub freshness: Freshness,
    /// Sign-in (none: the page is open, which only a loopback address allows).
    pub sign_in: Option<auth::SignInConfig>,
    /// How often the triage list is rebuilt from the FHIR server.
    pub refresh: std::time::Duration,
}

pub use server::serve;

impl Default for ReviewOptions {
    fn default() -> Self {
        ReviewOptions {
            metrics_url: None,
            thresholds: default_thresholds(),
            dead_letters: None,
            freshness: Freshness::default(),
            sign_in: None,
            refresh: std::time::Duration::from_secs(15),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        normalizer::value::parse_timestamp(s).unwrap()
    }

    #[test]
    fn sampled_data_expands_with_gaps_and_downsamples_keeping_peaks() {
        let o = json!({"valueSampledData": {"origin": {"value": 0}, "period": 60000, "dimensions": 1, "data": "70 E 72 200 E"}});
        let pts = points_of(&o, t("2024-01-01T10:00:00Z"));
        assert_eq!(pts.len(), 5);
        assert_eq!(pts[1].v, None);
        assert_eq!(pts[3].t, t("2024-01-01T10:03:00Z"));
        assert_eq!(pts[3].v, Some(200.0));
        let many: Vec<Point> = (0..10_000)
            .map(|i| Point {
                t: t("2024-01-01T00:00:00Z") + chrono::Duration::seconds(i),
                v: Some(if i == 5000 { 300.0 } else { 70.0 }),
            })
            .collect();
        let d = downsample(&many, 500);
        assert!(d.len() <= 500);
        assert!(d.iter().any(|p| p.v == Some(300.0)), "the peak survives");
    }

    #[test]
    fn latest_values_and_out_of_range_flags() {
        let obs = vec![
            json!({"code": {"text": "heartrate", "coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "effectivePeriod": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T10:59:59Z"},
                   "valueSampledData": {"origin": {"value": 0}, "period": 60000, "data": "70 150 E"}, "device": {"reference": "Device/d1"}}),
            json!({"code": {"text": "spo2", "coding": [{"system": "http://loinc.org", "code": "59408-5"}]}, "effectivePeriod": {"start": "2024-01-01T10:30:00Z", "end": "2024-01-01T10:30:00Z"},
                   "valueQuantity": {"value": 97}, "device": {"reference": "Device/d2"}}),
        ];
        let l = latest(&obs, t("2024-01-01T11:00:00Z"), &default_thresholds());
        assert_eq!(l["vitals"]["heartrate"]["value"], 150.0);
        assert_eq!(l["vitals"]["heartrate"]["outOfRange"], true);
        assert_eq!(l["vitals"]["spo2"]["outOfRange"], false);
        assert_eq!(l["deviceAgeSeconds"]["Device/d2"], 1800);
    }
}
