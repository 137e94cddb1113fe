//! `iomt map`: normalization, grouping and FHIR conversion offline on one batch, no server
//! (Observations reference Patient and Device by identifier); prints
//! `{"measurements", "groups", "observations", "errors", "dropped"}`. The local twin of the
//! MedTech mapping debugger; `--watch` re-maps on every change ([`super::watch`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;

use super::normalize::{measurement_json, normalize_events};
use super::templates::{load_fhir_mapping, load_normalizer};
use crate::events;

/// `iomt map` options.
#[derive(clap::Args)]
pub struct MapArgs {
    /// Device-mapping template (CollectionContent).
    #[arg(long, value_name = "FILE")]
    device_mapping: PathBuf,
    /// FHIR-mapping template (CollectionFhir).
    #[arg(long, value_name = "FILE")]
    fhir_mapping: PathBuf,
    /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    /// Set `issued` on every Observation (RFC 3339); left out by default so output is
    /// reproducible.
    #[arg(long, value_name = "TIME")]
    issued: Option<String>,
    /// Keep running: re-map whenever a template or the events file changes, showing each
    /// stage and every error (template line:column, event index).
    #[arg(long)]
    watch: bool,
}

/// Runs `iomt map` (or, with `--watch`, [`super::watch::run`]).
pub fn run(args: MapArgs) -> Result<ExitCode> {
    if args.watch {
        return super::watch::run(&args.device_mapping, &args.fhir_mapping, &args.events);
    }
    map(
        &args.device_mapping,
        &args.fhir_mapping,
        &args.events,
        args.issued.as_deref(),
    )
}

fn map(
    device_mapping: &Path,
    fhir_mapping: &Path,
    events: &Path,
    issued: Option<&str>,
) -> Result<ExitCode> {
    let Some(normalizer) = load_normalizer(device_mapping, false)? else {
        return Ok(ExitCode::from(1));
    };
    let Some(templates) = load_fhir_mapping(fhir_mapping)? else {
        return Ok(ExitCode::from(1));
    };
    let issued = issued
        .map(|s| {
            normalizer::value::parse_timestamp(s)
                .with_context(|| format!("--issued {s:?} is not an RFC 3339 time"))
        })
        .transpose()?;
    let events = events::read_events(events)?;
    let n = normalize_events(&normalizer, &events, false)?;
    let report = fhir_writer::map_batch(&templates, &n.measurements, issued);
    let mut errors = n.errors;
    for e in &report.errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(e.events.first());
        v["stage"] = json!("fhir");
        errors.push(v);
    }
    let out = json!({
        "measurements": measurement_json(&n.measurements)?,
        "groups": report.groups,
        "observations": report.observations,
        "errors": errors,
        "dropped": n.dropped,
    });
    super::print_json(&out)
}
