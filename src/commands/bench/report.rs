//! The bench's figures, computed from what the run recorded (pure: no I/O, no clock); printed
//! as JSON (serde) or as the table of [`super::table`]. docs/PERFORMANCE.md ("iomt bench")
//! defines every figure.

use serde::Serialize;

use super::prom::{label, quantile, Quantile, Scrape};

/// Metric names read from the connector.
pub mod names {
    /// Events received from the source.
    pub const INCOMING: &str = "iomt_events_incoming_total";
    /// Events whose every measurement is written or dead-lettered.
    pub const COMMITTED: &str = "iomt_events_committed_total";
    /// Events acknowledged to the source.
    pub const ACKED: &str = "iomt_events_acked_total";
    /// Measurements produced.
    pub const MEASUREMENTS: &str = "iomt_measurements_total";
    /// HTTP requests to the FHIR server.
    pub const FHIR_REQUESTS: &str = "iomt_fhir_requests_total";
    /// Resources saved by type and operation.
    pub const SAVED: &str = "iomt_fhir_resources_saved_total";
    /// Ingestion→written latency histogram.
    pub const LATENCY: &str = "iomt_ingestion_to_written_seconds";
    /// Gauge: windows pending in the group stage.
    pub const PENDING_WINDOWS: &str = "iomt_pending_windows";
    /// Gauge: measurements pending in the group stage.
    pub const PENDING_MEASUREMENTS: &str = "iomt_pending_measurements";
}

/// One scrape during the connector phase, reduced to what the figures need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the first publish.
    pub at: f64,
    /// `iomt_events_incoming_total`.
    pub incoming: Option<f64>,
    /// Events written: `iomt_events_committed_total`, else `iomt_events_acked_total`.
    pub written: f64,
    /// `iomt_pending_windows`.
    pub pending_windows: Option<f64>,
    /// `iomt_pending_measurements`.
    pub pending_measurements: Option<f64>,
}

impl Sample {
    /// Reduces a scrape taken `at` seconds after the first publish.
    pub fn from_scrape(at: f64, s: &Scrape) -> Sample {
        Sample {
            at,
            incoming: s.value(names::INCOMING),
            written: written(s).map_or(0.0, |(_, v)| v),
            pending_windows: s.value(names::PENDING_WINDOWS),
            pending_measurements: s.value(names::PENDING_MEASUREMENTS),
        }
    }
}

/// The "written" counter of a scrape and its value: committed if the connector has it, else
/// acknowledged (the old loop acknowledges a batch only once it is written).
pub fn written(s: &Scrape) -> Option<(&'static str, f64)> {
    s.value(names::COMMITTED)
        .map(|v| (names::COMMITTED, v))
        .or_else(|| s.value(names::ACKED).map(|v| (names::ACKED, v)))
}

/// What the FHIR store holds after the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FhirCount {
    /// Heart-rate readings the simulator published.
    pub heart_rate_readings_published: u64,
    /// Values in the heart-rate Observations' SampledData (`E` slots not counted).
    pub heart_rate_samples: u64,
    /// Heart-rate Observations.
    pub heart_rate_observations: u64,
    /// All Observations.
    pub observations: u64,
}

/// Everything a run recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// What was run.
    pub setup: Setup,
    /// Connector phase: first publish to last PUBACK, seconds.
    pub publish_secs: f64,
    /// Connector phase scrapes, every 500 ms.
    pub samples: Vec<Sample>,
    /// The last scrape before SIGTERM.
    pub last: Scrape,
    /// `VmRSS` once ready, before publishing, bytes.
    pub idle_rss: u64,
    /// Largest `VmRSS` sampled every 200 ms, bytes.
    pub sampled_peak_rss: u64,
    /// `VmHWM` at the end, bytes.
    pub hwm: u64,
    /// Broker-only phase, unless skipped.
    pub broker_only: Option<BrokerOnly>,
    /// Parse-only events/s.
    pub parse_only: f64,
    /// The FHIR store's content.
    pub fhir: FhirCount,
    /// SIGTERM to exit, seconds.
    pub drain_secs: f64,
    /// The connector's exit code (`None`: killed by a signal).
    pub exit_code: Option<i32>,
    /// It did not exit within the drain timeout after SIGTERM and was killed.
    pub killed: bool,
    /// Why the bench stopped waiting before everything was written (timeout, no progress).
    pub stopped_waiting: Option<String>,
    /// Broker log lines about dropped messages.
    pub broker_drops: Vec<String>,
    /// "MQTT connected." lines in the (drain run's) connector log: 1 unless it reconnected.
    pub mqtt_connections: usize,
    /// Broker log lines about a client's keep-alive running out.
    pub keep_alive_trouble: Vec<String>,
}

