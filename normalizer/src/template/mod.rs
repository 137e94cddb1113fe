//! Loading device-mapping templates: `CollectionContent` of `JsonPathContent`,
//! `IotJsonPathContent`, `IotCentralJsonPathContent` and `CalculatedContent`.
//!
//! Loading collects every error (each with the template's index and type, a JSON
//! pointer and a line:column) and still builds the valid entries, as the reference does.
//! Expressions are compiled here, once.
//!
//! This module holds what loading produces (the compiled templates, [`TemplateError`],
//! [`Loaded`]); `load` holds the loader itself.

mod load;

pub use load::{load_content_template, load_device_mapping};

use std::sync::Arc;

use serde::Serialize;

use crate::jmespath_fallback::{self, JmesExpression};
use crate::jsonpath::JsonPath;
use crate::location::{LineCol, Location};

/// The kind of a content template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TemplateKind {
    /// `JsonPathContent`: JSONPath, all expressions relative to the matched token.
    JsonPathContent,
    /// `IotJsonPathContent`: device id and time implied by IoT Hub properties.
    IotJsonPathContent,
    /// `IotCentralJsonPathContent`: device id and time from an IoT Central export.
    IotCentralJsonPathContent,
    /// `CalculatedContent`: JSONPath or JMESPath against the document plus `matchedToken`.
    CalculatedContent,
}

impl TemplateKind {
    /// The type name as templates spell it (short form).
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::JsonPathContent => "JsonPathContent",
            TemplateKind::IotJsonPathContent => "IotJsonPathContent",
            TemplateKind::IotCentralJsonPathContent => "IotCentralJsonPathContent",
            TemplateKind::CalculatedContent => "CalculatedContent",
        }
    }

    /// The name the reference registers the factory under.
    fn registered(self) -> &'static str {
        match self {
            TemplateKind::JsonPathContent => "JsonPathContentTemplate",
            TemplateKind::IotJsonPathContent => "IotJsonPathContentTemplate",
            TemplateKind::IotCentralJsonPathContent => "IotCentralJsonPathContent",
            TemplateKind::CalculatedContent => "CalculatedContent",
        }
    }

    const ALL: [TemplateKind; 4] = [
        TemplateKind::JsonPathContent,
        TemplateKind::IotJsonPathContent,
        TemplateKind::IotCentralJsonPathContent,
        TemplateKind::CalculatedContent,
    ];
}

/// The reference's name rule: equal to the registered name, or equal to it once
/// "Template" is appended; case-insensitive.
fn name_matches(given: &str, registered: &str) -> bool {
    given.eq_ignore_ascii_case(registered)
        || format!("{given}Template").eq_ignore_ascii_case(registered)
}

/// An expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Language {
    /// Json.NET-dialect JSONPath.
    JsonPath,
    /// JMESPath with the custom functions.
    JmesPath,
}

impl Language {
    fn parse(s: &str) -> Option<Language> {
        if s.eq_ignore_ascii_case("JsonPath") {
            Some(Language::JsonPath)
        } else if s.eq_ignore_ascii_case("JmesPath") {
            Some(Language::JmesPath)
        } else {
            None
        }
    }
}

/// A compiled expression with where it came from.
#[derive(Debug, Clone)]
pub struct Expression {
    /// The expression text as written.
    pub source: String,
    /// Its language.
    pub language: Language,
    pub(crate) compiled: Compiled,
}

#[derive(Debug, Clone)]
pub(crate) enum Compiled {
    /// Empty text: an error when evaluated ("An expression must be set").
    Empty,
    JsonPath(JsonPath),
    JmesPath(Box<JmesExpression>),
}

impl Expression {
    fn compile(source: &str, language: Language) -> Result<Expression, String> {
        let compiled = if source.trim().is_empty() {
            Compiled::Empty
        } else {
            match language {
                Language::JsonPath => {
                    Compiled::JsonPath(JsonPath::compile(source).map_err(|e| e.to_string())?)
                }
                Language::JmesPath => Compiled::JmesPath(Box::new(
                    jmespath_fallback::compile(source)
                        .map_err(|e| format!("invalid JMESPath: {e}"))?,
                )),
            }
        };
        Ok(Expression {
            source: source.to_string(),
            language,
            compiled,
        })
    }

