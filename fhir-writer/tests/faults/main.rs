//! The FHIR writer under faults and concurrency, against the real test FHIR server
//! (`tests/fhir-server`: `@medplum/fhir-router` with its in-memory repository).
//!
//! [`FaultProxy`] (`testkit::fhir::fault_proxy`) is an in-process fake used only for fault
//! injection: it sits between the writer and the real server, answers 429/503/412 on cue or
//! drops connections, and every request it passes goes to the real FHIR server (every answer it
//! relays is the server's). Results are always read from the server directly, never through
//! the proxy.
//!
//! * `*_survives_every_fault_kind`: a template set from `templates/` written in batches through
//!   the proxy with each fault kind, and with all of them mixed, leaves exactly the Observations
//!   (and Patients and Devices) a fault-free run leaves: none lost, none duplicated, every sample
//!   present. Each run prints a `FAULTS ...` line with the requests retried.
//! * `two_writers_merge_one_hourly_sampled_data_observation`: two independent writers (as two
//!   processes would be) merge interleaved batches into one hourly SampledData Observation.
//! * `a_create_that_replaces_another_writers_create_merges_its_samples_back`: the proxy holds
//!   one writer's create while another creates the same Observation; no sample is lost.
//!   `a_server_without_history_still_gets_its_creates`: the check never fails a write.
//! * `*_bundles_match_single_requests_under_entry_faults`: the Bundle path leaves exactly what
//!   the single-request path leaves, fault-free, with Bundle entries answering 412, 429
//!   (`Retry-After`) and 500 (the proxy's entry faults: no real server answers single entries
//!   so on cue), through a server that refuses Bundles over a size (413: split), and through a
//!   server that refuses Bundles (fallback). The other fault tests
//!   use the single-request path, whose requests their scripts address one by one.
//! * `one_hz_heart_rate_needs_at_most_0_02_requests_per_measurement`: an hour of 1 Hz heart rate
//!   in batches of 300 (the reference's batch size); prints `REQUESTS_PER_MEASUREMENT ...`.
//! * `device_link_survives_a_dropped_answer` and `proxy_injects_the_faults_it_is_told_to`:
//!   the Device link under a lost answer, and the proxy itself.

mod bundles;
mod concurrency;
mod fault_kinds;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use fhir_writer::retry::RetryPolicy;
use fhir_writer::sampled::sampled_data_to_time_values;
use fhir_writer::{
    logical_id, parse_fhir_datetime, FhirClient, FhirClientConfig, FhirTemplates, FhirWriter,
    ResolutionMode, WriterConfig, SERVICE_SYSTEM,
};
use normalizer::Measurement;
use serde_json::{json, Value};
use testkit::fhir::fault_proxy::{
    EntryFault, EntryScript, EntrySeen, Fault, FaultProxy, Script, Seen, PRECONDITION_FAILED,
    TOO_MANY_REQUESTS, UNAVAILABLE,
};
use testkit::fhir::FhirServer;
use testkit::writer::{
    device_normalizer, fhir_templates, normalize, number, one_hz_hour, read, rfc3339,
    write_batches, HR_1HZ_FHIR_MAPPING,
};

