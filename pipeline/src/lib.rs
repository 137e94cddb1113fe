//! The connector's stage graph, as tasks joined by bounded channels:
//!
//! ```text
//! source ──▶ ingest ──▶ normalize (every core) ──▶ group ──▶ write ──▶ commit
//!  (MQTT,     ledger      dead letters              windows    FHIR      acks, checkpoints,
//!   Event     seq nos.                              across     writer    spool truncation
//!   Hubs,                                           batches
//!   files)
//! ```
//!
//! `iomt run`, `iomt demo`, `iomt replay` and `iomt dead-letters replay` all run through it,
//! so they share limits, dead letters and metrics. Every stage blocks on a full channel, so a
//! slow FHIR server slows the source (back-pressure) and memory stays bounded; nothing is
//! dropped. An event is acknowledged to a source without a spool only once every measurement
//! it produced is written or it is dead-lettered ([`ledger`]).
//!
//! The pure cores live elsewhere: [`normalizer::Normalizer`], [`grouper::Grouper`],
//! [`fhir_writer`]'s mapping; this crate only moves data between them.
//!
//! ```
//! use pipeline::ledger::{Event, Ledger};
//! use std::sync::Arc;
//!
//! let ev = || Arc::new(Event {
//!     body: br#"{"hr": 70}"#.to_vec(),
//!     properties: Default::default(),
//!     system_properties: Default::default(),
//!     ingestion_time: Some(chrono::Utc::now()),
//!     origin: "devices/a".into(),
//! });
//! let mut ledger = Ledger::starting_at(0);
//! let (a, b) = (ledger.admit(ev(), None), ledger.admit(ev(), None));
//! ledger.normalized(a, 2);
//! ledger.normalized(b, 1);
//! ledger.written(b, 1);
//! assert_eq!(ledger.commit().watermark, 0); // `a` still has two measurements to write
//! ledger.written(a, 2);
//! assert_eq!(ledger.commit().watermark, 2);
//! ```
#![deny(missing_docs)]

mod commit;
pub mod config;
pub mod deadletter;
mod group;
pub mod http;
mod ingest;
pub mod ledger;
pub mod metrics;
mod normalize;
mod service;
mod shared;
pub mod spool;
mod write;

pub use ledger::{Event, Input};
pub use service::{load_mappings, run, validate, Pipeline, PipelineError, RunOptions, RunSummary};
pub use shared::Report;
