//! `iomt run` with the Azure Event Hubs source, end to end: the real `azure_messaging_eventhubs`
//! SDK (the connector's `EventProcessor` and the test's `ProducerClient`) against the in-test
//! AMQP 1.0 emulator (`support/eventhubs_emulator.rs` — an in-process stand-in, because no real
//! Event Hubs or Microsoft's emulator can run here), the real test FHIR server, and the
//! connector as a separate process so it can be killed with SIGKILL.

#[path = "support/eventhubs_emulator.rs"]
mod eventhubs_emulator;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::{AmqpMessage, EventData};
use azure_messaging_eventhubs::{ProducerClient, SendEventOptions, SendMessageOptions};
use serde_json::Value;

use crate::fhir_server::FhirServer;
use crate::hr::{hr_body, http_get, metric, wait_for_complete_observations};
use crate::mosquitto::free_port;
use eventhubs_emulator::EventHubsEmulator;

const CS_ENV: &str = "IOMT_TEST_EVENTHUBS_CONNECTION_STRING";

/// The heart-rate body of the heart-rate template set (one reading per minute slot).
/// Events in publishing order: (partition, body). Device `i` goes to partition `i % partitions`
/// (as a partition key would), so each device's readings stay in order.
fn hr_events(
    devices: &[&str],
    minutes: std::ops::Range<u32>,
    partitions: usize,
) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    for m in minutes {
        for (i, d) in devices.iter().enumerate() {
            out.push((i % partitions, hr_body(d, m)));
        }
    }
    out
}

struct Connector {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
    config: PathBuf,
}

