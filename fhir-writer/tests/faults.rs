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

/// The fault test for one template set: a fault-free baseline, then one run per fault kind
/// on a reset server, each compared with the baseline.
async fn survives_every_fault_kind(set: Set) {
    let server = FhirServer::acquire().await;

    let baseline_run = write_set(&set, &server.base).await;
    let rejected: HashSet<usize> = baseline_run
        .errors
        .iter()
        .flat_map(|(_, events)| events.iter().copied())
        .collect();
    let expected = set.expected_samples(&rejected);
    let baseline = snapshot(&server).await;
    assert_same_samples(
        &format!("{} / fault-free", set.name),
        &baseline.samples,
        &expected,
    );
    assert!(
        !baseline.observations.is_empty() && !baseline.devices.is_empty(),
        "{}: nothing written",
        set.name
    );
    eprintln!(
        "FAULTS set={} kind=none requests={} retries={} injected=0 observations={} measurements={}",
        set.name,
        baseline_run.requests,
        baseline_run.retries,
        baseline.observations.len(),
        set.measurements()
    );

    for kind in Kind::ALL {
        server.reset().await;
        let proxy = FaultProxy::start(&server.base, kind.script()).await;
        let run = write_set(&set, &proxy.base).await;
        let got = snapshot(&server).await;
        let injected = proxy.injected();
        eprintln!(
            "FAULTS set={} kind={} requests={} retries={} injected={} ({}) conflicts={} gave_up={} proxied={} elapsed_ms={}",
            set.name,
            kind.name(),
            run.requests,
            run.retries,
            proxy.injected_total(),
            injected
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            run.conflicts,
            run.gave_up,
            proxy.requests(),
            run.elapsed.as_millis(),
        );
        let ctx = format!("{} / {}", set.name, kind.name());
        assert_eq!(proxy.broken(), 0, "{ctx}: the proxy itself failed");
        assert_eq!(
            proxy.requests(),
            run.requests,
            "{ctx}: the proxy saw other requests than the client sent"
        );
        for label in kind.must_inject() {
            assert!(
                injected.get(*label).copied().unwrap_or(0) > 0,
                "{ctx}: no {label} injected: {injected:?}"
            );
        }
        if kind == Kind::PreconditionOnUpdate {
            // 412 is not a transient failure: the writer re-reads and re-merges.
            assert!(run.conflicts > 0, "{ctx}: no conflict handled");
        } else {
            assert!(run.retries > 0, "{ctx}: nothing retried");
        }
        if kind == Kind::DropAfterForward {
            // The retry of an update the server applied carries a stale If-Match: the real
            // server answers 412 and the writer must find its data already there.
            assert!(
                run.conflicts > 0,
                "{ctx}: no dropped update was retried into a 412"
            );
        }
        assert_eq!(run.gave_up, 0, "{ctx}: the client gave up");
        assert_eq!(run.errors, baseline_run.errors, "{ctx}: errors differ");
        assert_same_samples(&ctx, &got.samples, &expected);
        assert_eq!(got.patients, baseline.patients, "{ctx}: Patients differ");
        assert_eq!(got.devices, baseline.devices, "{ctx}: Devices differ");
        assert_eq!(
            got.observations.keys().collect::<Vec<_>>(),
            baseline.observations.keys().collect::<Vec<_>>(),
            "{ctx}: Observation identifiers differ"
        );
        for (id, obs) in &got.observations {
            assert_eq!(obs, &baseline.observations[id], "{ctx}: Observation {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_rate_sampled_data_survives_every_fault_kind() {
    survives_every_fault_kind(Set::load(
        "heart-rate",
        heart_rate_events(),
        Some(60_000),
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blood_pressure_components_survive_every_fault_kind() {
    survives_every_fault_kind(Set::load(
        "blood-pressure",
        blood_pressure_events(),
        None,
        true,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spo2_quantity_survives_every_fault_kind() {
    survives_every_fault_kind(Set::load("spo2", spo2_events(), None, false)).await;
}

/// Entry faults for the Bundle path: among new entries, an update (`ifMatch`) gets 412 every
/// second time; every 5th new entry 429 with `Retry-After: 1` (twice in all: a real second
/// each), every 7th 500 (6 in all); every 4th write is applied by the server and then answered
/// 500 (4 in all), so its retry meets a real 412. Retries of an entry pass.
fn entry_faults() -> EntryScript {
    let (mut fresh, mut updates, mut writes) = (0u64, 0u64, 0u64);
    let (mut b429, mut b500, mut b_applied) = (2u32, 6u32, 4u32);
    Box::new(move |e: &EntrySeen<'_>| {
        if e.attempt > 0 {
            return EntryFault::Pass;
        }
        fresh += 1;
        if e.if_match {
            updates += 1;
            if updates % 2 == 1 {
                return EntryFault::Status {
                    code: 412,
                    retry_after: None,
                };
            }
        }
        if e.method == "PUT" && e.url.starts_with("Observation/") {
            writes += 1;
            if writes % 4 == 2 && b_applied > 0 {
                b_applied -= 1;
                return EntryFault::AppliedThen { code: 500 };
            }
        }
        if fresh % 5 == 3 && b429 > 0 {
            b429 -= 1;
            return EntryFault::Status {
                code: 429,
                retry_after: Some(1),
            };
        }
        if fresh % 7 == 4 && b500 > 0 {
            b500 -= 1;
            return EntryFault::Status {
                code: 500,
                retry_after: None,
            };
        }
        EntryFault::Pass
    })
}

/// A server that takes Bundles of at most `max` entries and answers larger ones 413 (Payload
/// Too Large), as a server with a request-size limit does.
fn bundles_at_most(max: usize) -> Script {
    Box::new(move |s: &Seen<'_>| {
        if s.method == "POST" && s.entries > max {
            Fault::Status {
                code: 413,
                retry_after: None,
            }
        } else {
            Fault::Pass
        }
    })
}

/// A server that refuses Bundles as a whole (here: 501 to every `POST` of a Bundle, as a
/// server without batch support answers; the test server itself takes them).
fn refuse_bundles() -> Script {
    Box::new(|s: &Seen<'_>| {
        if s.method == "POST" && !s.target.contains("/$") {
            Fault::Status {
                code: 501,
                retry_after: None,
            }
        } else {
            Fault::Pass
        }
    })
}

/// The Bundle path against the real test server, resource by resource the same as the
/// single-request path: fault-free; with entries answering 412, 429 (`Retry-After`) and 500
/// (also after the server applied them) through the fault proxy; and through a server that
/// refuses Bundles (fallback to single requests). Every reading written once in each.
async fn bundles_match_single_requests_under_entry_faults(set: Set) {
    let server = FhirServer::acquire().await;
    let single = write_set(&set, &server.base).await;
    let rejected: HashSet<usize> = single
        .errors
        .iter()
        .flat_map(|(_, events)| events.iter().copied())
        .collect();
    let expected = set.expected_samples(&rejected);
    let baseline = snapshot(&server).await;
    assert_same_samples(
        &format!("{} / single", set.name),
        &baseline.samples,
        &expected,
    );
    assert_eq!(
        single.bundles, 0,
        "{}: the single path sent Bundles",
        set.name
    );

    let same = |ctx: &str, run: &Run, got: &Snapshot| {
        assert_eq!(run.gave_up, 0, "{ctx}: the client gave up");
        assert_eq!(run.errors, single.errors, "{ctx}: errors differ");
        assert_same_samples(ctx, &got.samples, &expected);
        assert_eq!(got.patients, baseline.patients, "{ctx}: Patients differ");
        assert_eq!(got.devices, baseline.devices, "{ctx}: Devices differ");
        assert_eq!(
            got.observations.keys().collect::<Vec<_>>(),
            baseline.observations.keys().collect::<Vec<_>>(),
            "{ctx}: Observation identifiers differ"
        );
        for (id, obs) in &got.observations {
            assert_eq!(obs, &baseline.observations[id], "{ctx}: Observation {id}");
        }
    };

    server.reset().await;
    let run = write_set_with(&set, &server.base, true).await;
    let ctx = format!("{} / bundles", set.name);
    same(&ctx, &run, &snapshot(&server).await);
    assert!(run.used_bundles && run.bundles > 0, "{ctx}: no Bundles");
    assert!(
        run.requests * 2 < single.requests,
        "{ctx}: {} requests, single path {}",
        run.requests,
        single.requests
    );
    eprintln!(
        "BUNDLES set={} single_requests={} bundle_requests={} bundles={} measurements={}",
        set.name,
        single.requests,
        run.requests,
        run.bundles,
        set.measurements()
    );

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, Box::new(|_: &Seen<'_>| Fault::Pass))
        .await
        .with_entry_faults(entry_faults());
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / entry faults", set.name);
    let injected = proxy.injected();
    eprintln!(
        "BUNDLE_FAULTS set={} requests={} retries={} conflicts={} injected={injected:?}",
        set.name, run.requests, run.retries, run.conflicts
    );
    assert_eq!(proxy.broken(), 0, "{ctx}: the proxy itself failed");
    for label in ["entry-412", "entry-429", "entry-500", "entry-applied-500"] {
        assert!(
            injected.get(label).copied().unwrap_or(0) > 0,
            "{ctx}: no {label} injected: {injected:?}"
        );
    }
    assert!(run.conflicts > 0, "{ctx}: no 412 handled");
    assert!(run.retries > 0, "{ctx}: nothing retried");
    assert!(run.used_bundles, "{ctx}: fell back although Bundles work");
    same(&ctx, &run, &snapshot(&server).await);

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, bundles_at_most(2)).await;
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / Bundles over 2 entries refused as too large", set.name);
    assert!(
        proxy.injected().get("413").copied().unwrap_or(0) > 0,
        "{ctx}: no Bundle was large enough to be refused: {:?}",
        proxy.injected()
    );
    assert!(run.used_bundles, "{ctx}: fell back instead of splitting");
    eprintln!(
        "BUNDLES_413 set={} requests={} bundles={} injected={:?}",
        set.name,
        run.requests,
        run.bundles,
        proxy.injected()
    );
    same(&ctx, &run, &snapshot(&server).await);

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, refuse_bundles()).await;
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / Bundles refused", set.name);
    assert_eq!(
        proxy.injected().get("501").copied(),
        Some(1),
        "{ctx}: one refused Bundle, then single requests"
    );
    assert!(!run.used_bundles, "{ctx}: did not fall back");
    same(&ctx, &run, &snapshot(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_rate_bundles_match_single_requests_under_entry_faults() {
    bundles_match_single_requests_under_entry_faults(Set::load(
        "heart-rate",
        heart_rate_events(),
        Some(60_000),
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spo2_bundles_match_single_requests_under_entry_faults() {
    bundles_match_single_requests_under_entry_faults(Set::load("spo2", spo2_events(), None, false))
        .await;
}

/// `ResolutionMode::Create` links an existing Device that has no patient with a PUT carrying
/// `If-Match`. When that PUT is applied but its answer is lost, the retry meets a real 412:
/// the writer must see that the Device is now linked to the right Patient and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_link_survives_a_dropped_answer() {
    let server = FhirServer::acquire().await;
    let device_id = logical_id("", "hr-unlinked");
    server
        .put(json!({
            "resourceType": "Device",
            "id": device_id,
            "identifier": [{"value": "hr-unlinked"}],
        }))
        .await;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(|s: &Seen<'_>| {
            if s.method == "PUT"
                && s.if_match.is_some()
                && s.target.contains("/Device/")
                && s.attempt == 0
            {
                Fault::DropAfter
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let dir = templates_dir("heart-rate");
    let templates = fhir_templates(&read(dir.join("fhirmapping.json")));
    let n = device_normalizer(&read(dir.join("devicecontent.json")));
    let events: Vec<Value> = (0..5)
        .map(|m| {
            json!({"body": {"deviceId": "hr-unlinked", "patientId": "patient-unlinked",
                            "endDate": format!("2024-03-01T10:0{m}:00Z"), "heartRate": 70 + m}})
        })
        .collect();
    let w = writer(&proxy.base, &templates);
    let report = w.write_batch(normalize(&n, &events, 0), None).await;
    assert_eq!(
        proxy.injected().get("drop-after"),
        Some(&1),
        "{:?}",
        proxy.injected()
    );
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.observations_created, 1);
    let devices = server.all("Device").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0]["patient"]["reference"],
        format!("Patient/{}", logical_id("", "patient-unlinked"))
    );
    assert_eq!(server.all("Patient").await.len(), 1);
    assert_eq!(server.all("Observation").await.len(), 1);
}

/// The proxy's faults are real: a dropped-after-forward PUT reached the server although the
/// client got no answer; 429 carries `Retry-After`; counts are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_injects_the_faults_it_is_told_to() {
    let server = FhirServer::acquire().await;
    let mut n = 0;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            n += 1;
            match (n, s.method) {
                (1, "PUT") => Fault::DropAfter,
                (2, _) => TOO_MANY_REQUESTS,
                (3, _) => Fault::DropBefore,
                _ => Fault::Pass,
            }
        }),
    )
    .await;
    let http = reqwest::Client::new();
    let patient = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "p1"}]});
    let put = http
        .put(format!("{}/Patient/p1", proxy.base))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await;
    assert!(
        put.is_err(),
        "drop-after must leave the client without an answer"
    );
    assert_eq!(
        server.all("Patient").await.len(),
        1,
        "but the server wrote it"
    );

    let r = http
        .get(format!("{}/Patient/p1", proxy.base))
        .send()
        .await
        .expect("429");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let dropped = http.get(format!("{}/Patient/p1", proxy.base)).send().await;
    assert!(dropped.is_err(), "drop-before");
    let r = http
        .get(format!("{}/Patient/p1", proxy.base))
        .send()
        .await
        .expect("pass");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(body["id"], "p1");
    assert_eq!(proxy.requests(), 4);
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([
            ("429".to_string(), 1),
            ("drop-after".to_string(), 1),
            ("drop-before".to_string(), 1)
        ])
    );
    assert_eq!(proxy.broken(), 0);
}

