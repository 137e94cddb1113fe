//! Microsoft Entra ID (Azure AD) sign-in for the Event Hubs source: [`EntraCredential`], our own
//! [`TokenCredential`], with two flows.
//!
//! - **Client secret**: the OAuth2 client-credentials grant, `POST
//!   {authority_host}/{tenant_id}/oauth2/v2.0/token` with `grant_type=client_credentials`,
//!   `client_id`, `client_secret` and `scope` = the scopes the SDK asks for (Event Hubs asks for
//!   [`EVENT_HUBS_SCOPE`]).
//! - **Managed identity**: `GET` on the instance metadata service (IMDS, [`DEFAULT_IMDS_ENDPOINT`],
//!   header `Metadata: true`, `api-version=2018-02-01`) or, where App Service, Container Apps or
//!   Functions set `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, on that endpoint (header
//!   `X-IDENTITY-HEADER`, `api-version=2019-08-01`); `resource` is the scope without `/.default`,
//!   plus `client_id` for a user-assigned identity. Managed-identity requests never go through a
//!   proxy.
//!
//! Tokens are cached per scope set ([`TokenCache`]) and fetched again once less than
//! [`REFRESH_MARGIN`] of their life is left. Errors ([`CredentialError`]) name the flow, the
//! endpoint, the HTTP status and Entra's error code and description; they never contain the
//! client secret or the identity header: both are cut out of any text an endpoint sends back,
//! and `Debug` prints neither.
//!
//! Why not `azure_identity`: its 1.1.0-beta.1 builds against the pinned `azure_core`
//! 1.2.0-beta.1, but it refuses an authority host that is not `https://`, so no test could point
//! it at a local token endpoint; the two flows are small enough to own.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration as StdDuration;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};
use serde::Deserialize;
use serde_json::Value;

