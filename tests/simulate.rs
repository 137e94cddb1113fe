//! `iomt simulate`: deterministic output, every device kind and payload shape mapped to
//! Observations by the simulator template set, faults that become the right errors.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn iomt(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(args)
        .output()
        .expect("run iomt");
    assert!(
        out.status.success(),
        "iomt {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn set(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("templates/simulator")
        .join(file)
        .display()
        .to_string()
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let args = [
        "simulate",
        "--seed",
        "1",
        "--devices",
        "8",
        "--readings",
        "5",
        "--faults",
        "malformed=10,missing=10,duplicate=10,out-of-order=10,skew=10",
    ];
    let (a, _) = iomt(&args);
    let (b, _) = iomt(&args);
    assert_eq!(a, b, "--seed 1 twice must print identical output");
    let mut other = args;
    other[2] = "2";
    let (c, _) = iomt(&other);
    assert_ne!(a, c);
}

#[test]
fn every_kind_and_shape_maps_to_observations() {
    let dir = tempfile::tempdir().unwrap();
    for shape in ["plain", "iothub", "iotcentral", "array:4"] {
        let events = dir.path().join(format!("{shape}.json"));
        iomt(&[
            "simulate",
            "--seed",
            "7",
            "--devices",
            "16",
            "--readings",
            "4",
            "--shape",
            shape,
            "--target",
            &format!("file:{}", events.display()),
        ]);
        let (out, _) = iomt(&[
            "map",
            "--device-mapping",
            &set("devicecontent.json"),
            "--fhir-mapping",
            &set("fhirmapping.json"),
            "--events",
            events.to_str().unwrap(),
        ]);
        let r: Value = serde_json::from_str(&out).unwrap();
        assert!(
            r["errors"].as_array().unwrap().is_empty(),
            "{shape}: {}",
            r["errors"]
        );
        assert!(
            r["dropped"].as_array().unwrap().is_empty(),
            "{shape}: {}",
            r["dropped"]
        );
        let mut types: Vec<&str> = r["observations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["code"]["text"].as_str().unwrap())
            .collect();
        types.sort();
        types.dedup();
        assert_eq!(
            types,
            [
                "bloodglucose",
                "bloodpressure",
                "bodytemperature",
                "bodyweight",
                "ecg",
                "heartrate",
                "spo2",
                "steps"
            ],
            "{shape}"
        );
        // ECG: 250 Hz (period 4 ms), one Observation per one-second chunk (correlation id).
        let ecg = r["observations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["code"]["text"] == "ecg")
            .unwrap();
        assert_eq!(ecg["valueSampledData"]["period"], 4);
        assert!(
            ecg["valueSampledData"]["data"]
                .as_str()
                .unwrap()
                .split(' ')
                .filter(|t| *t != "E")
                .count()
                >= 250
        );
    }
}

#[test]
fn faults_become_the_reference_error_types() {
    let (events, stderr) = iomt(&[
        "simulate",
        "--seed",
        "3",
        "--devices",
        "8",
        "--readings",
        "20",
        "--faults",
        "malformed=5,missing=5,duplicate=5,out-of-order=5,skew=5",
    ]);
    let counts: std::collections::BTreeMap<String, usize> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("faults injected: "))
        .expect("the simulator reports the faults it injected")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert!(
        counts["malformed"] > 0 && counts["missing-field"] > 0,
        "{counts:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.json");
    std::fs::write(&path, events).unwrap();
    let (out, _) = iomt(&[
        "normalize",
        "--device-mapping",
        &set("devicecontent.json"),
        "--events",
        path.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let errors = r["errors"].as_array().unwrap();
    let of = |t: &str| errors.iter().filter(|e| e["type"] == t).count();
    assert_eq!(of("InvalidDataFormatException"), counts["malformed"]);
    assert_eq!(of("IncompatibleDataException"), counts["missing-field"]);
    assert_eq!(errors.len(), counts["malformed"] + counts["missing-field"]);
}
