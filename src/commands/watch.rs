//! `iomt map --watch`: re-maps whenever a template or the events file changes, and prints a
//! readable summary of every stage and every error (template line:column, event index).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use normalizer::{load_device_mapping, Normalizer};

use super::normalize::normalize_events;
use super::templates::{read_text, report};
use crate::events;

/// Watches the three files until interrupted, one pass of [`pass`] per change.
pub fn run(device_mapping: &Path, fhir_mapping: &Path, events: &Path) -> Result<ExitCode> {
    let files = [device_mapping, fhir_mapping, events];
    let stamp = || -> Vec<Option<std::time::SystemTime>> {
        files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = None;
    loop {
        let now = stamp();
        if last.as_ref() != Some(&now) {
            last = Some(now);
            let when = chrono::Local::now().format("%H:%M:%S");
            println!(
                "[{when}] {} + {} on {}",
                device_mapping.display(),
                fhir_mapping.display(),
                events.display()
            );
            match pass(device_mapping, fhir_mapping, events) {
                Ok(text) => print!("{text}"),
                Err(e) => println!("  error: {e:#}"),
            }
            println!("watching for changes (Ctrl-C to stop)");
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// One pass: a readable summary of every stage, and every error.
fn pass(device_mapping: &Path, fhir_mapping: &Path, events: &Path) -> Result<String> {
    let mut out = String::new();
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    let (templates, fhir_errors) = fhir_writer::FhirTemplates::load(&read_text(fhir_mapping)?);
    for line in report(device_mapping, &loaded.errors) {
        writeln!(out, "  template error  {line}")?;
    }
    for line in report(fhir_mapping, &fhir_errors) {
        writeln!(out, "  template error  {line}")?;
    }
    if !loaded.errors.is_empty() || !fhir_errors.is_empty() {
        writeln!(out, "  fix the template errors above; nothing was mapped")?;
        return Ok(out);
    }
    let evs = match events::read_events(events) {
        Ok(e) => e,
        Err(e) => {
            writeln!(out, "  events file error  {e:#}")?;
            return Ok(out);
        }
    };
    let normalizer = Normalizer::new(loaded.mapping);
    let n = normalize_events(&normalizer, &evs, false)?;
    let report = fhir_writer::map_batch(&templates, &n.measurements, None);
    writeln!(
        out,
        "  events {}  ->  measurements {}  ->  groups {}  ->  observations {}   (dropped {}, errors {})",
        evs.len(),
        n.measurements.len(),
        report.groups.len(),
        report.observations.len(),
        n.dropped.len(),
        n.errors.len() + report.errors.len()
    )?;
    for o in &report.observations {
        writeln!(
            out,
            "    {:<18} {} .. {}  {}",
            o["code"]["text"].as_str().unwrap_or("?"),
            o["effectivePeriod"]["start"].as_str().unwrap_or(""),
            o["effectivePeriod"]["end"].as_str().unwrap_or(""),
            value_summary(o)
        )?;
    }
    for e in &n.errors {
        writeln!(
            out,
            "  event {}: {} {}",
            e["event"],
            e["type"].as_str().unwrap_or(""),
            e["message"].as_str().unwrap_or("")
        )?;
    }
    for e in &report.errors {
        writeln!(
            out,
            "  events {:?}: {} {}",
            e.events, e.error_type, e.message
        )?;
    }
    if !n.dropped.is_empty() {
        writeln!(out, "  events matching no template: {:?}", n.dropped)?;
    }
    Ok(out)
}

/// An Observation's value in a few words: SampledData's sample count, a Quantity with its
/// unit, another value as JSON, or the number of components.
fn value_summary(o: &serde_json::Value) -> String {
    [
        "valueSampledData",
        "valueQuantity",
        "valueString",
        "valueCodeableConcept",
    ]
    .iter()
    .find_map(|k| o.get(*k).map(|v| (k, v)))
    .map(|(k, v)| match *k {
        "valueSampledData" => format!(
            "SampledData {} samples",
            v["data"]
                .as_str()
                .unwrap_or("")
                .split(' ')
                .filter(|t| *t != "E")
                .count()
        ),
        "valueQuantity" => format!("{} {}", v["value"], v["unit"].as_str().unwrap_or("")),
        _ => v.to_string(),
    })
    .unwrap_or_else(|| {
        format!(
            "{} components",
            o["component"].as_array().map(Vec::len).unwrap_or(0)
        )
    })
}