    fn fixed(path: &str) -> Expression {
        // Fixed, known-good paths of the IoT template kinds.
        let compiled = JsonPath::compile(path)
            .map(Compiled::JsonPath)
            .unwrap_or(Compiled::Empty);
        Expression {
            source: path.to_string(),
            language: Language::JsonPath,
            compiled,
        }
    }
}

/// One value of a template.
#[derive(Debug, Clone)]
pub struct ValueTemplate {
    /// `valueName`.
    pub name: Arc<str>,
    /// `valueExpression`.
    pub expression: Expression,
    /// `required`.
    pub required: bool,
}

/// One content template of the collection, compiled.
#[derive(Debug, Clone)]
pub struct ContentTemplate {
    /// Index in the collection.
    pub index: usize,
    /// Template kind.
    pub kind: TemplateKind,
    /// `typeName`.
    pub type_name: Arc<str>,
    /// `typeMatchExpression`.
    pub type_match: Expression,
    /// `deviceIdExpression` (or the implied one).
    pub device_id: Option<Expression>,
    /// `timestampExpression` (or the implied one).
    pub timestamp: Option<Expression>,
    /// IoT Hub's fallback when the creation time is missing.
    pub timestamp_fallback: Option<Expression>,
    /// `patientIdExpression`.
    pub patient_id: Option<Expression>,
    /// `encounterIdExpression`.
    pub encounter_id: Option<Expression>,
    /// `correlationIdExpression`.
    pub correlation_id: Option<Expression>,
    /// `values`.
    pub values: Vec<ValueTemplate>,
}

impl ContentTemplate {
    /// Whether any expression is JMESPath.
    pub fn uses_jmespath(&self) -> bool {
        let exprs = [
            Some(&self.type_match),
            self.device_id.as_ref(),
            self.timestamp.as_ref(),
            self.patient_id.as_ref(),
            self.encounter_id.as_ref(),
            self.correlation_id.as_ref(),
        ];
        exprs
            .into_iter()
            .flatten()
            .chain(self.values.iter().map(|v| &v.expression))
            .any(|e| e.language == Language::JmesPath)
    }
}

/// A loaded device mapping: the valid templates of the collection, in order.
#[derive(Debug, Clone, Default)]
pub struct DeviceMapping {
    /// The compiled templates.
    pub templates: Vec<ContentTemplate>,
}

/// One problem found while loading a template file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{}", self.display())]
pub struct TemplateError {
    /// Index of the template in the collection, if the error is inside one.
    pub template_index: Option<usize>,
    /// Its `templateType`, if known.
    pub template_type: Option<String>,
    /// JSON pointer of the offending element.
    pub pointer: String,
    /// Where it is in the file.
    pub line: usize,
    /// Where it is in the file (1-based, characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl TemplateError {
    /// Where the error is: its JSON pointer, line and column, as the shared
    /// [`Location`] that FHIR-mapping errors carry too.
    pub fn location(&self) -> Location {
        Location::new(
            self.pointer.clone(),
            LineCol {
                line: self.line,
                column: self.column,
            },
        )
    }

    fn display(&self) -> String {
        let at = match (&self.template_index, &self.template_type) {
            (Some(i), Some(t)) => format!("template {i} ({t}) "),
            (Some(i), None) => format!("template {i} "),
            _ => String::new(),
        };
        let ptr = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        format!(
            "{}:{}: {at}at {ptr}: {}",
            self.line, self.column, self.message
        )
    }
}

/// The result of loading: the usable templates and every error found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The valid templates (usable even when `errors` is not empty, as in the reference).
    pub mapping: DeviceMapping,
    /// Every error; the mapping is valid when this is empty.
    pub errors: Vec<TemplateError>,
}

impl Loaded {
    /// The mapping when it has no errors, or every error.
    pub fn into_result(self) -> Result<DeviceMapping, Vec<TemplateError>> {
        if self.errors.is_empty() {
            Ok(self.mapping)
        } else {
            Err(self.errors)
        }
    }
}