/// The scope Event Hubs asks tokens for.
pub const EVENT_HUBS_SCOPE: &str = "https://eventhubs.azure.net/.default";
/// The public-cloud Entra ID authority.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// The instance metadata service's token endpoint (Azure VMs, scale sets, AKS nodes).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// A cached token is handed out only while more than this is left of its life. It must be
/// longer than the SDK's own refresh lead (it asks again 6 min ± 5 s before expiry, and stops
/// refreshing a path for good when the answer does not expire later than the token it had).
pub const REFRESH_MARGIN: Duration = Duration::minutes(10);

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
    fn secrets(&self) -> Vec<&str> {
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

/// Why no token could be had. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The request cannot be made (e.g. several scopes for a managed identity).
    #[error("{flow}: {reason}")]
    Request {
        /// [`CredentialSettings::describe`].
        flow: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint could not be reached or did not answer in time.
    #[error("{flow}: no answer from {url}: {reason}")]
    Unreachable {
        /// [`CredentialSettings::describe`].
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
        /// [`CredentialSettings::describe`].
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
        /// [`CredentialSettings::describe`].
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

/// Tokens per scope set; a token is handed out while more than [`REFRESH_MARGIN`] of its life
/// is left. Pure: the caller says what time it is.
///
/// ```
/// use azure_core::credentials::AccessToken;
/// use azure_core::time::{Duration, OffsetDateTime};
/// use sources::event_hubs::credential::TokenCache;
///
/// let now = OffsetDateTime::now_utc();
/// let mut cache = TokenCache::default();
/// cache.insert("https://eventhubs.azure.net/.default".into(), AccessToken::new("t", now + Duration::hours(1)));
/// assert!(cache.fresh("https://eventhubs.azure.net/.default", now).is_some());
/// // Less than 10 minutes left: time for a new one.
/// assert!(cache.fresh("https://eventhubs.azure.net/.default", now + Duration::minutes(51)).is_none());
/// ```
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<String, AccessToken>,
}

impl TokenCache {
    /// The cached token for `key` if it is still fresh at `now`.
    pub fn fresh(&self, key: &str, now: OffsetDateTime) -> Option<&AccessToken> {
        self.tokens
            .get(key)
            .filter(|t| t.expires_on - now > REFRESH_MARGIN)
    }

    /// Remembers `token` for `key`.
    pub fn insert(&mut self, key: String, token: AccessToken) {
        self.tokens.insert(key, token);
    }
}

/// A [`TokenCredential`] for Microsoft Entra ID: client secret or managed identity (see the
/// module docs), with cached tokens.
pub struct EntraCredential {
    settings: CredentialSettings,
    flow: String,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<TokenCache>,
}

impl fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraCredential")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    /// Seconds (a number from Entra ID, a string from IMDS).
    #[serde(default)]
    expires_in: Option<Value>,
    /// Unix seconds (a string from managed-identity endpoints).
    #[serde(default)]
    expires_on: Option<Value>,
}

fn seconds(v: &Option<Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Replaces every secret in `text`, and keeps at most 500 characters.
fn redact(text: &str, secrets: &[&str]) -> String {
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
fn error_details(body: &str) -> (Option<String>, Option<String>) {
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

impl EntraCredential {
    /// A credential for `settings`. Fails only if no HTTP client can be built.
    pub fn new(settings: CredentialSettings) -> Result<Self, CredentialError> {
        let flow = settings.describe();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(StdDuration::from_secs(10))
            .timeout(StdDuration::from_secs(30));
        if matches!(settings, CredentialSettings::ManagedIdentity { .. }) {
            // The identity endpoints are link-local or loopback: never via a proxy.
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| CredentialError::Request {
            flow: flow.clone(),
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
        Ok(EntraCredential {
            settings,
            flow,
            http,
            cache: tokio::sync::Mutex::new(TokenCache::default()),
        })
    }

    /// Names the flow (no secrets).
    pub fn describe(&self) -> &str {
        &self.flow
    }

    /// A token for `scopes`: the cached one while it is fresh, else a new one (one request at
    /// a time; callers waiting meanwhile get its result from the cache).
    pub async fn token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        let key = scopes.join(" ");
        let mut cache = self.cache.lock().await;
        if let Some(t) = cache.fresh(&key, OffsetDateTime::now_utc()) {
            return Ok(t.clone());
        }
        let token = self.fetch(scopes).await?;
        tracing::debug!(flow = %self.flow, expires_on = %token.expires_on, "Azure AD token obtained.");
        cache.insert(key, token.clone());
        Ok(token)
    }

    async fn fetch(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        let (url, request) = match &self.settings {
            CredentialSettings::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                client_secret,
            } => {
                let url = format!(
                    "{}/{tenant_id}/oauth2/v2.0/token",
                    authority_host.trim_end_matches('/')
                );
                let scope = scopes.join(" ");
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.secret()),
                    ("scope", scope.as_str()),
                ];
                let request = self.http.post(&url).form(&form);
                (url, request)
            }
            CredentialSettings::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                let [scope] = scopes else {
                    return Err(CredentialError::Request {
                        flow: self.flow.clone(),
                        reason: format!(
                            "a managed identity token is for one resource, but {} scopes were asked for ({})",
                            scopes.len(),
                            scopes.join(" ")
                        ),
                    });
                };
                let resource = scope.strip_suffix("/.default").unwrap_or(scope);
                let (url, api_version) = match endpoint {
                    ManagedIdentityEndpoint::Imds(url) => (url, "2018-02-01"),
                    ManagedIdentityEndpoint::AppService { url, .. } => (url, "2019-08-01"),
                };
                let mut query = vec![("api-version", api_version), ("resource", resource)];
                if let Some(c) = client_id {
                    query.push(("client_id", c));
                }
                let request = self.http.get(url).query(&query);
                let request = match endpoint {
                    ManagedIdentityEndpoint::Imds(_) => request.header("Metadata", "true"),
                    ManagedIdentityEndpoint::AppService { header, .. } => {
                        request.header("X-IDENTITY-HEADER", header.0.as_str())
                    }
                };
                (url.clone(), request)
            }
        };
        let secrets = self.settings.secrets();
        let unreachable = |e: reqwest::Error| CredentialError::Unreachable {
            flow: self.flow.clone(),
            url: url.clone(),
            reason: redact(&error_chain(&e), &secrets),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(unreachable)?;
        if !(200..300).contains(&status) {
            let (code, description) = error_details(&body);
            return Err(CredentialError::Refused {
                flow: self.flow.clone(),
                url,
                status,
                code: code.map(|c| redact(&c, &secrets)),
                description: description.map(|d| redact(&d, &secrets)),
            });
        }
        let bad = |reason: String| CredentialError::BadResponse {
            flow: self.flow.clone(),
            url: url.clone(),
            status,
            reason,
        };
        let parsed: TokenResponse = serde_json::from_str(&body)
            .map_err(|e| bad(format!("not a JSON token response ({e})")))?;
        let token = parsed
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no access_token".into()))?;
        let now = OffsetDateTime::now_utc();
        let expires_on = match (seconds(&parsed.expires_in), seconds(&parsed.expires_on)) {
            (Some(secs), _) => now + Duration::seconds(secs),
            (None, Some(unix)) => OffsetDateTime::from_unix_timestamp(unix)
                .map_err(|e| bad(format!("expires_on {unix}: {e}")))?,
            (None, None) => return Err(bad("neither expires_in nor expires_on".into())),
        };
        Ok(AccessToken::new(token, expires_on))
    }
}

/// A reqwest error with its causes ("error sending request: connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait::async_trait]
impl TokenCredential for EntraCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.token(scopes)
            .await
            .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Credential, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request the fake endpoint received.
    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        target: String,
        headers: HashMap<String, String>,
        body: String,
    }

    impl Recorded {
        fn form(&self) -> HashMap<String, String> {
            decode_pairs(&self.body)
        }
        fn query(&self) -> HashMap<String, String> {
            decode_pairs(self.target.split_once('?').map(|(_, q)| q).unwrap_or(""))
        }
    }

    fn decode_pairs(s: &str) -> HashMap<String, String> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    type Responder = dyn Fn(&Recorded, usize) -> (u16, String) + Send + Sync;

    /// An in-process HTTP/1.1 token endpoint for fault injection (a fake: no Entra ID or
    /// managed-identity endpoint can run here). Records every request; `respond` gets the
    /// request and its index.
    struct FakeEndpoint {
        base: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl FakeEndpoint {
        async fn start(
            respond: impl Fn(&Recorded, usize) -> (u16, String) + Send + Sync + 'static,
        ) -> FakeEndpoint {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
            let respond: Arc<Responder> = Arc::new(respond);
            let recorded = requests.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break None;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(p + 4);
                        }
                    };
                    let Some(head_end) = head_end else { continue };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let target = first.next().unwrap_or("").to_string();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let length: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                    let request = Recorded {
                        method,
                        target,
                        headers,
                        body,
                    };
                    let index = {
                        let mut r = recorded.lock().unwrap();
                        r.push(request.clone());
                        r.len() - 1
                    };
                    let (status, body) = respond(&request, index);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
            FakeEndpoint { base, requests }
        }

        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    const SECRET: &str = "s3cr3t~Value.with+special/chars=";

    fn client_secret(base: &str) -> CredentialSettings {
        CredentialSettings::ClientSecret {
            authority_host: base.to_string(),
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "00000000-0000-0000-0000-00000000c11e".into(),
            client_secret: Secret::new(SECRET),
        }
    }

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    #[test]
    fn a_cached_token_is_handed_out_until_ten_minutes_before_it_expires() {
        let mut cache = TokenCache::default();
        let expires = 1_000_000;
        cache.insert("scope".into(), AccessToken::new("t1", at(expires)));
        assert!(cache.fresh("scope", at(expires - 3600)).is_some());
        assert!(cache.fresh("scope", at(expires - 601)).is_some());
        // The SDK asks again 6 min before expiry: by then the cache must fetch a new one.
        assert!(cache.fresh("scope", at(expires - 600)).is_none());
        assert!(cache.fresh("scope", at(expires - 360)).is_none());
        assert!(cache.fresh("scope", at(expires + 1)).is_none());
        assert!(cache.fresh("other scope", at(0)).is_none());
    }

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

    #[tokio::test]
    async fn the_client_secret_grant_is_posted_and_its_token_cached() {
        let endpoint = FakeEndpoint::start(|_, i| {
            (
                200,
                format!(r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"token-{i}"}}"#),
            )
        })
        .await;
        let credential =
            EntraCredential::new(client_secret(&format!("{}/", endpoint.base))).unwrap();
        let first = credential
            .get_token(&[EVENT_HUBS_SCOPE], None)
            .await
            .unwrap();
        assert_eq!(first.token.secret(), "token-0");
        let left = first.expires_on - OffsetDateTime::now_utc();
        assert!(
            left > Duration::seconds(3590) && left <= Duration::seconds(3599),
            "{left}"
        );
        // Cached: no second request.
        let again = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap();
        assert_eq!(again.token.secret(), "token-0");
        let requests = endpoint.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/x-www-form-urlencoded")
        );
        let form = r.form();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "00000000-0000-0000-0000-00000000c11e");
        assert_eq!(form["client_secret"], SECRET);
        assert_eq!(form["scope"], EVENT_HUBS_SCOPE);
        // Another scope set is another token.
        let other = credential
            .token(&["https://storage.azure.com/.default"])
            .await
            .unwrap();
        assert_eq!(other.token.secret(), "token-1");
    }

    #[tokio::test]
    async fn a_token_with_less_than_the_margin_left_is_fetched_again() {
        // Five minutes of life: never fresh enough to hand out twice.
        let endpoint = FakeEndpoint::start(|_, i| {
            (
                200,
                format!(r#"{{"expires_in":300,"access_token":"short-{i}"}}"#),
            )
        })
        .await;
        let credential = EntraCredential::new(client_secret(&endpoint.base)).unwrap();
        let a = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap();
        let b = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap();
        assert_eq!(a.token.secret(), "short-0");
        assert_eq!(b.token.secret(), "short-1");
        assert!(b.expires_on >= a.expires_on);
        assert_eq!(endpoint.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_secret_gives_status_and_entra_error_but_never_the_secret() {
        // The fake echoes the secret back, which Entra ID does not do: even then it is cut out.
        let endpoint = FakeEndpoint::start(|r, _| {
            let sent = r.form().get("client_secret").cloned().unwrap_or_default();
            (
                401,
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": format!("AADSTS7000215: Invalid client secret provided ({sent}). Trace ID: 1"),
                    "error_codes": [7000215],
                })
                .to_string(),
            )
        })
        .await;
        let credential = EntraCredential::new(client_secret(&endpoint.base)).unwrap();
        let e = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap_err();
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(text.contains("HTTP 401"), "{text}");
        assert!(text.contains("invalid_client: AADSTS7000215"), "{text}");
        assert!(text.contains("tenant contoso.onmicrosoft.com"), "{text}");
        assert!(
            text.contains(&format!(
                "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
                endpoint.base
            )),
            "{text}"
        );
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains(SECRET), "{text}");
        // Through the SDK's error type, and in Debug, the same.
        let sdk = credential
            .get_token(&[EVENT_HUBS_SCOPE], None)
            .await
            .unwrap_err();
        assert!(!format!("{sdk} {sdk:?}").contains(SECRET));
        assert!(sdk.to_string().contains("AADSTS7000215"), "{sdk}");
        assert!(!format!("{credential:?}").contains(SECRET));
        // Nothing was cached: every call asks again.
        assert_eq!(endpoint.requests().len(), 2);
    }

    #[tokio::test]
    async fn server_errors_and_unreachable_endpoints_are_transient() {
        let endpoint = FakeEndpoint::start(|_, _| (503, String::new())).await;
        let credential = EntraCredential::new(client_secret(&endpoint.base)).unwrap();
        let e = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.to_string().ends_with("answered HTTP 503"), "{e}");

        let closed = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let credential = EntraCredential::new(client_secret(&base)).unwrap();
        let e = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap_err();
        assert!(matches!(e, CredentialError::Unreachable { .. }), "{e:?}");
        assert!(!e.is_permanent());
        assert!(e.to_string().contains(&base), "{e}");

        let endpoint = FakeEndpoint::start(|_, _| (200, r#"{"access_token":"x"}"#.into())).await;
        let credential = EntraCredential::new(client_secret(&endpoint.base)).unwrap();
        let e = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap_err();
        assert!(
            e.to_string().contains("neither expires_in nor expires_on"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn managed_identity_via_identity_endpoint_sends_the_header_and_resource() {
        let endpoint = FakeEndpoint::start(|r, _| {
            if r.headers.get("x-identity-header").map(String::as_str) != Some("hdr-secret") {
                return (401, r#"{"message":"wrong header"}"#.into());
            }
            let expires_on = OffsetDateTime::now_utc().unix_timestamp() + 86_400;
            (
                200,
                format!(r#"{{"access_token":"mi-token","expires_on":"{expires_on}","resource":"https://eventhubs.azure.net","token_type":"Bearer","client_id":"c"}}"#),
            )
        })
        .await;
        let env = |k: &str| match k {
            "IDENTITY_ENDPOINT" => Some(format!("{}/msi/token", endpoint.base)),
            "IDENTITY_HEADER" => Some("hdr-secret".to_string()),
            _ => None,
        };
        let settings = CredentialSettings::ManagedIdentity {
            client_id: Some("user-assigned-id".into()),
            endpoint: ManagedIdentityEndpoint::select(None, env).unwrap(),
        };
        let credential = EntraCredential::new(settings).unwrap();
        assert!(credential
            .describe()
            .contains("user-assigned, client user-assigned-id"));
        let token = credential.token(&[EVENT_HUBS_SCOPE]).await.unwrap();
        assert_eq!(token.token.secret(), "mi-token");
        assert!(token.expires_on - OffsetDateTime::now_utc() > Duration::hours(23));
        let r = &endpoint.requests()[0];
        assert_eq!(r.method, "GET");
        assert!(r.target.starts_with("/msi/token?"), "{}", r.target);
        let q = r.query();
        assert_eq!(q["api-version"], "2019-08-01");
        assert_eq!(q["resource"], "https://eventhubs.azure.net");
        assert_eq!(q["client_id"], "user-assigned-id");
        assert!(!r.headers.contains_key("metadata"));
        assert!(!format!("{credential:?}").contains("hdr-secret"));

        // Two scopes cannot be one resource.
        let e = credential
            .token(&[EVENT_HUBS_SCOPE, "https://storage.azure.com/.default"])
            .await
            .unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("2 scopes"), "{e}");
    }

    #[tokio::test]
    async fn managed_identity_via_imds_sends_metadata_true_and_reports_unknown_identities() {
        let endpoint = FakeEndpoint::start(|r, _| {
            if r.query().contains_key("client_id") {
                return (
                    400,
                    r#"{"error":"invalid_request","error_description":"Identity not found"}"#.into(),
                );
            }
            (
                200,
                r#"{"access_token":"imds-token","expires_in":"86399","expires_on":"1","resource":"https://eventhubs.azure.net/","token_type":"Bearer"}"#.into(),
            )
        })
        .await;
        let url = format!("{}/metadata/identity/oauth2/token", endpoint.base);
        let system = EntraCredential::new(CredentialSettings::ManagedIdentity {
            client_id: None,
            endpoint: ManagedIdentityEndpoint::select(Some(&url), |_| None).unwrap(),
        })
        .unwrap();
        assert!(system
            .describe()
            .contains("system-assigned, via instance metadata service"));
        let token = system.token(&[EVENT_HUBS_SCOPE]).await.unwrap();
        assert_eq!(token.token.secret(), "imds-token");
        // expires_in wins over expires_on (local clock, no skew).
        assert!(token.expires_on - OffsetDateTime::now_utc() > Duration::hours(23));
        let r = &endpoint.requests()[0];
        assert_eq!(r.headers.get("metadata").map(String::as_str), Some("true"));
        let q = r.query();
        assert_eq!(q["api-version"], "2018-02-01");
        assert_eq!(q["resource"], "https://eventhubs.azure.net");
        assert!(!q.contains_key("client_id"));

        let user = EntraCredential::new(CredentialSettings::ManagedIdentity {
            client_id: Some("nope".into()),
            endpoint: ManagedIdentityEndpoint::Imds(url),
        })
        .unwrap();
        let e = user.token(&[EVENT_HUBS_SCOPE]).await.unwrap_err();
        assert!(e.is_permanent());
        assert!(
            e.to_string()
                .ends_with("answered HTTP 400: invalid_request: Identity not found"),
            "{e}"
        );
    }
}
