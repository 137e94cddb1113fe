//! Prometheus metrics, mirroring MedTech's: incoming, normalized, measurements, groups, FHIR
//! resources saved by type and operation, errors by stage and type, dropped events, dead
//! letters, FHIR requests and retries; latency histograms for normalize, group and FHIR write.
//! Labels come from bounded sets (stage, error type, resource type, operation) — never a
//! device or patient id.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A latency histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<(f64, AtomicU64)>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Buckets of the ingestion→written latency (seconds): up to several flush intervals, one
/// second apart just past a 1 s and the default 30 s flush interval (where the latency of a
/// steady stream lies, and where `flush_interval + 2 s` is to be told apart).
const LATENCY_BUCKETS: [f64; 26] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 31.0, 32.0,
    33.0, 35.0, 40.0, 45.0, 60.0, 90.0, 120.0, 300.0, 900.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_buckets(&BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds (seconds).
    pub fn with_buckets(bounds: &[f64]) -> Self {
        Histogram {
            buckets: bounds.iter().map(|b| (*b, AtomicU64::new(0))).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in &self.buckets {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in &self.buckets {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Latency from an event's ingestion time to the moment every measurement it produced is
/// written (or it is dead-lettered).
#[derive(Debug)]
pub struct LatencyHistogram(pub Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Histogram::with_buckets(&LATENCY_BUCKETS))
    }
}

/// All the connector's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events committed: every measurement written to FHIR, or the event dead-lettered.
    pub committed: AtomicU64,
    /// Ingestion→written latency per event: until its last measurement is written (or it is
    /// dead-lettered).
    pub ingestion_to_written: LatencyHistogram,
    /// Ingestion→committed latency per event: until the commit watermark passes it (every
    /// earlier event done too; MQTT: its spool record released, Event Hubs: checkpointed).
    pub ingestion_to_committed: LatencyHistogram,
    /// Measurements pending in the group stage (gauge).
    pub pending_measurements: AtomicU64,
    /// Windows (future Observation writes) pending in the group stage (gauge).
    pub pending_windows: AtomicU64,
    /// Age of the oldest pending measurement, in milliseconds (gauge).
    pub pending_oldest_ms: AtomicU64,
    /// Events in flight between the source and their commit (gauge).
    pub events_in_flight: AtomicU64,
    /// Bytes in the spool (gauge).
    pub spool_bytes: AtomicU64,
    /// The spool's next sequence number after the last sync.
    pub spool_durable_seq: AtomicU64,
    /// The next sequence number the pipeline will read from the spool.
    pub spool_read_seq: AtomicU64,
    /// Spool fsyncs.
    pub spool_fsyncs: AtomicU64,
    /// Spool I/O errors (appends or syncs that failed; the events were not acknowledged).
    pub spool_errors: AtomicU64,
    /// Time a stage waited for the next one (back-pressure), by stage, in microseconds.
    backpressure_micros: Mutex<BTreeMap<&'static str, u64>>,
    /// Write batches (flushes) sent to the FHIR writer.
    pub flushes: AtomicU64,
    /// Events received from the source.
    pub incoming: AtomicU64,
    /// Events that produced at least one measurement.
    pub normalized: AtomicU64,
    /// Measurements produced.
    pub measurements: AtomicU64,
    /// Observation groups written (created, updated or unchanged).
    pub groups: AtomicU64,
    /// Events that matched no template.
    pub dropped: AtomicU64,
    /// Events acknowledged to the source.
    pub acked: AtomicU64,
    /// FHIR resources saved, by (resource type, operation).
    saved: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Errors by (stage, error type).
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Dead letters stored, by stage.
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
    /// Batch writes retried because the FHIR server was unavailable.
    pub batch_retries: AtomicU64,
    /// Normalization latency per event.
    pub normalize_latency: Histogram,
    /// FHIR write latency per batch.
    pub fhir_write_latency: Histogram,
    /// FHIR requests sent and retried (copied from the client).
    pub fhir_requests: AtomicU64,
    /// FHIR requests retried.
    pub fhir_retries: AtomicU64,
    /// OAuth2 tokens: issued, reused from the cache, dropped after a 401, refused (copied from
    /// the client).
    pub fhir_tokens: [AtomicU64; 4],
    /// Creates that replaced another writer's concurrent create, repaired (copied from the
    /// writer).
    pub fhir_create_races: AtomicU64,
    /// `batch` Bundles answered (copied from the client).
    pub fhir_bundles: AtomicU64,
    /// Entries per Bundle: count per bucket of `fhir_writer::client::ENTRY_BUCKETS` (+ one for
    /// larger), and the sum (copied from the client).
    pub fhir_bundle_entries: Mutex<(Vec<u64>, u64)>,
    /// Outcomes of Bundle entries and single requests by HTTP status (copied from the client).
    pub fhir_entry_statuses: Mutex<BTreeMap<u16, u64>>,
    /// 1 once the service is ready.
    pub ready: AtomicU64,
}

/// The error types we emit (a bounded label set); anything else is `Other`.
const KNOWN_ERROR_TYPES: [&str; 16] = [
    "InvalidDataFormatException",
    "IncompatibleDataException",
    "PayloadTooLargeException",
    "TemplateNotFoundException",
    "InvalidQuantityFhirValueException",
    "CorrelationIdNotDefinedException",
    "FhirResourceNotFoundException",
    "MultipleResourceFoundException",
    "ResourceIdentityNotDefinedException",
    "PatientDeviceMismatchException",
    "NotSupportedException",
    "FhirDataMappingException",
    "FhirServiceException",
    "FhirServiceUnavailableException",
    "FhirResourceConflictException",
    "InvalidTemplateException",
];

fn bounded(error_type: &str) -> String {
    if KNOWN_ERROR_TYPES.contains(&error_type) {
        error_type.to_string()
    } else {
        "Other".to_string()
    }
}

impl Metrics {
    /// Counts an error.
    pub fn error(&self, stage: &'static str, error_type: &str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry((stage, bounded(error_type))).or_default() += 1;
        }
    }

    /// Counts a dead letter.
    pub fn dead_letter(&self, stage: &'static str) {
        if let Ok(mut m) = self.dead_letters.lock() {
            *m.entry(stage).or_default() += 1;
        }
    }

    /// Adds time a stage spent waiting for the next stage.
    pub fn backpressure(&self, stage: &'static str, d: Duration) {
        if d < Duration::from_micros(50) {
            return;
        }
        if let Ok(mut m) = self.backpressure_micros.lock() {
            *m.entry(stage).or_default() += d.as_micros() as u64;
        }
    }

    /// Counts saved resources.
    pub fn saved(&self, resource: &'static str, operation: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut m) = self.saved.lock() {
            *m.entry((resource, operation)).or_default() += n;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "iomt_events_incoming_total",
            "Events received from the source.",
            self.incoming.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_events_normalized_total",
            "Events that produced at least one measurement.",
            self.normalized.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_measurements_total",
            "Measurements produced by normalization.",
            self.measurements.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_observation_groups_total",
            "Observation groups written (created, updated or unchanged).",
            self.groups.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_events_dropped_total",
            "Events that matched no template.",
            self.dropped.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_events_acked_total",
            "Events acknowledged to the source after being written or dead-lettered.",
            self.acked.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_events_committed_total",
            "Events whose every measurement is written to FHIR, or that are dead-lettered.",
            self.committed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_flushes_total",
            "Write batches the group stage released to the FHIR writer.",
            self.flushes.load(Ordering::Relaxed),
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            &mut out,
            "iomt_pending_measurements",
            "Measurements waiting in the group stage for their window to be written.",
            self.pending_measurements
                .load(Ordering::Relaxed)
                .to_string(),
        );
        gauge(
            &mut out,
            "iomt_pending_windows",
            "Observation windows waiting in the group stage.",
            self.pending_windows.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "iomt_pending_oldest_age_seconds",
            "How long the oldest pending measurement has waited.",
            format!(
                "{}",
                self.pending_oldest_ms.load(Ordering::Relaxed) as f64 / 1e3
            ),
        );
        gauge(
            &mut out,
            "iomt_events_in_flight",
            "Events received and not yet committed.",
            self.events_in_flight.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "iomt_spool_bytes",
            "Bytes in the local spool (events acknowledged to the source, not yet committed).",
            self.spool_bytes.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "iomt_spool_unread_events",
            "Events in the spool not yet read by the pipeline (the backlog kept on disk).",
            self.spool_durable_seq
                .load(Ordering::Relaxed)
                .saturating_sub(self.spool_read_seq.load(Ordering::Relaxed))
                .to_string(),
        );
        counter(
            &mut out,
            "iomt_spool_fsyncs_total",
            "Spool fsyncs (group commits).",
            self.spool_fsyncs.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_spool_errors_total",
            "Spool appends or syncs that failed (the events were not acknowledged).",
            self.spool_errors.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP iomt_backpressure_seconds_total Time a stage waited for the next one.\n# TYPE iomt_backpressure_seconds_total counter"
        );
        if let Ok(m) = self.backpressure_micros.lock() {
            for stage in ["source", "ingest", "normalize", "group"] {
                let v = m.get(stage).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "iomt_backpressure_seconds_total{{stage=\"{stage}\"}} {}",
                    v as f64 / 1e6
                );
            }
        }
        self.ingestion_to_written.0.render(
            "iomt_ingestion_to_written_seconds",
            "From an event's ingestion time until every measurement it produced is written.",
            &mut out,
        );
        self.ingestion_to_committed.0.render(
            "iomt_ingestion_to_committed_seconds",
            "From an event's ingestion time until it is committed (it and every earlier event done).",
            &mut out,
        );
        counter(
            &mut out,
            "iomt_batch_retries_total",
            "Batch writes retried because the FHIR server was unavailable (not drops).",
            self.batch_retries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_fhir_requests_total",
            "HTTP requests sent to the FHIR server.",
            self.fhir_requests.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP iomt_fhir_token_uses_total OAuth2 access tokens for the FHIR server: issued by the token endpoint, reused from the cache, dropped after a 401, refused.\n# TYPE iomt_fhir_token_uses_total counter");
        for (outcome, n) in ["issued", "reused", "refreshed_after_401", "refused"]
            .iter()
            .zip(&self.fhir_tokens)
        {
            let _ = writeln!(
                out,
                "iomt_fhir_token_uses_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "iomt_fhir_request_retries_total",
            "FHIR requests retried after a transient failure.",
            self.fhir_retries.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_fhir_create_races_total",
            "Observation creates that replaced another writer's concurrent create; its samples were merged back.",
            self.fhir_create_races.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "iomt_fhir_bundles_total",
            "FHIR batch Bundles sent and answered with a batch-response.",
            self.fhir_bundles.load(Ordering::Relaxed),
        );
        if let Ok(h) = self.fhir_bundle_entries.lock() {
            let (buckets, sum) = &*h;
            let _ = writeln!(out, "# HELP iomt_fhir_bundle_entries Entries per FHIR Bundle sent.\n# TYPE iomt_fhir_bundle_entries histogram");
            let mut cumulative = 0;
            for (i, bound) in fhir_writer::client::ENTRY_BUCKETS.iter().enumerate() {
                cumulative += buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "iomt_fhir_bundle_entries_bucket{{le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += buckets
                .get(fhir_writer::client::ENTRY_BUCKETS.len())
                .copied()
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "iomt_fhir_bundle_entries_bucket{{le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "iomt_fhir_bundle_entries_sum {sum}");
            let _ = writeln!(out, "iomt_fhir_bundle_entries_count {cumulative}");
        }
        let _ = writeln!(out, "# HELP iomt_fhir_entries_total Outcomes of FHIR Bundle entries and single requests, by HTTP status (0: no answer).\n# TYPE iomt_fhir_entries_total counter");
        if let Ok(m) = self.fhir_entry_statuses.lock() {
            for (status, v) in m.iter() {
                let _ = writeln!(out, "iomt_fhir_entries_total{{status=\"{status}\"}} {v}");
            }
        }
        let _ = writeln!(out, "# HELP iomt_fhir_resources_saved_total FHIR resources saved, by resource type and operation.\n# TYPE iomt_fhir_resources_saved_total counter");
        if let Ok(m) = self.saved.lock() {
            for ((r, o), v) in m.iter() {
                let _ = writeln!(out, "iomt_fhir_resources_saved_total{{resource_type=\"{r}\",operation=\"{o}\"}} {v}");
            }
        }
        let _ = writeln!(out, "# HELP iomt_errors_total Errors by stage and error type.\n# TYPE iomt_errors_total counter");
        if let Ok(m) = self.errors.lock() {
            for ((s, t), v) in m.iter() {
                let _ = writeln!(
                    out,
                    "iomt_errors_total{{stage=\"{s}\",error_type=\"{t}\"}} {v}"
                );
            }
        }
        let _ = writeln!(out, "# HELP iomt_dead_letters_total Events stored in the dead-letter store, by stage.\n# TYPE iomt_dead_letters_total counter");
        if let Ok(m) = self.dead_letters.lock() {
            for (s, v) in m.iter() {
                let _ = writeln!(out, "iomt_dead_letters_total{{stage=\"{s}\"}} {v}");
            }
        }
        self.normalize_latency.render(
            "iomt_normalize_duration_seconds",
            "Normalization time per event.",
            &mut out,
        );
        self.fhir_write_latency.render(
            "iomt_fhir_write_duration_seconds",
            "FHIR write time per flush.",
            &mut out,
        );
        let _ = writeln!(out, "# HELP iomt_ready 1 when the service is ready.\n# TYPE iomt_ready gauge\niomt_ready {}", self.ready.load(Ordering::Relaxed));
        out
    }
}
