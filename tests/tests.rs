//! Whole-program tests: the `iomt` binary as scripts and users run it, against real peers.

//! Shared helpers (the test FHIR server, Mosquitto, the Event Hubs emulator, ...) are in the
//! `testkit` crate.

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
mod smart_backend;
mod vital_signs;
mod watch;
