//! The folder `iomt import medtech` writes per connector: both mappings, a `config.toml` with
//! what could be resolved and named placeholders for the rest.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{fhir_url, Connector, Field};
use crate::commands::templates::{read_text, report};

pub(super) fn folder_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A required text value, or its placeholder (and the problem on stderr).
pub(super) fn text_or(field: &Field, placeholder: &str, problems: &mut Vec<String>) -> String {
    match field {
        Ok(Value::String(s)) => s.clone(),
        Ok(other) => {
            problems.push(format!("expected a string, found {other}"));
            placeholder.to_string()
        }
        Err(e) => {
            problems.push(e.to_string());
            placeholder.to_string()
        }
    }
}

/// Writes one connector's folder, validates it and prints what is still to fill in; false
/// when a required value is missing or a mapping is invalid.
pub(super) fn write_connector(c: &Connector, dir: &Path) -> Result<bool> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut problems = Vec::new();
    let event_hub = text_or(&c.event_hub, "<fill in: event hub name>", &mut problems);
    let namespace = text_or(
        &c.namespace,
        "<fill in: namespace>.servicebus.windows.net",
        &mut problems,
    );
    let consumer_group = text_or(
        &c.consumer_group,
        "<fill in: consumer group>",
        &mut problems,
    );
    let (resolution, url, fhir_mapping) = match c.destinations.as_slice() {
        [] => {
            problems.push(format!(
                "{}: MedTech service {:?} has no FHIR destination in the files given (import its fhirdestinations resource too)",
                c.file.display(),
                c.name
            ));
            (
                "Lookup".to_string(),
                "<fill in: FHIR service URL>".to_string(),
                None,
            )
        }
        [d, rest @ ..] => {
            for extra in rest {
                eprintln!(
                    "warning: {}: FHIR destination {:?} ignored: a MedTech service has one",
                    c.name, extra.name
                );
            }
            let resolution = text_or(&d.resolution, "Lookup", &mut problems);
            let url = match &d.fhir_service {
                Ok(Value::String(id)) => match fhir_url(id) {
                    Some(u) => u,
                    None => {
                        problems.push(format!(
                            "fhirServiceResourceId {id:?}: no FHIR URL derivable; set [fhir] url"
                        ));
                        "<fill in: FHIR service URL>".to_string()
                    }
                },
                other => text_or(other, "<fill in: FHIR service URL>", &mut problems),
            };
            (resolution, url, Some(&d.fhir_mapping))
        }
    };
    let device_path = dir.join("devicecontent.json");
    let fhir_path = dir.join("fhirmapping.json");
    let config_path = dir.join("config.toml");
    let mut valid = true;
    let mut lines = Vec::new();
    match &c.device_mapping {
        Ok(v) => {
            std::fs::write(&device_path, serde_json::to_string_pretty(v)? + "\n")?;
            let loaded = normalizer::load_device_mapping(&read_text(&device_path)?);
            lines.extend(report(&device_path, &loaded.errors));
            valid &= loaded.errors.is_empty();
            if loaded.errors.is_empty() {
                lines.push(format!(
                    "{}: valid ({} templates)",
                    device_path.display(),
                    loaded.mapping.templates.len()
                ));
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    match fhir_mapping {
        Some(Ok(v)) => {
            std::fs::write(&fhir_path, serde_json::to_string_pretty(v)? + "\n")?;
            let (t, errors) = fhir_writer::FhirTemplates::load(&read_text(&fhir_path)?);
            lines.extend(report(&fhir_path, &errors));
            valid &= errors.is_empty();
            if errors.is_empty() {
                lines.push(format!(
                    "{}: valid ({} templates)",
                    fhir_path.display(),
                    t.templates().len()
                ));
            }
        }
        Some(Err(e)) => problems.push(e.to_string()),
        None => {}
    }
    let mut toml = String::new();
    writeln!(
        toml,
        "# Imported by `iomt import medtech` from {}: MedTech service {:?}.",
        c.file.display(),
        c.name
    )?;
    writeln!(toml, "# Values in <angle brackets> are still to fill in; check with: iomt validate --config config.toml")?;
    writeln!(toml, "\n[templates]\ndevice_mapping = \"devicecontent.json\"\nfhir_mapping = \"fhirmapping.json\"")?;
    writeln!(toml, "\n[fhir]\nurl = {}", toml_str(&url))?;
    writeln!(
        toml,
        "# MedTech's resourceIdentityResolutionType.\nresolution = {}",
        toml_str(&resolution)
    )?;
    writeln!(toml, "\n# MedTech signed in with its managed identity; here an app registration (or use kind = \"bearer\").")?;
    writeln!(toml, "[fhir.auth]\nkind = \"client_credentials\"")?;
    writeln!(
        toml,
        "token_url = \"https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token\""
    )?;
    writeln!(
        toml,
        "client_id = \"<client-id>\"\nclient_secret_env = \"IOMT_FHIR_CLIENT_SECRET\""
    )?;
    writeln!(toml, "scope = {}", toml_str(&format!("{url}/.default")))?;
    writeln!(toml, "\n# MedTech's ingestionEndpointConfiguration. To run beside MedTech, use a consumer group of your own.")?;
    writeln!(toml, "[source]\nkind = \"event_hubs\"")?;
    writeln!(toml, "fully_qualified_namespace = {}", toml_str(&namespace))?;
    writeln!(toml, "event_hub = {}", toml_str(&event_hub))?;
    writeln!(toml, "consumer_group = {}", toml_str(&consumer_group))?;
    writeln!(toml, "checkpoint_dir = \"eventhubs-checkpoints\"")?;
    writeln!(
        toml,
        "owner_id = {}",
        toml_str(&format!("iomt-{}-1", c.name))
    )?;
    writeln!(
        toml,
        "\n# Azure AD sign-in; the identity needs \"Azure Event Hubs Data Receiver\" on the hub."
    )?;
    writeln!(toml, "[source.credential]\nkind = \"client_secret\"\ntenant_id = \"<tenant-id>\"\nclient_id = \"<client-id>\"")?;
    writeln!(toml, "client_secret_env = \"IOMT_EVENTHUBS_CLIENT_SECRET\"")?;
    std::fs::write(&config_path, &toml)?;

    let stdout = &mut std::io::stdout().lock();
    use std::io::Write as _;
    writeln!(
        stdout,
        "{}: MedTech service {:?} from {}",
        dir.display(),
        c.name,
        c.file.display()
    )?;
    for l in &lines {
        writeln!(stdout, "  {l}")?;
    }
    match pipeline::config::Config::load(&config_path) {
        Ok(config) => {
            let left = config.validate();
            writeln!(stdout, "  still to fill in:")?;
            for (i, line) in toml.lines().enumerate() {
                if line.contains("\"<") || line.contains("/<") {
                    writeln!(stdout, "    {}:{}: {line}", config_path.display(), i + 1)?;
                }
            }
            for e in left {
                writeln!(stdout, "    {}: {e}", config_path.display())?;
            }
        }
        Err(e) => {
            problems.push(e);
        }
    }
    for p in &problems {
        eprintln!("{p}");
        writeln!(stdout, "  unresolved: {p}")?;
    }
    Ok(valid && problems.is_empty())
}
