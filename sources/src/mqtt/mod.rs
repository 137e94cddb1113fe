//! The MQTT source (`rumqttc`): MQTT v5 or v3.1.1, TCP or TLS, username/password, a list of
//! topic filters at QoS 1, a persistent session (fixed client id, no clean start) so that
//! events published while the connector is down arrive when it returns, manual acks, and
//! optional shared subscriptions (`$share/<group>/<filter>`) so several instances split the load.
//!
//! Each event's system properties carry `mqtt-topic` and `mqtt-received-time`; with a topic
//! pattern such as `devices/{deviceId}/telemetry`, the device id from the topic is set as
//! `iothub-connection-device-id` (so IoT Hub device mappings work unchanged) and `mqtt-device-id`.

use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::{Ack, SourceError, SourceEvent};

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1", alias = "v3.1.1", alias = "v4")]
    V311,
    /// MQTT 5.
    #[default]
    #[serde(rename = "5", alias = "v5")]
    V5,
}

/// MQTT source settings (the `[source.mqtt]` table of the config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `"5"` or `"3.1.1"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Fixed client id: the broker keeps this session (and queues QoS 1 events) while we are down.
    pub client_id: String,
    /// Topic filters to subscribe to at QoS 1.
    pub topics: Vec<String>,
    /// Shared-subscription group: subscribe as `$share/<group>/<filter>` (MQTT 5).
    #[serde(default)]
    pub shared_group: Option<String>,
    /// Topic pattern with `{deviceId}` (e.g. `devices/{deviceId}/telemetry`).
    #[serde(default)]
    pub device_id_from_topic: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_env`).
    #[serde(default)]
    pub password: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Use TLS.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the CA to trust for TLS (default: the system's roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Keep-alive, in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// How long the broker keeps the session while we are disconnected (MQTT 5), in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Largest accepted message, in bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Unacknowledged QoS 1 messages the broker may have in flight to us.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
}

fn default_port() -> u16 {
    1883
}
fn default_keep_alive() -> u64 {
    30
}
fn default_session_expiry() -> u32 {
    7 * 24 * 3600
}
fn default_max_packet() -> usize {
    16 * 1024 * 1024
}
fn default_inflight() -> u16 {
    100
}

impl MqttConfig {
    /// The topic filters as subscribed (with the shared-subscription prefix).
    pub fn filters(&self) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| match &self.shared_group {
                Some(g) => format!("$share/{g}/{t}"),
                None => t.clone(),
            })
            .collect()
    }

    /// Checks the settings, reporting every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.topics.is_empty() {
            errors.push("source.mqtt.topics: at least one topic filter is needed".into());
        }
        if self.client_id.trim().is_empty() {
            errors.push(
                "source.mqtt.client_id: a fixed client id is needed for a persistent session"
                    .into(),
            );
        }
        if self.shared_group.is_some() && self.protocol == Protocol::V311 {
            errors
                .push("source.mqtt.shared_group: shared subscriptions need protocol \"5\"".into());
        }
        if let Some(p) = &self.device_id_from_topic {
            if !p.contains("{deviceId}") {
                errors.push(format!(
                    "source.mqtt.device_id_from_topic: {p:?} has no {{deviceId}}"
                ));
            }
        }
        if let Some(v) = &self.password_env {
            if std::env::var(v).is_err() {
                errors.push(format!(
                    "source.mqtt.password_env: environment variable {v} is not set"
                ));
            }
        }
        errors
    }

    fn password(&self) -> Option<String> {
        self.password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .or_else(|| self.password.clone())
    }
}

/// Extracts `{deviceId}` from a topic by a pattern with `/`-separated levels.
pub fn device_id_from_topic(pattern: &str, topic: &str) -> Option<String> {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if p.len() != t.len() {
        return None;
    }
    let mut found = None;
    for (pl, tl) in p.iter().zip(&t) {
        if *pl == "{deviceId}" {
            if tl.is_empty() {
                return None;
            }
            found = Some(tl.to_string());
        } else if *pl != "+" && pl != tl {
            return None;
        }
    }
    found
}

fn system_properties(config: &MqttConfig, topic: &str) -> Map<String, Value> {
    let now = Utc::now();
    let mut m = Map::new();
    m.insert("mqtt-topic".into(), Value::String(topic.to_string()));
    m.insert(
        "mqtt-received-time".into(),
        Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    if let Some(p) = &config.device_id_from_topic {
        if let Some(d) = device_id_from_topic(p, topic) {
            m.insert("mqtt-device-id".into(), Value::String(d.clone()));
            m.insert("iothub-connection-device-id".into(), Value::String(d));
        }
    }
    m
}

fn tls_config(config: &MqttConfig) -> Result<rumqttc::TlsConfiguration, SourceError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &config.ca_file {
        Some(path) => {
            let ca = std::fs::read(path)
                .map_err(|e| SourceError::Config(format!("source.mqtt.ca_file {path}: {e}")))?;
            Ok(rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            })
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let _ = roots.add_parsable_certificates(rustls_native_roots());
            let cfg = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(cfg)))
        }
    }
}

fn rustls_native_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    // Debian's CA bundle; without it TLS needs `ca_file`.
    let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") else {
        return Vec::new();
    };
    rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect()
}

/// Runs the MQTT source, delivering events into `out`. Connection failures are retried
/// forever with backoff (the broker keeps our session).
///
/// Shutdown has two steps: when `shutdown` turns true the source stops delivering (it drops
/// `out`, so the pipeline drains what it has) but keeps the connection, so the pipeline's last
/// acks still reach the broker; when `done` turns true (the pipeline finished) it sends the
/// queued acks, disconnects and returns. Messages that arrive in between are not acknowledged,
/// so the broker delivers them again to the next session.
pub async fn run(
    config: MqttConfig,
    out: mpsc::Sender<SourceEvent>,
    shutdown: watch::Receiver<bool>,
    done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(SourceError::Config(errors.join("; ")));
    }
    match config.protocol {
        Protocol::V5 => run_v5(config, out, shutdown, done).await,
        Protocol::V311 => run_v4(config, out, shutdown, done).await,
    }
}

/// Waits for `rx` to become true (or its sender to go away).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn backoff(attempt: &mut u32, done: &mut watch::Receiver<bool>) -> bool {
    let delay = Duration::from_millis((100u64 << (*attempt).min(6)).min(5000));
    *attempt += 1;
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = until_true(done) => false,
    }
}

/// The connection loop both protocol versions share: their `rumqttc` types differ (the
/// caller's `use` of `Event`, `Packet` and `QoS` decides which), their logic does not.
/// `$parts` takes an incoming publish to its topic and application properties.
macro_rules! connection_loop {
    ($config:ident, $client:ident, $eventloop:ident, $out:ident, $shutdown:ident, $done:ident, $parts:expr) => {{
        let filters = $config.filters();
        let mut attempt = 0u32;
        loop {
            if $out.is_some() && *$shutdown.borrow() {
                $out = None; // stop delivering; keep the connection for the last acks
            }
            let event = tokio::select! {
                e = $eventloop.poll() => e,
                _ = $shutdown.changed(), if $out.is_some() => continue,
                _ = until_true(&mut $done) => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    attempt = 0;
                    tracing::info!(session_present = ack.session_present, "MQTT connected.");
                    for f in &filters {
                        if let Err(e) = $client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                            tracing::error!(error = %e, filter = %f, "MQTT subscribe failed.");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (topic, properties) = ($parts)(&p);
                    let ack_client = $client.clone();
                    let publish = p.clone();
                    let ev = SourceEvent {
                        body: p.payload.to_vec(),
                        properties,
                        system_properties: system_properties(&$config, &topic),
                        ingestion_time: Utc::now(),
                        origin: topic,
                        ack: Ack::new(move || {
                            Box::pin(async move {
                                if publish.qos != QoS::AtMostOnce {
                                    if let Err(e) = ack_client.ack(&publish).await {
                                        tracing::warn!(error = %e, "MQTT ack failed; the broker will redeliver.");
                                    }
                                }
                            })
                        }),
                    };
                    if let Some(o) = &$out {
                        if o.send(ev).await.is_err() {
                            return Err(SourceError::Closed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "MQTT connection failed; reconnecting.");
                    if !backoff(&mut attempt, &mut $done).await {
                        break;
                    }
                }
            }
        }
        // Flush the queued acks, then disconnect (the session stays on the broker).
        let _ = $client.disconnect().await;
        let flush = async {
            while let Ok(e) = $eventloop.poll().await {
                tracing::trace!(?e, "MQTT event while disconnecting.");
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), flush).await;
        Ok(())
    }};
}

async fn run_v5(
    config: MqttConfig,
    out: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut out = Some(out);
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    opts.set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)));
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(config.session_expiry_secs));
    opts.set_manual_acks(true);
    opts.set_max_packet_size(Some(config.max_packet_bytes as u32));
    if let Some(u) = &config.username {
        opts.set_credentials(u.clone(), config.password().unwrap_or_default());
    }
    if config.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(tls_config(&config)?));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, config.inflight as usize);
    connection_loop!(
        config,
        client,
        eventloop,
        out,
        shutdown,
        done,
        |p: &rumqttc::v5::mqttbytes::v5::Publish| {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let mut properties = Map::new();
            if let Some(props) = &p.properties {
                for (k, v) in &props.user_properties {
                    properties.insert(k.clone(), Value::String(v.clone()));
                }
                if let Some(ct) = &props.content_type {
                    properties.insert("content-type".into(), Value::String(ct.clone()));
                }
            }
            (topic, properties)
        }
    )
}

async fn run_v4(
    config: MqttConfig,
    out: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let mut out = Some(out);
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let mut opts = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    opts.set_keep_alive(Duration::from_secs(config.keep_alive_secs.max(5)));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    opts.set_inflight(config.inflight.max(1));
    if let Some(u) = &config.username {
        opts.set_credentials(u.clone(), config.password().unwrap_or_default());
    }
    if config.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(tls_config(&config)?));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, config.inflight as usize);
    connection_loop!(
        config,
        client,
        eventloop,
        out,
        shutdown,
        done,
        |p: &rumqttc::Publish| { (p.topic.clone(), Map::new()) }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_patterns() {
        assert_eq!(
            device_id_from_topic("devices/{deviceId}/telemetry", "devices/hr-1/telemetry")
                .as_deref(),
            Some("hr-1")
        );
        assert_eq!(
            device_id_from_topic("devices/{deviceId}/telemetry", "devices/hr-1/other"),
            None
        );
        assert_eq!(
            device_id_from_topic("+/{deviceId}", "site-a/pump-3").as_deref(),
            Some("pump-3")
        );
        assert_eq!(device_id_from_topic("devices/{deviceId}", "devices/"), None);
    }
}
