//! `iomt run` end to end: a real Mosquitto broker, the real test FHIR server, the connector as
//! a separate process (so it can be killed with SIGKILL), events published over MQTT at QoS 1.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use testkit::connector::{metric, ConnectorProcess};
use testkit::fhir::{wait_for_state, Comparison, FhirServer, FhirState, Forwarder};
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

fn hr_messages(devices: &[&str], minutes: std::ops::Range<u32>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for m in minutes {
        for d in devices {
            out.push((format!("devices/{d}/telemetry"), hr_body(d, m)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_events_become_the_expected_observations_and_sigterm_drains() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connector::start(dir.path(), "e2e", broker.port, &server.base, "");
    let devices = ["hr-a", "hr-b"];
    publish(broker.port, hr_messages(&devices, 0..60), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    // N events → N measurements → the Observations.
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < 120.0 {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.metric("iomt_events_incoming_total"), 120.0);
    assert_eq!(c.metric("iomt_measurements_total"), 120.0);
    assert_eq!(c.metric("iomt_errors_total"), 0.0);
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    assert!(c.metric("iomt_fhir_resources_saved_total") >= 2.0);
    // Linked to the Devices named by the topic / body and their Patients.
    assert_eq!(server.all("Device").await.len(), 2);
    assert_eq!(server.all("Patient").await.len(), 2);
    let status = c.terminate();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        c.log_text()
    );
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

/// The events of `readings` as MQTT messages (`devices/<id>/telemetry`).
fn vitals_messages(readings: &[vitals::Reading]) -> Vec<(String, Vec<u8>)> {
    readings.iter().map(|r| (r.topic(), r.bytes())).collect()
}

/// The reference state: `readings` written by one `iomt replay` into the emptied server, read
/// back; the server is emptied again for the run.
async fn one_replay_of(server: &FhirServer, readings: &[vitals::Reading]) -> FhirState {
    vitals::replay(env!("CARGO_BIN_EXE_iomt"), &server.base, readings);
    let expected = FhirState::fetch(&server.base).await;
    server.reset().await;
    assert!(expected.count("Observation") > 0 && expected.duplicates() == 0);
    expected
}

/// Nothing received and not yet committed, nothing waiting in the group stage.
fn idle(c: &ConnectorProcess) -> bool {
    let text = c.metrics_text();
    metric(&text, "iomt_events_incoming_total") > 0.0
        && metric(&text, "iomt_events_in_flight") == 0.0
        && metric(&text, "iomt_pending_measurements") == 0.0
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

/// `iomt run` killed with SIGKILL at full rate, then started again on
/// the same spool and persistent session, ends in the FHIR state one `iomt replay` of exactly
/// the same events gives, resource by resource: nothing lost (every sample), nothing
/// duplicated (no second Observation for an identifier, no sample twice).
///
/// 24 devices, 6,024 events: heart rate into hourly SampledData over two hours, SpO2 in some
/// of the same messages, blood pressure in others. The first two thirds are published with no
/// pacing, faster than the connector writes (the broker and the spool hold the difference),
/// so at the kill it has events in every stage: received, spooled and acknowledged, pending in
/// the group stage, being written, committed. It is killed as soon as every device's
/// second-hour Observation is written. The last third is published, again with no pacing, as
/// soon as it is dead, while it is down and restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_full_rate_ends_in_the_state_of_one_replay() {
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("k9", 24, 250);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let mut first = vitals_messages(&readings);
    let rest = first.split_off(total * 2 / 3);

    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connector::start_vitals(dir.path(), "k9", broker.port, &server.base, "");
    broker.wait_for_log("k9 1 devices/+/telemetry", Duration::from_secs(20));
    let publisher = tokio::spawn(publish(broker.port, first, Duration::ZERO));
    // Killed once every device's second-hour heart rate is partly written (committed is a
    // prefix of the stream), as early as that.
    let second_hour = vitals::through_first_of_second_hour(&readings) as f64;
    let started = Instant::now();
    let killed_at = loop {
        let text = c.metrics_text();
        if metric(&text, "iomt_events_committed_total") >= second_hour {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {total} committed after 60 s:\n{}",
            metric(&text, "iomt_events_committed_total"),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    c.kill9();
    let [incoming, acked, committed] = [
        "iomt_events_incoming_total",
        "iomt_events_acked_total",
        "iomt_events_committed_total",
    ]
    .map(|m| metric(&killed_at, m));
    assert!(
        committed < incoming,
        "nothing was in flight at the kill (incoming {incoming}, committed {committed}): \
         not mid-stream"
    );
    let port = broker.port;
    let late = tokio::spawn(async move {
        publisher.await.unwrap();
        publish(port, rest, Duration::ZERO).await;
    });
    std::fs::rename(dir.path().join("k9.log"), dir.path().join("k9-killed.log")).unwrap();
    let mut c2 = Connector::start_vitals(dir.path(), "k9", broker.port, &server.base, "");
    late.await.unwrap();

    wait_for_state(
        &server.base,
        &expected,
        Duration::from_secs(180),
        || idle(&c2),
        || c2.log_text(),
    )
    .await;
    let after_restart = c2.metric("iomt_events_incoming_total");
    let replayed = spool_replayed(&c2.log_text()) as f64;
    assert_eq!(
        c2.metric("iomt_dead_letters_total"),
        0.0,
        "{}",
        c2.log_text()
    );
    assert_eq!(c2.metric("iomt_errors_total"), 0.0, "{}", c2.log_text());
    // Stopped (drained), the state is still that one: nothing was written after it matched.
    let status = c2.terminate();
    assert!(status.success(), "{status:?}:\n{}", c2.log_text());
    let cmp = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    cmp.assert_same(&c2.log_text());
    // The killed one created the second-hour Observations, and the restarted one merged the
    // last third (which the killed one never saw) into them (`amended`), not into new ones.
    assert!(
        cmp.amended > 0,
        "no Observation was merged into after the restart: {}",
        cmp.figures()
    );
    assert_eq!(broker.keep_alive_or_queue_trouble(), Vec::<String>::new());
    // Read just before the kill, the killed one's counts are lower bounds.
    let redelivered = (incoming + after_restart - total as f64).max(0.0);
    eprintln!(
        "KILL9 events={total} killed_at: incoming={incoming} acked={acked} committed={committed}; \
         after_restart={after_restart} (spool_replayed={replayed} from_broker={}) \
         redelivered>={redelivered} {} in {:.1?}",
        after_restart - replayed,
        cmp.figures(),
        test_started.elapsed()
    );
}

/// The FHIR server unreachable for 60 s while devices keep publishing: every event is
/// acknowledged (spooled), what the pipeline holds in memory stays at its limits (the backlog
/// waits on disk, unread), back-pressure shows in the metrics, and once the server is back
/// everything is written, nothing lost or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_server_down_for_60_seconds_under_load_the_spool_grows_and_memory_does_not() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let fwd = Forwarder::start(&server.base).await;
    let fhir_url = fwd.base.clone();
    // Small in-memory limits, so that the outage outlasts them many times over.
    let max_pending = 1000.0;
    let c = Connector::start_full(
        dir.path(),
        "down",
        broker.port,
        &fhir_url,
        "",
        "max_pending_measurements = 1000\nchannel_capacity = 400\nchunk_events = 100",
        "",
        &templates_dir().join("devicecontent.json"),
        &templates_dir().join("fhirmapping.json"),
    );
    let devices: Vec<String> = (0..100).map(|i| format!("dn-{i:03}")).collect();
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    publish(broker.port, hr_messages(&devices, 0..5), Duration::ZERO).await;
    wait_metric(
        &c,
        "iomt_events_committed_total",
        500.0,
        Duration::from_secs(30),
    )
    .await;

    fwd.off();
    let down = Instant::now();
    // 5,500 more events over the outage's first ~55 s (100 devices, one reading a minute-slot
    // each, 10 ms apart), while the server is unreachable.
    let publisher = tokio::spawn(publish(
        broker.port,
        hr_messages(&devices, 5..60),
        Duration::from_millis(10),
    ));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let early = (c.rss_kib(), c.metric("iomt_spool_bytes"));
    let mut worst_in_flight = 0.0f64;
    let mut worst_pending = 0.0f64;
    while down.elapsed() < Duration::from_secs(60) {
        worst_in_flight = worst_in_flight.max(c.metric("iomt_events_in_flight"));
        worst_pending = worst_pending.max(c.metric("iomt_pending_measurements"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    publisher.await.unwrap();
    let late = (c.rss_kib(), c.metric("iomt_spool_bytes"));
    let unread = c.metric("iomt_spool_unread_events");
    let acked = c.metric("iomt_events_acked_total");
    let committed_while_down = c.metric("iomt_events_committed_total");
    let backpressure = c.metric("iomt_backpressure_seconds_total");
    eprintln!(
        "FHIR_DOWN_60S acked={acked} committed_while_down={committed_while_down} \
         spool_bytes {} -> {} unread_on_disk={unread} rss_kib {} -> {} \
         worst_in_flight={worst_in_flight} worst_pending={worst_pending} \
         ingest_backpressure_s={backpressure}",
        early.1, late.1, early.0, late.0
    );
    // Every event was acknowledged to the broker, though little could be written.
    assert_eq!(acked, 6000.0, "{}", c.log_text());
    assert!(committed_while_down < 6000.0, "the server was down");
    // The backlog is on disk, not in memory: the spool grew, the pipeline holds its limits.
    assert!(late.1 > early.1, "the spool grew: {early:?} -> {late:?}");
    assert!(
        unread > 1000.0,
        "the backlog waits in the spool, unread: {unread}"
    );
    assert!(worst_pending <= max_pending, "pending {worst_pending}");
    assert!(
        worst_in_flight <= max_pending + 1500.0,
        "events held in memory: {worst_in_flight}"
    );
    assert!(
        late.0 < early.0 + 16 * 1024,
        "resident set grew from {} to {} KiB while the spool grew",
        early.0,
        late.0
    );
    assert!(backpressure > 1.0, "back-pressure shows in the metrics");

    fwd.on();
    wait_for_complete_observations(&server, &devices, Duration::from_secs(120)).await;
    wait_metric(
        &c,
        "iomt_events_committed_total",
        6000.0,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(c.metric("iomt_spool_unread_events"), 0.0);
    let retries =
        c.metric("iomt_batch_retries_total") + c.metric("iomt_fhir_request_retries_total");
    assert!(retries > 0.0, "no retry was counted");
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    assert_eq!(c.metric("iomt_events_dropped_total"), 0.0);
}

fn templates_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate")
}

/// Waits until the metric reaches `at_least`.
async fn wait_metric(c: &Connector, name: &str, at_least: f64, within: Duration) {
    let started = Instant::now();
    while c.metric(name) < at_least {
        assert!(
            started.elapsed() < within,
            "{name} stayed at {} (waited for {at_least}):\n{}",
            c.metric(name),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

/// Scale-out: `instances` connectors on one MQTT v5 shared subscription
/// (`$share/iomt/devices/+/telemetry`) split the stream and end in the FHIR state one
/// `iomt replay` of the same events gives, resource by resource. Mosquitto hands each message
/// to one member of the group (round robin), so every device's readings are spread over all
/// instances: they write the same hourly Observations at the same time, each from its own
/// cache, and race on creating them (repaired by the writer, docs/FHIR.md) and on updating
/// them (`If-Match`, re-read and merge on 412).
async fn shared_subscription_ends_in_the_state_of_one_replay(instances: usize) {
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings(&format!("sh{instances}"), 10, 60);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = "shared_group = \"iomt\"";
    let connectors: Vec<Connector> = (0..instances)
        .map(|i| {
            let name = format!("share-{i}");
            let c = Connector::start_vitals(dir.path(), &name, broker.port, &server.base, shared);
            broker.wait_for_log(
                &format!("{name} 1 $share/iomt/devices/+/telemetry"),
                Duration::from_secs(20),
            );
            c
        })
        .collect();
    publish(broker.port, vitals_messages(&readings), Duration::ZERO).await;
    let logs = || {
        connectors
            .iter()
            .map(|c| c.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    wait_for_state(
        &server.base,
        &expected,
        Duration::from_secs(120),
        || connectors.iter().all(|c| idle(c)),
        logs,
    )
    .await;
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    let total_of = |name: &str| connectors.iter().map(|c| c.metric(name)).sum::<f64>();
    let (races, requests) = (
        total_of("iomt_fhir_create_races_total"),
        total_of("iomt_fhir_requests_total"),
    );
    assert_eq!(
        per_instance.iter().sum::<f64>(),
        total as f64,
        "each event delivered once: {per_instance:?}"
    );
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance took a share: {per_instance:?}"
    );
    assert_eq!(total_of("iomt_dead_letters_total"), 0.0, "{}", logs());
    assert_eq!(total_of("iomt_errors_total"), 0.0, "{}", logs());
    let mut connectors = connectors;
    for c in &mut connectors {
        let status = c.terminate();
        assert!(status.success(), "{status:?}:\n{}", c.log_text());
    }
    let cmp = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    cmp.assert_same("after every instance stopped");
    eprintln!(
        "SHARED_SUBSCRIPTION instances={instances} events={total} per_instance={per_instance:?} \
         create_races={races} fhir_requests={requests} {} in {:.1?}",
        cmp.figures(),
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_shared_subscription_end_in_the_state_of_one_replay() {
    shared_subscription_ends_in_the_state_of_one_replay(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_shared_subscription_end_in_the_state_of_one_replay() {
    shared_subscription_ends_in_the_state_of_one_replay(3).await;
}

/// The committed example config documents every option; it must stay loadable and valid.
#[test]
fn example_config_loads_and_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--format", "json", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert!(out.status.success());
    // Strict: an unknown option is an error that names it.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("[pipeline]\n", "[pipeline]\nbatch_size = 10\n");
    let text = text.replace(
        "\"../templates",
        &format!("\"{}/templates", env!("CARGO_MANIFEST_DIR")),
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown field `batch_size`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_works_too() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Connector::start(
        dir.path(),
        "v311",
        broker.port,
        &server.base,
        "protocol = \"3.1.1\"",
    );
    let devices = ["v4-a"];
    publish(broker.port, hr_messages(&devices, 0..60), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
}

/// TLS with a private CA (`ca_file`): the connector verifies the broker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_private_ca() {
    let server = FhirServer::acquire().await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::create(certs.path());
    let broker = Mosquitto::start_tls(&ca);
    let dir = tempfile::tempdir().unwrap();
    let c = Connector::start(
        dir.path(),
        "tls",
        broker.port,
        &server.base,
        &format!("tls = true\nca_file = \"{}\"", ca.ca_pem.display()),
    );
    // Publish over TLS too, with mosquitto_pub trusting the same CA.
    let cafile = ca.ca_pem.to_str().unwrap();
    mosquitto_pub(
        broker.port,
        &["--cafile", cafile],
        hr_messages(&["tls-a"], 0..60),
    );
    wait_for_complete_observations(&server, &["tls-a"], Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
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
    assert!(c.terminate().success());
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

/// Username and password, the password from an environment variable (not the config file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_username_and_password() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start_with_password("iomt", "s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    // The connector (a child process) inherits the variable.
    let extra = "username = \"iomt\"\npassword_env = \"IOMT_TEST_MQTT_PASSWORD\"";
    std::env::set_var("IOMT_TEST_MQTT_PASSWORD", "s3cret-pw");
    let c = Connector::start(dir.path(), "auth", broker.port, &server.base, extra);
    mosquitto_pub(
        broker.port,
        &["-u", "iomt", "-P", "s3cret-pw"],
        hr_messages(&["pw-a"], 0..60),
    );
    wait_for_complete_observations(&server, &["pw-a"], Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    assert!(
        !c.log_text().contains("s3cret-pw"),
        "the password must never be logged"
    );
}

/// The whole program: a persistent session, the connector stopped, 20,000 heart-rate
/// messages published while it is down (Mosquitto with `max_queued_messages 1000000`, so the
/// broker keeps them all), then the connector started again. It must drain the backlog
/// completely over one connection: every sample in FHIR, once; every event received once (a
/// reconnect would redeliver); keep-alive intact. Part-way through, the FHIR server is away
/// for three keep-alive periods and the pipeline (with a spool of about a megabyte) stops
/// taking events while the broker still holds thousands: the old source then stopped polling
/// its connection (blocked on the full channel) and the broker dropped it for "exceeded
/// timeout".
///
/// `IOMT_TEST_MQTT_BACKLOG` sets another count (rounded up to whole device-hours of 60), for
/// a quicker run while developing; with too few, the pipeline's buffers hold the whole rest of
/// the backlog during the outage, and the old fault does not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_backlog_published_while_the_connector_is_down_is_drained_completely() {
    const KEEP_ALIVE_SECS: u64 = 5;
    let wanted: usize = std::env::var("IOMT_TEST_MQTT_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let server = FhirServer::acquire().await;
    let fwd = Forwarder::start(&server.base).await;
    let fhir_url = fwd.base.clone();
    let broker = Mosquitto::start_with_config("max_queued_messages 1000000");
    let dir = tempfile::tempdir().unwrap();
    // A short keep-alive, so that a connection left unpolled shows within seconds; a small
    // spool (a few thousand of these events), so that with the FHIR server away the pipeline
    // soon stops taking events, as a pipeline slower than the backlog does.
    let extra = format!("keep_alive_secs = {KEEP_ALIVE_SECS}");
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
    let start = || {
        Connector::start_full(
            dir.path(),
            "backlog",
            broker.port,
            &fhir_url,
            &extra,
            "",
            "max_bytes = 1048576\nsegment_bytes = 131072",
            &templates.join("devicecontent.json"),
            &templates.join("fhirmapping.json"),
        )
    };

    // The session exists on the broker once the connector has subscribed; then it stops.
    let mut c = start();
    broker.wait_for_log("backlog 1 devices/+/telemetry", Duration::from_secs(20));
    assert!(c.terminate().success(), "{}", c.log_text());
    broker.wait_for_log("Client backlog disconnected.", Duration::from_secs(10));

    let names: Vec<String> = (0..wanted.div_ceil(60))
        .map(|i| format!("bl-{i:04}"))
        .collect();
    let devices: Vec<&str> = names.iter().map(String::as_str).collect();
    let messages = hr_messages(&devices, 0..60);
    let total = messages.len();
    let published = Instant::now();
    publish(broker.port, messages, Duration::ZERO).await;
    eprintln!("BACKLOG published {total} in {:?}", published.elapsed());

    let started = Instant::now();
    let c = start();
    let deadline = Duration::from_secs(600);
    // Committed: written to FHIR (acknowledged to the broker happens earlier, once spooled).
    let wait_for_committed = |n: usize| {
        let c = &c;
        let broker = &broker;
        async move {
            loop {
                let committed = c.metric("iomt_events_committed_total");
                if committed >= n as f64 {
                    return;
                }
                let trouble = broker.keep_alive_or_queue_trouble();
                assert!(trouble.is_empty(), "{trouble:?}\n{}", c.log_text());
                assert!(
                    started.elapsed() < deadline,
                    "{committed} of {n} committed after {deadline:?}:\n{}",
                    c.log_text()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    // Some of the backlog is written; then the FHIR server is away for three keep-alives (the
    // outage is the stimulus: this wait is not for something to happen).
    wait_for_committed(total / 10).await;
    fwd.off();
    tokio::time::sleep(Duration::from_secs(3 * KEEP_ALIVE_SECS + 1)).await;
    fwd.on();
    wait_for_committed(total).await;
    let drained = started.elapsed();
    // Committed means written: the Observations are there (the wait is a margin).
    wait_for_complete_observations(&server, &devices, Duration::from_secs(240)).await;
    assert_eq!(c.metric("iomt_events_incoming_total"), total as f64);
    assert_eq!(c.metric("iomt_events_acked_total"), total as f64);
    assert_eq!(c.metric("iomt_measurements_total"), total as f64);
    // The outage was felt (retried, not dropped: its errors are retryable ones)...
    assert!(
        c.metric("iomt_batch_retries_total") > 0.0,
        "no retry was counted"
    );
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    // ...and one connection for each run, no reconnect, no keep-alive timeout, nothing dropped.
    assert_eq!(broker.connections_of("backlog"), 2, "{}", broker.log_text());
    assert_eq!(c.log_text().matches("MQTT connected.").count(), 1);
    assert_eq!(broker.keep_alive_or_queue_trouble(), Vec::<String>::new());
    eprintln!(
        "BACKLOG committed {total} in {drained:?} ({:.0} events/s) with a {}s FHIR outage, \
         {} FHIR requests, peak RSS {} KiB",
        total as f64 / drained.as_secs_f64(),
        3 * KEEP_ALIVE_SECS + 1,
        c.metric("iomt_fhir_requests_total"),
        c.peak_rss_kib()
    );
}

/// A tmpfs mounted for one test (the connector's spool directory), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `at`, or `None` where this process may not mount (not root).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        out.status.success().then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The spool's disk fills while the FHIR server is down (the spool is a 64 KiB
/// tmpfs). The connector says so at ERROR, counts it, stops acknowledging (the broker keeps
/// the rest), and once the server is back and written events free the spool, everything is
/// written once (a chunk larger than the space left is written in smaller parts). Skipped
/// with a note where this process may not mount a tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_stops_acknowledging_and_loses_nothing() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&dir.path().join("spool-full"), "64k") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full test did not run"
        );
        return;
    };
    let fwd = Forwarder::start(&server.base).await;
    let fhir_url = fwd.base.clone();
    fwd.off();
    let c = Connector::start(dir.path(), "full", broker.port, &fhir_url, "");
    let devices: Vec<String> = (0..10).map(|i| format!("full-{i}")).collect();
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    let messages = hr_messages(&devices, 0..60);
    let total = messages.len() as f64;
    publish(broker.port, messages, Duration::ZERO).await;

    let started = Instant::now();
    while c.metric("iomt_spool_errors_total") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no spool error:\n{}",
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = c.metric("iomt_events_acked_total");
    assert!(acked < total, "{acked} acknowledged with a full spool");
    assert!(
        c.log_text()
            .contains("Spool disk full; not acknowledging until space returns."),
        "{}",
        c.log_text()
    );
    fwd.on();
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < total {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "committed {} acked {} spool errors {} spool bytes {} ({}):\n{}",
            c.metric("iomt_events_committed_total"),
            c.metric("iomt_events_acked_total"),
            c.metric("iomt_spool_errors_total"),
            c.metric("iomt_spool_bytes"),
            String::from_utf8_lossy(
                &Command::new("ls")
                    .arg("-la")
                    .arg(dir.path().join("spool-full"))
                    .output()
                    .unwrap()
                    .stdout
            ),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_events_acked_total"), total);
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
}
