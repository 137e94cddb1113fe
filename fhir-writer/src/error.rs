//! Errors: [`TemplateError`] (loading a FHIR mapping), [`MappingError`] (building one
//! Observation) and [`WriteError`] (one FHIR request). Each names the reference's exception type
//! through `type_name()`; a [`WriteError`] also says whether trying again later may succeed.

use std::time::Duration;

use serde::Serialize;

use crate::auth::AuthError;

/// Where in a template file something is: the one location type both template loaders use.
pub use normalizer::location::Location;

/// A problem in a FHIR mapping (`CollectionFhir` / `CodeValueFhir`) found while loading it.
/// Loading reports every problem at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The file is not JSON.
    #[error("{at}: invalid JSON: {message}")]
    InvalidJson {
        /// What the parser found.
        message: String,
        /// Where.
        at: Location,
    },
    /// The container's `templateType` is not the expected one.
    #[error("{at}: expected templateType value {expected}, actual {actual}")]
    WrongTemplateType {
        /// The expected type, e.g. `CollectionFhirTemplate`.
        expected: String,
        /// What the file says.
        actual: String,
        /// Where.
        at: Location,
    },
    /// An entry of the collection has a template type no factory knows.
    #[error("{at}: no match found for template type {template_type}")]
    UnknownTemplateType {
        /// The entry's `templateType`.
        template_type: String,
        /// Where.
        at: Location,
    },
    /// A value has the wrong JSON type (e.g. `template` is not an array).
    #[error("{at}: expected {expected} for \"{member}\", found {found}")]
    WrongType {
        /// The member (or `template`).
        member: String,
        /// What was expected, e.g. `an array`.
        expected: String,
        /// What was found, e.g. `an object`.
        found: String,
        /// Where.
        at: Location,
    },
    /// A required member is missing or null.
    #[error("{at}: required member \"{member}\" is missing")]
    MissingMember {
        /// The member's name.
        member: String,
        /// The object that lacks it.
        at: Location,
    },
    /// A member the template type does not have.
    #[error("{at}: unknown member \"{member}\"")]
    UnknownMember {
        /// The member's name as written.
        member: String,
        /// Where the member name is.
        at: Location,
    },
    /// A value is of the right JSON type but not allowed.
    #[error("{at}: invalid value {value} for \"{member}\": {reason}")]
    InvalidValue {
        /// The member.
        member: String,
        /// The value as written.
        value: String,
        /// Why it is not allowed.
        reason: String,
        /// Where.
        at: Location,
    },
    /// Two templates have the same `typeName` (compared case-insensitively).
    #[error("{at}: duplicate template defined for type name '{type_name}'")]
    DuplicateTypeName {
        /// The repeated type name.
        type_name: String,
        /// Where the second one is.
        at: Location,
    },
    /// A template's `typeName` is empty or whitespace.
    #[error("{at}: empty type name is not allowed")]
    EmptyTypeName {
        /// Where.
        at: Location,
    },
    /// A `valueType` that is not SampledData, Quantity, String or CodeableConcept.
    #[error(
        "{at}: unknown valueType \"{value_type}\" (expected SampledData, Quantity, String or \
         CodeableConcept)"
    )]
    UnknownValueType {
        /// The value type as written.
        value_type: String,
        /// Where.
        at: Location,
    },
}

impl TemplateError {
    /// The reference's exception name (MedTech log type) for template problems.
    pub fn type_name(&self) -> &'static str {
        "InvalidTemplateException"
    }

    /// Where the problem is.
    /// The error as a report line for `file`: `file:L:C: at /pointer: message`, the location
    /// once, in the form editors and terminals link to (the CLI, `validate` and the service
    /// all print it so).
    pub fn report_for(&self, file: &std::path::Path) -> String {
        let at = self.location();
        let text = self.to_string();
        let message = text
            .strip_prefix(&format!("{at}: "))
            .unwrap_or(&text)
            .to_string();
        let pointer = if at.pointer.is_empty() {
            "(root)"
        } else {
            &at.pointer
        };
        format!(
            "{}:{}:{}: at {pointer}: {message}",
            file.display(),
            at.line,
            at.column
        )
    }

    /// Where in the template the error is.
    pub fn location(&self) -> &Location {
        match self {
            TemplateError::InvalidJson { at, .. }
            | TemplateError::WrongTemplateType { at, .. }
            | TemplateError::UnknownTemplateType { at, .. }
            | TemplateError::WrongType { at, .. }
            | TemplateError::MissingMember { at, .. }
            | TemplateError::UnknownMember { at, .. }
            | TemplateError::InvalidValue { at, .. }
            | TemplateError::DuplicateTypeName { at, .. }
            | TemplateError::EmptyTypeName { at }
            | TemplateError::UnknownValueType { at, .. } => at,
        }
    }

    /// A serializable record for `iomt validate --format json`.
    pub fn to_record(&self) -> TemplateErrorRecord {
        let at = self.location();
        TemplateErrorRecord {
            error_type: self.type_name(),
            message: self.to_string(),
            pointer: at.pointer.clone(),
            line: at.line,
            column: at.column,
        }
    }
}

