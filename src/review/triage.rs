//! The triage list and the patient charts.
//!
//! The list is served from a snapshot that a background task rebuilds every `refresh` seconds
//! (and that a request waits for only until the first one is built), so paging, ordering and
//! filtering 1,000+ patients is in-memory work: the FHIR server is read by a few large searches
//! (every Patient, every Device, every Observation of the last 24 hours, `_count=1000` pages),
//! plus one search per patient with no reading in those 24 hours for their last readings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};

use super::{downsample, latest, points_of, start_of, Freshness, Point, Thresholds};

/// The hours a triage row's sparklines cover.
pub const SPARK_HOURS: i64 = 24;
/// Points per sparkline.
pub const SPARK_POINTS: usize = 48;

/// One patient of the snapshot.
#[derive(Debug, Clone)]
pub struct Row {
    /// Patient logical id.
    pub id: String,
    /// First identifier value.
    pub identifier: Option<String>,
    /// Name text.
    pub name: Option<String>,
    /// `(id, identifier)` of each Device.
    pub devices: Vec<(String, Option<String>)>,
    /// `latest()`'s vitals (label → value, time, outOfRange, display, unit, ...).
    pub vitals: serde_json::Map<String, Value>,
    /// Last reading per device reference (`Device/<id>`).
    pub last_seen: BTreeMap<String, DateTime<Utc>>,
    /// 24-hour sparkline per vital label.
    pub sparks: BTreeMap<String, Vec<Point>>,
}

/// A built list.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every patient.
    pub rows: Vec<Row>,
    /// When it was built.
    pub built: Option<DateTime<Utc>>,
    /// How long building took, milliseconds.
    pub build_ms: u128,
    /// The last build's error, if it failed (the previous rows are kept).
    pub error: Option<String>,
}

