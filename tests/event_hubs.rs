//! `iomt run` with the Azure Event Hubs source, end to end: the real `azure_messaging_eventhubs`
//! SDK (the connector's `EventProcessor` and the test's `ProducerClient`) against the in-test
//! AMQP 1.0 emulator (`testkit::event_hubs::emulator` — an in-process stand-in, because no real
//! Event Hubs or Microsoft's emulator can run here), the real test FHIR server, and the
//! connector as a separate process so it can be killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::{AmqpMessage, EventData};
use azure_messaging_eventhubs::{ProducerClient, SendEventOptions, SendMessageOptions};
use serde_json::Value;

use testkit::connector::{metric, ConnectorProcess};
use testkit::event_hubs::{token_endpoint, EventHubsEmulator, TokenEndpoint};
use testkit::fhir::{wait_for_state, Comparison, FhirServer, FhirState};
use testkit::free_port;
use testkit::heart_rate::{hr_body, wait_for_complete_observations};
use testkit::vitals;

const CS_ENV: &str = "IOMT_TEST_EVENTHUBS_CONNECTION_STRING";

/// How a test connector signs in: the `[source]` keys (TOML lines) and the environment.
struct SignIn {
    keys: String,
    env: Vec<(String, String)>,
}

impl SignIn {
    /// The emulator's connection string, from `CS_ENV`.
    fn connection_string(hub: &EventHubsEmulator) -> SignIn {
        SignIn {
            keys: format!("connection_string_env = \"{CS_ENV}\""),
            env: vec![(CS_ENV.into(), hub.connection_string())],
        }
    }
}

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

/// The connector under test and its config; [`ConnectorProcess`] does the process handling.
struct Connector {
    process: ConnectorProcess,
    config: PathBuf,
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

/// The heart-rate template set, which [`hr_body`] is for.
fn heart_rate_set() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/heart-rate")
}

/// Writes the connector's config `<dir>/<name>.toml`, for the template set in `templates`.
#[allow(clippy::too_many_arguments)]
fn write_config(
    dir: &Path,
    name: &str,
    owner: &str,
    hub: &EventHubsEmulator,
    fhir_url: &str,
    sign_in: &SignIn,
    metrics_port: u16,
    templates: &Path,
) -> PathBuf {
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
{sign_in_keys}
consumer_group = "$Default"
custom_endpoint = "{endpoint}"
checkpoint_dir = "checkpoints"
owner_id = "{owner}"
prefetch = 50
load_balancing_interval_secs = 1
ownership_expiry_secs = 6

[pipeline]

flush_interval_ms = 200

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
            sign_in_keys = sign_in.keys,
        ),
    )
    .unwrap();
    config
}

/// Starts `iomt run --config <config>` with `env`, its stderr appended to `log`.
fn spawn_connector(config: &Path, env: &[(String, String)], log: &Path) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iomt"));
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER");
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("start iomt run")
}

impl Connector {
    fn start(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
    ) -> Connector {
        Connector::start_with(
            dir,
            name,
            owner,
            hub,
            fhir_url,
            &SignIn::connection_string(hub),
        )
    }

    /// A connector for the `simulator` template set, which [`vitals::readings`] are for.
    fn start_vitals(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
    ) -> Connector {
        Connector::start_full(
            dir,
            name,
            owner,
            hub,
            fhir_url,
            &SignIn::connection_string(hub),
            &vitals::template_set(),
        )
    }

    fn start_with(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
        sign_in: &SignIn,
    ) -> Connector {
        Connector::start_full(dir, name, owner, hub, fhir_url, sign_in, &heart_rate_set())
    }

    fn start_full(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
        sign_in: &SignIn,
        templates: &Path,
    ) -> Connector {
        let c = Connector::spawn_full(dir, name, owner, hub, fhir_url, sign_in, templates);
        c.wait_ready(Duration::ZERO);
        c
    }

