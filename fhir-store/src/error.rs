//! What can go wrong in the store, and how each failure is answered over HTTP.

use serde_json::{json, Value};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No current version of the resource.
    #[error("{resource_type}/{id} not found")]
    NotFound {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
    },
    /// The resource exists but not that version.
    #[error("version {version} of {resource_type}/{id} not found")]
    VersionNotFound {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// The version asked for.
        version: String,
    },
    /// `If-Match` named a version that is not the current one (HTTP 412).
    #[error("{resource_type}/{id}: If-Match names version {expected}, but the current version is {}", current.as_deref().unwrap_or("none (the resource does not exist)"))]
    VersionConflict {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// The version `If-Match` named.
        expected: String,
        /// The current version, if the resource exists.
        current: Option<String>,
    },
    /// A conditional request's condition does not hold (HTTP 412), e.g. `ifNoneExist` matching
    /// several resources.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The interaction is not one the store implements (HTTP 405).
    #[error("{0}")]
    NotSupported(String),
    /// Entry `index` of a transaction Bundle failed; the whole Bundle was rolled back.
    #[error("entry {index} of the transaction failed, nothing was written: {source}")]
    Entry {
        /// Its index in `Bundle.entry`.
        index: usize,
        /// Why it failed.
        source: Box<StoreError>,
    },
    /// The request is malformed: bad JSON, wrong `resourceType`, unknown search parameter, ...
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A stored resource could not be decoded (the database file was changed by hand?).
    #[error("stored resource {resource_type}/{id} is not valid JSON: {detail}")]
    Corrupt {
        /// Resource type.
        resource_type: String,
        /// Logical id.
        id: String,
        /// The decoder's message.
        detail: String,
    },
}

impl StoreError {
    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => 404,
            StoreError::VersionConflict { .. } | StoreError::PreconditionFailed(_) => 412,
            StoreError::NotSupported(_) => 405,
            StoreError::Entry { source, .. } => source.status(),
            StoreError::Invalid(_) => 400,
            StoreError::Database(_) | StoreError::Corrupt { .. } => 500,
        }
    }

    /// The FHIR `OperationOutcome` describing this failure.
    pub fn outcome(&self) -> Value {
        outcome("error", self.code(), &self.to_string())
    }

    /// The `OperationOutcome.issue.code` of this failure.
    fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => "not-found",
            StoreError::VersionConflict { .. } | StoreError::PreconditionFailed(_) => "conflict",
            StoreError::NotSupported(_) => "not-supported",
            StoreError::Entry { source, .. } => source.code(),
            StoreError::Invalid(_) => "invalid",
            StoreError::Database(_) | StoreError::Corrupt { .. } => "exception",
        }
    }
}

/// An `OperationOutcome` with one issue.
pub fn outcome(severity: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "details": {"text": text}, "diagnostics": text}]
    })
}
