//! Bad input never stops the pipeline: bad events and the simulator's faults are dead-lettered
//! with their reason; dead letters replay once the template is fixed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_dead_lettered_and_the_pipeline_goes_on() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Connector::start(
        dir.path(),
        "bad",
        broker.port,
        &server.base,
        "max_packet_bytes = 33554432",
    );
    let topic = |d: &str| format!("devices/{d}/telemetry");
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let big = format!(
        "{{\"deviceId\": \"bad-a\", \"padding\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let wrong_type = json!({"deviceId": "bad-a", "patientId": "p", "endDate": format!("{HOUR}:30:00Z"), "heartRate": {"bpm": 70}}).to_string();
    let mut messages = hr_messages(&["bad-a"], 0..30);
    messages.push((
        topic("bad-a"),
        b"{\"heartRate\": 71, \"deviceId\": ".to_vec(),
    ));
    messages.push((topic("bad-a"), big.into_bytes()));
    messages.push((topic("bad-a"), deep.into_bytes()));
    messages.push((topic("bad-a"), wrong_type.into_bytes()));
    messages.extend(hr_messages(&["bad-a"], 30..60));
    publish(broker.port, messages, Duration::ZERO).await;
    wait_for_complete_observations(&server, &["bad-a"], Duration::from_secs(60)).await;
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < 64.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.metric("iomt_dead_letters_total"), 4.0);
    assert_eq!(c.metric("iomt_errors_total"), 4.0);

    // Each is kept with its reason, visible with `iomt dead-letters`.
    let config = dir.path().join("bad.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    let mut types: Vec<&str> = list
        .lines()
        .map(|l| l.split('\t').nth(2).unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "IncompatibleDataException",
            "InvalidDataFormatException",
            "InvalidDataFormatException",
            "PayloadTooLargeException"
        ],
        "{list}"
    );
    assert!(
        list.contains("recursion limit") || list.contains("not valid JSON"),
        "{list}"
    );
    let first = list.lines().next().unwrap().split('\t').next().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "show", first, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        shown["body"].is_string()
            && shown["systemProperties"]["mqtt-topic"] == "devices/bad-a/telemetry",
        "{shown}"
    );

    // Memory stays bounded: the peak resident set after a 10 MB payload.
    let peak = c.peak_rss_kib();
    eprintln!("PEAK_RSS_KIB {peak}");
    assert!(peak > 0 && peak < 256 * 1024, "peak RSS {peak} KiB");
}

/// A FHIR mapping that lacks the measurement's type dead-letters the events
/// (`TemplateNotFoundException`); after the mapping is fixed, `iomt dead-letters replay` writes
/// them and empties the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_after_the_template_is_fixed() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
    let fhir_mapping = dir.path().join("fhirmapping.json");
    let good = std::fs::read_to_string(set.join("fhirmapping.json")).unwrap();
    std::fs::write(
        &fhir_mapping,
        good.replace(
            "\"typeName\": \"heartrate\"",
            "\"typeName\": \"heart-rate-typo\"",
        ),
    )
    .unwrap();
    let mut c = Connector::start_with(
        dir.path(),
        "replay",
        broker.port,
        &server.base,
        "",
        &set.join("devicecontent.json"),
        &fhir_mapping,
    );
    publish(broker.port, hr_messages(&["dl-a"], 0..60), Duration::ZERO).await;
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < 60.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.metric("iomt_dead_letters_total"), 60.0);
    assert!(server.all("Observation").await.is_empty());
    c.stop();
    let config = dir.path().join("replay.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    assert_eq!(list.lines().count(), 60);
    assert!(
        list.lines()
            .all(|l| l.split('\t').nth(2) == Some("TemplateNotFoundException")),
        "{list}"
    );

    // Fix the template and replay.
    std::fs::write(&fhir_mapping, good).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "replay", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("60 replayed, 0 still failing"), "{text}");
    wait_for_complete_observations(&server, &["dl-a"], Duration::from_secs(30)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "replayed dead letters are removed");
}

/// The simulator's faults, published over MQTT, arrive as dead letters with the right types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_faults_arrive_as_dead_letters() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/simulator");
    let c = Connector::start_with(
        dir.path(),
        "simfaults",
        broker.port,
        &server.base,
        "",
        &set.join("devicecontent.json"),
        &set.join("fhirmapping.json"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args([
            "simulate",
            "--seed",
            "5",
            "--devices",
            "8",
            "--readings",
            "12",
            "--faults",
            "malformed=8,missing=8,duplicate=5,out-of-order=5,skew=5",
        ])
        .args(["--target", &format!("mqtt://127.0.0.1:{}", broker.port)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let counts: std::collections::BTreeMap<String, f64> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("faults injected: "))
        .unwrap()
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    let published: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("published "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < published {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let config = dir.path().join("simfaults.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let of = |t: &str| {
        list.lines()
            .filter(|l| l.split('\t').nth(2) == Some(t))
            .count() as f64
    };
    assert_eq!(
        of("InvalidDataFormatException"),
        counts["malformed"],
        "{list}"
    );
    assert_eq!(
        of("IncompatibleDataException"),
        counts["missing-field"],
        "{list}"
    );
    assert_eq!(
        list.lines().count() as f64,
        counts["malformed"] + counts["missing-field"]
    );
    assert_eq!(
        c.metric("iomt_dead_letters_total"),
        counts["malformed"] + counts["missing-field"]
    );
    assert!(!server.all("Observation").await.is_empty());
    eprintln!(
        "SIMULATOR_FAULTS {counts:?} dead_letters={}",
        list.lines().count()
    );
}
