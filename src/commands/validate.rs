//! `iomt validate`: checks mapping templates (`--device-mapping`, `--fhir-mapping`) or a
//! service config and the mappings it names (`--config`); exit 0 when valid, 1 with every
//! error otherwise, as text or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::ValueEnum;
use serde_json::{json, Value};

use super::templates::{read_text, report, TemplateProblem};

/// `iomt validate` options.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Device-mapping template (CollectionContent).
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    device_mapping: Option<PathBuf>,
    /// A service config: checks it and both mappings it names.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["device_mapping", "fhir_mapping"])]
    config: Option<PathBuf>,
    /// FHIR-mapping template (CollectionFhir).
    #[arg(long, value_name = "FILE")]
    fhir_mapping: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// How `validate` prints its findings.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// Runs `iomt validate`.
pub fn run(args: ValidateArgs) -> Result<ExitCode> {
    match (args.device_mapping, args.config) {
        (Some(device_mapping), _) => {
            mappings(&device_mapping, args.fhir_mapping.as_deref(), args.format)
        }
        (None, Some(config)) => service_config(&config, args.format),
        (None, None) => anyhow::bail!("give --device-mapping or --config"),
    }
}

fn exit_code(valid: bool) -> ExitCode {
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn mappings(
    device_mapping: &Path,
    fhir_mapping: Option<&Path>,
    format: Format,
) -> Result<ExitCode> {
    let loaded = normalizer::load_device_mapping(&read_text(device_mapping)?);
    let fhir = match fhir_mapping {
        Some(p) => Some((p, fhir_writer::FhirTemplates::load(&read_text(p)?))),
        None => None,
    };
    let fhir_errors = fhir.as_ref().map(|(_, (_, e))| e.len()).unwrap_or(0);
    let valid = loaded.errors.is_empty() && fhir_errors == 0;
    let stdout = &mut std::io::stdout().lock();
    match format {
        Format::Json => {
            let mut errors: Vec<Value> = loaded
                .errors
                .iter()
                .map(|e| e.record(device_mapping))
                .collect::<Result<_>>()?;
            if let Some((p, (_, errs))) = &fhir {
                for e in errs {
                    errors.push(e.record(p)?);
                }
            }
            let mut report = json!({
                "valid": valid,
                "deviceMapping": {"file": device_mapping.display().to_string(), "templates": loaded.mapping.templates.len()},
                "errors": errors,
            });
            if let Some((p, (t, _))) = &fhir {
                report["fhirMapping"] =
                    json!({"file": p.display().to_string(), "templates": t.templates().len()});
            }
            writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        Format::Text => {
            for line in report(device_mapping, &loaded.errors) {
                writeln!(stdout, "{line}")?;
            }
            if let Some((p, (_, errs))) = &fhir {
                for line in report(p, errs) {
                    writeln!(stdout, "{line}")?;
                }
            }
            if valid {
                writeln!(
                    stdout,
                    "{}: valid ({} templates)",
                    device_mapping.display(),
                    loaded.mapping.templates.len()
                )?;
                if let Some((p, (t, _))) = &fhir {
                    writeln!(
                        stdout,
                        "{}: valid ({} templates)",
                        p.display(),
                        t.templates().len()
                    )?;
                }
            } else {
                writeln!(stdout, "{} error(s)", loaded.errors.len() + fhir_errors)?;
            }
        }
    }
    Ok(exit_code(valid))
}

fn service_config(path: &Path, format: Format) -> Result<ExitCode> {
    let result = pipeline::validate(path);
    let stdout = &mut std::io::stdout().lock();
    let errors = result.as_ref().err().cloned().unwrap_or_default();
    match format {
        Format::Json => writeln!(
            stdout,
            "{}",
            serde_json::to_string_pretty(&json!({"valid": errors.is_empty(), "errors": errors}))?
        )?,
        Format::Text => {
            for e in &errors {
                writeln!(stdout, "{e}")?;
            }
            if errors.is_empty() {
                writeln!(stdout, "{}: valid", path.display())?;
            } else {
                writeln!(stdout, "{} error(s)", errors.len())?;
            }
        }
    }
    Ok(exit_code(errors.is_empty()))
}