    /// [`Connector::start_full`] without waiting until it is ready.
    fn spawn_full(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
        sign_in: &SignIn,
        templates: &Path,
    ) -> Connector {
        let metrics_port = free_port();
        let config = write_config(
            dir,
            name,
            owner,
            hub,
            fhir_url,
            sign_in,
            metrics_port,
            templates,
        );
        let log = dir.join(format!("{name}.log"));
        let child = spawn_connector(&config, &sign_in.env, &log);
        Connector {
            process: ConnectorProcess {
                child,
                metrics_port,
                log,
            },
            config,
        }
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
/// property and a unique message id; `pace` between events.
///
/// A send that gets no answer within 3 s is sent again on a new producer (fe2o3-amqp 0.16's
/// sender can miss a disposition that arrives before it registered the delivery, see
/// `accept_unhurried` in the emulator; on a loaded machine that can happen despite the pause).
/// The emulator stores a message id once, so a resent event (also one that was only slow) is
/// never stored twice.
async fn publish(hub: &EventHubsEmulator, events: Vec<(usize, Vec<u8>)>, pace: Duration) {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut producer = producer(hub).await;
    for (partition, body) in events {
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let event = EventData::builder()
            .with_body(body)
            .with_content_type("application/json".into())
            .with_message_id(format!("iomt-test-{id}"))
            .add_property("sent-by".into(), "iomt-tests")
            .build();
        let mut attempt = 0;
        loop {
            let send = producer.send_event(
                event.clone(),
                Some(SendEventOptions {
                    partition_id: Some(partition.to_string()),
                }),
            );
            match tokio::time::timeout(Duration::from_secs(3), send).await {
                Ok(sent) => {
                    sent.expect("send an event");
                    break;
                }
                Err(_) if attempt < 4 => {
                    attempt += 1;
                    eprintln!("PUBLISH event {id}: no answer in 3 s, sending it again");
                    producer = self::producer(hub).await;
                }
                Err(_) => panic!("sending event {id} timed out five times"),
            }
        }
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
        .with_properties(azure_core_amqp::message::AmqpMessageProperties {
            message_id: Some("iomt-test-malformed".to_string().into()),
            ..Default::default()
        })
        .build();
    // As in `publish`: sent again on a new producer when the answer is lost.
    let mut producer = producer;
    for attempt in 0.. {
        let send = producer.send_message(
            bad.clone(),
            Some(SendMessageOptions {
                partition_id: Some("1".into()),
            }),
        );
        match tokio::time::timeout(Duration::from_secs(10), send).await {
            Ok(sent) => {
                sent.unwrap();
                break;
            }
            Err(_) if attempt < 2 => producer = self::producer(&hub).await,
            Err(_) => panic!("sending the malformed event timed out three times"),
        }
    }
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

/// [`publish`], one producer per partition at once (each partition's events in order): as
/// fast as the emulator takes them.
async fn publish_at_full_rate(hub: &EventHubsEmulator, events: Vec<(usize, Vec<u8>)>) {
    let mut by_partition: std::collections::BTreeMap<usize, Vec<(usize, Vec<u8>)>> =
        Default::default();
    for (p, body) in events {
        by_partition.entry(p).or_default().push((p, body));
    }
    futures::future::join_all(
        by_partition
            .into_values()
            .map(|events| publish(hub, events, Duration::ZERO)),
    )
    .await;
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

/// `iomt run` reading Event Hubs at full rate, killed with SIGKILL after
/// some events were committed, then started again (same owner id and checkpoint store), ends
/// in the FHIR state one `iomt replay` of exactly the same events gives, resource by resource:
/// nothing lost (every sample), nothing duplicated.
///
/// 24 devices, 3,624 events (heart rate into hourly SampledData over two hours, SpO2 in some
/// of the same messages, blood pressure in others), each device on one of 4 partitions. A
/// third waits in the hub when the connector starts, so it reads as fast as it can; the next
/// third follows paced (5 ms apart) while it runs, so that events are always in flight (read,
/// not yet committed) however fast this machine commits the backlog. It is killed once every
/// device's second-hour Observation is, most likely, written (committed is a prefix of what
/// it read, across partitions) with events in flight. The publisher goes on through the kill
/// and the restart, then sends the last third at full rate; the restarted one resumes exactly
/// at the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_kill_9_at_full_rate_ends_in_the_state_of_one_replay() {
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("ek", 24, 150);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let partition_of = |device: &str| -> usize {
        device.rsplit('-').next().unwrap().parse::<usize>().unwrap() % 4
    };
    let mut backlog: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .map(|r| (partition_of(&r.device), r.bytes()))
        .collect();
    let mut paced = backlog.split_off(total / 3);
    let rest = paced.split_off(total / 3);

    let hub = EventHubsEmulator::start("telemetry", 4).await;
    let dir = tempfile::tempdir().unwrap();
    publish_at_full_rate(&hub, backlog).await;
    let mut c = Connector::start_vitals(dir.path(), "k9", "instance-1", &hub, &server.base);
    let threshold = 2.0 * vitals::through_first_of_second_hour(&readings) as f64;
    let publishing = async {
        publish(&hub, paced, Duration::from_millis(5)).await;
        publish_at_full_rate(&hub, rest).await;
    };
    let kill_and_restart = async {
        let started = Instant::now();
        let killed_at = loop {
            let text = c.metrics_text();
            let committed = metric(&text, "iomt_events_committed_total");
            if committed >= threshold && committed < metric(&text, "iomt_events_incoming_total") {
                break text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not {threshold} committed with events in flight after 60 s:\n{text}\n{}",
                c.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        c.kill9();
        let checkpointed: i64 = checkpoints(dir.path())
            .iter()
            .map(|c| c["sequence_number"].as_i64().unwrap() + 1)
            .sum();
        assert!(checkpointed > 0, "nothing was checkpointed before the kill");
        let c2 = Connector::start_vitals(dir.path(), "k9", "instance-1", &hub, &server.base);
        (killed_at, checkpointed, c2)
    };
    let ((), (killed_at, checkpointed, mut c2)) = tokio::join!(publishing, kill_and_restart);
    let [incoming, committed] = ["iomt_events_incoming_total", "iomt_events_committed_total"]
        .map(|m| metric(&killed_at, m));
    assert_eq!(hub.total(), total);

    wait_for_state(
        &server.base,
        &expected,
        Duration::from_secs(180),
        || idle(&c2),
        || c2.log_text(),
    )
    .await;
    // It resumed exactly at the checkpoints: every event after them once, none before.
    let after_restart = (total as i64 - checkpointed) as f64;
    wait_metric(
        &c2,
        "iomt_events_acked_total",
        after_restart,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        c2.metric("iomt_events_incoming_total"),
        after_restart,
        "{}",
        c2.log_text()
    );
    assert_eq!(
        c2.metric("iomt_dead_letters_total"),
        0.0,
        "{}",
        c2.log_text()
    );
    assert_eq!(c2.metric("iomt_errors_total"), 0.0, "{}", c2.log_text());
    let status = c2.terminate();
    assert!(status.success(), "{status:?}:\n{}", c2.log_text());
    let cmp = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    cmp.assert_same(&c2.log_text());
    // The killed one created second-hour Observations; the restarted one merged what it had
    // not committed (and the last third, which it never saw) into them (`amended`), not into
    // new ones.
    assert!(
        cmp.amended > 0,
        "no Observation was merged into after the restart: {}",
        cmp.figures()
    );
    // Read just before the kill, `incoming` is a lower bound of what the killed one read.
    eprintln!(
        "EVENTHUBS_KILL9 events={total} killed_at: incoming={incoming} committed={committed} \
         checkpointed={checkpointed}; after_restart={after_restart} \
         redelivered>={} {} in {:.1?}",
        incoming - checkpointed as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}

/// Two instances split a hub's partitions, each device on one partition (a partition key), so
/// each device's Observations have one writer; once the partitions are settled, every event is
/// read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_hubs_instances_split_the_partitions() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["es-a", "es-b", "es-c", "es-d"];
    let a = Connector::start(dir.path(), "split-a", "instance-a", &hub, &server.base);
    let b = Connector::start(dir.path(), "split-b", "instance-b", &hub, &server.base);
    // Publish once the partitions are settled, so that no partition is read by both while
    // ownership moves.
    let owners = ["instance-a".to_string(), "instance-b".to_string()];
    wait_until_settled(dir.path(), &hub, &owners, || {
        format!("{}\n---\n{}", a.log_text(), b.log_text())
    })
    .await;
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

/// Partition → owner id, from the checkpoint store's ownership records under `dir`.
fn ownerships(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.join("checkpoints")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && p.parent().is_some_and(|d| d.ends_with("ownership"))
            {
                let Ok(r) = serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap_or_default())
                else {
                    continue; // being replaced
                };
                if let (Some(partition), Some(owner)) =
                    (r["partition_id"].as_str(), r["owner_id"].as_str())
                {
                    out.insert(partition.to_string(), owner.to_string());
                }
            }
        }
    }
    out
}

/// Waits (up to 60 s) until the ownership records split the hub's partitions evenly between
/// `owners` and each partition is read by one receiver, its owner's (the source names its
/// receivers `<owner id>/<partition>/<n>`). From then on the balancers leave the partitions be
/// and no event is read by two instances.
async fn wait_until_settled(
    dir: &Path,
    hub: &EventHubsEmulator,
    owners: &[String],
    logs: impl Fn() -> String,
) {
    let partitions = hub.partition_count();
    let started = Instant::now();
    loop {
        let owned = ownerships(dir);
        let shares: Vec<usize> = owners
            .iter()
            .map(|o| owned.values().filter(|v| *v == o).count())
            .collect();
        let even = owned.len() == partitions
            && shares.iter().sum::<usize>() == partitions
            && shares.iter().max().unwrap_or(&0) - shares.iter().min().unwrap_or(&0) <= 1;
        let receivers: Vec<Vec<String>> = (0..partitions).map(|p| hub.receivers(p)).collect();
        let read_by_owner = (0..partitions).all(|p| match receivers[p].as_slice() {
            [one] => owned
                .get(&p.to_string())
                .is_some_and(|o| one.split('/').next() == Some(o.as_str())),
            _ => false,
        });
        if even && read_by_owner {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "partitions not settled after 60 s: owners {owned:?}, receivers {receivers:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scale-out: `instances` connectors in one consumer group split a hub's
/// 6 partitions (the SDK's load balancing over the shared checkpoint store) and end in the
/// FHIR state one `iomt replay` of the same events gives, resource by resource. The events go
/// to the partitions round robin, as a sender without partition keys spreads them, so every
/// device's readings reach every instance: they write the same hourly Observations at the same
/// time and race on creating them (repaired by the writer, docs/FHIR.md) and on updating them.
async fn event_hubs_instances_end_in_the_state_of_one_replay(instances: usize) {
    const PARTITIONS: usize = 6;
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings(&format!("es{instances}"), 10, 60);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let hub = EventHubsEmulator::start("telemetry", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let owners: Vec<String> = (0..instances).map(|i| format!("instance-{i}")).collect();
    let connectors: Vec<Connector> = owners
        .iter()
        .map(|owner| Connector::start_vitals(dir.path(), owner, owner, &hub, &server.base))
        .collect();
    let logs = || {
        connectors
            .iter()
            .map(|c| c.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // Publish once the partitions are settled (spread evenly, each read by its owner), so
    // that each instance reads a share.
    wait_until_settled(dir.path(), &hub, &owners, logs).await;
    let events: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| (i % PARTITIONS, r.bytes()))
        .collect();
    publish_at_full_rate(&hub, events).await;
    assert_eq!(hub.total(), total);
    wait_for_state(
        &server.base,
        &expected,
        Duration::from_secs(120),
        || connectors.iter().all(|c| idle(c)),
        logs,
    )
    .await;
    let total_of = |name: &str| connectors.iter().map(|c| c.metric(name)).sum::<f64>();
    let started = Instant::now();
    while total_of("iomt_events_acked_total") < total as f64 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    let (races, requests) = (
        total_of("iomt_fhir_create_races_total"),
        total_of("iomt_fhir_requests_total"),
    );
    // At least once: a partition whose receiver moves between instances while the balancers
    // settle (or after a reconnect) is read again from its checkpoint.
    let read = per_instance.iter().sum::<f64>();
    assert!(
        read >= total as f64,
        "{read} of {total} read: {per_instance:?}\n{}",
        logs()
    );
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance read a share: {per_instance:?}"
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
        "EVENTHUBS_SCALE_OUT instances={instances} partitions={PARTITIONS} events={total} \
         per_instance={per_instance:?} read_again={} create_races={races} \
         fhir_requests={requests} {} in {:.1?}",
        read - total as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_hubs_instances_end_in_the_state_of_one_replay() {
    event_hubs_instances_end_in_the_state_of_one_replay(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_event_hubs_instances_end_in_the_state_of_one_replay() {
    event_hubs_instances_end_in_the_state_of_one_replay(3).await;
}

/// Scale-out while events flow: a second instance joins one that is reading every partition,
/// and takes its share of the partitions while events keep arriving on all of them (the first
/// instance's readers of those partitions are displaced mid-stream); the two end in the FHIR
/// state one `iomt replay` of the same events gives, resource by resource. The first
/// instance's other partitions keep being read: a partition moving away no longer takes the
/// instance's connection, and with it every other partition, down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hubs_instance_joining_mid_stream_ends_in_the_state_of_one_replay() {
    const PARTITIONS: usize = 6;
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("ej", 10, 120);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let hub = EventHubsEmulator::start("telemetry", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Connector::start_vitals(dir.path(), "join-0", "instance-0", &hub, &server.base);
    wait_until_settled(dir.path(), &hub, &["instance-0".to_string()], || {
        first.log_text()
    })
    .await;
    let events: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| (i % PARTITIONS, r.bytes()))
        .collect();
    // The events arrive paced, on every partition in turn; a third of the way through, the
    // second instance starts, claims its share and displaces the first one's readers.
    let joined = async {
        let started = Instant::now();
        while hub.total() < total / 3 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "publishing stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = Connector::spawn_full(
            dir.path(),
            "join-1",
            "instance-1",
            &hub,
            &server.base,
            &SignIn::connection_string(&hub),
            &vitals::template_set(),
        );
        let reading = |p: usize| {
            hub.receivers(p)
                .iter()
                .any(|n| n.starts_with("instance-1/"))
        };
        while !(0..PARTITIONS).any(reading) {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the second instance read nothing:\n{}",
                second.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (second, hub.total())
    };
    let ((), (second, stored_at_join)) =
        tokio::join!(publish(&hub, events, Duration::from_millis(8)), joined);
    assert!(
        stored_at_join < total,
        "the second instance joined after the last event: not mid-stream"
    );
    let connectors = [first, second];
    let logs = || {
        connectors
            .iter()
            .map(|c| c.log_text())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(hub.total(), total);
    wait_for_state(
        &server.base,
        &expected,
        Duration::from_secs(120),
        || connectors.iter().all(|c| idle(c)),
        logs,
    )
    .await;
    let total_of = |name: &str| connectors.iter().map(|c| c.metric(name)).sum::<f64>();
    let started = Instant::now();
    while total_of("iomt_events_acked_total") < total as f64 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance read a share: {per_instance:?}"
    );
    assert_eq!(total_of("iomt_dead_letters_total"), 0.0, "{}", logs());
    assert_eq!(total_of("iomt_errors_total"), 0.0, "{}", logs());
    let read = per_instance.iter().sum::<f64>();
    let mut connectors = connectors;
    for c in &mut connectors {
        let status = c.terminate();
        assert!(status.success(), "{status:?}:\n{}", c.log_text());
    }
    let cmp = Comparison::of(&expected, &FhirState::fetch(&server.base).await);
    cmp.assert_same("after both instances stopped");
    eprintln!(
        "EVENTHUBS_JOIN partitions={PARTITIONS} events={total} \
         stored_when_the_second_joined={stored_at_join} per_instance={per_instance:?} \
         read_again={} {} in {:.1?}",
        read - total as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Azure AD (Microsoft Entra ID) sign-in, against the in-test token endpoint
// (`testkit::event_hubs::token_endpoint`, a stand-in: no Entra ID can run here).

const SECRET_ENV: &str = "IOMT_TEST_EVENTHUBS_CLIENT_SECRET";
const SECRET: &str = "eh~Test.Secret_value+/=";
const NAMESPACE: &str = "iomt-emulator.servicebus.windows.net";

fn entra_expected() -> token_endpoint::Expected {
    token_endpoint::Expected {
        tenant: "iomt-test.onmicrosoft.com".into(),
        client_id: "7f3c0b8e-1a2b-4c3d-8e9f-10e7c0c0ffee".into(),
        client_secret: SECRET.into(),
        identity_header: "identity-header-value-7d1e".into(),
    }
}

fn client_secret_sign_in(entra: &TokenEndpoint, secret: &str) -> SignIn {
    let e = entra_expected();
    SignIn {
        keys: format!(
            r#"fully_qualified_namespace = "{NAMESPACE}"
event_hub = "telemetry"
credential = {{ kind = "client_secret", tenant_id = "{}", client_id = "{}", client_secret_env = "{SECRET_ENV}", authority_host = "{}" }}"#,
            e.tenant, e.client_id, entra.base
        ),
        env: vec![(SECRET_ENV.into(), secret.into())],
    }
}

/// The emulator accepts only `jwt` tokens that `entra` issued (the test's own producer signs
/// in with the connection string, as `servicebus.windows.net:sastoken`).
fn accept_only_issued_jwts(hub: &EventHubsEmulator, entra: &TokenEndpoint) {
    let issued = entra.issued_check();
    hub.check_tokens(move |t| t.token_type != "jwt" || issued(&t.token));
}

/// The `jwt` put-tokens the emulator received; each carries `token` and expires about
/// `life_secs` from now.
fn assert_jwt_put_tokens(hub: &EventHubsEmulator, token: &str, life_secs: i64) {
    let all = hub.put_tokens();
    let jwts: Vec<_> = all.iter().filter(|t| t.token_type == "jwt").collect();
    assert!(!jwts.is_empty(), "no jwt put-token: {all:#?}");
    let now_ms = chrono::Utc::now().timestamp_millis();
    for t in &jwts {
        assert_eq!(t.token, token, "{t:#?}");
        assert!(t.audience.contains("/telemetry"), "{t:#?}");
        let left = t.expiration_ms.expect("put-token expiration") - now_ms;
        assert!(
            left > (life_secs - 600) * 1000 && left <= life_secs * 1000,
            "expiration {left} ms from now: {t:#?}"
        );
    }
    // The connection-string sign-in was not used by the connector.
    assert!(
        all.iter()
            .all(|t| t.token_type == "jwt" || t.token_type == "servicebus.windows.net:sastoken"),
        "{all:#?}"
    );
}

/// `iomt run` with `[source.credential] kind = "client_secret"`: the connector gets a token
/// from the token endpoint (which checks grant type, client id, secret and scope), presents it
/// to the hub with CBS `put-token` type `jwt` (the emulator refuses any other jwt), and reads
/// every event end to end; the token is fetched once and reused for every link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_an_azure_ad_client_secret_reads_everything_with_the_issued_jwt() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    accept_only_issued_jwts(&hub, &entra);
    let dir = tempfile::tempdir().unwrap();
    let devices = ["ea-a", "ea-b"];
    publish(&hub, hr_events(&devices, 0..30, 2), Duration::ZERO).await;
    let mut c = Connector::start_with(
        dir.path(),
        "aad",
        "instance-1",
        &hub,
        &server.base,
        &client_secret_sign_in(&entra, SECRET),
    );
    publish(&hub, hr_events(&devices, 30..60, 2), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    wait_metric(
        &c,
        "iomt_events_acked_total",
        120.0,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(c.metric("iomt_events_incoming_total"), 120.0);

    let issued = entra.issued();
    assert_eq!(
        issued.len(),
        1,
        "one token, cached for every link: {issued:?}"
    );
    assert_jwt_put_tokens(&hub, &issued[0], 3599);
    let status = c.terminate();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        c.log_text()
    );
    let log = c.log_text();
    assert!(
        log.contains("Azure AD token obtained for Event Hubs."),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// A wrong client secret stops `iomt run` at start (exit 2) with Entra's own error (HTTP
/// status, error code, AADSTS description) and never prints the secret; the hub never sees a
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_a_wrong_client_secret_stops_at_start_with_entras_error() {
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not~the.secret_value";
    let sign_in = client_secret_sign_in(&entra, wrong);
    let config = write_config(
        dir.path(),
        "aad-wrong",
        "instance-1",
        &hub,
        "http://127.0.0.1:9/fhir",
        &sign_in,
        free_port(),
        &heart_rate_set(),
    );
    let log = dir.path().join("aad-wrong.log");
    let mut child = spawn_connector(&config, &sign_in.env, &log);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "the connector kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    let e = entra_expected();
    assert!(
        text.contains(&format!(
            "error: source sign-in: Azure AD client secret sign-in (tenant {}, client {}): {}/{}/oauth2/v2.0/token answered HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided.",
            e.tenant, e.client_id, entra.base, e.tenant
        )),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");
    assert_eq!(entra.requests(), 1);
    assert!(entra.issued().is_empty());
    assert!(hub.put_tokens().is_empty(), "{:#?}", hub.put_tokens());
}

/// `iomt run` with `[source.credential] kind = "managed_identity"` (user-assigned) on a host
/// that sets `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` (App Service, Container Apps): the
/// token comes from that endpoint (the header checked) and reaches the hub as a `jwt`
/// put-token; every event is read end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_a_managed_identity_from_identity_endpoint_reads_with_its_token() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    accept_only_issued_jwts(&hub, &entra);
    let dir = tempfile::tempdir().unwrap();
    let devices = ["em-a", "em-b"];
    publish(&hub, hr_events(&devices, 0..60, 2), Duration::ZERO).await;
    let header = entra_expected().identity_header;
    let sign_in = SignIn {
        keys: format!(
            r#"fully_qualified_namespace = "{NAMESPACE}"
event_hub = "telemetry"
credential = {{ kind = "managed_identity", client_id = "user-assigned-client-id" }}"#
        ),
        env: vec![
            ("IDENTITY_ENDPOINT".into(), entra.identity_endpoint()),
            ("IDENTITY_HEADER".into(), header.clone()),
        ],
    };
    let mut c = Connector::start_with(dir.path(), "mi", "instance-1", &hub, &server.base, &sign_in);
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    wait_metric(
        &c,
        "iomt_events_acked_total",
        120.0,
        Duration::from_secs(20),
    )
    .await;
    let issued = entra.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(
        entra.identity_client_ids(),
        [Some("user-assigned-client-id".to_string())]
    );
    assert_jwt_put_tokens(&hub, &issued[0], 86_400);
    let status = c.terminate();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        c.log_text()
    );
    assert!(!c.log_text().contains(&header), "{}", c.log_text());
}

/// `config/example.toml` with its MQTT `[source]` block replaced by the commented Event Hubs
/// block, uncommented. `edit` sees the block's lines first, still commented: lines it leaves
/// commented twice (`# # ...`) stay out.
fn example_with_event_hubs(edit: impl Fn(Vec<String>) -> Vec<String>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/example.toml")).unwrap();
    let start = example.find("# [source]\n# kind = \"event_hubs\"").unwrap();
    let end = start + example[start..].find("\n\n").unwrap();
    let block: String = edit(example[start..end].lines().map(String::from).collect())
        .iter()
        .filter(|l| !l.starts_with("# #"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mqtt_start = example.find("[source]\n").unwrap();
    format!("{}{}\n\n{}", &example[..mqtt_start], block, &example[end..])
        .replace("\"../templates", &format!("\"{}/templates", root.display()))
}

/// Turns on the example's optional Azure AD lines: `fully_qualified_namespace` and the
/// `[source.credential]` table of `kind` (its key lines, not the prose around them).
fn with_credential(lines: Vec<String>, kind: &str) -> Vec<String> {
    let is_key = |l: &str| {
        l.strip_prefix("# # ").is_some_and(|rest| {
            rest.starts_with('[')
                || rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
    };
    let table = lines
        .windows(2)
        .position(|w| w[0] == "# # [source.credential]" && w[1] == format!("# # kind = \"{kind}\""))
        .unwrap_or_else(|| panic!("no {kind} credential in the example"));
    let mut in_table = false;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == table {
                in_table = true;
            } else if in_table && !is_key(l) {
                in_table = false;
            }
            if in_table || l.starts_with("# # fully_qualified_namespace = ") {
                l.replacen("# # ", "# ", 1)
            } else {
                l.clone()
            }
        })
        .collect()
}

/// `iomt validate` of `text` with `env` set (and the other sign-in variables unset): the exit
/// code and what it printed.
fn validate_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("eh.toml");
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iomt"));
    command.args(["validate", "--config"]).arg(&config);
    for k in [
        "IOMT_EVENTHUBS_CONNECTION_STRING",
        "IOMT_EVENTHUBS_CLIENT_SECRET",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
    ] {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The example config's commented Event Hubs `[source]` block, uncommented in place of the
/// MQTT one, is valid; without its connection string variable, `validate` says so.
#[test]
fn example_event_hubs_source_validates() {
    let text = example_with_event_hubs(|lines| lines);
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5";
    let (code, out) = validate_config(&text, &[("IOMT_EVENTHUBS_CONNECTION_STRING", cs)]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = validate_config(&text, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("IOMT_EVENTHUBS_CONNECTION_STRING is not set"),
        "{out}"
    );
}

/// The example's Azure AD variants (connection string left out; namespace and a
/// `[source.credential]` table in): the client secret one validates with its secret variable
/// set and names the variable without it; the managed identity one validates as it is; a
/// connection string together with a credential is refused.
#[test]
fn example_event_hubs_azure_ad_sources_validate() {
    let without_cs = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| !l.starts_with("# connection_string_env = "))
            .collect()
    };
    let secret = example_with_event_hubs(|l| with_credential(without_cs(l), "client_secret"));
    assert!(
        secret.contains("\n[source.credential]\nkind = \"client_secret\"\n"),
        "{secret}"
    );
    let (code, out) = validate_config(&secret, &[("IOMT_EVENTHUBS_CLIENT_SECRET", "s3cret")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let (code, out) = validate_config(&secret, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("source.credential.client_secret_env: environment variable IOMT_EVENTHUBS_CLIENT_SECRET is not set"),
        "{out}"
    );

    let identity = example_with_event_hubs(|l| with_credential(without_cs(l), "managed_identity"));
    assert!(
        identity.contains("\nkind = \"managed_identity\"\n"),
        "{identity}"
    );
    let (code, out) = validate_config(&identity, &[]);
    assert_eq!(code, Some(0), "{out}");

    let both = example_with_event_hubs(|l| with_credential(l, "managed_identity"));
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5";
    let (code, out) = validate_config(&both, &[("IOMT_EVENTHUBS_CONNECTION_STRING", cs)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("source.credential: give either connection_string_env"),
        "{out}"
    );
    assert!(
        !out.contains("source.fully_qualified_namespace: only used with [source.credential]"),
        "one error for one mistake: {out}"
    );
}

/// `iomt simulate --target eventhubs` publishes through the real SDK producer (here into the
/// emulator): every simulated event is stored in the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_publishes_to_event_hubs() {
    let hub = EventHubsEmulator::start("telemetry", 2).await;
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
