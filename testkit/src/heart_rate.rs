//! Helpers shared by the service tests (MQTT and Event Hubs): one hour of heart-rate readings
//! per device for the `heart-rate` template set, and the SampledData they must become.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fhir::FhirServer;

/// The hour the readings are in (UTC), as the prefix of their times.
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