// ---------------------------------------------------------------------------------------------
// Hourly 1 Hz SampledData: concurrency and request count.
// ---------------------------------------------------------------------------------------------

/// The hourly Observation of [`one_hz_hour`], read from the server; asserts there is exactly
/// one and that slot `i` holds measurement `i`'s value (so every sample once, at its slot).
async fn assert_one_hz_hour_complete(server: &FhirServer, measurements: &[(usize, Measurement)]) {
    let all = server.all("Observation").await;
    assert_eq!(all.len(), 1, "one hourly Observation expected");
    let obs = &all[0];
    let sd = &obs["valueSampledData"];
    assert_eq!(sd["period"].as_f64(), Some(1000.0));
    let data = sd["data"].as_str().expect("data");
    let tokens: Vec<&str> = data.split(' ').collect();
    assert_eq!(tokens.len(), 3600, "slots");
    let start = obs
        .pointer("/effectivePeriod/start")
        .and_then(Value::as_str)
        .and_then(parse_fhir_datetime)
        .expect("start");
    let decoded = sampled_data_to_time_values(data, start, 1000.0);
    assert_eq!(decoded.len(), 3600, "samples present");
    for (i, (tv, (_, m))) in decoded.iter().zip(measurements).enumerate() {
        assert_eq!(tv.time, m.occurrence_time_utc, "slot {i}");
        assert_eq!(
            number(&tv.value),
            number(&m.properties[0].value),
            "value at slot {i}"
        );
    }
}

