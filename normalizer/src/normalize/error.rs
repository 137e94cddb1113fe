//! Per-event errors: [`NormalizeError`], naming the reference's exception type, the template,
//! the expression field and the value involved.

use serde::Serialize;

use crate::doc::Doc;
use crate::template::{ContentTemplate, Expression, TemplateKind};

/// The reference's exception type for a per-event error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    /// The event body is not JSON (or not usable as a document).
    InvalidDataFormatException,
    /// The data does not satisfy the template.
    IncompatibleDataException,
}

impl ErrorType {
    /// The name as the reference spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidDataFormatException => "InvalidDataFormatException",
            ErrorType::IncompatibleDataException => "IncompatibleDataException",
        }
    }
}

/// Which template an error came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Index in the collection.
    pub index: usize,
    /// Template kind.
    pub kind: TemplateKind,
    /// `typeName`.
    pub type_name: String,
}

/// Why one event could not be normalized. The event is skipped; nothing else stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct NormalizeError {
    /// The reference's exception type.
    #[serde(rename = "type")]
    pub error_type: ErrorType,
    /// The reference's message text (e.g. `Unable to extract required value for [hr] ...`).
    pub reason: String,
    /// The full message: reason plus the template, field and value involved.
    pub message: String,
    /// Which template, field, expression and value were involved.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub context: Option<Box<ErrorContext>>,
}

/// Where an evaluation error happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorContext {
    /// The template.
    pub template: TemplateRef,
    /// The expression field (`DeviceIdExpression`, ...) or value name involved.
    pub field: String,
    /// The expression text involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// The offending value (truncated), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl NormalizeError {
    /// An event whose body is not valid JSON.
    pub fn invalid_format(detail: impl std::fmt::Display) -> Self {
        let reason = format!("The event body is not valid JSON: {detail}");
        NormalizeError {
            error_type: ErrorType::InvalidDataFormatException,
            message: reason.clone(),
            reason,
            context: None,
        }
    }

    pub(super) fn incompatible(
        t: &ContentTemplate,
        field: &str,
        expr: Option<&Expression>,
        value: Option<String>,
        reason: String,
    ) -> Self {
        let mut message = format!(
            "{reason} [{} template {} '{}'",
            t.kind.as_str(),
            t.index,
            t.type_name
        );
        if let Some(e) = expr {
            message.push_str(&format!(", expression {:?}", e.source));
        }
        if let Some(v) = &value {
            message.push_str(&format!(", value {v:?}"));
        }
        message.push(']');
        NormalizeError {
            error_type: ErrorType::IncompatibleDataException,
            reason,
            message,
            context: Some(Box::new(ErrorContext {
                template: TemplateRef {
                    index: t.index,
                    kind: t.kind,
                    type_name: t.type_name.to_string(),
                },
                field: field.to_string(),
                expression: expr.map(|e| e.source.clone()),
                value,
            })),
        }
    }

    /// The reference's exception type name.
    pub fn type_name(&self) -> &'static str {
        self.error_type.as_str()
    }
}

pub(super) fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

pub(super) fn describe(v: &Doc<'_>) -> String {
    match v {
        Doc::String(s) => shorten(s),
        other => shorten(&other.to_string()),
    }
}