/// What was run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Setup {
    /// Simulated devices.
    pub devices: usize,
    /// Readings per device.
    pub readings_per_device: usize,
    /// Device kinds.
    pub kinds: Vec<String>,
    /// Events published.
    pub events: u64,
    /// Body bytes published.
    pub body_bytes: u64,
    /// Requested publish rate, events/s (0: as fast as possible).
    pub rate: f64,
    /// Unacknowledged QoS 1 messages per client (broker, publisher, subscribers).
    pub inflight: u16,
    /// Requested flush interval, seconds.
    pub flush_interval_secs: f64,
    /// The config line that set it, or `None` where this build has no such option.
    pub flush_interval_config: Option<String>,
    /// The bench folder.
    pub dir: String,
    /// Everything was queued on the broker before the connector started (`--backlog`).
    pub backlog: bool,
}

/// The broker-only phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerOnly {
    /// Events received and acknowledged by the bare subscriber per second, first publish to
    /// last ack.
    pub events_per_sec: f64,
    /// The publisher's rate in that phase.
    pub publisher_events_per_sec: f64,
}

/// A latency quantile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Seconds (the largest finite bucket bound when `above_largest_bucket`).
    pub seconds: f64,
    /// The histogram bucket it was interpolated in, `[lower, upper]` seconds (`upper` null
    /// for the `+Inf` bucket).
    pub bucket: [Option<f64>; 2],
    /// The quantile is in the `+Inf` bucket.
    pub above_largest_bucket: bool,
}

/// Connector rates as ratios to a reference rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ratios {
    /// Publisher events/s during the connector phase.
    pub publisher: f64,
    /// Sustained, end to end.
    pub end_to_end: Option<f64>,
    /// Sustained, steady phase.
    pub steady: Option<f64>,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What was run.
    pub setup: Setup,
    /// Every event published was written.
    pub complete: bool,
    /// Events written at the end.
    pub written: u64,
    /// The counter read as "written".
    pub written_metric: Option<&'static str>,
    /// Publisher events/s in the connector phase (first publish to last PUBACK).
    pub publisher_events_per_sec: f64,
    /// Headline: events / (last event written − first publish), events/s.
    pub sustained_end_to_end_events_per_sec: Option<f64>,
    /// Seconds from the first publish until the last event was written.
    pub end_to_end_secs: Option<f64>,
    /// Events written per second while events were still arriving (the final flush tail
    /// excluded).
    pub sustained_steady_events_per_sec: Option<f64>,
    /// The steady window `[first write, last event received]`, seconds since the first publish.
    pub steady_window_secs: Option<[f64; 2]>,
    /// Which sustained figure is the headline.
    pub headline: &'static str,
    /// p50 ingestion→written latency.
    pub latency_p50: Option<Latency>,
    /// p99 ingestion→written latency.
    pub latency_p99: Option<Latency>,
    /// Measurements produced.
    pub measurements: Option<f64>,
    /// HTTP requests to the FHIR server.
    pub fhir_requests: Option<f64>,
    /// Resources created or updated.
    pub resource_writes: Option<f64>,
    /// Requests / measurements.
    pub http_requests_per_measurement: Option<f64>,
    /// Resource writes / measurements.
    pub resource_writes_per_measurement: Option<f64>,
    /// Memory figures.
    pub memory: MemoryFigures,
    /// The broker-only phase.
    pub broker_only: Option<BrokerOnly>,
    /// Parse-only events/s.
    pub parse_only_events_per_sec: f64,
    /// Connector rates / broker-only.
    pub ratio_to_broker_only: Option<Ratios>,
    /// Connector rates / parse-only.
    pub ratio_to_parse_only: Ratios,
    /// The FHIR cross-check.
    pub fhir: FhirCount,
    /// Heart-rate samples in FHIR equal the heart-rate readings published.
    pub fhir_samples_match: bool,
    /// SIGTERM to exit, seconds.
    pub drain_secs: f64,
    /// The connector's exit code.
    pub exit_code: Option<i32>,
    /// It did not exit within the drain timeout after SIGTERM and was killed.
    pub killed: bool,
    /// Why the bench stopped waiting before everything was written.
    pub stopped_waiting: Option<String>,
    /// Broker log lines about dropped messages (expected empty).
    pub broker_drop_warnings: Vec<String>,
    /// MQTT connections the connector made (1 unless it reconnected).
    pub mqtt_connections: usize,
    /// Broker log lines about a keep-alive running out (expected empty).
    pub keep_alive_trouble: Vec<String>,
    /// Metrics the figures wanted that the connector does not export.
    pub absent_metrics: Vec<&'static str>,
}