// ---------------------------------------------------------------------------------------------
// Fault plans.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// 503 three times in a row for the same request.
    UnavailableBurst,
    /// 412 on Observation updates although the `If-Match` version is current.
    PreconditionOnUpdate,
    /// Connection closed before the request reaches the server.
    DropBeforeForward,
    /// Connection closed after the server has handled the request.
    DropAfterForward,
    /// All of the above.
    Mixed,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::TooManyRequests,
        Kind::UnavailableBurst,
        Kind::PreconditionOnUpdate,
        Kind::DropBeforeForward,
        Kind::DropAfterForward,
        Kind::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::TooManyRequests => "429-retry-after",
            Kind::UnavailableBurst => "503-burst",
            Kind::PreconditionOnUpdate => "412-on-update",
            Kind::DropBeforeForward => "drop-before-forward",
            Kind::DropAfterForward => "drop-after-forward",
            Kind::Mixed => "mixed",
        }
    }

    /// The fault labels this kind must have injected at least once.
    fn must_inject(self) -> &'static [&'static str] {
        match self {
            Kind::TooManyRequests => &["429"],
            Kind::UnavailableBurst => &["503"],
            Kind::PreconditionOnUpdate => &["412"],
            Kind::DropBeforeForward => &["drop-before"],
            Kind::DropAfterForward => &["drop-after"],
            Kind::Mixed => &["429", "503", "412", "drop-before", "drop-after"],
        }
    }

    /// The script: faults only new requests (`attempt == 0`), every n-th one, within a budget
    /// per fault, so a retry normally gets through; a 503 burst faults the same request three
    /// times. Observation updates (PUT with `If-Match`) have their own counter and budgets, so
    /// the faults that matter most for them (412, drop after forward) reach them even when they
    /// come late in a run. `Retry-After: 1` costs a real second each, hence its small budget.
    fn script(self) -> Script {
        let mut fresh: u64 = 0;
        let mut updates: u64 = 0;
        let mut budgets: HashMap<&'static str, u32> = match self {
            Kind::TooManyRequests => vec![("429", 2)],
            Kind::UnavailableBurst => vec![("503", 6)],
            Kind::PreconditionOnUpdate => vec![("412", u32::MAX)],
            Kind::DropBeforeForward => vec![("drop-before", 10)],
            Kind::DropAfterForward => vec![("drop-after-update", 6), ("drop-after", 6)],
            Kind::Mixed => vec![
                ("429", 1),
                ("503", 4),
                ("412", 6),
                ("drop-before", 5),
                ("drop-after-update", 3),
                ("drop-after", 5),
            ],
        }
        .into_iter()
        .collect();
        let mut bursting: HashSet<u64> = HashSet::new();
        Box::new(move |s: &Seen<'_>| {
            if s.attempt > 0 {
                // A retry goes through, except for the rest of a 503 burst.
                return if s.attempt < 3 && bursting.contains(&s.key) {
                    UNAVAILABLE
                } else {
                    Fault::Pass
                };
            }
            fresh += 1;
            let update = s.is_observation_update();
            if update {
                updates += 1;
            }
            let (n, u) = (fresh, updates);
            let candidate = match self {
                Kind::TooManyRequests => (n % 5 == 2).then_some(("429", TOO_MANY_REQUESTS)),
                Kind::UnavailableBurst => (n % 4 == 1).then_some(("503", UNAVAILABLE)),
                Kind::PreconditionOnUpdate => update.then_some(("412", PRECONDITION_FAILED)),
                Kind::DropBeforeForward => {
                    (n % 4 == 3).then_some(("drop-before", Fault::DropBefore))
                }
                Kind::DropAfterForward if update => {
                    (u % 2 == 1).then_some(("drop-after-update", Fault::DropAfter))
                }
                // Mostly writes (creates of Patients, Devices, Observations), some reads.
                Kind::DropAfterForward => ((s.method == "PUT" && n % 2 == 0) || n % 7 == 0)
                    .then_some(("drop-after", Fault::DropAfter)),
                Kind::Mixed if update => match u % 3 {
                    1 => Some(("412", PRECONDITION_FAILED)),
                    2 => Some(("drop-after-update", Fault::DropAfter)),
                    _ => None,
                },
                Kind::Mixed => match n % 6 {
                    0 => Some(("429", TOO_MANY_REQUESTS)),
                    1 => Some(("503", UNAVAILABLE)),
                    2 => Some(("drop-before", Fault::DropBefore)),
                    3 => Some(("drop-after", Fault::DropAfter)),
                    _ => None,
                },
            };
            let Some((budget, fault)) = candidate else {
                return Fault::Pass;
            };
            let left = budgets.get_mut(budget).expect("a budget for every fault");
            if *left == 0 {
                return Fault::Pass;
            }
            *left -= 1;
            if fault == UNAVAILABLE {
                bursting.insert(s.key);
            }
            fault
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Template sets, events and what the server holds.
// ---------------------------------------------------------------------------------------------

fn client_config(base: &str) -> FhirClientConfig {
    let mut c = FhirClientConfig::new(base);
    c.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        deadline: Duration::from_secs(8),
    };
    c.request_timeout = Duration::from_secs(10);
    c
}

