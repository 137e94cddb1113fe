//! `iomt replay`: an events file through the full stage graph (the `pipeline` crate) into a
//! FHIR server as one batch — no spool, no dead-letter store (failures are reported) — then
//! the `map` report with `observations` being what was written, plus counts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::fhir::FhirArgs;
use super::normalize::measurement_json;
use super::templates::{load_fhir_mapping, load_normalizer};
use crate::events;

/// `iomt replay` options.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Device-mapping template (CollectionContent).
    #[arg(long, value_name = "FILE")]
    device_mapping: PathBuf,
    /// FHIR-mapping template (CollectionFhir).
    #[arg(long, value_name = "FILE")]
    fhir_mapping: PathBuf,
    /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
    #[arg(long, value_name = "FILE")]
    events: PathBuf,
    #[command(flatten)]
    fhir: FhirArgs,
}

/// Runs `iomt replay`.
pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    super::init_cli_logging();
    let Some(normalizer) = load_normalizer(&args.device_mapping, false)? else {
        return Ok(ExitCode::from(1));
    };
    let Some(templates) = load_fhir_mapping(&args.fhir_mapping)? else {
        return Ok(ExitCode::from(1));
    };
    let events = events::read_events(&args.events)?;
    let templates = Arc::new(templates);
    let writer = Arc::new(args.fhir.writer(templates.clone())?);
    let started = Instant::now();
    let runtime = super::runtime()?;
    // The events file as a source: one pass through the stage graph, no spool, no dead-letter
    // store (failures are reported), everything flushed when the file ends.
    let pipeline = pipeline::Pipeline::from_parts(
        normalizer,
        templates,
        writer.clone(),
        pipeline::config::PipelineConfig::default(),
        Arc::new(pipeline::metrics::Metrics::default()),
        None,
    )
    .with_options(pipeline::RunOptions {
        report: true,
        retry_unavailable: false,
    });
    let incoming = events.len();
    let summary = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let feed = tokio::spawn(async move {
            for ev in events {
                let sent = tx
                    .send(pipeline::Input {
                        event: pipeline::Event {
                            ingestion_time: ev.ingestion_time(),
                            body: ev.body,
                            properties: ev.properties,
                            system_properties: ev.system_properties,
                            origin: "file".into(),
                        },
                        ack: sources::Ack::none(),
                    })
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        let (_never, shutdown) = tokio::sync::watch::channel(false);
        let (watermark, _) = tokio::sync::watch::channel(0);
        let summary = pipeline.run(rx, shutdown, watermark).await;
        let _ = feed.await;
        summary
    });
    // The replay's time: events in, everything written; not the report's assembly.
    let elapsed = started.elapsed();
    let out = report(
        summary.report.unwrap_or_default(),
        incoming,
        writer.client().stats(),
        writer.client().token_stats(),
        elapsed,
    )?;
    super::print_json(&out)
}

/// The printed report: the pipeline's records in event order, counts and the client's
/// request statistics.
fn report(
    mut report: pipeline::Report,
    incoming: usize,
    stats: &fhir_writer::client::ClientStats,
    tokens: &fhir_writer::auth::TokenStats,
    elapsed: Duration,
) -> Result<Value> {
    // Workers finish chunks in any order; the report is in event order.
    report.measurements.sort_by_key(|(seq, _)| *seq);
    let normalized = {
        let mut with: Vec<u64> = report.measurements.iter().map(|(s, _)| *s).collect();
        with.dedup();
        with.len()
    };
    let measurements: Vec<(usize, normalizer::Measurement)> =
        std::mem::take(&mut report.measurements)
            .into_iter()
            .map(|(seq, m)| (seq as usize, m))
            .collect();
    let mut errors: Vec<(u64, Value)> = Vec::new();
    for (seq, e) in &report.normalize_errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(seq);
        v["stage"] = json!("normalize");
        errors.push((*seq, v));
    }
    for (seq, message) in &report.too_large {
        errors.push((
            *seq,
            json!({"type": "PayloadTooLargeException", "message": message, "event": seq, "stage": "normalize"}),
        ));
    }
    errors.sort_by_key(|(seq, _)| *seq);
    let mut errors: Vec<Value> = errors.into_iter().map(|(_, v)| v).collect();
    let report_write = report.write;
    for e in &report_write.errors {
        let mut v = serde_json::to_value(e)?;
        v["event"] = json!(e.events.first());
        v["stage"] = json!("fhir");
        errors.push(v);
    }
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    for e in &errors {
        *by_type
            .entry(e["type"].as_str().unwrap_or("Unknown").to_string())
            .or_default() += 1;
    }
    let mut dropped = report.dropped.clone();
    dropped.sort_unstable();
    let mut out = json!({
        "measurements": measurement_json(&measurements)?,
        "errors": errors,
        "dropped": dropped,
        "incoming": incoming,
        "normalized": normalized,
        "errorsByType": by_type,
        "observationsCreated": report_write.observations_created,
        "observationsUpdated": report_write.observations_updated,
        "observationsUnchanged": report_write.observations_unchanged,
        "fhirRequests": stats.requests.load(Ordering::Relaxed),
        "fhirRetries": stats.retries.load(Ordering::Relaxed),
        "fhirBundles": stats.bundles.load(Ordering::Relaxed),
        "fhirTokens": {
            "issued": tokens.issued.load(Ordering::Relaxed),
            "reused": tokens.reused.load(Ordering::Relaxed),
            "refreshedAfter401": tokens.refreshed_after_401.load(Ordering::Relaxed),
            "refused": tokens.refused.load(Ordering::Relaxed),
        },
        "elapsedMs": elapsed.as_millis() as u64,
    });
    // Moved in, not through `json!` (which would copy every Observation).
    out["observations"] = Value::Array(report_write.observations);
    Ok(out)
}
