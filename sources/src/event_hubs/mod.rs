//! The Azure Event Hubs source: the `azure_messaging_eventhubs`
//! [`EventProcessor`](azure_messaging_eventhubs::EventProcessor) with a
//! durable local checkpoint store ([`FileCheckpointStore`], JSON files in a directory), so
//! several instances sharing one checkpoint directory split the partitions between them
//! (ownership records with ETags, the SDK's load balancer) and a restarted instance resumes
//! where the last checkpoint says.
//!
//! Each event's application properties become `properties`; its message annotations (the
//! `iothub-*` ones of IoT Hub routing, `x-opt-enqueued-time`, `x-opt-sequence-number`,
//! `x-opt-offset`, `x-opt-partition-key`, ...), the AMQP message properties (`message-id`,
//! `correlation-id`, `content-type`, ...) and `eventhubs-partition-id` become
//! `system_properties`; the enqueued time is the ingestion time.
//!
//! Sign-in is a shared access key connection string, or Microsoft Entra ID (Azure AD) tokens
//! from a client secret or the host's managed identity ([`credential`]), presented to the hub
//! with claims-based security (`put-token`, token type `jwt`) and renewed before they expire.
//!
//! At-least-once: the [`Ack`](crate::Ack) of an event marks it done in its partition's
//! tracker, and the partition's checkpoint advances to the highest sequence number below which
//! every event is done (written to FHIR or dead-lettered). A checkpoint never moves backwards.
//!
//! One concern per module:
//! - `config`: the `[source]` settings ([`EventHubsConfig`]) and their checked form
//!   ([`Connection`]);
//! - [`credential`]: Entra ID sign-in;
//! - `checkpoint`: the checkpoint store ([`FileCheckpointStore`]);
//! - `tracker`: per-partition progress ([`PartitionTracker`]);
//! - `properties`: AMQP → JSON ([`application_properties`], [`system_properties`]);
//! - `run`: sign-in, the processor's sessions, reconnection and shutdown ([`run`]);
//! - `reader`: one partition's reader, on a connection of its own, until the partition is
//!   another instance's.

mod checkpoint;
mod config;
pub mod credential;
mod properties;
mod reader;
mod run;
mod tracker;

pub use checkpoint::FileCheckpointStore;
pub use config::{Auth, Connection, CredentialConfig, EventHubsConfig, LoadBalancing, StartFrom};
pub use properties::{application_properties, system_properties};
pub use run::{install_crypto_provider, run};
pub use tracker::{PartitionTracker, Position};