/// A writer with single requests (the path a server without Bundle support gets), which the
/// request-level fault scripts address.
fn writer(base: &str, templates: &Arc<FhirTemplates>) -> FhirWriter {
    writer_with(base, templates, false)
}

fn writer_with(base: &str, templates: &Arc<FhirTemplates>, bundles: bool) -> FhirWriter {
    let client = FhirClient::new(client_config(base)).expect("FHIR client");
    FhirWriter::new(
        client,
        Arc::clone(templates),
        WriterConfig {
            resolution: ResolutionMode::Create,
            bundles,
            // Small Bundles, so that even these sets make several per round.
            bundle_size: 25,
            ..Default::default()
        },
    )
}

fn templates_dir(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../templates")
        .join(kind)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// A template set from `templates/` with batches to write: the set's own sample events
/// first, then generated events in the same shape.
struct Set {
    name: &'static str,
    templates: Arc<FhirTemplates>,
    batches: Vec<Vec<(usize, Measurement)>>,
    /// Slot width of the SampledData stream, for SampledData sets.
    sampled_period_ms: Option<i64>,
    /// Whether values are components (label = value name) or the main value (label = type).
    components: bool,
}

impl Set {
    fn load(
        name: &'static str,
        generated: Vec<Vec<Value>>,
        sampled_period_ms: Option<i64>,
        components: bool,
    ) -> Set {
        let dir = templates_dir(name);
        let n = device_normalizer(&read(dir.join("devicecontent.json")));
        let samples: Vec<Value> =
            serde_json::from_str(&read(dir.join("events.json"))).expect("events.json");
        let mut tag = 0;
        let mut batches = Vec::new();
        for events in std::iter::once(samples).chain(generated) {
            let batch = normalize(&n, &events, tag);
            assert!(!batch.is_empty(), "{name}: a batch normalized to nothing");
            tag += events.len();
            batches.push(batch);
        }
        Set {
            name,
            templates: fhir_templates(&read(dir.join("fhirmapping.json"))),
            batches,
            sampled_period_ms,
            components,
        }
    }

    fn measurements(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    /// Every sample the server must hold: (Patient id.Device id, label, slot time in ms) →
    /// value, leaving out the events in `rejected`. A later batch wins a slot; within a batch
    /// the latest reading does (ties: input order).
    fn expected_samples(&self, rejected: &HashSet<usize>) -> BTreeMap<SampleKey, String> {
        let mut out = BTreeMap::new();
        for batch in &self.batches {
            let mut batch: Vec<&Measurement> = batch
                .iter()
                .filter(|(tag, _)| !rejected.contains(tag))
                .map(|(_, m)| m)
                .collect();
            batch.sort_by_key(|m| m.occurrence_time_utc);
            for m in batch {
                let t = m.occurrence_time_utc;
                let slot = match self.sampled_period_ms {
                    Some(p) => {
                        let hour = t.duration_trunc(chrono::Duration::hours(1)).expect("hour");
                        let offset = (t - hour).num_milliseconds();
                        hour.timestamp_millis() + offset / p * p
                    }
                    None => t.timestamp_millis(),
                };
                // The ids `ResolutionMode::Create` gives the Patient and the Device (no device
                // identifier system), which the Observation identifier is made of.
                let who = format!(
                    "{}.{}",
                    logical_id("", m.patient_id.as_deref().unwrap_or("")),
                    logical_id("", &m.device_id)
                );
                for p in &m.properties {
                    let label = if self.components {
                        p.name.to_string()
                    } else {
                        m.type_name.to_string()
                    };
                    out.insert((who.clone(), label, slot), number(&p.value));
                }
            }
        }
        out
    }
}

type SampleKey = (String, String, i64);

/// Generated heart rate: 3 devices, one reading a minute for 3 hours (one per SampledData
/// slot), in batches of 10 minutes: each hourly Observation is created, then updated 5 times.
fn heart_rate_events() -> Vec<Vec<Value>> {
    let start = utc("2024-03-01T10:00:00Z");
    (0..18)
        .map(|batch| {
            let mut events = Vec::new();
            for minute in batch * 10..batch * 10 + 10 {
                for d in 1..=3 {
                    let t = start + chrono::Duration::minutes(minute);
                    events.push(json!({"body": {
                        "deviceId": format!("hr-gen-{d}"),
                        "patientId": format!("patient-gen-{d}"),
                        "endDate": rfc3339(t),
                        "heartRate": 55 + (minute * 7 + d * 13) % 60,
                    }}));
                }
            }
            events
        })
        .collect()
}

/// Generated point-in-time readings: 3 devices, one every 10 minutes for 3 hours, in batches
/// of an hour, then a batch that corrects every third reading (same time, new value), so
/// Observations are updated with `If-Match` too.
fn point_readings(make: impl Fn(usize, DateTime<Utc>, i64) -> Value) -> Vec<Vec<Value>> {
    let start = utc("2024-03-01T12:00:00Z");
    let mut batches: Vec<Vec<Value>> = (0..3)
        .map(|hour| {
            let mut events = Vec::new();
            for step in hour * 6..hour * 6 + 6 {
                for d in 1..=3 {
                    let t = start + chrono::Duration::minutes(step * 10);
                    events.push(make(d, t, step));
                }
            }
            events
        })
        .collect();
    let mut corrections = Vec::new();
    for step in (0..18).filter(|s| s % 3 == 1) {
        for d in 1..=3 {
            let t = start + chrono::Duration::minutes(step * 10);
            // A different value at the same time.
            corrections.push(make(d, t, step + 1001));
        }
    }
    batches.push(corrections);
    batches
}

fn blood_pressure_events() -> Vec<Vec<Value>> {
    point_readings(|d, t, k| {
        json!({"body": {
            "device": {"id": format!("bp-gen-{d}"), "model": "CX-200"},
            "patient": format!("patient-gen-{d}"),
            "measuredAt": rfc3339(t),
            "bp": {"systolic": 110 + (k * 3 + d as i64) % 30, "diastolic": 70 + (k * 5 + d as i64) % 20},
        }})
    })
}

fn spo2_events() -> Vec<Vec<Value>> {
    point_readings(|d, t, k| {
        json!({
            "body": {"patientId": format!("patient-gen-{d}"), "spo2": 90 + (k + d as i64) % 10},
            "systemProperties": {
                "iothub-connection-device-id": format!("pulse-ox-gen-{d}"),
                "iothub-enqueuedtime": rfc3339(t + chrono::Duration::seconds(2)),
            },
            "properties": {"iothub-creation-time-utc": rfc3339(t)},
        })
    })
}

/// What the server holds, read directly (not through the proxy).
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Observations by identifier value, without `meta` (versions differ between runs).
    observations: BTreeMap<String, Value>,
    /// Every sample decoded from them.
    samples: BTreeMap<SampleKey, String>,
    /// Patient and Device identifier values, sorted.
    patients: Vec<String>,
    devices: Vec<String>,
}

fn identifier_values(resources: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = resources
        .iter()
        .map(|r| {
            r["identifier"][0]["value"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

fn assert_no_duplicates(what: &str, values: &[String]) {
    let mut seen = HashSet::new();
    let dups: Vec<&String> = values.iter().filter(|v| !seen.insert(*v)).collect();
    assert!(dups.is_empty(), "duplicated {what}: {dups:?}");
}

fn service_code(code: &Value) -> String {
    code["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"] == SERVICE_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// Decodes the samples of one Observation into `out`, failing on a sample seen twice.
fn decode_samples(obs: &Value, out: &mut BTreeMap<SampleKey, String>) {
    let identifier = obs["identifier"][0]["value"].as_str().expect("identifier");
    let who = identifier.split('.').take(2).collect::<Vec<_>>().join(".");
    let start = obs
        .pointer("/effectivePeriod/start")
        .or_else(|| obs.get("effectiveDateTime"))
        .and_then(Value::as_str)
        .and_then(parse_fhir_datetime)
        .unwrap_or_else(|| panic!("{identifier}: no effective time"));
    let mut put = |label: String, time: DateTime<Utc>, value: String| {
        let key = (who.clone(), label, time.timestamp_millis());
        if let Some(old) = out.insert(key.clone(), value) {
            panic!("sample {key:?} held twice (also {old}) ({identifier})");
        }
    };
    let mut holders: Vec<(String, &Value)> = vec![(service_code(&obs["code"]), obs)];
    for c in obs["component"].as_array().into_iter().flatten() {
        holders.push((service_code(&c["code"]), c));
    }
    for (label, h) in holders {
        if let Some(q) = h.get("valueQuantity") {
            put(label, start, number(&q["value"].to_string()));
        } else if let Some(sd) = h.get("valueSampledData") {
            let period = sd["period"].as_f64().expect("period");
            let data = sd["data"].as_str().expect("data");
            for tv in sampled_data_to_time_values(data, start, period) {
                put(label.clone(), tv.time, number(&tv.value));
            }
        }
    }
}

async fn snapshot(server: &FhirServer) -> Snapshot {
    let all = server.all("Observation").await;
    assert!(all.len() < 1000, "more Observations than one page holds");
    let ids = identifier_values(&all);
    assert_no_duplicates("Observation identifiers", &ids);
    let mut observations = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for mut obs in all {
        decode_samples(&obs, &mut samples);
        let identifier = obs["identifier"][0]["value"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        if let Some(o) = obs.as_object_mut() {
            o.remove("meta");
        }
        observations.insert(identifier, obs);
    }
    let patients = identifier_values(&server.all("Patient").await);
    let devices = identifier_values(&server.all("Device").await);
    assert_no_duplicates("Patient identifiers", &patients);
    assert_no_duplicates("Device identifiers", &devices);
    Snapshot {
        observations,
        samples,
        patients,
        devices,
    }
}

/// Fails unless `got` holds exactly the `expected` samples, listing a few differences.
fn assert_same_samples(
    ctx: &str,
    got: &BTreeMap<SampleKey, String>,
    expected: &BTreeMap<SampleKey, String>,
) {
    let lost: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| Some((k, v, got.get(k).filter(|g| *g != v)?)))
        .collect();
    assert!(
        lost.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{ctx}: {} samples expected, {} held; lost {}: {:?}; unexpected {}: {:?}; wrong value {}: {:?}",
        expected.len(),
        got.len(),
        lost.len(),
        &lost[..lost.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        wrong.len(),
        &wrong[..wrong.len().min(5)],
    );
}

/// Counters of one run, and the errors its batches reported.
#[derive(Debug, Default)]
struct Run {
    /// (error type, events), sorted.
    errors: Vec<(String, Vec<usize>)>,
    requests: u64,
    retries: u64,
    gave_up: u64,
    conflicts: u64,
    elapsed: Duration,
    /// Bundles answered with a batch-response.
    bundles: u64,
    /// Whether the writer still used Bundles at the end (false after a fallback).
    used_bundles: bool,
}

/// Writes every batch of `set` through `base`, with a fresh writer. Only data errors are
/// allowed (the sample events include a bad value on purpose); a request error would mean a
/// fault was turned into a dead letter instead of being absorbed.
async fn write_set(set: &Set, base: &str) -> Run {
    write_set_with(set, base, false).await
}

async fn write_set_with(set: &Set, base: &str, bundles: bool) -> Run {
    let started = Instant::now();
    let w = writer_with(base, &set.templates, bundles);
    let mut errors = Vec::new();
    for (i, batch) in set.batches.iter().enumerate() {
        let report = w.write_batch(batch.clone(), None).await;
        for e in report.errors {
            assert!(
                !e.retryable && !e.error_type.starts_with("Fhir"),
                "{}: batch {i}: {e:#?}",
                set.name
            );
            errors.push((e.error_type.to_string(), e.events));
        }
    }
    errors.sort();
    let s = w.client().stats();
    Run {
        errors,
        requests: s.requests.load(Ordering::SeqCst),
        retries: s.retries.load(Ordering::SeqCst),
        gave_up: s.gave_up.load(Ordering::SeqCst),
        conflicts: w.stats().conflicts.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        bundles: s.bundles.load(Ordering::SeqCst),
        used_bundles: w.uses_bundles(),
    }
}
