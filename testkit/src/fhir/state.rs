//! A FHIR server's state as the connector leaves it (every Patient, Device and Observation),
//! and a resource-by-resource comparison of two such states: what `iomt run` left (killed and
//! restarted, or several instances at once) against what one `iomt replay` of the same events
//! wrote.
//!
//! Resources are keyed by type and identifiers (`Observation|<system>|<value>`), not by id:
//! ids, `meta.versionId` and `meta.lastUpdated` belong to the server. A reference
//! (`{"reference": "Device/<id>"}`, anywhere in a resource) is replaced by the key of the
//! resource it points to, so an Observation linked to another Device, or to one that does not
//! exist, differs. Every other field is compared exactly, with two exceptions that differ by
//! design (docs/FHIR.md, `pipeline/tests/flushes.rs`):
//! - `issued` is the write time;
//! - `status`: an Observation written by more than one flush is `amended` where one batch
//!   wrote it `final` (the other way round is a difference).
//!
//! SampledData `data` strings are compared sample by sample, so a lost sample is named (its
//! slot, the value it should have, the `E` found instead). Two resources with the same key on
//! one server are a duplicate, counted as such.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The resource types the writer creates.
pub const TYPES: [&str; 3] = ["Patient", "Device", "Observation"];

/// One server's resources, each without what the server or the write time sets, by key.
#[derive(Debug, Default)]
pub struct FhirState {
    /// Key → the resources with that key (more than one: duplicates).
    pub resources: BTreeMap<String, Vec<Value>>,
    /// Key → what a reader recognises an Observation by (its Observation identifiers hold
    /// the Patient's and Device's logical ids): type, time and Device.
    pub labels: BTreeMap<String, String>,
}

impl FhirState {
    /// Reads every resource of [`TYPES`] from `base` (all pages).
    pub async fn fetch(base: &str) -> FhirState {
        let client = reqwest::Client::new();
        let mut raw: Vec<Value> = Vec::new();
        for ty in TYPES {
            raw.extend(fetch_all(&client, base, ty).await);
        }
        // Type/id → key, for the references.
        let keys: HashMap<String, String> =
            raw.iter().map(|r| (type_and_id(r), key_of(r))).collect();
        let mut resources: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut labels = BTreeMap::new();
        for r in raw {
            let key = key_of(&r);
            let r = normalized(r, &keys);
            if r["resourceType"] == "Observation" {
                labels.insert(key.clone(), label_of(&r));
            }
            resources.entry(key).or_default().push(r);
        }
        FhirState { resources, labels }
    }

    /// How many resources (duplicates included).
    pub fn len(&self) -> usize {
        self.resources.values().map(Vec::len).sum()
    }

    /// No resources at all.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// How many resources of `ty`.
    pub fn count(&self, ty: &str) -> usize {
        self.resources
            .iter()
            .filter(|(k, _)| k.split('|').next() == Some(ty))
            .map(|(_, v)| v.len())
            .sum()
    }

    /// Resources beyond the first of each key.
    pub fn duplicates(&self) -> usize {
        self.resources.values().map(|v| v.len() - 1).sum()
    }

    /// Samples with a value in every SampledData (slots that are not `E`).
    pub fn samples(&self) -> usize {
        self.resources
            .values()
            .flatten()
            .map(|r| sampled_data(r).map_or(0, |d| d.split(' ').filter(|s| *s != "E").count()))
            .sum()
    }
}

/// Every resource of `ty`, following `_offset` pages (the test server gives `total`, no `next`
/// links). A resource seen on two pages (a write in between moved the pages) is kept once.
async fn fetch_all(client: &reqwest::Client, base: &str, ty: &str) -> Vec<Value> {
    const PAGE: usize = 1000;
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let url = format!("{base}/{ty}?_count={PAGE}&_offset={offset}");
        let r = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        let bundle: Value = serde_json::from_slice(&r.bytes().await.expect("search body"))
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"));
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        let n = entries.len();
        for e in entries {
            let resource = e["resource"].clone();
            let id = resource["id"].as_str().unwrap_or_default().to_string();
            by_id.insert(id, resource);
        }
        offset += n;
        let total = bundle["total"].as_u64().map(|t| t as usize);
        if n == 0 || total.is_none_or(|t| offset >= t) {
            return by_id.into_values().collect();
        }
    }
}

fn type_and_id(r: &Value) -> String {
    format!(
        "{}/{}",
        r["resourceType"].as_str().unwrap_or("?"),
        r["id"].as_str().unwrap_or("?")
    )
}

/// `Type|system|value` of every identifier (sorted, `;` between), or `Type|no identifier|<id>`.
fn key_of(r: &Value) -> String {
    let ty = r["resourceType"].as_str().unwrap_or("?");
    let mut ids: Vec<String> = r["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{}|{}",
                i["system"].as_str().unwrap_or(""),
                i["value"].as_str().unwrap_or("")
            )
        })
        .collect();
    if ids.is_empty() {
        return format!("{ty}|no identifier|{}", r["id"].as_str().unwrap_or("?"));
    }
    ids.sort();
    format!("{ty}|{}", ids.join(";"))
}