fn name_of(p: &Value) -> Option<String> {
    let n = &p["name"][0];
    n["text"].as_str().map(str::to_string).or_else(|| {
        let given: Vec<&str> = n["given"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let family = n["family"].as_str();
        if given.is_empty() && family.is_none() {
            None
        } else {
            Some(
                given
                    .into_iter()
                    .chain(family)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
    })
}

fn subject_id(o: &Value) -> Option<String> {
    let r = o["subject"]["reference"].as_str()?;
    let (t, id) = r.rsplit_once('/')?;
    (t.ends_with("Patient")).then(|| id.to_string())
}

fn device_patient(d: &Value) -> Option<String> {
    let r = d["patient"]["reference"].as_str()?;
    r.rsplit_once('/').map(|(_, id)| id.to_string())
}

/// Sparklines of one patient's Observations: label → points of the last 24 h, downsampled.
fn sparks(observations: &[&Value], since: DateTime<Utc>) -> BTreeMap<String, Vec<Point>> {
    let mut out = super::series(observations, usize::MAX);
    for pts in out.values_mut() {
        pts.retain(|p| p.t >= since);
        *pts = downsample(pts, SPARK_POINTS);
    }
    out.retain(|_, p| !p.is_empty());
    out
}

/// Observations kept between rebuilds, so that a rebuild reads only what changed.
#[derive(Debug, Default)]
pub struct Cache {
    /// The last 24 hours' Observations by id, compacted: patient id and resource.
    window: HashMap<String, (String, Value)>,
    /// The last readings of patients with nothing in the window (read once per patient; any
    /// new reading of theirs arrives through the window).
    older: HashMap<String, Vec<Value>>,
    /// When the window was last read.
    fetched: Option<DateTime<Utc>>,
}

/// Most samples kept of a SampledData series in the cache (the list shows its latest value
/// and a 48-point sparkline; the patient view reads the server itself).
const CACHED_SAMPLES: usize = 240;

/// `o` with a long SampledData series thinned to about [`CACHED_SAMPLES`] (every k-th sample,
/// the period k times longer). A high-rate series (period under 1 s: a waveform, which the
/// list shows as such, without a value) keeps only its first and last sample, at their times.
fn compact(mut o: Value) -> Value {
    let Some(sd) = o.get_mut("valueSampledData") else {
        return o;
    };
    let data = sd["data"].as_str().unwrap_or_default();
    let n = data.split_whitespace().count();
    let period = sd["period"].as_f64().unwrap_or(0.0);
    if period < 1000.0 && n > 2 {
        let mut tokens = data.split_whitespace();
        let first = tokens.next().unwrap_or("E").to_string();
        let last = tokens.next_back().unwrap_or("E").to_string();
        sd["data"] = json!(format!("{first} {last}"));
        sd["period"] = json!(period * (n - 1) as f64);
        return o;
    }
    if n <= CACHED_SAMPLES {
        return o;
    }
    let k = n.div_ceil(CACHED_SAMPLES);
    let thinned: Vec<&str> = data.split_whitespace().step_by(k).collect();
    let period = sd["period"].as_f64().unwrap_or(0.0) * k as f64;
    sd["data"] = json!(thinned.join(" "));
    sd["period"] = json!(period);
    o
}

fn end_of(o: &Value) -> Option<DateTime<Utc>> {
    o["effectivePeriod"]["end"]
        .as_str()
        .and_then(normalizer::value::parse_timestamp)
        .or_else(|| start_of(o))
}

/// Builds the snapshot from the FHIR server (`one_page`: the same server, its searches reading
/// only their first page). The first build reads every Observation of the last 24 hours; later
/// ones those updated since the previous read (`_lastUpdated`, a minute of overlap), through
/// `cache`.
pub async fn build(
    client: &fhir_writer::FhirClient,
    one_page: &fhir_writer::FhirClient,
    thresholds: &Thresholds,
    cache: &mut Cache,
) -> Result<Snapshot, fhir_writer::WriteError> {
    let started = std::time::Instant::now();
    let now = Utc::now();
    let since = now - chrono::Duration::hours(SPARK_HOURS);
    let secs = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = match cache.fetched {
        None => ("date", format!("ge{}", secs(since))),
        Some(t) => (
            "_lastUpdated",
            format!("ge{}", secs(t - chrono::Duration::minutes(1))),
        ),
    };
    let all = [("_count", "1000")];
    let window = [(window.0, window.1.as_str()), ("_count", "1000")];
    let (patients, devices, changed) = tokio::try_join!(
        client.search("Patient", &all),
        client.search("Device", &all),
        client.search("Observation", &window),
    )?;
    cache.fetched = Some(now);
    for o in changed {
        if let (Some(p), Some(id)) = (subject_id(&o), o["id"].as_str()) {
            cache.window.insert(id.to_string(), (p, compact(o)));
        }
    }
    cache
        .window
        .retain(|_, (_, o)| end_of(o).is_some_and(|e| e >= since));
    let mut devices_of: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for d in &devices {
        if let Some(p) = device_patient(d) {
            devices_of.entry(p).or_default().push((
                d["id"].as_str().unwrap_or_default().to_string(),
                d["identifier"][0]["value"].as_str().map(str::to_string),
            ));
        }
    }
    let mut obs_of: HashMap<&str, Vec<&Value>> = HashMap::new();
    for (p, o) in cache.window.values() {
        obs_of.entry(p.as_str()).or_default().push(o);
    }
    let in_window: std::collections::HashSet<String> =
        obs_of.keys().map(|p| p.to_string()).collect();
    drop(obs_of);
    cache.older.retain(|p, _| !in_window.contains(p));
    // Patients with nothing in the last 24 h: their last readings, a few searches at a time.
    let quiet: Vec<String> = patients
        .iter()
        .filter_map(|p| p["id"].as_str())
        .filter(|id| !in_window.contains(*id) && !cache.older.contains_key(*id))
        .map(str::to_string)
        .collect();
    let older: Vec<(String, Result<Vec<Value>, fhir_writer::WriteError>)> =
        futures::stream::iter(quiet)
            .map(|id| async move {
                let subject = format!("Patient/{id}");
                let r = one_page
                    .search(
                        "Observation",
                        &[
                            ("subject", subject.as_str()),
                            ("_sort", "-date"),
                            ("_count", "50"),
                        ],
                    )
                    .await;
                (id, r)
            })
            .buffer_unordered(8)
            .collect()
            .await;
    for (id, r) in older {
        cache
            .older
            .insert(id, r?.into_iter().map(compact).collect());
    }
    let mut obs_of: HashMap<&str, Vec<&Value>> = HashMap::new();
    for (p, o) in cache.window.values() {
        obs_of.entry(p.as_str()).or_default().push(o);
    }
    for (id, found) in &cache.older {
        if !found.is_empty() {
            obs_of.insert(id.as_str(), found.iter().collect());
        }
    }
    let mut rows = Vec::with_capacity(patients.len());
    for p in &patients {
        let id = p["id"].as_str().unwrap_or_default().to_string();
        let obs = obs_of.remove(id.as_str()).unwrap_or_default();
        let summary = latest(&obs, now, thresholds);
        let mut last_seen = BTreeMap::new();
        for o in &obs {
            let (Some(d), Some(start)) = (o["device"]["reference"].as_str(), start_of(o)) else {
                continue;
            };
            let end = o["effectivePeriod"]["end"]
                .as_str()
                .and_then(normalizer::value::parse_timestamp)
                .unwrap_or(start);
            let d = match d.rsplit_once("Device/") {
                Some((_, id)) => format!("Device/{id}"),
                None => d.to_string(),
            };
            let e = last_seen.entry(d).or_insert(end);
            if end > *e {
                *e = end;
            }
        }
        rows.push(Row {
            identifier: p["identifier"][0]["value"].as_str().map(str::to_string),
            name: name_of(p),
            devices: devices_of.remove(&id).unwrap_or_default(),
            vitals: summary["vitals"].as_object().cloned().unwrap_or_default(),
            last_seen,
            sparks: sparks(&obs, since),
            id,
        });
    }
    Ok(Snapshot {
        rows,
        built: Some(now),
        build_ms: started.elapsed().as_millis(),
        error: None,
    })
}

/// `out-of-range`, `quiet` (a device gone stale, or devices with no reading) or `ok`, and the
/// sort rank (0, 1, 2).
pub fn status(row: &Row, now: DateTime<Utc>, freshness: &Freshness) -> (&'static str, u8) {
    if row.vitals.values().any(|v| v["outOfRange"] == true) {
        return ("out-of-range", 0);
    }
    let stale = |age: Option<i64>| freshness.class(age) == "stale";
    let quiet = if row.devices.is_empty() {
        row.last_seen
            .values()
            .any(|t| stale(Some((now - *t).num_seconds())))
    } else {
        row.devices.iter().any(|(id, _)| {
            stale(
                row.last_seen
                    .get(&format!("Device/{id}"))
                    .map(|t| (now - *t).num_seconds().max(0)),
            )
        })
    };
    if quiet {
        ("quiet", 1)
    } else {
        ("ok", 2)
    }
}

/// A row as the page shows it.
pub fn row_json(row: &Row, now: DateTime<Utc>, freshness: &Freshness) -> Value {
    let (status, _) = status(row, now, freshness);
    let age_of = |d: &str| {
        row.last_seen
            .get(&format!("Device/{d}"))
            .map(|t| (now - *t).num_seconds().max(0))
    };
    let mut vitals = serde_json::Map::new();
    for (k, v) in &row.vitals {
        let mut v = v.clone();
        if let Some(t) = v["time"]
            .as_str()
            .and_then(normalizer::value::parse_timestamp)
        {
            v["ageSeconds"] = json!((now - t).num_seconds().max(0));
        }
        v["spark"] = json!(row.sparks.get(k).cloned().unwrap_or_default());
        vitals.insert(k.clone(), v);
    }
    let device_ages: BTreeMap<&String, i64> = row
        .last_seen
        .iter()
        .map(|(d, t)| (d, (now - *t).num_seconds().max(0)))
        .collect();
    json!({
        "id": row.id,
        "identifier": row.identifier,
        "name": row.name,
        "status": status,
        "devices": row.devices.iter().map(|(id, ident)| {
            let age = age_of(id);
            json!({
                "id": id,
                "identifier": ident,
                "freshness": freshness.class(age),
                "ageSeconds": age,
                "lastSeen": row.last_seen.get(&format!("Device/{id}")),
            })
        }).collect::<Vec<_>>(),
        "vitals": vitals,
        "deviceAgeSeconds": device_ages,
    })
}

/// One page of the triage list: rows in triage order (out-of-range, quiet, the rest), those
/// whose identifier or name contains `filter` (case-insensitive), `count` from `offset`.
pub fn page(
    snapshot: &Snapshot,
    now: DateTime<Utc>,
    freshness: &Freshness,
    filter: Option<&str>,
    offset: usize,
    count: usize,
) -> Value {
    let filter = filter.map(str::to_lowercase).filter(|f| !f.is_empty());
    let mut ranked: Vec<(u8, usize, &Row)> = snapshot
        .rows
        .iter()
        .filter(|r| {
            filter.as_deref().is_none_or(|f| {
                r.identifier
                    .as_deref()
                    .is_some_and(|i| i.to_lowercase().contains(f))
                    || r.name
                        .as_deref()
                        .is_some_and(|n| n.to_lowercase().contains(f))
            })
        })
        .map(|r| {
            let oor = r
                .vitals
                .values()
                .filter(|v| v["outOfRange"] == true)
                .count();
            (status(r, now, freshness).1, oor, r)
        })
        .collect();
    ranked.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.2.identifier.cmp(&b.2.identifier))
            .then_with(|| a.2.id.cmp(&b.2.id))
    });
    let counts = ranked.iter().fold([0usize; 3], |mut c, (rank, _, _)| {
        c[usize::from(*rank)] += 1;
        c
    });
    json!({
        "total": ranked.len(),
        "offset": offset,
        "count": count,
        "summary": {"outOfRange": counts[0], "quiet": counts[1], "ok": counts[2]},
        "builtAt": snapshot.built,
        "buildMs": snapshot.build_ms as u64,
        "error": snapshot.error,
        "patients": ranked.iter().skip(offset).take(count).map(|(_, _, r)| row_json(r, now, freshness)).collect::<Vec<_>>(),
    })
}