/// Two independent writers (own clients and caches, like two processes) merge interleaved
/// batches into one hourly SampledData Observation, concurrently, with `If-Match`.
///
/// Writer A creates the Observation; writer B's first update goes through the proxy, which
/// answers it 412 although its version is current (so B's re-read and re-merge run on every
/// run), and leaves A's cached version stale (so A's first concurrent update gets a real 412
/// from the server). Then both write at once, minutes alternating between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_merge_one_hourly_sampled_data_observation() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let mut injected_once = false;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            if s.is_observation_update() && !injected_once {
                injected_once = true;
                PRECONDITION_FAILED
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let a = writer(&server.base, &templates);
    let b = writer(&proxy.base, &templates);

    write_batches(&a, vec![all[..10].to_vec()]).await;
    assert_eq!(a.stats().created.load(Ordering::SeqCst), 1);
    write_batches(&b, vec![all[10..60].to_vec()]).await;
    assert_eq!(b.stats().updated.load(Ordering::SeqCst), 1);

    let (mut for_a, mut for_b) = (Vec::new(), Vec::new());
    for (i, chunk) in all[60..].chunks(60).enumerate() {
        if i % 2 == 0 {
            for_a.push(chunk.to_vec());
        } else {
            for_b.push(chunk.to_vec());
        }
    }
    tokio::join!(write_batches(&a, for_a), write_batches(&b, for_b));

    let (ca, cb) = (
        a.stats().conflicts.load(Ordering::SeqCst),
        b.stats().conflicts.load(Ordering::SeqCst),
    );
    let injected = proxy.injected().get("412").copied().unwrap_or(0);
    eprintln!(
        "CONCURRENCY conflicts_a={ca} conflicts_b={cb} injected_412={injected} server_412={} updates_a={} updates_b={} requests_a={} requests_b={}",
        ca + cb - injected,
        a.stats().updated.load(Ordering::SeqCst),
        b.stats().updated.load(Ordering::SeqCst),
        a.client().stats().requests.load(Ordering::SeqCst),
        b.client().stats().requests.load(Ordering::SeqCst),
    );
    assert_eq!(injected, 1, "the proxy's 412 for writer B's first update");
    assert!(cb >= 1, "writer B handled no conflict");
    assert!(
        ca >= 1,
        "writer A wrote from a stale cache without a conflict"
    );
    assert_eq!(proxy.broken(), 0);
    assert_one_hz_hour_complete(&server, &all).await;
}

