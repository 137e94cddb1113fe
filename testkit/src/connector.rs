//! The connector as a child process (`iomt run`), as the service tests drive it: ready
//! check, metrics, logs, SIGTERM and SIGKILL, peak memory. Killed when dropped.
//!
//! The end of a test that runs one or several instances (a consumer group, a shared
//! subscription) is the same everywhere: wait until the server holds the expected state and
//! every instance is [idle](ConnectorProcess::is_idle), check that nothing was dead-lettered
//! or failed, stop them and compare once more. [`wait_until_written`], [`assert_clean`] and
//! [`stop_and_compare`] are those steps, for a slice of instances.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running `iomt run`, started by the test (which writes its config and picks its ports).
pub struct ConnectorProcess {
    /// The process.
    pub child: Child,
    /// The port of its HTTP endpoint (`/readyz`, `/metrics`).
    pub metrics_port: u16,
    /// The file its stderr (the log) goes to.
    pub log: PathBuf,
}

impl ConnectorProcess {
    /// Waits (20 s at most) until `/readyz` answers ready, then `settle` more.
    pub fn wait_ready(&self, settle: Duration) {
        let started = Instant::now();
        loop {
            if let Some(body) = http_get(self.metrics_port, "/readyz") {
                if body.starts_with("ready") {
                    std::thread::sleep(settle);
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "connector not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Nothing received and not yet committed, nothing waiting in the group stage, and
    /// something was received.
    pub fn is_idle(&self) -> bool {
        let text = self.metrics_text();
        metric(&text, "iomt_events_incoming_total") > 0.0
            && metric(&text, "iomt_events_in_flight") == 0.0
            && metric(&text, "iomt_pending_measurements") == 0.0
    }

    /// Waits (`within` at most) until the metric reaches `at_least`.
    #[cfg(feature = "fhir")]
    pub async fn wait_metric(&self, name: &str, at_least: f64, within: Duration) {
        wait_total(&[self], name, at_least, within).await;
    }

    /// SIGTERM; asserts that it exits with success (its log in the message otherwise).
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "{status:?}:\n{}", self.log_text());
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value now ([`metric`] of [`Self::metrics_text`]).
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics_text(), name)
    }

    /// The `/metrics` text (retried: a read can fail while the process is busy starting).
    pub fn metrics_text(&self) -> String {
        for _ in 0..5 {
            if let Some(text) = http_get(self.metrics_port, "/metrics") {
                if text.contains("iomt_events_incoming_total") {
                    return text;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        String::new()
    }

    /// SIGKILL, and waits for the exit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "connector did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process's peak resident set (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// The process's resident set now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for ConnectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `GET <path>` on a loopback port (HTTP/1.1); `None` when the
/// connection or the read fails.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of a metric line (`name{labels} value`), summed over matching lines; 0 if absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The logs of `instances`, one after the other.
pub fn logs(instances: &[&ConnectorProcess]) -> String {
    instances
        .iter()
        .map(|c| c.log_text())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A metric summed over `instances`.
pub fn total(instances: &[&ConnectorProcess], name: &str) -> f64 {
    instances.iter().map(|c| c.metric(name)).sum()
}

/// Asserts that no instance dead-lettered an event or counted an error.
pub fn assert_clean(instances: &[&ConnectorProcess]) {
    for name in ["iomt_dead_letters_total", "iomt_errors_total"] {
        assert_eq!(total(instances, name), 0.0, "{name}:\n{}", logs(instances));
    }
}

/// Waits (`within` at most) until a metric summed over `instances` reaches `at_least`.
#[cfg(feature = "fhir")]
pub async fn wait_total(
    instances: &[&ConnectorProcess],
    name: &str,
    at_least: f64,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let now = total(instances, name);
        if now >= at_least {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{name} stayed at {now} (waited for {at_least}):\n{}",
            logs(instances)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (`within` at most) until the FHIR server at `base` holds `expected`, resource by
/// resource, and every instance is [idle](ConnectorProcess::is_idle).
#[cfg(feature = "fhir")]
pub async fn wait_until_written(
    base: &str,
    expected: &crate::fhir::FhirState,
    within: Duration,
    instances: &[&ConnectorProcess],
) -> crate::fhir::Comparison {
    crate::fhir::wait_for_state(
        base,
        expected,
        within,
        || instances.iter().all(|c| c.is_idle()),
        || logs(instances),
    )
    .await
}

/// [Stops](ConnectorProcess::stop) every instance, then asserts that the server at `base`
/// still holds `expected` (nothing was written after it matched): the comparison, for its
/// figures.
#[cfg(feature = "fhir")]
pub async fn stop_and_compare(
    instances: &mut [&mut ConnectorProcess],
    base: &str,
    expected: &crate::fhir::FhirState,
) -> crate::fhir::Comparison {
    for c in instances.iter_mut() {
        c.stop();
    }
    let cmp = crate::fhir::Comparison::of(expected, &crate::fhir::FhirState::fetch(base).await);
    cmp.assert_same(&format!("after {} instance(s) stopped", instances.len()));
    cmp
}
