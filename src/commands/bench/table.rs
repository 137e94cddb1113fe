//! The bench's figures as the table `iomt bench` prints (without `--json`): one row per
//! rate with its ratios to the two references, then one line per other figure.

use super::report::{names, Latency, Report};

/// `12,345` style.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn size(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        mib(bytes)
    } else if bytes >= 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

/// Three decimals, or three significant digits below 0.1 (a connector rate over parse-only
/// is often a few thousandths).
fn ratio_text(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x >= 0.1 || x <= 0.0 || !x.is_finite() => format!("{x:.3}"),
        Some(x) => {
            let digits = (2 - x.log10().floor() as i32).clamp(3, 12) as usize;
            format!("{x:.digits$}")
        }
    }
}

fn latency_text(l: Option<Latency>, absent: bool) -> String {
    match l {
        _ if absent => "n/a (metric absent)".into(),
        None => "n/a (no event written)".into(),
        Some(l) if l.above_largest_bucket => {
            format!("> {} s (above the largest bucket)", l.seconds)
        }
        Some(l) => match l.bucket {
            [Some(lo), Some(hi)] => format!("{:.3} s (in the {lo}-{hi} s bucket)", l.seconds),
            _ => format!("{:.3} s", l.seconds),
        },
    }
}

/// The table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let s = &r.setup;
    let mut out = String::new();
    let absent = |name: &str| r.absent_metrics.contains(&name);
    let rate = if s.rate > 0.0 {
        format!("{} events/s", thousands(s.rate))
    } else {
        "as fast as possible".into()
    };
    let flush = match &s.flush_interval_config {
        Some(line) => format!("flush interval {} s ({line})", s.flush_interval_secs),
        None => "flush interval: not configurable in this build (ignored)".into(),
    };
    let _ = writeln!(
        out,
        "iomt bench: {} devices x {} readings ({}, 1 s apart) = {} events, {} body bytes; publish {rate}; inflight {}; {flush}",
        s.devices,
        s.readings_per_device,
        s.kinds.join(","),
        thousands(s.events as f64),
        thousands(s.body_bytes as f64),
        s.inflight
    );
    if s.backlog {
        let _ = writeln!(
            out,
            "backlog: every event was queued on the broker (the connector's persistent session) before the connector started; \
             \"publisher\" is the queueing rate, every other time counts from the connector's start"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<46} {:>22} {:>14} {:>14}",
        "figure", "value", "/ broker-only", "/ parse-only"
    );
    let row = |out: &mut String, name: &str, value: String, b: Option<f64>, p: Option<f64>| {
        let _ = writeln!(
            out,
            "{name:<46} {value:>22} {:>14} {:>14}",
            ratio_text(b),
            ratio_text(p)
        );
    };
    let rb = r.ratio_to_broker_only;
    let rp = r.ratio_to_parse_only;
    let ev = |x: Option<f64>, none: &str| {
        x.map_or_else(|| none.to_string(), |x| format!("{} ev/s", thousands(x)))
    };
    row(
        &mut out,
        "publisher (connector run)",
        ev(Some(r.publisher_events_per_sec), ""),
        rb.map(|x| x.publisher),
        Some(rp.publisher),
    );
    row(
        &mut out,
        "sustained, end to end (headline)",
        ev(r.sustained_end_to_end_events_per_sec, "n/a (incomplete)"),
        rb.and_then(|x| x.end_to_end),
        rp.end_to_end,
    );
    row(
        &mut out,
        "sustained, steady phase (no flush tail)",
        ev(r.sustained_steady_events_per_sec, "n/a (no steady phase)"),
        rb.and_then(|x| x.steady),
        rp.steady,
    );
    match r.broker_only {
        Some(b) => {
            row(
                &mut out,
                "broker-only limit (bare QoS 1 subscriber)",
                ev(Some(b.events_per_sec), ""),
                Some(1.0),
                Some(b.events_per_sec / r.parse_only_events_per_sec.max(1e-9)),
            );
            row(
                &mut out,
                "  its publisher",
                ev(Some(b.publisher_events_per_sec), ""),
                None,
                None,
            );
        }
        None => row(&mut out, "broker-only limit", "skipped".into(), None, None),
    }
    row(
        &mut out,
        "parse-only (serde_json::Value, one core)",
        ev(Some(r.parse_only_events_per_sec), ""),
        None,
        Some(1.0),
    );
    let _ = writeln!(out);
    let kv = |out: &mut String, name: &str, value: String| {
        let _ = writeln!(out, "{name:<46} {value}");
    };
    kv(
        &mut out,
        "events written",
        format!(
            "{} of {} ({})",
            thousands(r.written as f64),
            thousands(s.events as f64),
            r.written_metric.unwrap_or("no written counter")
        ),
    );
    kv(
        &mut out,
        "first publish -> last event written",
        r.end_to_end_secs
            .map_or_else(|| "n/a (incomplete)".into(), |t| format!("{t:.1} s")),
    );
    kv(
        &mut out,
        "steady window",
        r.steady_window_secs.map_or_else(
            || "n/a (nothing written before the last event arrived)".into(),
            |[a, b]| format!("{a:.1} s .. {b:.1} s after the first publish"),
        ),
    );
    kv(
        &mut out,
        "ingestion -> written latency p50",
        latency_text(r.latency_p50, absent(names::LATENCY)),
    );
    kv(
        &mut out,
        "ingestion -> written latency p99",
        latency_text(r.latency_p99, absent(names::LATENCY)),
    );
    let per = |x: Option<f64>, total: Option<f64>| match (x, total, r.measurements) {
        (Some(x), Some(t), Some(m)) => {
            format!("{x:.4} ({} / {} measurements)", thousands(t), thousands(m))
        }
        _ => "n/a (metric absent or no measurement)".into(),
    };
    kv(
        &mut out,
        "HTTP requests per measurement",
        per(r.http_requests_per_measurement, r.fhir_requests),
    );
    kv(
        &mut out,
        "resource writes per measurement",
        per(r.resource_writes_per_measurement, r.resource_writes),
    );
    let m = &r.memory;
    kv(
        &mut out,
        "peak RSS (VmHWM)",
        format!(
            "{} (sampled peak {}, idle {})",
            mib(m.peak_rss_bytes as f64),
            mib(m.sampled_peak_rss_bytes as f64),
            mib(m.idle_rss_bytes as f64)
        ),
    );
    let per_gauge = |x: Option<f64>, peak: Option<f64>, name: &str| match (x, peak) {
        _ if absent(name) => "n/a (metric absent)".to_string(),
        (Some(x), Some(p)) => format!("{} (peak {} pending)", size(x), thousands(p)),
        _ => "n/a (gauge never above 0)".to_string(),
    };
    kv(
        &mut out,
        "RSS per active window",
        per_gauge(
            m.rss_per_active_window_bytes,
            m.peak_pending_windows,
            names::PENDING_WINDOWS,
        ),
    );
    kv(
        &mut out,
        "RSS per pending measurement",
        per_gauge(
            m.rss_per_pending_measurement_bytes,
            m.peak_pending_measurements,
            names::PENDING_MEASUREMENTS,
        ),
    );
    let f = &r.fhir;
    kv(
        &mut out,
        "FHIR heart-rate samples",
        format!(
            "{} of {} published ({}; {} heart-rate Observations, {} Observations in all)",
            thousands(f.heart_rate_samples as f64),
            thousands(f.heart_rate_readings_published as f64),
            if r.fhir_samples_match {
                "match"
            } else {
                "MISMATCH"
            },
            thousands(f.heart_rate_observations as f64),
            thousands(f.observations as f64)
        ),
    );
    let drain = if r.killed {
        format!(
            "did not exit within {:.0} s; killed (SIGKILL)",
            r.drain_secs
        )
    } else {
        format!(
            "{:.2} s, exit {}",
            r.drain_secs,
            r.exit_code
                .map_or_else(|| "by signal".into(), |c| c.to_string())
        )
    };
    kv(&mut out, "SIGTERM -> exit (drain)", drain);
    if let Some(why) = &r.stopped_waiting {
        kv(&mut out, "INCOMPLETE", why.clone());
    }
    kv(
        &mut out,
        "MQTT connections / keep-alive timeouts",
        format!(
            "{} / {}",
            r.mqtt_connections,
            if r.keep_alive_trouble.is_empty() {
                "none".to_string()
            } else {
                r.keep_alive_trouble.join(" | ")
            }
        ),
    );
    if !r.broker_drop_warnings.is_empty() {
        kv(
            &mut out,
            "BROKER DROPPED MESSAGES",
            r.broker_drop_warnings.join(" | "),
        );
    }
    if !r.absent_metrics.is_empty() {
        kv(&mut out, "metrics absent", r.absent_metrics.join(", "));
    }
    kv(&mut out, "files", s.dir.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ratios_keep_three_significant_digits() {
        assert_eq!(ratio_text(None), "-");
        assert_eq!(ratio_text(Some(0.929)), "0.929");
        assert_eq!(ratio_text(Some(1.0)), "1.000");
        assert_eq!(ratio_text(Some(0.0419)), "0.0419");
        assert_eq!(ratio_text(Some(0.000_451_2)), "0.000451");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
