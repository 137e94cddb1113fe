//! `iomt run` end to end: a real Mosquitto broker, the real test FHIR server, the connector as
//! a separate process (so it can be killed with SIGKILL), events published over MQTT at QoS 1.
//!
//! * `mqtt`: events to Observations and SIGTERM drains; MQTT 3.1.1, TLS with a private CA,
//!   user name and password; the example config;
//! * `durability`: SIGKILL at full rate, the FHIR server down under load, a backlog published
//!   while the connector is down, a full spool disk: nothing lost, nothing twice;
//! * `bad_input`: bad events and the simulator's faults are dead-lettered and the pipeline goes
//!   on; dead letters replay once the template is fixed;
//! * `scale_out`: instances on a shared subscription end in the state of one replay.
//!
//! This module holds what they share: the connector's config and start, the messages.

mod bad_input;
mod durability;
mod mqtt;
mod scale_out;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use testkit::connector::{self, metric, ConnectorProcess};
use testkit::fhir::{FhirServer, FhirState, Forwarder};
use testkit::free_port;
use testkit::heart_rate::{hr_body, wait_for_complete_observations, HOUR};
use testkit::mqtt::{mosquitto_pub, publish, Mosquitto, TestCa};
use testkit::vitals;

/// The connector under test; [`ConnectorProcess`] does the process handling.
struct Connector {
    process: ConnectorProcess,
}

impl std::ops::Deref for Connector {
    type Target = ConnectorProcess;
    fn deref(&self) -> &ConnectorProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Connector {
    fn deref_mut(&mut self) -> &mut ConnectorProcess {
        &mut self.process
    }
}

impl Connector {
    fn start(dir: &Path, name: &str, broker: u16, fhir_url: &str, extra_source: &str) -> Connector {
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
        Self::start_with(
            dir,
            name,
            broker,
            fhir_url,
            extra_source,
            &templates.join("devicecontent.json"),
            &templates.join("fhirmapping.json"),
        )
    }

    fn start_with(
        dir: &Path,
        name: &str,
        broker: u16,
        fhir_url: &str,
        extra_source: &str,
        device_mapping: &Path,
        fhir_mapping: &Path,
    ) -> Connector {
        Self::start_full(
            dir,
            name,
            broker,
            fhir_url,
            extra_source,
            "",
            "",
            device_mapping,
            fhir_mapping,
        )
    }

    /// [`Connector::start_with`] with extra `[pipeline]` and `[spool]` lines too.
    #[allow(clippy::too_many_arguments)]
    fn start_full(
        dir: &Path,
        name: &str,
        broker: u16,
        fhir_url: &str,
        extra_source: &str,
        extra_pipeline: &str,
        extra_spool: &str,
        device_mapping: &Path,
        fhir_mapping: &Path,
    ) -> Connector {
        let metrics_port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[templates]
device_mapping = "{dm}"
fhir_mapping = "{fm}"

[fhir]
url = "{fhir_url}"
resolution = "Create"
retry_deadline_secs = 5

[source]
kind = "mqtt"
host = "127.0.0.1"
port = {broker}
client_id = "{name}"
topics = ["devices/+/telemetry"]
device_id_from_topic = "devices/{{deviceId}}/telemetry"
{extra_source}

[pipeline]
{extra_pipeline}
flush_interval_ms = 200
max_event_bytes = 1048576

[dead_letters]
dir = "{dl}"

[spool]
dir = "spool-{name}"
{extra_spool}

[http]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "info"
"#,
                dm = device_mapping.display(),
                fm = fhir_mapping.display(),
                dl = dir.join("dead-letters").display(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_iomt"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start iomt run");
        let c = Connector {
            process: ConnectorProcess {
                child,
                metrics_port,
                log,
            },
        };
        // Give the MQTT session a moment to subscribe once ready.
        c.wait_ready(Duration::from_millis(300));
        c
    }
}

impl Connector {
    /// A connector for the `simulator` template set (heart rate, SpO2, blood pressure, ...),
    /// which [`vitals::readings`] are for.
    fn start_vitals(dir: &Path, name: &str, broker: u16, fhir_url: &str, extra: &str) -> Connector {
        let set = vitals::template_set();
        Self::start_with(
            dir,
            name,
            broker,
            fhir_url,
            extra,
            &set.join("devicecontent.json"),
            &set.join("fhirmapping.json"),
        )
    }
}

fn hr_messages(devices: &[&str], minutes: std::ops::Range<u32>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in minutes {
        for d in devices {
            out.push((format!("devices/{d}/telemetry"), hr_body(d, m)));
        }
    }
    out
}

/// The events of `readings` as MQTT messages (`devices/<id>/telemetry`).
fn vitals_messages(readings: &[vitals::Reading]) -> Vec<(String, Vec<u8>)> {
    readings.iter().map(|r| (r.topic(), r.bytes())).collect()
}

/// [`vitals::one_replay_of`] with this package's binary.
async fn one_replay_of(server: &FhirServer, readings: &[vitals::Reading]) -> FhirState {
    vitals::one_replay_of(env!("CARGO_BIN_EXE_iomt"), server, readings).await
}

/// How many events a connector replayed from its spool at start (its log line says).
fn spool_replayed(log: &str) -> u64 {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("Replayed the spool's un-committed events."))
        .filter_map(|l| {
            l.split("events=")
                .nth(1)?
                .split([' ', ','])
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `text` without terminal colour sequences (`ESC [ ... m`), as the text log writes them.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

fn templates_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate")
}