impl Connector {
    fn start(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
    ) -> Connector {
        let metrics_port = free_port();
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate");
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
kind = "event_hubs"
connection_string_env = "{CS_ENV}"
consumer_group = "$Default"
custom_endpoint = "{endpoint}"
checkpoint_dir = "checkpoints"
owner_id = "{owner}"
prefetch = 50
load_balancing_interval_secs = 1
ownership_expiry_secs = 6

[pipeline]
batch_max_events = 50
batch_max_delay_ms = 200

[dead_letters]
dir = "dead-letters-{name}"

[http]
listen = "127.0.0.1:{metrics_port}"

[log]
level = "info"
"#,
                dm = templates.join("devicecontent.json").display(),
                fm = templates.join("fhirmapping.json").display(),
                endpoint = hub.endpoint(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_iomt"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(CS_ENV, hub.connection_string())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("start iomt run");
        let c = Connector {
            child,
            metrics_port,
            log,
            config,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if let Some(body) = http_get(self.metrics_port, "/readyz") {
                if body.starts_with("ready") {
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

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics_text(), name)
    }

    /// The `/metrics` text (retried: a read can fail while the process is busy starting).
    fn metrics_text(&self) -> String {
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

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
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
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn producer(hub: &EventHubsEmulator) -> ProducerClient {
    sources::event_hubs::install_crypto_provider();
    if let Ok(filter) = std::env::var("IOMT_TEST_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    ProducerClient::builder()
        .with_custom_endpoint(hub.endpoint())
        .open_with_connection_string(&hub.connection_string(), None)
        .await
        .expect("open the Event Hubs producer")
}

/// Publishes with the real SDK producer, each event to its partition, with an application
/// property; `pace` between events.
async fn publish(hub: &EventHubsEmulator, events: Vec<(usize, Vec<u8>)>, pace: Duration) {
    let producer = producer(hub).await;
    for (partition, body) in events {
        let event = EventData::builder()
            .with_body(body)
            .with_content_type("application/json".into())
            .add_property("sent-by".into(), "iomt-tests")
            .build();
        let send = producer.send_event(
            event,
            Some(SendEventOptions {
                partition_id: Some(partition.to_string()),
            }),
        );
        tokio::time::timeout(Duration::from_secs(20), send)
            .await
            .expect("sending an event timed out")
            .expect("send an event");
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(20), producer.close())
        .await
        .expect("closing the producer timed out")
        .expect("close the producer");
}

async fn wait_metric(c: &Connector, name: &str, at_least: f64, within: Duration) {
    let started = Instant::now();
    while c.metric(name) < at_least {
        assert!(
            started.elapsed() < within,
            "{name} stayed at {} (< {at_least}):\n{}",
            c.metric(name),
            c.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn checkpoints(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("checkpoints")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && p.parent().is_some_and(|d| d.ends_with("checkpoint"))
            {
                out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_events_become_the_expected_observations_and_sigterm_drains() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["eh-a", "eh-b"];
    // Published before the connector starts: a partition without a checkpoint starts at the
    // earliest event.
    publish(&hub, hr_events(&devices, 0..30, 2), Duration::ZERO).await;
    let mut c = Connector::start(dir.path(), "e2e", "instance-1", &hub, &server.base);
    publish(&hub, hr_events(&devices, 30..60, 2), Duration::ZERO).await;
    // One malformed event with IoT Hub system properties (message annotations) and an
    // application property: dead-lettered with its envelope.
    let producer = producer(&hub).await;
    let mut annotations = azure_core_amqp::message::AmqpAnnotations::new();
    annotations.insert(
        azure_core_amqp::AmqpSymbol::from("iothub-connection-device-id"),
        "eh-bad",
    );
    annotations.insert(
        azure_core_amqp::AmqpSymbol::from("iothub-enqueuedtime"),
        "2024-05-01T10:00:00Z",
    );
    let mut app = azure_core_amqp::message::AmqpApplicationProperties::new();
    app.insert("sent-by".into(), "iomt-tests");
    let bad = AmqpMessage::builder()
        .with_body(b"{\"heartRate\": 71, \"deviceId\": ".to_vec())
        .with_message_annotations(annotations)
        .with_application_properties(app)
        .build();
    producer
        .send_message(
            bad,
            Some(SendMessageOptions {
                partition_id: Some("1".into()),
            }),
        )
        .await
        .unwrap();
    producer.close().await.unwrap();
    assert_eq!(hub.total(), 121);

    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    wait_metric(
        &c,
        "iomt_events_acked_total",
        121.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(c.metric("iomt_events_incoming_total"), 121.0);
    assert_eq!(c.metric("iomt_measurements_total"), 120.0);
    assert_eq!(
        c.metric("iomt_dead_letters_total"),
        1.0,
        "{}",
        c.metrics_text()
    );
    assert_eq!(server.all("Device").await.len(), 2);
    assert_eq!(server.all("Patient").await.len(), 2);

    // The envelope: application properties, IoT Hub annotations, Event Hubs system properties.
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let id = list.lines().next().unwrap().split('\t').next().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "show", id, "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sp = &shown["systemProperties"];
    assert_eq!(sp["iothub-connection-device-id"], "eh-bad", "{shown:#}");
    assert_eq!(sp["x-opt-sequence-number"], 60, "{shown:#}");
    assert_eq!(sp["x-opt-offset"], "60", "{shown:#}");
    assert!(sp["x-opt-enqueued-time"].is_string(), "{shown:#}");
    assert_eq!(sp["eventhubs-partition-id"], "1", "{shown:#}");
    assert_eq!(shown["properties"]["sent-by"], "iomt-tests", "{shown:#}");

    let status = c.terminate();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        c.log_text()
    );
    // SIGTERM drained and checkpointed everything: each partition's checkpoint is its last event.
    let mut cps: Vec<(String, i64)> = checkpoints(dir.path())
        .iter()
        .map(|c| {
            (
                c["partition_id"].as_str().unwrap().to_string(),
                c["sequence_number"].as_i64().unwrap(),
            )
        })
        .collect();
    cps.sort();
    assert_eq!(cps, [("0".to_string(), 59), ("1".to_string(), 60)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["ek-a", "ek-b", "ek-c"];
    let mut c = Connector::start(dir.path(), "k9", "instance-1", &hub, &server.base);
    // Publishing goes on, paced, while the connector is killed and restarted.
    let publisher = {
        let events = hr_events(&devices, 0..60, 2);
        let endpoint_hub = &hub;
        let producer = producer(endpoint_hub).await;
        tokio::spawn(async move {
            for (partition, body) in events {
                producer
                    .send_event(
                        EventData::builder().with_body(body).build(),
                        Some(SendEventOptions {
                            partition_id: Some(partition.to_string()),
                        }),
                    )
                    .await
                    .expect("send an event");
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            producer.close().await.unwrap();
        })
    };
    wait_metric(
        &c,
        "iomt_events_incoming_total",
        40.0,
        Duration::from_secs(30),
    )
    .await;
    c.kill9();
    let before = checkpoints(dir.path());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c2 = Connector::start(dir.path(), "k9", "instance-1", &hub, &server.base);
    publisher.await.unwrap();
    assert_eq!(hub.total(), 180);
    wait_for_complete_observations(&server, &devices, Duration::from_secs(90)).await;
    assert_eq!(
        c2.metric("iomt_dead_letters_total"),
        0.0,
        "{}",
        c2.log_text()
    );
    // The restarted connector resumed exactly at the checkpoints: it reads every event after
    // them (what was published while it was down, and what the killed one had handled but not
    // checkpointed, some of it already in FHIR) once, and nothing before them.
    let checkpointed: i64 = before
        .iter()
        .map(|c| c["sequence_number"].as_i64().unwrap() + 1)
        .sum();
    let expected = (180 - checkpointed) as f64;
    wait_metric(
        &c2,
        "iomt_events_acked_total",
        expected,
        Duration::from_secs(30),
    )
    .await;
    let after_restart = c2.metric("iomt_events_incoming_total");
    eprintln!(
        "EVENTHUBS_KILL9 checkpointed_before_kill={checkpointed} events_after_restart={after_restart} of 180"
    );
    assert_eq!(
        after_restart,
        expected,
        "{checkpointed} events were checkpointed before the kill:\n{}",
        c2.log_text()
    );
    assert!(checkpointed > 0, "nothing was checkpointed before the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_hubs_instances_split_the_partitions() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["es-a", "es-b", "es-c", "es-d"];
    let a = Connector::start(dir.path(), "split-a", "instance-a", &hub, &server.base);
    let b = Connector::start(dir.path(), "split-b", "instance-b", &hub, &server.base);
    // Let the load balancers settle (1 s cycles) before the flood, so that no partition is
    // read by both while ownership moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    publish(&hub, hr_events(&devices, 0..1, 4), Duration::ZERO).await;
    let started = Instant::now();
    while server.all("Observation").await.len() < devices.len() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&hub, hr_events(&devices, 1..60, 4), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(90)).await;
    let started = Instant::now();
    while a.metric("iomt_events_acked_total") + b.metric("iomt_events_acked_total") < 240.0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (na, nb) = (
        a.metric("iomt_events_incoming_total"),
        b.metric("iomt_events_incoming_total"),
    );
    eprintln!("EVENTHUBS_SPLIT instance_a={na} instance_b={nb}");
    assert_eq!(
        na + nb,
        240.0,
        "each event read once:\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    assert!(
        na > 0.0 && nb > 0.0,
        "both instances took partitions: {na} / {nb}"
    );
}

/// The example config's commented Event Hubs `[source]` block, uncommented in place of the
/// MQTT one, is valid; without its connection string variable, `validate` says so.
#[test]
fn example_event_hubs_source_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/example.toml")).unwrap();
    let start = example.find("# [source]\n# kind = \"event_hubs\"").unwrap();
    let end = start + example[start..].find("\n\n").unwrap();
    let block: String = example[start..end]
        .lines()
        .filter(|l| !l.starts_with("# #"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mqtt_start = example.find("[source]\n").unwrap();
    let text = format!("{}{}\n\n{}", &example[..mqtt_start], block, &example[end..])
        .replace("\"../templates", &format!("\"{}/templates", root.display()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("eh.toml");
    std::fs::write(&config, text).unwrap();
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5";
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--config"])
        .arg(&config)
        .env("IOMT_EVENTHUBS_CONNECTION_STRING", cs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--config"])
        .arg(&config)
        .env_remove("IOMT_EVENTHUBS_CONNECTION_STRING")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("IOMT_EVENTHUBS_CONNECTION_STRING is not set"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `iomt simulate --target eventhubs` publishes through the real SDK producer (here into the
/// emulator): every simulated event is stored in the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_publishes_to_event_hubs() {
    let hub = eventhubs_emulator::EventHubsEmulator::start("telemetry", 2).await;
    let endpoint = hub.endpoint();
    let cs = hub.connection_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args([
                "simulate",
                "--seed",
                "2",
                "--devices",
                "4",
                "--kinds",
                "heart-rate,spo2",
                "--readings",
                "5",
                "--target",
                "eventhubs",
                "--eventhubs-endpoint",
                &endpoint,
            ])
            .env("IOMT_EVENTHUBS_CONNECTION_STRING", cs)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 20 events"));
    assert_eq!(hub.total(), 20);
}
