//! `iomt`: the IoMT connector's command line.
//!
//! This file is the command table and its dispatch; each command is a module of
//! [`commands`] (its options and its `run`), and what they share is there once.
//! [`events`] is the events-file format, [`review`] the review page (`review` and `demo`).
//! The commands and their options: README.md ("Command line") and `iomt <command> --help`.

mod commands;
mod events;
mod review;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// See `Cargo.toml` (why this allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use commands::{
    bench, dead_letters, demo, fhir_store, import, jwks, map, normalize, replay, run, simulate,
    validate,
};

#[derive(Parser)]
#[command(
    name = "iomt",
    version,
    about = "IoMT connector: device JSON to FHIR R4 Observations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check mapping templates; exit 0 when valid, 1 with every error otherwise.
    Validate(validate::ValidateArgs),
    /// Normalize device messages into measurements (prints JSON).
    Normalize(normalize::NormalizeArgs),
    /// Run normalization, grouping and FHIR conversion offline on one batch (prints JSON):
    /// the local twin of the MedTech mapping debugger.
    Map(map::MapArgs),
    /// Run the full pipeline into a FHIR server as one batch and print the report.
    Replay(replay::ReplayArgs),
    /// The whole pipeline on embedded defaults: MQTT broker, simulator, connector, local FHIR store.
    Demo(demo::DemoArgs),
    /// A review page for remote-monitoring teams, reading any FHIR R4 server.
    Review(commands::review::ReviewArgs),
    /// Simulate devices: realistic vital-sign streams with faults, to stdout, a file or MQTT.
    Simulate(simulate::SimulateArgs),
    /// Measure the connector on this machine: Mosquitto, the local FHIR store, `iomt run`.
    Bench(bench::BenchArgs),
    /// Serve the local development FHIR store (SQLite) on its own, e.g. for `replay`.
    FhirStore(fhir_store::FhirStoreArgs),
    /// Run the connector as a long-running service.
    Run(run::RunArgs),
    /// Inspect and reprocess the dead-letter store.
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Import an Azure MedTech service (ARM template or REST JSON) as mappings and a config.
    Import(import::ImportArgs),
    /// Print the public JWKS of a SMART Backend Services key, to register with the authorization server.
    Jwks(jwks::JwksArgs),
}

/// Exit codes: 0 done; 1 a problem the command reports itself (invalid templates or config,
/// an incomplete bench); 2 any other error, printed as `error: …`.
fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Validate(args) => validate::run(args),
        Command::Normalize(args) => normalize::run(args),
        Command::Map(args) => map::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Review(args) => commands::review::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::FhirStore(args) => fhir_store::run(args),
        Command::Run(args) => run::run(args),
        Command::DeadLetters(args) => dead_letters::run(args),
        Command::Import(args) => import::run(args),
        Command::Jwks(args) => jwks::run(args),
    }
}