/// Two writers create the same hourly SampledData Observation at once: writer B searches,
/// finds nothing, and its create (a `PUT` to the deterministic id) is held by the proxy while
/// writer A searches and creates the Observation with its own samples. Then B's create goes
/// through and replaces A's version. B must notice (the version before its own in the
/// Observation's history) and merge A's samples back: in the end every sample of both is there
/// once, and B counted one create race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_replaces_another_writers_create_merges_its_samples_back() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let mut held_once = false;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            let observation_create =
                s.method == "PUT" && s.if_match.is_none() && s.target.contains("/Observation/");
            if observation_create && !held_once {
                held_once = true;
                Fault::Hold
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let a = writer(&server.base, &templates);
    let b = writer(&proxy.base, &templates);

    let b_batch = all[1800..].to_vec();
    let b_task = tokio::spawn(async move {
        let r = b.write_batch(b_batch, None).await;
        (b, r)
    });
    proxy.wait_held(1).await;
    // B has searched and found nothing; its create is on hold. A creates meanwhile.
    write_batches(&a, vec![all[..1800].to_vec()]).await;
    assert_eq!(a.stats().created.load(Ordering::SeqCst), 1);
    proxy.release();
    let (b, r) = b_task.await.expect("writer B");
    assert!(r.errors.is_empty(), "{:?}", r.errors);

    let races = b.stats().create_races.load(Ordering::SeqCst);
    eprintln!(
        "CREATE_RACE races_b={races} created_b={} updated_b={} conflicts_b={}",
        b.stats().created.load(Ordering::SeqCst),
        b.stats().updated.load(Ordering::SeqCst),
        b.stats().conflicts.load(Ordering::SeqCst),
    );
    assert_eq!(proxy.injected().get("hold").copied(), Some(1));
    assert_eq!(
        races, 1,
        "writer B did not notice it replaced A's Observation"
    );
    assert_eq!(proxy.broken(), 0);
    assert_one_hz_hour_complete(&server, &all).await;
}

