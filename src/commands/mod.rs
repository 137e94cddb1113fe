//! The commands, one module each: its options (a `clap::Args` struct) and its `run`.
//!
//! * offline, no server: [`validate`], [`normalize`], [`map`] (and [`watch`], `map --watch`);
//! * the stage graph (the `pipeline` crate): [`run`] (the service), [`replay`] (an events
//!   file into a FHIR server), [`dead_letters`] (list, show, reprocess);
//! * migration: [`import`] (Azure MedTech definitions into mappings and a config);
//! * servers and tools: [`demo`], [`review`], [`fhir_store`], [`simulate`], [`bench`](mod@bench),
//!   [`jwks`] (a SMART Backend Services key's public JWKS).
//!
//! What they share is written once: here the tokio runtime ([`runtime`]), the logging set-up
//! ([`init_logging`]) and the shutdown signal ([`shutdown_signal`]); in [`templates`] loading
//! the mappings, with the one template-error report; in [`fhir`] reaching a FHIR server.

pub mod bench;
pub mod dead_letters;
pub mod demo;
pub mod fhir;
pub mod fhir_store;
pub mod import;
pub mod jwks;
pub mod map;
pub mod normalize;
pub mod replay;
pub mod review;
pub mod run;
pub mod simulate;
pub mod templates;
pub mod validate;
pub mod watch;

use std::process::ExitCode;

use anyhow::Result;

/// Prints a command's JSON report on stdout (pretty, one trailing newline); success.
pub fn print_json(report: &impl serde::Serialize) -> Result<ExitCode> {
    use std::io::Write as _;
    // Encoded straight into a buffered stdout: a replay's report (every Observation) runs to
    // tens of MB, which a String first would hold twice.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The tokio runtime every async command runs on: multi-threaded, I/O and time enabled.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The one logging set-up: to stderr, colour only when stderr is a terminal; `RUST_LOG`
/// overrides `default_level`; `json` gives one JSON object per line. Commands call it through
/// [`init_cli_logging`] or [`init_service_logging`].
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Logging for a command without a service config: level `warn`, JSON when
/// `IOMT_LOG_FORMAT=json`.
pub fn init_cli_logging() {
    init_logging(
        "warn",
        std::env::var("IOMT_LOG_FORMAT").as_deref() == Ok("json"),
    );
}

/// Logging as a service config's `[log]` table sets it (`iomt run`, `demo`, `dead-letters
/// replay`).
pub fn init_service_logging(config: &pipeline::config::Config) {
    init_logging(&config.log.level, config.log.format == "json");
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: the service's and the demo's cue to drain and stop.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
