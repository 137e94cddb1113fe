//! What a token endpoint answers: a token with its expiry ([`TokenResponse`], [`seconds`]), or
//! an error with Entra's code and description ([`error_details`]), made into a
//! [`CredentialError`] with every secret cut out ([`redact`]).

use serde::Deserialize;
use serde_json::Value;

/// Why no token could be had. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The request cannot be made (e.g. several scopes for a managed identity).
    #[error("{flow}: {reason}")]
    Request {
        /// [`CredentialSettings::describe`](super::CredentialSettings::describe).
        flow: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint could not be reached or did not answer in time.
    #[error("{flow}: no answer from {url}: {reason}")]
    Unreachable {
        /// [`CredentialSettings::describe`](super::CredentialSettings::describe).
        flow: String,
        /// The endpoint.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The endpoint refused: an HTTP error status, with Entra's error code and description
    /// when it sent them.
    #[error("{flow}: {url} answered HTTP {status}{}", details(.code, .description))]
    Refused {
        /// [`CredentialSettings::describe`](super::CredentialSettings::describe).
        flow: String,
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// `error` (e.g. `invalid_client`).
        code: Option<String>,
        /// `error_description` (e.g. `AADSTS7000215: Invalid client secret provided. ...`).
        description: Option<String>,
    },
    /// A success status without a usable token.
    #[error("{flow}: {url} answered HTTP {status} without a usable token: {reason}")]
    BadResponse {
        /// [`CredentialSettings::describe`](super::CredentialSettings::describe).
        flow: String,
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// What is missing.
        reason: String,
    },
}

fn details(code: &Option<String>, description: &Option<String>) -> String {
    match (code, description) {
        (Some(c), Some(d)) => format!(": {c}: {d}"),
        (Some(c), None) => format!(": {c}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl CredentialError {
    /// True when asking again will not help until an operator acts: the endpoint refused the
    /// request itself (400, 401, 403: wrong tenant, client id, secret or identity), or it
    /// cannot be made. Unreachable endpoints, 404 (IMDS while it starts), 408, 429 and 5xx
    /// are worth retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            CredentialError::Request { .. } => true,
            CredentialError::Refused { status, .. } => matches!(status, 400 | 401 | 403),
            CredentialError::Unreachable { .. } | CredentialError::BadResponse { .. } => false,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds (a number from Entra ID, a string from IMDS).
    #[serde(default)]
    pub expires_in: Option<Value>,
    /// Unix seconds (a string from managed-identity endpoints).
    #[serde(default)]
    pub expires_on: Option<Value>,
}

pub(super) fn seconds(v: &Option<Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Replaces every secret in `text`, and keeps at most 500 characters.
pub(super) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "<redacted>");
    }
    if out.chars().count() > 500 {
        out = out.chars().take(500).collect::<String>() + "...";
    }
    out
}

/// `error` / `error_description` of an OAuth2 error answer, or the App Service shapes
/// (`{"error": {"code", "message"}}`, `{"message"}`), or the start of a non-JSON body.
pub(super) fn error_details(body: &str) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => {
            let (code, nested) = match m.get("error") {
                Some(Value::Object(e)) => (text(e.get("code")), text(e.get("message"))),
                other => (text(other), None),
            };
            let description = text(m.get("error_description"))
                .or(nested)
                .or_else(|| text(m.get("message")))
                .or_else(|| text(m.get("Message")));
            (code, description)
        }
        _ => {
            let t = body.trim();
            (None, (!t.is_empty()).then(|| t.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_give_an_expiry_from_expires_in_or_expires_on() {
        assert_eq!(seconds(&Some(serde_json::json!(3599))), Some(3599));
        assert_eq!(seconds(&Some(serde_json::json!("86399"))), Some(86399));
        assert_eq!(seconds(&Some(serde_json::json!("soon"))), None);
        assert_eq!(seconds(&None), None);
    }

    #[test]
    fn error_answers_give_code_and_description() {
        assert_eq!(
            error_details(
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#
            ),
            (
                Some("invalid_client".into()),
                Some("AADSTS7000215: Invalid client secret provided.".into())
            )
        );
        assert_eq!(
            error_details(r#"{"error":{"code":"IdentityNotFound","message":"No identity."}}"#),
            (Some("IdentityNotFound".into()), Some("No identity.".into()))
        );
        assert_eq!(
            error_details(r#"{"statusCode":400,"message":"Bad resource."}"#),
            (None, Some("Bad resource.".into()))
        );
        assert_eq!(
            error_details("<html>gateway</html>"),
            (None, Some("<html>gateway</html>".into()))
        );
    }
}