/// Memory figures, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryFigures {
    /// `VmRSS` once ready, before publishing.
    pub idle_rss_bytes: u64,
    /// Peak RSS: `VmHWM`, or the sampled peak if larger.
    pub peak_rss_bytes: u64,
    /// Largest `VmRSS` sampled every 200 ms.
    pub sampled_peak_rss_bytes: u64,
    /// Peak of `iomt_pending_windows`.
    pub peak_pending_windows: Option<f64>,
    /// Peak of `iomt_pending_measurements`.
    pub peak_pending_measurements: Option<f64>,
    /// (peak − idle) / peak pending windows.
    pub rss_per_active_window_bytes: Option<f64>,
    /// (peak − idle) / peak pending measurements.
    pub rss_per_pending_measurement_bytes: Option<f64>,
}

fn ratio(a: Option<f64>, b: f64) -> Option<f64> {
    a.filter(|_| b > 0.0).map(|a| a / b)
}

fn peak(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    samples.iter().filter_map(f).reduce(f64::max)
}

fn latency(q: Quantile) -> Option<Latency> {
    match q {
        Quantile::At {
            value,
            lower,
            upper,
        } => Some(Latency {
            seconds: value,
            bucket: [Some(lower), Some(upper)],
            above_largest_bucket: false,
        }),
        Quantile::Above(s) => Some(Latency {
            seconds: s,
            bucket: [Some(s), None],
            above_largest_bucket: true,
        }),
        Quantile::Empty => None,
    }
}