/// A server that shows no history (here the proxy answers every `_history` read 405): a
/// create still succeeds, only the create-race check is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_history_still_gets_its_creates() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(|s: &Seen<'_>| {
            if s.method == "GET" && s.target.contains("/_history") {
                Fault::Status {
                    code: 405,
                    retry_after: None,
                }
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let w = writer(&proxy.base, &templates);
    write_batches(&w, vec![all[..600].to_vec(), all[600..].to_vec()]).await;
    assert_eq!(w.stats().created.load(Ordering::SeqCst), 1);
    assert_eq!(w.stats().create_races.load(Ordering::SeqCst), 0);
    assert_eq!(
        proxy.injected().get("405").copied(),
        Some(1),
        "one history read"
    );
    assert_one_hz_hour_complete(&server, &all).await;
}

/// FHIR requests per measurement for an hour of 1 Hz heart rate into an hourly SampledData
/// Observation, written as the service batches it (300 measurements), by a fresh writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hz_heart_rate_needs_at_most_0_02_requests_per_measurement() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let w = writer(&server.base, &templates);
    for batch in all.chunks(300) {
        let r = w.write_batch(batch.to_vec(), None).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let requests = w.client().stats().requests.load(Ordering::SeqCst);
    let ratio = requests as f64 / all.len() as f64;
    eprintln!(
        "REQUESTS_PER_MEASUREMENT requests={requests} measurements={} ratio={ratio:.4}",
        all.len()
    );
    assert!(
        ratio <= 0.02,
        "{requests} requests for {} measurements",
        all.len()
    );
    assert_one_hz_hour_complete(&server, &all).await;
}
