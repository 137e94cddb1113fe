//! `iomt normalize`: device messages (one body, or an events file) into measurements, printed
//! as `{"measurements", "errors", "dropped"}`; every record carries the index of its event.
//! [`normalize_events`] is the first stage of `map` and `map --watch` too, and
//! [`measurement_json`] prints measurements for `map` and `replay`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use normalizer::Normalizer;

use super::templates::load_normalizer;
use crate::events;

/// `iomt normalize` options.
#[derive(clap::Args)]
pub struct NormalizeArgs {
    /// Device-mapping template (CollectionContent).
    #[arg(long, value_name = "FILE")]
    device_mapping: PathBuf,
    /// One device message (the body).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "events",
        required_unless_present = "events"
    )]
    input: Option<PathBuf>,
    /// A JSON array of events ({"body"|"bodyText", "properties", "systemProperties"}).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Treat the input as the whole document templates see (no envelope wrapping).
    #[arg(long)]
    document: bool,
    /// Run the valid templates of a mapping that has errors (as the reference's
    /// partially built collection does) instead of refusing it.
    #[arg(long)]
    skip_invalid_templates: bool,
}

/// Runs `iomt normalize`.
pub fn run(args: NormalizeArgs) -> Result<ExitCode> {
    let Some(normalizer) = load_normalizer(&args.device_mapping, args.skip_invalid_templates)?
    else {
        return Ok(ExitCode::from(1));
    };
    let events = match (&args.input, &args.events) {
        (Some(p), _) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let bytes = bytes
                .strip_prefix(b"\xEF\xBB\xBF")
                .map(<[u8]>::to_vec)
                .unwrap_or(bytes);
            vec![events::Event {
                body: bytes,
                ..Default::default()
            }]
        }
        (None, Some(p)) => events::read_events(p)?,
        (None, None) => anyhow::bail!("give --input or --events"),
    };
    let n = normalize_events(&normalizer, &events, args.document)?;
    let report = json!({"measurements": measurement_json(&n.measurements)?, "errors": n.errors, "dropped": n.dropped});
    super::print_json(&report)
}

/// Every event normalized; measurements carry their event index.
pub struct Normalized {
    /// Measurements with the index of their event.
    pub measurements: Vec<(usize, normalizer::Measurement)>,
    /// Error records (`NormalizeError` as JSON plus `event` and `stage`).
    pub errors: Vec<Value>,
    /// Indexes of the events that matched no template and raised no error.
    pub dropped: Vec<usize>,
}

/// Normalizes every event; with `document`, each body is the whole document templates see.
pub fn normalize_events(
    normalizer: &Normalizer,
    events: &[events::Event],
    document: bool,
) -> Result<Normalized> {
    let mut out = Normalized {
        measurements: Vec::new(),
        errors: Vec::new(),
        dropped: Vec::new(),
    };
    for (i, ev) in events.iter().enumerate() {
        let result = if document {
            match serde_json::from_slice::<Value>(&ev.body) {
                Ok(doc) => normalizer.normalize_document(&doc, ev.ingestion_time()),
                Err(e) => Err(normalizer::NormalizeError::invalid_format(e)),
            }
        } else {
            normalizer.normalize(
                &ev.body,
                &ev.properties,
                &ev.system_properties,
                ev.ingestion_time(),
            )
        };
        match result {
            Ok(ms) if ms.is_empty() => out.dropped.push(i),
            Ok(ms) => out.measurements.extend(ms.into_iter().map(|m| (i, m))),
            Err(e) => {
                let mut v = serde_json::to_value(&e)?;
                v["event"] = json!(i);
                v["stage"] = json!("normalize");
                out.errors.push(v);
            }
        }
    }
    Ok(out)
}

/// Measurements as JSON, each with its `event` index.
pub fn measurement_json(list: &[(usize, normalizer::Measurement)]) -> Result<Vec<Value>> {
    list.iter()
        .map(|(i, m)| {
            let mut v = serde_json::to_value(m)?;
            v["event"] = json!(i);
            Ok(v)
        })
        .collect()
}