/// Computes the figures.
pub fn compute(r: Recorded) -> Report {
    let n = r.setup.events as f64;
    let last = &r.last;
    let written_now = written(last);
    let written_count = written_now.map_or(0.0, |(_, v)| v);
    let complete = written_count >= n;

    // First scrape that shows everything written: the end of the run (±0.5 s).
    let done_at = r.samples.iter().find(|s| s.written >= n).map(|s| s.at);
    let end_to_end = done_at.map(|t| n / t.max(1e-6));

    // Steady phase: from the first scrape showing a write to the first showing every event
    // received; what was written in between was written while events still arrived.
    let first_write = r.samples.iter().find(|s| s.written > 0.0);
    let all_in = r
        .samples
        .iter()
        .find(|s| s.incoming.is_some_and(|i| i >= n));
    let (steady, steady_window) = match (first_write, all_in) {
        (Some(a), Some(b)) if b.at - a.at >= 1.0 && b.written > a.written => (
            Some((b.written - a.written) / (b.at - a.at)),
            Some([a.at, b.at]),
        ),
        _ => (None, None),
    };

    let hist = last.histogram(names::LATENCY);
    let (p50, p99) = match &hist {
        Some(b) => (latency(quantile(b, 0.5)), latency(quantile(b, 0.99))),
        None => (None, None),
    };

    let measurements = last.value(names::MEASUREMENTS);
    let requests = last.value(names::FHIR_REQUESTS);
    let writes = last.sum_where(names::SAVED, |l| {
        matches!(label(l, "operation"), Some("Created" | "Updated"))
    });
    let per_measurement = |x: Option<f64>| match (x, measurements) {
        (Some(x), Some(m)) if m > 0.0 => Some(x / m),
        _ => None,
    };

    let peak_rss = r.hwm.max(r.sampled_peak_rss);
    let grown = peak_rss.saturating_sub(r.idle_rss) as f64;
    let peak_windows = peak(&r.samples, |s| s.pending_windows);
    let peak_measurements = peak(&r.samples, |s| s.pending_measurements);
    let per = |p: Option<f64>| p.filter(|p| *p > 0.0).map(|p| grown / p);

    let publisher = n / r.publish_secs.max(1e-6);
    let ratios = |reference: f64| Ratios {
        publisher: publisher / reference,
        end_to_end: ratio(end_to_end, reference),
        steady: ratio(steady, reference),
    };

    let mut absent = Vec::new();
    for name in [
        names::COMMITTED,
        names::LATENCY,
        names::PENDING_WINDOWS,
        names::PENDING_MEASUREMENTS,
        names::INCOMING,
        names::MEASUREMENTS,
        names::FHIR_REQUESTS,
        names::SAVED,
    ] {
        let present = if name == names::LATENCY {
            hist.is_some()
        } else {
            last.has(name)
        };
        if !present {
            absent.push(name);
        }
    }

    Report {
        complete,
        written: written_count as u64,
        written_metric: written_now.map(|(name, _)| name),
        publisher_events_per_sec: publisher,
        sustained_end_to_end_events_per_sec: end_to_end,
        end_to_end_secs: done_at,
        sustained_steady_events_per_sec: steady,
        steady_window_secs: steady_window,
        headline: "sustainedEndToEnd",
        latency_p50: p50,
        latency_p99: p99,
        measurements,
        fhir_requests: requests,
        resource_writes: writes,
        http_requests_per_measurement: per_measurement(requests),
        resource_writes_per_measurement: per_measurement(writes),
        memory: MemoryFigures {
            idle_rss_bytes: r.idle_rss,
            peak_rss_bytes: peak_rss,
            sampled_peak_rss_bytes: r.sampled_peak_rss,
            peak_pending_windows: peak_windows,
            peak_pending_measurements: peak_measurements,
            rss_per_active_window_bytes: per(peak_windows),
            rss_per_pending_measurement_bytes: per(peak_measurements),
        },
        broker_only: r.broker_only,
        parse_only_events_per_sec: r.parse_only,
        ratio_to_broker_only: r.broker_only.map(|b| ratios(b.events_per_sec)),
        ratio_to_parse_only: ratios(r.parse_only),
        fhir_samples_match: r.fhir.heart_rate_samples == r.fhir.heart_rate_readings_published,
        fhir: r.fhir,
        drain_secs: r.drain_secs,
        exit_code: r.exit_code,
        killed: r.killed,
        stopped_waiting: r.stopped_waiting,
        broker_drop_warnings: r.broker_drops,
        mqtt_connections: r.mqtt_connections,
        keep_alive_trouble: r.keep_alive_trouble,
        absent_metrics: absent,
        setup: r.setup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::table::render;

    fn setup(events: u64) -> Setup {
        Setup {
            devices: 10,
            readings_per_device: 10,
            kinds: vec!["heart-rate".into()],
            events,
            body_bytes: 12_000,
            rate: 0.0,
            inflight: 100,
            flush_interval_secs: 30.0,
            flush_interval_config: None,
            dir: "/tmp/x".into(),
            backlog: false,
        }
    }

    fn sample(at: f64, incoming: f64, written: f64, windows: f64) -> Sample {
        Sample {
            at,
            incoming: Some(incoming),
            written,
            pending_windows: Some(windows),
            pending_measurements: Some(windows * 10.0),
        }
    }

    fn recorded(last: &str) -> Recorded {
        Recorded {
            setup: setup(100),
            publish_secs: 2.0,
            samples: vec![
                sample(0.5, 20.0, 0.0, 2.0),
                sample(1.0, 50.0, 10.0, 4.0),
                sample(3.0, 100.0, 60.0, 10.0),
                sample(4.0, 100.0, 100.0, 0.0),
            ],
            last: Scrape::parse(last),
            idle_rss: 10 << 20,
            sampled_peak_rss: 19 << 20,
            hwm: 20 << 20,
            broker_only: Some(BrokerOnly {
                events_per_sec: 200.0,
                publisher_events_per_sec: 210.0,
            }),
            parse_only: 1000.0,
            fhir: FhirCount {
                heart_rate_readings_published: 100,
                heart_rate_samples: 100,
                heart_rate_observations: 10,
                observations: 10,
            },
            drain_secs: 0.2,
            exit_code: Some(0),
            killed: false,
            stopped_waiting: None,
            broker_drops: vec![],
            mqtt_connections: 1,
            keep_alive_trouble: vec![],
        }
    }

    const NEW: &str = "iomt_events_incoming_total 100\niomt_events_acked_total 100\niomt_events_committed_total 100\n\
        iomt_measurements_total 100\niomt_fhir_requests_total 25\n\
        iomt_fhir_resources_saved_total{resource_type=\"Observation\",operation=\"Created\"} 10\n\
        iomt_fhir_resources_saved_total{resource_type=\"Observation\",operation=\"Updated\"} 5\n\
        iomt_fhir_resources_saved_total{resource_type=\"Observation\",operation=\"Unchanged\"} 3\n\
        iomt_pending_windows 0\niomt_pending_measurements 0\n\
        iomt_ingestion_to_written_seconds_bucket{le=\"1\"} 50\n\
        iomt_ingestion_to_written_seconds_bucket{le=\"2\"} 100\n\
        iomt_ingestion_to_written_seconds_bucket{le=\"+Inf\"} 100\n";

    #[test]
    fn figures_from_a_complete_run() {
        let r = compute(recorded(NEW));
        assert!(r.complete && r.fhir_samples_match);
        assert_eq!(r.written_metric, Some(names::COMMITTED));
        assert_eq!(r.publisher_events_per_sec, 50.0);
        // Everything written at the 4.0 s scrape.
        assert_eq!(r.sustained_end_to_end_events_per_sec, Some(25.0));
        // Steady: 10 written at 1.0 s, 60 when the last event arrived at 3.0 s.
        assert_eq!(r.sustained_steady_events_per_sec, Some(25.0));
        assert_eq!(r.steady_window_secs, Some([1.0, 3.0]));
        assert_eq!(r.latency_p50.unwrap().seconds, 1.0);
        assert!((r.latency_p99.unwrap().seconds - 1.98).abs() < 1e-9);
        assert_eq!(r.http_requests_per_measurement, Some(0.25));
        assert_eq!(r.resource_writes_per_measurement, Some(0.15));
        // 20 MiB peak − 10 MiB idle over 10 windows / 100 measurements.
        assert_eq!(r.memory.rss_per_active_window_bytes, Some(1048576.0));
        assert_eq!(r.memory.rss_per_pending_measurement_bytes, Some(104857.6));
        let b = r.ratio_to_broker_only.unwrap();
        assert_eq!((b.publisher, b.end_to_end), (0.25, Some(0.125)));
        assert_eq!(r.ratio_to_parse_only.end_to_end, Some(0.025));
        assert!(r.absent_metrics.is_empty());
        let text = render(&r);
        assert!(text.contains("25 ev/s"), "{text}");
        assert!(text.contains("1.000 s (in the 0-1 s bucket)"), "{text}");
    }

    #[test]
    fn old_connector_metrics_are_na() {
        let old = "iomt_events_incoming_total 100\niomt_events_acked_total 100\niomt_measurements_total 100\n\
            iomt_fhir_requests_total 40\n";
        let mut rec = recorded(old);
        for s in &mut rec.samples {
            s.pending_windows = None;
            s.pending_measurements = None;
        }
        let r = compute(rec);
        assert_eq!(r.written_metric, Some(names::ACKED));
        assert!(r.latency_p50.is_none() && r.memory.rss_per_active_window_bytes.is_none());
        assert_eq!(r.resource_writes_per_measurement, None);
        assert_eq!(
            r.absent_metrics,
            vec![
                names::COMMITTED,
                names::LATENCY,
                names::PENDING_WINDOWS,
                names::PENDING_MEASUREMENTS,
                names::SAVED
            ]
        );
        let text = render(&r);
        assert!(text.contains("n/a (metric absent)"), "{text}");
    }

    #[test]
    fn a_run_shorter_than_the_flush_interval_has_no_steady_phase() {
        let mut rec = recorded(NEW);
        rec.samples = vec![
            sample(0.5, 100.0, 0.0, 10.0),
            sample(30.5, 100.0, 100.0, 0.0),
        ];
        let r = compute(rec);
        assert_eq!(r.sustained_steady_events_per_sec, None);
        assert!((r.sustained_end_to_end_events_per_sec.unwrap() - 100.0 / 30.5).abs() < 1e-9);
    }
}
