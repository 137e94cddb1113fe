//! `iomt validate`: checks mapping templates (`--device-mapping`, `--fhir-mapping`) or a
//! service config and the mappings it names (`--config`); exit 0 when valid, 1 with every
//! error otherwise, as text or JSON.
//!
//! A FHIR mapping's vital-sign templates are also checked against the R4 vital-signs profile
//! ([`fhir_writer::vital_signs`]): warnings that do not change the exit code, or errors with
//! `--profile vital-signs`.

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
    /// Hold the FHIR mapping to a profile: its findings become errors (without it they are
    /// warnings).
    #[arg(long, value_enum, value_name = "PROFILE")]
    profile: Option<Profile>,
}

/// A profile `validate --profile` holds FHIR mappings to.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Profile {
    /// The FHIR R4 vital-signs profile and its per-vital profiles.
    VitalSigns,
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
            let strict = args.profile == Some(Profile::VitalSigns);
            mappings(
                &device_mapping,
                args.fhir_mapping.as_deref(),
                args.format,
                strict,
            )
        }
        (None, Some(config)) => service_config(
            &config,
            args.format,
            args.profile == Some(Profile::VitalSigns),
        ),
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
    strict: bool,
) -> Result<ExitCode> {
    let loaded = normalizer::load_device_mapping(&read_text(device_mapping)?);
    let mut findings = Vec::new();
    let fhir = match fhir_mapping {
        Some(p) => {
            let text = read_text(p)?;
            findings = fhir_writer::vital_signs::check(&text);
            Some((p, fhir_writer::FhirTemplates::load(&text)))
        }
        None => None,
    };
    let severity = if strict { "error" } else { "warning" };
    let profile_errors = if strict { findings.len() } else { 0 };
    let fhir_errors = fhir.as_ref().map(|(_, (_, e))| e.len()).unwrap_or(0) + profile_errors;
    let valid = loaded.errors.is_empty() && fhir_errors == 0;
    let stdout = &mut std::io::stdout().lock();
    match format {
        Format::Json => {
            let mut errors: Vec<Value> = loaded
                .errors
                .iter()
                .map(|e| e.record(device_mapping))
                .collect::<Result<_>>()?;
            let mut warnings = Vec::new();
            if let Some((p, (_, errs))) = &fhir {
                for e in errs {
                    errors.push(e.record(p)?);
                }
                for f in &findings {
                    let record = profile_record(f, p, severity);
                    if strict {
                        errors.push(record);
                    } else {
                        warnings.push(record);
                    }
                }
            }
            let mut report = json!({
                "valid": valid,
                "deviceMapping": {"file": device_mapping.display().to_string(), "templates": loaded.mapping.templates.len()},
                "errors": errors,
                "warnings": warnings,
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
                for f in &findings {
                    writeln!(stdout, "{}", f.report_for(p, severity))?;
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

/// A vital-signs finding as `validate --format json` prints it.
fn profile_record(f: &fhir_writer::vital_signs::Finding, file: &Path, severity: &str) -> Value {
    json!({
        "type": "VitalSignsProfile",
        "severity": severity,
        "templateTypeName": f.type_name,
        "message": f.to_string(),
        "pointer": f.at.pointer,
        "line": f.at.line,
        "column": f.at.column,
        "file": file.display().to_string(),
    })
}

/// A service config and its mappings, plus the vital-signs findings of the FHIR mapping it
/// names (warnings, or errors when `strict`).
fn service_config(path: &Path, format: Format, strict: bool) -> Result<ExitCode> {
    let result = pipeline::validate(path);
    let stdout = &mut std::io::stdout().lock();
    let mut errors: Vec<String> = result.as_ref().err().cloned().unwrap_or_default();
    let severity = if strict { "error" } else { "warning" };
    let mut profile = Vec::new();
    if let Ok(config) = pipeline::config::Config::load(path) {
        let fm = &config.templates.fhir_mapping;
        if let Ok(text) = std::fs::read_to_string(fm) {
            for f in fhir_writer::vital_signs::check(&text) {
                profile.push((f.report_for(fm, severity), profile_record(&f, fm, severity)));
            }
        }
    }
    if strict {
        errors.extend(profile.iter().map(|(line, _)| line.clone()));
    }
    match format {
        Format::Json => {
            let warnings: Vec<&Value> = if strict {
                Vec::new()
            } else {
                profile.iter().map(|(_, r)| r).collect()
            };
            writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(
                    &json!({"valid": errors.is_empty(), "errors": errors, "warnings": warnings})
                )?
            )?
        }
        Format::Text => {
            for e in &errors {
                writeln!(stdout, "{e}")?;
            }
            if !strict {
                for (line, _) in &profile {
                    writeln!(stdout, "{line}")?;
                }
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
