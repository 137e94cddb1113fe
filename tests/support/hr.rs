//! Helpers shared by the service tests (MQTT and Event Hubs): one hour of heart-rate readings
//! per device, the SampledData they must become, and the connector's metrics endpoint.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fhir_server::FhirServer;

pub const HOUR: &str = "2024-05-01T10";

/// The heart-rate body of the heart-rate template set (one reading per minute slot).
pub fn hr_body(device: &str, minute: u32) -> Vec<u8> {
    json!({
        "deviceId": device,
        "patientId": format!("patient-of-{device}"),
        "endDate": format!("{HOUR}:{minute:02}:00Z"),
        "heartRate": hr_value(device, minute),
    })
    .to_string()
    .into_bytes()
}

/// Differs between devices (by the bytes of the id, not only its length: with equal series,
/// one device's Observation would pass for another's in [`wait_for_complete_observations`]).
pub fn hr_value(device: &str, minute: u32) -> u32 {
    let seed: u32 = device.bytes().map(u32::from).sum();
    60 + (minute * 7 + seed * 3) % 60
}

/// The SampledData `data` an hour of every minute from `device` must end up as.
pub fn expected_data(device: &str) -> String {
    (0..60)
        .map(|m| hr_value(device, m).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

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

/// Waits until the FHIR server holds, for every device, the hourly Observation with every
/// minute's sample; then checks nothing is duplicated.
pub async fn wait_for_complete_observations(
    server: &FhirServer,
    devices: &[&str],
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let obs = server.all("Observation").await;
        let complete = devices.iter().all(|d| {
            let want = expected_data(d);
            obs.iter()
                .any(|o| o["valueSampledData"]["data"] == want.as_str())
        });
        if complete {
            assert_eq!(
                obs.len(),
                devices.len(),
                "one Observation per device and hour, no duplicates: {obs:#?}"
            );
            let mut ids: Vec<&str> = obs
                .iter()
                .map(|o| o["identifier"][0]["value"].as_str().unwrap())
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), devices.len());
            return;
        }
        if started.elapsed() > within {
            let summary: Vec<Value> = obs
                .iter()
                .map(|o| json!({"device": o["device"], "data": o["valueSampledData"]["data"]}))
                .collect();
            panic!("incomplete after {within:?}: {summary:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