/// [`TemplateError`] as printed by the CLI (camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateErrorRecord {
    /// The reference's exception name.
    #[serde(rename = "type")]
    pub error_type: &'static str,
    /// Human message including position.
    pub message: String,
    /// JSON pointer.
    pub pointer: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Why one observation group could not become an Observation. The rest of the batch still maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No FHIR template has the measurement's type.
    #[error("no FHIR mapping template has typeName \"{type_name}\" (measurement of device \"{device_id}\")")]
    TemplateNotFound {
        /// The measurement type.
        type_name: String,
        /// The device.
        device_id: String,
    },
    /// The template groups by correlation id (periodInterval -1) but the measurement has none.
    #[error(
        "FHIR template \"{type_name}\" groups by correlation id (periodInterval -1) but the \
         measurement of device \"{device_id}\" has no correlation id"
    )]
    CorrelationIdNotDefined {
        /// The template / measurement type.
        type_name: String,
        /// The device.
        device_id: String,
    },
    /// A Quantity value is not a decimal number.
    #[error(
        "FHIR template \"{template}\": value \"{value}\" of \"{value_name}\" is not a valid \
         Quantity value (expected a decimal number)"
    )]
    InvalidQuantityValue {
        /// The template's typeName.
        template: String,
        /// The template value's valueName.
        value_name: String,
        /// The offending value.
        value: String,
    },
    /// The existing Observation has a shape the merge cannot handle (e.g. a value of another
    /// type than the template's, or SampledData with more than one dimension).
    #[error("FHIR template \"{template}\": cannot merge into the existing Observation: {reason}")]
    NotSupported {
        /// The template's typeName.
        template: String,
        /// What is wrong.
        reason: String,
    },
    /// The SampledData stream would exceed the size limit.
    #[error(
        "FHIR template \"{template}\": SampledData for \"{value_name}\" would need {slots} slots \
         (limit {limit})"
    )]
    TooManySamples {
        /// The template's typeName.
        template: String,
        /// The value's valueName.
        value_name: String,
        /// Slots needed.
        slots: u64,
        /// The limit.
        limit: u64,
    },
}

impl MappingError {
    /// The reference's exception name.
    pub fn type_name(&self) -> &'static str {
        match self {
            MappingError::TemplateNotFound { .. } => "TemplateNotFoundException",
            MappingError::CorrelationIdNotDefined { .. } => "CorrelationIdNotDefinedException",
            MappingError::InvalidQuantityValue { .. } => "InvalidQuantityFhirValueException",
            MappingError::NotSupported { .. } => "NotSupportedException",
            MappingError::TooManySamples { .. } => "FhirDataMappingException",
        }
    }
}

/// Why a FHIR request failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A final (non-retryable) answer, e.g. 400 or 422, with the OperationOutcome text.
    #[error("{method} {url} was rejected with HTTP {status}: {outcome}")]
    Rejected {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// The OperationOutcome's text, or the body.
        outcome: String,
    },
    /// 409 or 412: the resource changed under us.
    #[error("{method} {url}: version conflict (HTTP {status})")]
    Conflict {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Status (409 or 412).
        status: u16,
    },
    /// Transient failures until the retry deadline.
    #[error("{method} {url}: gave up after {attempts} attempts in {elapsed:?}; last: {last}")]
    GaveUp {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last failure.
        last: String,
    },
    /// No token could be had.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The server answered something that is not FHIR JSON.
    #[error("{url}: invalid response: {detail}")]
    InvalidResponse {
        /// URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
}

impl WriteError {
    /// The reference's exception name (the `type` of the error record and the `error_type`
    /// metric label).
    pub fn type_name(&self) -> &'static str {
        match self {
            WriteError::Rejected { .. } | WriteError::InvalidResponse { .. } => {
                "FhirServiceException"
            }
            WriteError::Conflict { .. } => "FhirResourceConflictException",
            WriteError::GaveUp { .. } | WriteError::Auth(_) => "FhirServiceUnavailableException",
        }
    }

    /// Whether the failure is final for this data (a rejection), rather than the server being
    /// unavailable.
    pub fn is_rejection(&self) -> bool {
        match self {
            WriteError::Rejected { .. } | WriteError::InvalidResponse { .. } => true,
            WriteError::Conflict { .. } | WriteError::GaveUp { .. } | WriteError::Auth(_) => false,
        }
    }

    /// Whether trying again later may succeed: the server was unavailable, no token could be
    /// had, or other writers kept changing the resource. The opposite of a rejection, where
    /// the data or the configuration is wrong.
    pub fn is_retryable(&self) -> bool {
        !self.is_rejection()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_error_has_its_type_name_and_retryability() {
        let method = || "PUT".to_string();
        let url = || "Observation/1".to_string();
        let table: [(WriteError, &str, bool); 5] = [
            (
                WriteError::Rejected {
                    method: method(),
                    url: url(),
                    status: 422,
                    outcome: "invalid".into(),
                },
                "FhirServiceException",
                false,
            ),
            (
                WriteError::InvalidResponse {
                    url: url(),
                    detail: "not JSON".into(),
                },
                "FhirServiceException",
                false,
            ),
            (
                WriteError::Conflict {
                    method: method(),
                    url: url(),
                    status: 412,
                },
                "FhirResourceConflictException",
                true,
            ),
            (
                WriteError::GaveUp {
                    method: method(),
                    url: url(),
                    attempts: 3,
                    elapsed: Duration::from_secs(5),
                    last: "HTTP 503".into(),
                },
                "FhirServiceUnavailableException",
                true,
            ),
            (
                WriteError::Auth(AuthError::Refused {
                    url: "https://login.example/token".into(),
                    status: 401,
                    body: "invalid_client".into(),
                }),
                "FhirServiceUnavailableException",
                true,
            ),
        ];
        for (error, type_name, retryable) in table {
            assert_eq!(error.type_name(), type_name, "{error}");
            assert_eq!(error.is_retryable(), retryable, "{error}");
            assert_eq!(error.is_rejection(), !retryable, "{error}");
        }
    }
}
