//! Whole-program tests: the `iomt` binary as scripts and users run it, against real peers.

#[path = "support/fhir_server.rs"]
mod fhir_server;
#[path = "support/fhir_state.rs"]
mod fhir_state;
#[path = "support/hr.rs"]
mod hr;
#[path = "support/mosquitto.rs"]
mod mosquitto;
#[path = "support/process.rs"]
mod process;
#[path = "support/vitals.rs"]
mod vitals;

mod bench;
mod browser;
mod cli_normalize;
mod demo;
mod event_hubs;
mod golden;
mod import;
mod medtech_continuation;
mod replay;
mod review;
mod service;
mod simulate;
mod watch;