/// The resource without id, meta and `issued`, its references replaced by keys.
fn normalized(mut r: Value, keys: &HashMap<String, String>) -> Value {
    if let Some(o) = r.as_object_mut() {
        o.remove("id");
        o.remove("meta");
        o.remove("issued");
    }
    resolve_references(&mut r, keys);
    r
}

fn resolve_references(v: &mut Value, keys: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(reference)) = o.get_mut("reference") {
                // `Type/id`, possibly absolute or with `/_history/<v>`.
                let parts: Vec<&str> = reference.split('/').collect();
                let at = parts
                    .iter()
                    .rposition(|p| p.chars().next().is_some_and(char::is_uppercase))
                    .filter(|&i| i + 1 < parts.len());
                let target = at.map(|i| format!("{}/{}", parts[i], parts[i + 1]));
                *reference = match target.as_ref().and_then(|t| keys.get(t)) {
                    Some(key) => format!("→ {key}"),
                    None => format!("unresolved reference {reference}"),
                };
            }
            for (_, child) in o.iter_mut() {
                resolve_references(child, keys);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| resolve_references(c, keys)),
        _ => {}
    }
}

/// `Observation heartrate 2024-05-01T10:00:00.0000000Z of Device k9-03`, from a normalized
/// Observation (its `device` reference replaced by the Device's key).
fn label_of(r: &Value) -> String {
    let code = r["code"]["text"].as_str().unwrap_or("?");
    let at = r["effectivePeriod"]["start"]
        .as_str()
        .or(r["effectiveDateTime"].as_str())
        .unwrap_or("?");
    let device = r["device"]["reference"]
        .as_str()
        .and_then(|k| k.rsplit('|').next())
        .unwrap_or("?");
    format!("Observation {code} {at} of Device {device}")
}

fn sampled_data(r: &Value) -> Option<&str> {
    let own = r["valueSampledData"]["data"].as_str();
    own.or_else(|| {
        r["component"]
            .as_array()?
            .iter()
            .find_map(|c| c["valueSampledData"]["data"].as_str())
    })
}

/// `expected` (one replay) against `actual` (the run), resource by resource.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Keys found on both sides (each compared field by field).
    pub compared: usize,
    /// SampledData samples with a value on the expected side, compared one by one.
    pub samples_compared: usize,
    /// Observations `amended` in the run where the replay wrote them `final`.
    pub amended: usize,
    /// Resources beyond the first of a key in the run.
    pub duplicates: usize,
    /// Keys the replay wrote that the run did not.
    pub missing: usize,
    /// Keys the run wrote that the replay did not.
    pub extra: usize,
    /// Samples with a value in the replay and `E` (or no Observation at all) in the run.
    pub lost_samples: usize,
    /// Samples with another value in the run (neither lost nor `E` expected).
    pub wrong_samples: usize,
    /// One line per difference: which resource, which field, what was expected and found.
    pub differences: Vec<String>,
}

impl Comparison {
    /// Compares `actual` (the run) against `expected` (one replay).
    pub fn of(expected: &FhirState, actual: &FhirState) -> Comparison {
        let mut c = Comparison::default();
        let name = |key: &str| match expected.labels.get(key).or(actual.labels.get(key)) {
            Some(label) => format!("{label} [{}]", key.rsplit('|').next().unwrap_or(key)),
            None => key.to_string(),
        };
        for (k, want) in &expected.resources {
            let key = &name(k);
            if want.len() > 1 {
                c.differences.push(format!(
                    "{key}: {} resources in the replay itself (the reference state has a duplicate)",
                    want.len()
                ));
            }
            let Some(got) = actual.resources.get(k) else {
                c.missing += 1;
                let lost = sampled_data(&want[0])
                    .map_or(0, |d| d.split(' ').filter(|s| *s != "E").count());
                c.lost_samples += lost;
                c.samples_compared += lost;
                c.differences.push(format!(
                    "{key}: missing (the replay wrote it, the run did not)"
                ));
                continue;
            };
            c.compared += 1;
            if got.len() > 1 {
                c.duplicates += got.len() - 1;
                c.differences.push(format!(
                    "{key}: {} resources with this identifier in the run (duplicates)",
                    got.len()
                ));
            }
            for g in got {
                c.diff(key, "", &want[0], g);
            }
        }
        for (k, got) in &actual.resources {
            if !expected.resources.contains_key(k) {
                c.extra += got.len();
                c.differences.push(format!(
                    "{}: extra (the run wrote it, the replay did not): {}",
                    name(k),
                    short(&got[0], 300)
                ));
            }
        }
        c
    }

    /// Nothing differs: no field, no duplicate, nothing missing or extra.
    pub fn is_same(&self) -> bool {
        self.differences.is_empty()
    }