/// The snapshot, shared: rebuilt in the background, read by requests.
pub type Shared = Arc<tokio::sync::RwLock<Snapshot>>;

/// Rebuilds `shared` every `refresh`, or sooner when `wake` is notified, until the process
/// ends; `built` counts the builds (successful or not).
pub async fn refresh_loop(
    client: fhir_writer::FhirClient,
    one_page: fhir_writer::FhirClient,
    thresholds: Thresholds,
    shared: Shared,
    built: tokio::sync::watch::Sender<u64>,
    wake: Arc<tokio::sync::Notify>,
    refresh: std::time::Duration,
) {
    let mut cache = Cache::default();
    loop {
        match build(&client, &one_page, &thresholds, &mut cache).await {
            Ok(s) => {
                tracing::debug!(
                    patients = s.rows.len(),
                    ms = s.build_ms as u64,
                    "Triage list rebuilt."
                );
                *shared.write().await = s;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not rebuild the triage list from the FHIR server.");
                shared.write().await.error = Some(e.to_string());
            }
        }
        built.send_modify(|n| *n += 1);
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = wake.notified() => {}
        }
    }
}

/// The patient view's charts: one per Observation kind (a panel's components as lines of one
/// chart: systolic and diastolic together), each line with its display name, unit, thresholds
/// and points (a gap where readings stop for longer than three times their usual spacing),
/// downsampled to `max_points`; high-rate SampledData (period under 1 s) is marked `waveform`
/// with its period, for the waveform viewer.
pub fn charts(observations: &[Value], max_points: usize, thresholds: &Thresholds) -> Value {
    struct Line {
        display: String,
        code: Option<String>,
        unit: Option<String>,
        points: Vec<Point>,
    }
    struct Chart {
        display: String,
        unit: Option<String>,
        period_ms: Option<f64>,
        lines: BTreeMap<String, Line>,
    }
    let mut out: BTreeMap<String, Chart> = BTreeMap::new();
    for o in observations {
        let Some(start) = start_of(o) else { continue };
        let key = super::label_of(o);
        let chart = out.entry(key.clone()).or_insert_with(|| Chart {
            display: super::display_of(&o["code"]).unwrap_or_else(|| key.clone()),
            unit: super::unit_of(o),
            period_ms: None,
            lines: BTreeMap::new(),
        });
        if let Some(p) = o["valueSampledData"]["period"].as_f64() {
            if p < 1000.0 {
                chart.period_ms = Some(p);
            }
        }
        let mut elements = vec![(key.clone(), o)];
        for c in o["component"].as_array().into_iter().flatten() {
            elements.push((
                format!(
                    "{key}/{}",
                    c["code"]["text"].as_str().unwrap_or("component")
                ),
                c,
            ));
        }
        for (lkey, el) in elements {
            let pts = points_of(el, start);
            if pts.is_empty() {
                continue;
            }
            let line = chart.lines.entry(lkey.clone()).or_insert_with(|| Line {
                display: super::display_of(&el["code"]).unwrap_or_else(|| lkey.clone()),
                code: super::code_of(&el["code"]),
                unit: super::unit_of(el),
                points: Vec::new(),
            });
            line.points.extend(pts);
        }
    }
    let charts: Vec<Value> = out
        .into_iter()
        .filter(|(_, c)| !c.lines.is_empty())
        .map(|(key, c)| {
            let lines: Vec<Value> = c
                .lines
                .into_iter()
                .map(|(lkey, mut l)| {
                    l.points.sort_by_key(|p| p.t);
                    let pts = downsample(&with_gaps(&l.points), max_points);
                    let band = l.code.as_deref().and_then(|c| thresholds.get(c));
                    json!({
                        "key": lkey,
                        "display": l.display,
                        "code": l.code,
                        "unit": l.unit.as_deref().map(super::unit_display),
                        "low": band.map(|b| b.0),
                        "high": band.map(|b| b.1),
                        "points": pts,
                    })
                })
                .collect();
            json!({
                "key": key,
                "display": c.display,
                "unit": c.unit.as_deref().map(super::unit_display),
                "waveform": c.period_ms.is_some(),
                "periodMs": c.period_ms,
                "lines": lines,
            })
        })
        .collect();
    json!(charts)
}

