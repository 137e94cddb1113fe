//! Readings of several kinds from many devices, for the `simulator` template set
//! (`templates/simulator`): heart rate every 5 s (an hourly SampledData per device and hour,
//! one 5 s slot per reading), a twenty-fifth of them before 10:00 and the rest after, so
//! that every device's heart rate spans two hours and a stream cut part-way leaves the
//! second hour partly written; SpO2 in the device's first and last heart-rate message (one event, two
//! measurements: the event is committed once both are written); blood pressure once, in a
//! message of its own (a point-in-time Observation with two components). Every value depends
//! on the device and the time, so one device's readings cannot pass for another's.
//!
//! Mostly heart rate, on purpose: the test FHIR server's identifier search reads every
//! Observation of the store (`MemoryRepository.search`, a FHIRPath evaluation each), so the
//! time a run takes grows with the square of the Observations, not with the events.
//!
//! [`replay`] writes the same events with one `iomt replay`: the reference state the service
//! tests compare against (`fhir::state`, with the `fhir` feature).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// One event: the device it comes from and its body.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The device id.
    pub device: String,
    /// The message body.
    pub body: Value,
}

impl Reading {
    /// The MQTT topic the service tests publish it on (`devices/<id>/telemetry`).
    pub fn topic(&self) -> String {
        format!("devices/{}/telemetry", self.device)
    }

    /// The body as the bytes a device sends.
    pub fn bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }
}

/// The template set the readings are for.
pub fn template_set() -> PathBuf {
    crate::workspace_root().join("templates/simulator")
}

/// `devices` devices named `<prefix>-<nn>`, `per_device` heart-rate readings each, in time
/// order (every device's reading of one instant, then the next instant), as devices stream
/// them.
pub fn readings(prefix: &str, devices: usize, per_device: u32) -> Vec<Reading> {
    let names: Vec<String> = (0..devices).map(|i| format!("{prefix}-{i:02}")).collect();
    let start = 10 * 3600 - per_device / 25 * 5;
    let mut out = Vec::new();
    for step in 0..per_device {
        let second = start + step * 5;
        for (d, name) in names.iter().enumerate() {
            let d = d as u32;
            let patient = format!("patient-of-{name}");
            let mut body = json!({
                "deviceId": name,
                "patientId": patient,
                "endDate": time(second),
                "heartRate": 55 + (step * 7 + d * 13) % 70,
            });
            if step == 0 || step + 1 == per_device {
                body["spo2"] = json!(90 + (step + d) % 10);
            }
            out.push(Reading {
                device: name.clone(),
                body,
            });
            if step == per_device / 3 {
                out.push(Reading {
                    device: name.clone(),
                    body: json!({
                        "deviceId": name,
                        "patientId": patient,
                        "endDate": time(second + 2),
                        "systolic": 105 + d * 3 % 40,
                        "diastolic": 65 + d * 5 % 25,
                    }),
                });
            }
        }
    }
    out
}

/// How many of `readings` come before the last device's first reading of 10:00 and that
/// reading itself: once that many are committed (in order), every device's second-hour
/// Observation has been written.
pub fn through_first_of_second_hour(readings: &[Reading]) -> usize {
    readings
        .iter()
        .rposition(|r| {
            r.body["endDate"] == "2024-05-01T10:00:00Z" && r.body["heartRate"].is_number()
        })
        .expect("a reading at 10:00")
        + 1
}

/// 2024-05-01 at `second` seconds after midnight UTC.
fn time(second: u32) -> String {
    format!(
        "2024-05-01T{:02}:{:02}:{:02}Z",
        second / 3600,
        second / 60 % 60,
        second % 60
    )
}

/// Writes `readings` into the FHIR server at `base` with one `iomt replay` of the
/// [`template_set`] (identity resolution `Create`, as the service tests' connectors); panics
/// unless every event was written without error. Returns the replay's report.
///
/// `iomt` is the binary (`env!("CARGO_BIN_EXE_iomt")` in the `iomt` package's tests: Cargo
/// sets that for the package's own integration tests only, not for a library like this one).
pub fn replay(iomt: impl AsRef<Path>, base: &str, readings: &[Reading]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.json");
    let file: Vec<Value> = readings.iter().map(|r| json!({"body": r.body})).collect();
    std::fs::write(&events, serde_json::to_vec(&file).unwrap()).unwrap();
    let set = template_set();
    let out = crate::set_command(iomt.as_ref(), "replay", &set, Some(&events))
        .args(["--fhir-url", base, "--resolution", "Create"])
        .output()
        .expect("run iomt replay");
    assert!(
        out.status.success(),
        "iomt replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("replay prints JSON");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(0),
        "replay errors: {:#}",
        report["errors"]
    );
    assert_eq!(
        report["incoming"],
        readings.len(),
        "{:#}",
        report["incoming"]
    );
    report
}

/// The reference state of the service tests: `readings` written by one [`replay`] into the
/// emptied `server`, read back; the server is emptied again for the run under test.
#[cfg(feature = "fhir")]
pub async fn one_replay_of(
    iomt: impl AsRef<Path>,
    server: &crate::fhir::FhirServer,
    readings: &[Reading],
) -> crate::fhir::FhirState {
    replay(iomt, &server.base, readings);
    let expected = crate::fhir::FhirState::fetch(&server.base).await;
    server.reset().await;
    assert!(expected.count("Observation") > 0 && expected.duplicates() == 0);
    expected
}
