//! The connector as a child process (`iomt run`), as the service tests drive it: ready
//! check, metrics, logs, SIGTERM and SIGKILL, peak memory. Killed when dropped.

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
