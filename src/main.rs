//! `iomt`: the IoMT connector's command line.
//!
//! See `docs/CLI.md` and DESIGN.md's command-line contract.

mod events;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use normalizer::{load_device_mapping, Normalizer, TemplateError};

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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check mapping templates; exit 0 when valid, 1 with every error otherwise.
    Validate {
        /// Device-mapping template (CollectionContent).
        #[arg(long, value_name = "FILE")]
        device_mapping: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Normalize device messages into measurements (prints JSON).
    Normalize {
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate {
            device_mapping,
            format,
        } => validate(&device_mapping, format),
        Command::Normalize {
            device_mapping,
            input,
            events,
            document,
            skip_invalid_templates,
        } => normalize(
            &device_mapping,
            input.as_deref(),
            events.as_deref(),
            document,
            skip_invalid_templates,
        ),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn error_json(file: &Path, e: &TemplateError) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    v["file"] = json!(file.display().to_string());
    v
}

fn print_template_errors(file: &Path, errors: &[TemplateError], out: &mut dyn Write) -> Result<()> {
    for e in errors {
        writeln!(out, "{}:{e}", file.display())?;
    }
    Ok(())
}

fn validate(device_mapping: &Path, format: Format) -> Result<ExitCode> {
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    let valid = loaded.errors.is_empty();
    let stdout = &mut std::io::stdout().lock();
    match format {
        Format::Json => {
            let errors: Vec<Value> = loaded
                .errors
                .iter()
                .map(|e| error_json(device_mapping, e))
                .collect();
            let report = json!({
                "valid": valid,
                "deviceMapping": {"file": device_mapping.display().to_string(), "templates": loaded.mapping.templates.len()},
                "errors": errors,
            });
            writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        Format::Text => {
            print_template_errors(device_mapping, &loaded.errors, stdout)?;
            if valid {
                writeln!(
                    stdout,
                    "{}: valid ({} templates)",
                    device_mapping.display(),
                    loaded.mapping.templates.len()
                )?;
            } else {
                writeln!(stdout, "{} error(s)", loaded.errors.len())?;
            }
        }
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn normalize(
    device_mapping: &Path,
    input: Option<&Path>,
    events: Option<&Path>,
    document: bool,
    skip_invalid: bool,
) -> Result<ExitCode> {
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    if !loaded.errors.is_empty() {
        print_template_errors(
            device_mapping,
            &loaded.errors,
            &mut std::io::stderr().lock(),
        )?;
        if !skip_invalid {
            eprintln!(
                "{}: the device mapping is invalid ({} error(s)); nothing was normalized",
                device_mapping.display(),
                loaded.errors.len()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let normalizer = Normalizer::new(loaded.mapping);
    let events = match (input, events) {
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
    let mut measurements = Vec::new();
    let mut errors = Vec::new();
    let mut dropped = Vec::new();
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
            Ok(ms) if ms.is_empty() => dropped.push(i),
            Ok(ms) => {
                for m in ms {
                    let mut v = serde_json::to_value(&m)?;
                    v["event"] = json!(i);
                    measurements.push(v);
                }
            }
            Err(e) => {
                let mut v = serde_json::to_value(&e)?;
                v["event"] = json!(i);
                errors.push(v);
            }
        }
    }
    let report = json!({"measurements": measurements, "errors": errors, "dropped": dropped});
    let stdout = &mut std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(ExitCode::SUCCESS)
}
