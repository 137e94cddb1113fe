//! Loading the two mappings a command reads, with the one report of their errors: a line per
//! error, `file:line:column: … at /pointer: message` (the form editors and terminals link to),
//! or as JSON the error's record plus its `file`. `validate`, `normalize`, `map`,
//! `map --watch` and `replay` all report through [`report`] and [`TemplateProblem`].

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use normalizer::{load_device_mapping, Normalizer};

/// A template error of either mapping: the device mapping's ([`normalizer::TemplateError`])
/// or the FHIR mapping's ([`fhir_writer::TemplateError`]).
pub trait TemplateProblem {
    /// The report line for `file`: `file:line:column: … at /pointer: message`.
    fn report_line(&self, file: &Path) -> String;
    /// The record `validate --format json` prints: the error's fields plus `file`.
    fn record(&self, file: &Path) -> Result<Value>;
}

impl TemplateProblem for normalizer::TemplateError {
    fn report_line(&self, file: &Path) -> String {
        // The error's own text starts at `line:column:`.
        format!("{}:{self}", file.display())
    }

    fn record(&self, file: &Path) -> Result<Value> {
        with_file(serde_json::to_value(self)?, file)
    }
}

impl TemplateProblem for fhir_writer::TemplateError {
    fn report_line(&self, file: &Path) -> String {
        self.report_for(file)
    }

    fn record(&self, file: &Path) -> Result<Value> {
        with_file(serde_json::to_value(self.to_record())?, file)
    }
}

fn with_file(mut record: Value, file: &Path) -> Result<Value> {
    record["file"] = json!(file.display().to_string());
    Ok(record)
}

/// The report of `file`'s errors, a line each.
pub fn report<'a, E: TemplateProblem>(
    file: &'a Path,
    errors: &'a [E],
) -> impl Iterator<Item = String> + 'a {
    errors.iter().map(move |e| e.report_line(file))
}

/// Prints the report of an invalid mapping on stderr, then `file: the <what> is invalid (N
/// error(s))`.
fn refuse<E: TemplateProblem>(file: &Path, what: &str, errors: &[E]) {
    for line in report(file, errors) {
        eprintln!("{line}");
    }
    eprintln!(
        "{}: the {what} is invalid ({} error(s))",
        file.display(),
        errors.len()
    );
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Loads a device mapping; `None` (its errors reported on stderr) when it is invalid. With
/// `skip_invalid` the errors are reported and the valid templates run.
pub fn load_normalizer(device_mapping: &Path, skip_invalid: bool) -> Result<Option<Normalizer>> {
    let loaded = load_device_mapping(&read_text(device_mapping)?);
    if !loaded.errors.is_empty() {
        if !skip_invalid {
            refuse(device_mapping, "device mapping", &loaded.errors);
            return Ok(None);
        }
        for line in report(device_mapping, &loaded.errors) {
            eprintln!("{line}");
        }
    }
    Ok(Some(Normalizer::new(loaded.mapping)))
}

/// Loads a FHIR mapping; `None` (its errors reported on stderr) when it is invalid.
pub fn load_fhir_mapping(fhir_mapping: &Path) -> Result<Option<fhir_writer::FhirTemplates>> {
    let (templates, errors) = fhir_writer::FhirTemplates::load(&read_text(fhir_mapping)?);
    if errors.is_empty() {
        return Ok(Some(templates));
    }
    refuse(fhir_mapping, "FHIR mapping", &errors);
    Ok(None)
}