/// `points` (sorted) with a gap (`None`) wherever the spacing exceeds three times its median.
pub fn with_gaps(points: &[Point]) -> Vec<Point> {
    if points.len() < 3 {
        return points.to_vec();
    }
    let mut deltas: Vec<i64> = points
        .windows(2)
        .map(|w| (w[1].t - w[0].t).num_milliseconds())
        .filter(|d| *d > 0)
        .collect();
    if deltas.is_empty() {
        return points.to_vec();
    }
    deltas.sort_unstable();
    let median = deltas[deltas.len() / 2].max(1);
    let mut out = Vec::with_capacity(points.len() + 8);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            let prev = &points[i - 1];
            if (p.t - prev.t).num_milliseconds() > 3 * median && prev.v.is_some() {
                out.push(Point {
                    t: prev.t + chrono::Duration::milliseconds(median),
                    v: None,
                });
            }
        }
        out.push(p.clone());
    }
    out
}

/// The real samples of waveform `key` in `[from, to)`, at most `max`.
pub fn waveform(
    observations: &[Value],
    key: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max: usize,
) -> Result<Value, String> {
    let mut pts = Vec::new();
    let mut period = None;
    let mut display = None;
    let mut unit = None;
    for o in observations {
        if super::label_of(o) != key {
            continue;
        }
        let Some(start) = start_of(o) else { continue };
        period = period.or(o["valueSampledData"]["period"].as_f64());
        display = display.or_else(|| super::display_of(&o["code"]));
        unit = unit.or_else(|| super::unit_of(o));
        pts.extend(
            points_of(o, start)
                .into_iter()
                .filter(|p| p.t >= from && p.t < to),
        );
    }
    if pts.len() > max {
        return Err(format!(
            "{} samples in that window, more than {max}: choose a shorter one",
            pts.len()
        ));
    }
    pts.sort_by_key(|p| p.t);
    Ok(json!({
        "key": key,
        "display": display.unwrap_or_else(|| key.to_string()),
        "unit": unit.as_deref().map(super::unit_display),
        "periodMs": period,
        "from": from,
        "to": to,
        "samples": pts.len(),
        "points": pts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, oor: bool, seen_secs_ago: i64, now: DateTime<Utc>) -> Row {
        let mut vitals = serde_json::Map::new();
        vitals.insert(
            "heartrate".into(),
            json!({"value": if oor { 165 } else { 72 }, "outOfRange": oor}),
        );
        Row {
            id: id.into(),
            identifier: Some(format!("mrn-{id}")),
            name: None,
            devices: vec![(format!("d-{id}"), None)],
            vitals,
            last_seen: [(
                format!("Device/d-{id}"),
                now - chrono::Duration::seconds(seen_secs_ago),
            )]
            .into(),
            sparks: BTreeMap::new(),
        }
    }

    #[test]
    fn triage_order_is_out_of_range_then_quiet_then_the_rest_and_pages() {
        let now = Utc::now();
        let snap = Snapshot {
            rows: vec![
                row("a", false, 60, now),
                row("b", false, 7200, now),
                row("c", true, 60, now),
                row("d", false, 30, now),
            ],
            built: Some(now),
            ..Default::default()
        };
        let f = Freshness::default();
        let page = super::page(&snap, now, &f, None, 0, 10);
        let ids: Vec<&str> = page["patients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "b", "a", "d"]);
        assert_eq!(
            page["summary"],
            json!({"outOfRange": 1, "quiet": 1, "ok": 2})
        );
        let second = super::page(&snap, now, &f, None, 2, 1);
        assert_eq!(second["patients"][0]["id"], "a");
        assert_eq!(second["total"], 4);
        let filtered = super::page(&snap, now, &f, Some("MRN-D"), 0, 10);
        assert_eq!(filtered["total"], 1);
        assert_eq!(filtered["patients"][0]["id"], "d");
    }

    #[test]
    fn long_series_are_thinned_in_the_cache_and_gaps_are_marked() {
        let data: Vec<String> = (0..2500).map(|i| i.to_string()).collect();
        let o = json!({"valueSampledData": {"period": 1000, "data": data.join(" ")}});
        let c = compact(o);
        let n = c["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .split(' ')
            .count();
        assert!(n <= CACHED_SAMPLES, "{n}");
        assert_eq!(c["valueSampledData"]["period"], 11000.0);
        // A waveform keeps its first and last sample, at their times.
        let start = Utc::now();
        let o = json!({"valueSampledData": {"period": 4, "data": data.join(" ")}});
        let pts = points_of(&compact(o), start);
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[1].v, Some(2499.0));
        assert_eq!(pts[1].t, start + chrono::Duration::milliseconds(4 * 2499));
        let t0 = Utc::now();
        let pts: Vec<Point> = [0, 60, 120, 180, 3600, 3660]
            .iter()
            .map(|s| Point {
                t: t0 + chrono::Duration::seconds(*s),
                v: Some(1.0),
            })
            .collect();
        let g = with_gaps(&pts);
        assert_eq!(g.len(), 7);
        assert_eq!(g[4].v, None, "the hour without readings is a gap");
    }
}
