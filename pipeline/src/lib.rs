//! The connector's stage graph: source → spool → normalize → group → write → commit, as tasks
//! joined by bounded channels. `iomt run`, `iomt demo`, `iomt replay` and
//! `iomt dead-letters replay` all run through it.
#![deny(missing_docs)]

pub mod config;
pub mod deadletter;
pub mod http;
pub mod metrics;
mod service;
pub mod spool;

pub use service::{load_mappings, run, validate, Pipeline};
