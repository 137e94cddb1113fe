//! Event sources of the IoMT connector. Every source delivers [`SourceEvent`]s — body bytes,
//! application and system properties, an ingestion time and an [`Ack`] — into a bounded channel
//! (a full channel slows the source: back-pressure, flat memory). The pipeline calls
//! [`Ack::ack`] only once everything the event produced is written or dead-lettered
//! (at-least-once delivery).

#![deny(missing_docs)]

pub mod event_hubs;
pub mod mqtt;

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A boxed future, for acks.
pub type AckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Acknowledges one event to its source (MQTT PUBACK, Event Hubs checkpoint progress).
pub struct Ack(Option<Box<dyn FnOnce() -> AckFuture + Send>>);

impl Ack {
    /// An ack that runs `f`.
    pub fn new(f: impl FnOnce() -> AckFuture + Send + 'static) -> Self {
        Ack(Some(Box::new(f)))
    }

    /// An ack that does nothing (files, tests).
    pub fn none() -> Self {
        Ack(None)
    }

    /// Acknowledges the event.
    pub async fn ack(mut self) {
        if let Some(f) = self.0.take() {
            f().await;
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ack(pending)"
        } else {
            "Ack(none)"
        })
    }
}

/// One event as a source delivers it.
#[derive(Debug)]
pub struct SourceEvent {
    /// The raw body.
    pub body: Vec<u8>,
    /// Application properties (MQTT v5 user properties, Event Hubs application properties).
    pub properties: Map<String, Value>,
    /// System properties (topic, partition, enqueued time, IoT Hub properties).
    pub system_properties: Map<String, Value>,
    /// When the event reached the source.
    pub ingestion_time: DateTime<Utc>,
    /// Where it came from, for logs and dead letters (topic or partition).
    pub origin: String,
    /// The acknowledgement to send once the event is fully handled.
    pub ack: Ack,
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The configuration cannot work.
    #[error("source configuration: {0}")]
    Config(String),
    /// Signing in failed in a way retrying cannot fix (e.g. Azure AD refused the client secret).
    #[error("source sign-in: {0}")]
    Auth(String),
    /// The pipeline closed its channel.
    #[error("the pipeline stopped accepting events")]
    Closed,
}
