//! Which flow, with which secrets, and where a managed identity's tokens come from
//! ([`ManagedIdentityEndpoint::select`]: the configured endpoint, else the environment, else the
//! instance metadata service).

use std::fmt;

use azure_core::credentials::Secret;

use super::DEFAULT_IMDS_ENDPOINT;

/// How to get tokens: the settings of one flow, secrets included (`Debug` redacts them).
#[derive(Debug, Clone)]
pub enum CredentialSettings {
    /// OAuth2 client credentials with a client secret.
    ClientSecret {
        /// Authority, e.g. `https://login.microsoftonline.com` (no trailing slash needed).
        authority_host: String,
        /// Directory (tenant) id or domain.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
    },
    /// The managed identity of the host.
    ManagedIdentity {
        /// Client id of a user-assigned identity; `None` for the system-assigned one.
        client_id: Option<String>,
        /// Where to ask.
        endpoint: ManagedIdentityEndpoint,
    },
}

/// Where a managed identity's tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityEndpoint {
    /// The instance metadata service protocol (`Metadata: true`).
    Imds(String),
    /// The App Service / Container Apps / Functions protocol (`X-IDENTITY-HEADER`).
    AppService {
        /// `IDENTITY_ENDPOINT`.
        url: String,
        /// `IDENTITY_HEADER`.
        header: SecretText,
    },
}

/// A secret string that compares by value and never prints (for [`ManagedIdentityEndpoint`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl ManagedIdentityEndpoint {
    /// Picks the endpoint: `configured` (IMDS protocol) if given; else `IDENTITY_ENDPOINT` with
    /// `IDENTITY_HEADER` when the environment (`env`) has both; else [`DEFAULT_IMDS_ENDPOINT`].
    /// Only one of the two variables set is an error (Azure Arc's challenge protocol, which
    /// sets `IDENTITY_ENDPOINT` alone, is not supported).
    pub fn select(
        configured: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        if let Some(url) = configured {
            return Ok(ManagedIdentityEndpoint::Imds(url.to_string()));
        }
        let endpoint = env("IDENTITY_ENDPOINT").filter(|v| !v.is_empty());
        let header = env("IDENTITY_HEADER").filter(|v| !v.is_empty());
        match (endpoint, header) {
            (Some(url), Some(header)) => Ok(ManagedIdentityEndpoint::AppService {
                url,
                header: SecretText(header),
            }),
            (None, None) => Ok(ManagedIdentityEndpoint::Imds(
                DEFAULT_IMDS_ENDPOINT.to_string(),
            )),
            (Some(_), None) => Err("IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not (Azure Arc's managed identity is not supported); set source.credential.endpoint to use the instance metadata service".into()),
            (None, Some(_)) => Err("IDENTITY_HEADER is set but IDENTITY_ENDPOINT is not".into()),
        }
    }
}

impl CredentialSettings {
    /// Names the flow for logs and errors (no secrets).
    pub fn describe(&self) -> String {
        match self {
            CredentialSettings::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => format!("Azure AD client secret sign-in (tenant {tenant_id}, client {client_id})"),
            CredentialSettings::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                let who = match client_id {
                    Some(c) => format!("user-assigned, client {c}"),
                    None => "system-assigned".to_string(),
                };
                let how = match endpoint {
                    ManagedIdentityEndpoint::Imds(_) => "instance metadata service",
                    ManagedIdentityEndpoint::AppService { .. } => "IDENTITY_ENDPOINT",
                };
                format!("managed identity sign-in ({who}, via {how})")
            }
        }
    }

    /// The values that must never appear in an error or a log line.
    pub(super) fn secrets(&self) -> Vec<&str> {
        match self {
            CredentialSettings::ClientSecret { client_secret, .. } => vec![client_secret.secret()],
            CredentialSettings::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService { header, .. },
                ..
            } => vec![header.0.as_str()],
            CredentialSettings::ManagedIdentity { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_identity_endpoint_is_config_then_environment_then_imds() {
        let none = |_: &str| None;
        let app_service = |k: &str| match k {
            "IDENTITY_ENDPOINT" => Some("http://localhost:42356/msi/token".to_string()),
            "IDENTITY_HEADER" => Some("h-value".to_string()),
            _ => None,
        };
        assert_eq!(
            ManagedIdentityEndpoint::select(None, none),
            Ok(ManagedIdentityEndpoint::Imds(DEFAULT_IMDS_ENDPOINT.into()))
        );
        assert_eq!(
            ManagedIdentityEndpoint::select(None, app_service),
            Ok(ManagedIdentityEndpoint::AppService {
                url: "http://localhost:42356/msi/token".into(),
                header: SecretText("h-value".into()),
            })
        );
        assert_eq!(
            ManagedIdentityEndpoint::select(Some("http://10.0.0.1/token"), app_service),
            Ok(ManagedIdentityEndpoint::Imds(
                "http://10.0.0.1/token".into()
            ))
        );
        let half = |k: &str| (k == "IDENTITY_ENDPOINT").then(|| "http://x".to_string());
        let e = ManagedIdentityEndpoint::select(None, half).unwrap_err();
        assert!(e.contains("IDENTITY_HEADER is not"), "{e}");
        // The header never prints.
        let debug = format!("{:?}", ManagedIdentityEndpoint::select(None, app_service));
        assert!(!debug.contains("h-value"), "{debug}");
    }
}
