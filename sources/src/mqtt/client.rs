//! The two `rumqttc` flavours (MQTT 5 and 3.1.1) behind one small trait, so one connection loop
//! ([`super::connection`]) serves both: their options, their event loop's events mapped to
//! what the loop cares about, and the non-blocking requests the loop makes.

use std::future::Future;
use std::time::Duration;

use serde_json::{Map, Value};

use super::MqttConfig;
use crate::SourceError;

/// What one poll of the event loop yielded, as far as the connection loop cares.
#[derive(Debug)]
pub(super) enum Polled<P> {
    /// CONNACK received.
    Connected {
        /// The broker resumed our session (and sends again what we had not acknowledged).
        session_present: bool,
    },
    /// An incoming PUBLISH.
    Publish(P),
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else (pings, SUBACKs, our PUBACKs going out).
    Other,
    /// The connection failed or could not be made (the next poll reconnects).
    Failed(String),
}

/// An incoming PUBLISH taken apart.
#[derive(Debug)]
pub(super) struct Delivery<P> {
    pub topic: String,
    pub properties: Map<String, Value>,
    pub body: Vec<u8>,
    /// What acknowledges it (the PUBLISH without its payload); `None` for QoS 0.
    pub ack: Option<P>,
}

/// The request channel to the event loop is full (it takes one request per poll).
#[derive(Debug)]
pub(super) struct Full;

/// One `rumqttc` flavour: its client handle (requests) and its event loop (network).
pub(super) trait Flavor: Send + Sync + 'static {
    /// An incoming PUBLISH.
    type Publish: Send + 'static;
    /// The event loop.
    type EventLoop: Send;

    /// One step of the event loop (which reconnects when polled after a failure).
    fn poll(eventloop: &mut Self::EventLoop) -> impl Future<Output = Polled<Self::Publish>> + Send;

    /// Takes an incoming PUBLISH apart.
    fn delivery(publish: Self::Publish) -> Delivery<Self::Publish>;

    /// Queues a PUBACK, without waiting.
    fn try_ack(&self, publish: &Self::Publish) -> Result<(), Full>;

    /// Queues a SUBSCRIBE at QoS 1, without waiting (the filter was validated with the config).
    fn try_subscribe(&self, filter: &str) -> Result<(), Full>;

    /// Queues a DISCONNECT, without waiting.
    fn try_disconnect(&self) -> Result<(), Full>;
}

/// The request channel's capacity. Any capacity works: the loop never waits for room (it uses
/// the `try_` requests and retries after the event loop's next step, which is when room
/// appears). This one fits a full window of PUBACKs plus the subscriptions, so normally
/// nothing waits at all.
fn request_capacity(config: &MqttConfig) -> usize {
    config.inflight.max(1) as usize + config.topics.len() + 1
}

fn keep_alive(config: &MqttConfig) -> Duration {
    Duration::from_secs(config.keep_alive_secs.max(5))
}

/// MQTT 5.
pub(super) struct V5(rumqttc::v5::AsyncClient);

impl V5 {
    /// The client options: a persistent session, manual acks, and a Receive Maximum of
    /// `inflight`, so the broker has at most that many unacknowledged messages out to us.
    pub(super) fn options(config: &MqttConfig) -> Result<rumqttc::v5::MqttOptions, SourceError> {
        let mut opts = rumqttc::v5::MqttOptions::new(
            config.client_id.clone(),
            config.host.clone(),
            config.port,
        );
        opts.set_keep_alive(keep_alive(config));
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(config.session_expiry_secs));
        opts.set_receive_maximum(Some(config.inflight.max(1)));
        opts.set_manual_acks(true);
        opts.set_max_packet_size(Some(config.max_packet_bytes as u32));
        if let Some(u) = &config.username {
            opts.set_credentials(u.clone(), config.password().unwrap_or_default());
        }
        if config.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(super::tls_config(
                config,
            )?));
        }
        Ok(opts)
    }

    /// The client and its event loop (which connects when first polled).
    pub(super) fn new(config: &MqttConfig) -> Result<(Self, rumqttc::v5::EventLoop), SourceError> {
        let (client, eventloop) =
            rumqttc::v5::AsyncClient::new(Self::options(config)?, request_capacity(config));
        Ok((V5(client), eventloop))
    }
}

