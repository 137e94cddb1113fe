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
//!
//! Here: the credential, its requests and its cache. `settings`: the flows' settings and where a
//! managed identity asks ([`ManagedIdentityEndpoint::select`]). `answer`: reading what a token
//! endpoint answers, and [`CredentialError`].

mod answer;
mod settings;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration as StdDuration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration, OffsetDateTime};

pub use answer::CredentialError;
use answer::{error_details, redact, seconds, TokenResponse};
pub use settings::{CredentialSettings, ManagedIdentityEndpoint, SecretText};

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
    use azure_core::credentials::Secret;
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
