//! `iomt run` with the Azure Event Hubs source, end to end: the real `azure_messaging_eventhubs`
//! SDK (the connector's `EventProcessor` and the test's `ProducerClient`) against the in-test
//! AMQP 1.0 emulator (`support/eventhubs_emulator.rs` — an in-process stand-in, because no real
//! Event Hubs or Microsoft's emulator can run here), the real test FHIR server, and the
//! connector as a separate process so it can be killed with SIGKILL.

#[path = "support/eventhubs_emulator.rs"]
mod eventhubs_emulator;
#[path = "support/token_endpoint.rs"]
mod token_endpoint;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::{AmqpMessage, EventData};
use azure_messaging_eventhubs::{ProducerClient, SendEventOptions, SendMessageOptions};
use serde_json::Value;

use crate::fhir_server::FhirServer;
use crate::hr::{hr_body, wait_for_complete_observations};
use crate::mosquitto::free_port;
use crate::process::ConnectorProcess;
use eventhubs_emulator::EventHubsEmulator;
use token_endpoint::TokenEndpoint;

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

/// Writes the connector's config `<dir>/<name>.toml`.
fn write_config(
    dir: &Path,
    name: &str,
    owner: &str,
    hub: &EventHubsEmulator,
    fhir_url: &str,
    sign_in: &SignIn,
    metrics_port: u16,
) -> PathBuf {
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

    fn start_with(
        dir: &Path,
        name: &str,
        owner: &str,
        hub: &EventHubsEmulator,
        fhir_url: &str,
        sign_in: &SignIn,
    ) -> Connector {
        let metrics_port = free_port();
        let config = write_config(dir, name, owner, hub, fhir_url, sign_in, metrics_port);
        let log = dir.join(format!("{name}.log"));
        let child = spawn_connector(&config, &sign_in.env, &log);
        let c = Connector {
            process: ConnectorProcess {
                child,
                metrics_port,
                log,
            },
            config,
        };
        c.wait_ready(Duration::ZERO);
        c
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
/// A send that gets no answer within 10 s is sent again on a new producer (fe2o3-amqp 0.16's
/// sender can miss a disposition that arrives before it registered the delivery, see
/// `accept_unhurried` in the emulator; on a loaded machine that can happen despite the pause).
/// The emulator stores a message id once, so a resent event is never stored twice.
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
            match tokio::time::timeout(Duration::from_secs(10), send).await {
                Ok(sent) => {
                    sent.expect("send an event");
                    break;
                }
                Err(_) if attempt < 2 => {
                    attempt += 1;
                    eprintln!("PUBLISH event {id}: no answer in 10 s, sending it again");
                    producer = self::producer(hub).await;
                }
                Err(_) => panic!("sending event {id} timed out three times"),
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

// ---------------------------------------------------------------------------------------------
// Azure AD (Microsoft Entra ID) sign-in, against the in-test token endpoint
// (`support/token_endpoint.rs`, a stand-in: no Entra ID can run here).

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
