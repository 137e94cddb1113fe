//! The MQTT source (`rumqttc`): MQTT v5 or v3.1.1, TCP or TLS, username/password, a list of
//! topic filters at QoS 1, a persistent session (fixed client id, no clean start) so that
//! events published while the connector is down arrive when it returns, manual acks, and
//! optional shared subscriptions (`$share/<group>/<filter>`) so several instances split the load.
//!
//! Each event's system properties carry `mqtt-topic` and `mqtt-received-time`; with a topic
//! pattern such as `devices/{deviceId}/telemetry`, the device id from the topic is set as
//! `iothub-connection-device-id` (so IoT Hub device mappings work unchanged) and `mqtt-device-id`.

mod backlog;
mod client;
mod connection;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::{SourceError, SourceEvent};

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
    /// Unacknowledged QoS 1 messages the broker may have in flight to us: MQTT 5 advertises it
    /// as the Receive Maximum; with MQTT 3.1.1 the broker's own limit applies (Mosquitto:
    /// `max_inflight_messages`, which should then be at most this). It bounds the messages held
    /// between the broker and the pipeline's channel (see docs/OPERATIONS.md for a broker that
    /// does not keep to it).
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
        for t in &self.topics {
            if !rumqttc::valid_filter(t) {
                errors.push(format!(
                    "source.mqtt.topics: {t:?} is not a valid topic filter"
                ));
            }
        }
        if self.inflight == 0 {
            errors.push("source.mqtt.inflight: must be at least 1".into());
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
/// The connection is kept alive however slow the pipeline is: deliveries wait in a small local
/// queue (bounded by the broker's in-flight window, `inflight`, as long as the broker keeps to
/// it), never in a blocking send, so pings and PUBACKs keep flowing (see the `connection`
/// module).
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
        Protocol::V5 => {
            let (client, eventloop) = client::V5::new(&config)?;
            connection::run(&config, client, eventloop, out, shutdown, done).await
        }
        Protocol::V311 => {
            let (client, eventloop) = client::V311::new(&config)?;
            connection::run(&config, client, eventloop, out, shutdown, done).await
        }
    }
}

/// Waits for `rx` to become true (or its sender to go away).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
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