impl Flavor for V5 {
    type Publish = rumqttc::v5::mqttbytes::v5::Publish;
    type EventLoop = rumqttc::v5::EventLoop;

    async fn poll(eventloop: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::Event;
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Polled::Connected {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish(p),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Polled::DisconnectSent,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Failed(e.to_string()),
        }
    }

    fn delivery(mut p: Self::Publish) -> Delivery<Self::Publish> {
        use rumqttc::v5::mqttbytes::QoS;
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let mut properties = Map::new();
        if let Some(props) = p.properties.take() {
            for (k, v) in props.user_properties {
                properties.insert(k, Value::String(v));
            }
            if let Some(ct) = props.content_type {
                properties.insert("content-type".into(), Value::String(ct));
            }
        }
        let body = std::mem::take(&mut p.payload).to_vec();
        p.topic = Default::default();
        let ack = (p.qos != QoS::AtMostOnce).then_some(p);
        Delivery {
            topic,
            properties,
            body,
            ack,
        }
    }

    fn try_ack(&self, publish: &Self::Publish) -> Result<(), Full> {
        self.0.try_ack(publish).map_err(|_| Full)
    }

    fn try_subscribe(&self, filter: &str) -> Result<(), Full> {
        self.0
            .try_subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
            .map_err(|_| Full)
    }

    fn try_disconnect(&self) -> Result<(), Full> {
        self.0.try_disconnect().map_err(|_| Full)
    }
}

/// MQTT 3.1.1.
pub(super) struct V311(rumqttc::AsyncClient);

impl V311 {
    /// The client options: a persistent session and manual acks. MQTT 3.1.1 has no way to tell
    /// the broker our window; the broker's own setting (Mosquitto: `max_inflight_messages`)
    /// decides how many unacknowledged messages it sends ahead (`rumqttc`'s `inflight` is the
    /// window for what *we* publish, which is nothing).
    pub(super) fn options(config: &MqttConfig) -> Result<rumqttc::MqttOptions, SourceError> {
        let mut opts =
            rumqttc::MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
        opts.set_keep_alive(keep_alive(config));
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
        if let Some(u) = &config.username {
            opts.set_credentials(u.clone(), config.password().unwrap_or_default());
        }
        if config.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(super::tls_config(
                config,
            )?));
        }
        Ok(opts)
    }

    /// The client and its event loop (which connects when first polled).
    pub(super) fn new(config: &MqttConfig) -> Result<(Self, rumqttc::EventLoop), SourceError> {
        let (client, eventloop) =
            rumqttc::AsyncClient::new(Self::options(config)?, request_capacity(config));
        Ok((V311(client), eventloop))
    }
}

impl Flavor for V311 {
    type Publish = rumqttc::Publish;
    type EventLoop = rumqttc::EventLoop;

    async fn poll(eventloop: &mut Self::EventLoop) -> Polled<Self::Publish> {
        use rumqttc::{Event, Outgoing, Packet};
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Polled::Connected {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish(p),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Polled::DisconnectSent,
            Ok(_) => Polled::Other,
            Err(e) => Polled::Failed(e.to_string()),
        }
    }

    fn delivery(mut p: Self::Publish) -> Delivery<Self::Publish> {
        let topic = std::mem::take(&mut p.topic);
        let body = std::mem::take(&mut p.payload).to_vec();
        let ack = (p.qos != rumqttc::QoS::AtMostOnce).then_some(p);
        Delivery {
            topic,
            properties: Map::new(),
            body,
            ack,
        }
    }

    fn try_ack(&self, publish: &Self::Publish) -> Result<(), Full> {
        self.0.try_ack(publish).map_err(|_| Full)
    }

    fn try_subscribe(&self, filter: &str) -> Result<(), Full> {
        self.0
            .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .map_err(|_| Full)
    }

    fn try_disconnect(&self) -> Result<(), Full> {
        self.0.try_disconnect().map_err(|_| Full)
    }
}
