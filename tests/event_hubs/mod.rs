//! `iomt run` with the Azure Event Hubs source, end to end: the real `azure_messaging_eventhubs`
//! SDK (the connector's `EventProcessor` and the test's `ProducerClient`) against the in-test
//! AMQP 1.0 emulator (`testkit::event_hubs::emulator` — an in-process stand-in, because no real
//! Event Hubs or Microsoft's emulator can run here), the real test FHIR server, and the
//! connector as a separate process so it can be killed with SIGKILL.
//!
//! * `end_to_end`: events to Observations, dead letters with their envelope, SIGTERM drains,
//!   SIGKILL at full rate and a restart end in the state of one replay, the simulator's target;
//! * `scale_out`: instances of one consumer group split the partitions and end in that state;
//! * `sign_in`: Azure AD (Microsoft Entra ID) client secret and managed identity;
//! * `example_config`: the example config's Event Hubs blocks validate.
//!
//! This module holds what they share: the connector's config and start, the SDK producer.

mod end_to_end;
mod example_config;
mod scale_out;
mod sign_in;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::{AmqpMessage, EventData};
use azure_messaging_eventhubs::{ProducerClient, SendEventOptions, SendMessageOptions};
use serde_json::Value;

use testkit::connector::{self, metric, ConnectorProcess};
use testkit::event_hubs::{token_endpoint, EventHubsEmulator, TokenEndpoint};
use testkit::fhir::{FhirServer, FhirState};
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

/// [`vitals::one_replay_of`] with this package's binary.
async fn one_replay_of(server: &FhirServer, readings: &[vitals::Reading]) -> FhirState {
    vitals::one_replay_of(env!("CARGO_BIN_EXE_iomt"), server, readings).await
}