    fn diff(&mut self, key: &str, path: &str, want: &Value, got: &Value) {
        match (want, got) {
            (Value::Object(w), Value::Object(g)) => {
                let mut fields: Vec<&String> = w.keys().chain(g.keys()).collect();
                fields.sort();
                fields.dedup();
                for f in fields {
                    let p = if path.is_empty() {
                        f.clone()
                    } else {
                        format!("{path}.{f}")
                    };
                    match (w.get(f), g.get(f)) {
                        (Some(wv), Some(gv)) => self.diff(key, &p, wv, gv),
                        (Some(wv), None) => self.differences.push(format!(
                            "{key}: {p}: expected {}, found nothing",
                            short(wv, 200)
                        )),
                        (None, Some(gv)) => self.differences.push(format!(
                            "{key}: {p}: expected nothing, found {}",
                            short(gv, 200)
                        )),
                        (None, None) => {}
                    }
                }
            }
            (Value::Array(w), Value::Array(g)) => {
                if w.len() != g.len() {
                    self.differences.push(format!(
                        "{key}: {path}: expected {} elements, found {}",
                        w.len(),
                        g.len()
                    ));
                }
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    self.diff(key, &format!("{path}[{i}]"), wv, gv);
                }
            }
            (Value::String(w), Value::String(g)) if path.ends_with("valueSampledData.data") => {
                self.samples(key, path, w, g)
            }
            (Value::String(w), Value::String(g))
                if path == "status" && key.starts_with("Observation") && w != g =>
            {
                if w == "final" && g == "amended" {
                    self.amended += 1;
                } else {
                    self.differences.push(format!(
                        "{key}: status: expected {w:?}, found {g:?} (only final → amended is by design)"
                    ));
                }
            }
            (w, g) if w != g => self.differences.push(format!(
                "{key}: {path}: expected {}, found {}",
                short(w, 200),
                short(g, 200)
            )),
            _ => {}
        }
    }

    fn samples(&mut self, key: &str, path: &str, want: &str, got: &str) {
        let w: Vec<&str> = want.split(' ').collect();
        let g: Vec<&str> = got.split(' ').collect();
        self.samples_compared += w.iter().filter(|s| **s != "E").count();
        let mut lost = 0;
        let mut wrong = 0;
        let mut first = Vec::new();
        for slot in 0..w.len().max(g.len()) {
            let (ws, gs) = (w.get(slot).copied(), g.get(slot).copied());
            if ws == gs {
                continue;
            }
            match (ws, gs) {
                (Some(v), None | Some("E")) if v != "E" => lost += 1,
                _ => wrong += 1,
            }
            if first.len() < 5 {
                first.push(format!(
                    "slot {slot}: expected {}, found {}",
                    ws.unwrap_or("nothing"),
                    gs.unwrap_or("nothing")
                ));
            }
        }
        if lost + wrong > 0 {
            self.lost_samples += lost;
            self.wrong_samples += wrong;
            self.differences.push(format!(
                "{key}: {path}: {} of {} slots differ ({lost} lost, {wrong} other; {} slots expected, {} found): {}",
                lost + wrong,
                w.len().max(g.len()),
                w.len(),
                g.len(),
                first.join("; ")
            ));
        }
    }

    /// The figures on one line.
    pub fn figures(&self) -> String {
        format!(
            "resources_compared={} samples_compared={} duplicates={} lost_resources={} \
             lost_samples={} wrong_samples={} extra={} amended={} differences={}",
            self.compared,
            self.samples_compared,
            self.duplicates,
            self.missing,
            self.lost_samples,
            self.wrong_samples,
            self.extra,
            self.amended,
            self.differences.len()
        )
    }

    /// The figures and the first differences, for a failure message.
    pub fn report(&self) -> String {
        let mut out = self.figures();
        for d in self.differences.iter().take(40) {
            out.push_str("\n  ");
            out.push_str(d);
        }
        if self.differences.len() > 40 {
            out.push_str(&format!("\n  ... and {} more", self.differences.len() - 40));
        }
        out
    }

    /// Panics with [`Self::report`] (and `context`) unless the states are the same.
    pub fn assert_same(&self, context: &str) {
        assert!(
            self.is_same(),
            "the FHIR state differs from one replay of the same events: {}\n{context}",
            self.report()
        );
    }
}

fn short(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Polls `base` until it holds `expected` and returns that comparison; panics after `within`
/// with the last comparison's differences and `context()`. The state is read only while
/// `quiet()` holds (the connectors have nothing received but uncommitted, say), so the
/// polling does not slow the writers down; the caller compares once more when they have
/// stopped, as a state can match and then change.
pub async fn wait_for_state(
    base: &str,
    expected: &FhirState,
    within: Duration,
    mut quiet: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Comparison {
    let started = Instant::now();
    let mut last: Option<Comparison> = None;
    loop {
        if quiet() {
            let c = Comparison::of(expected, &FhirState::fetch(base).await);
            if c.is_same() {
                return c;
            }
            last = Some(c);
        }
        if started.elapsed() > within {
            panic!(
                "the FHIR state did not reach the state of one replay within {within:?}: {}\n{}",
                last.map_or_else(
                    || "(the connectors never went quiet)".to_string(),
                    |c| c.report()
                ),
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
