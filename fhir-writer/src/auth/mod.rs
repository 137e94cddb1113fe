//! Authentication to the FHIR server: none, a static bearer token, OAuth2 client credentials
//! with a secret (what Azure API for FHIR and Azure Health Data Services use), or SMART Backend
//! Services (client credentials with a signed JWT, what EHR vendors' FHIR servers use; see
//! [`smart`]). Tokens are cached and refreshed before they expire, and once after a 401.
//! Secrets are never logged (`Debug` redacts them).

pub mod smart;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::bundle::percent_encode;

/// How to authenticate.
#[derive(Clone, Default)]
pub enum Auth {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// OAuth2 client-credentials grant.
    ClientCredentials(ClientCredentials),
    /// SMART Backend Services: client credentials with a `private_key_jwt` assertion.
    SmartBackend(smart::SmartBackend),
}

/// OAuth2 client-credentials settings.
#[derive(Clone)]
pub struct ClientCredentials {
    /// Token endpoint, e.g. `https://login.microsoftonline.com/<tenant>/oauth2/token`.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// `scope` (v2 endpoints), e.g. `https://<workspace>.fhir.azurehealthcareapis.com/.default`.
    pub scope: Option<String>,
    /// `resource` (v1 endpoints), e.g. the FHIR server URL.
    pub resource: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
            Auth::ClientCredentials(c) => f
                .debug_struct("ClientCredentials")
                .field("token_url", &c.token_url)
                .field("client_id", &c.client_id)
                .field("client_secret", &"<redacted>")
                .field("scope", &c.scope)
                .field("resource", &c.resource)
                .finish(),
            Auth::SmartBackend(s) => s.fmt(f),
        }
    }
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint could not be reached.
    #[error("token request to {url} failed: {source}")]
    Transport {
        /// Token URL.
        url: String,
        /// The error.
        #[source]
        source: reqwest::Error,
    },
    /// The token endpoint refused.
    #[error("token endpoint {url} answered {status}: {body}")]
    Refused {
        /// Token URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The answer: the OAuth2 `error` and `error_description` where it sent them, else the
        /// body's start (never contains our secret or key).
        body: String,
    },
    /// The token endpoint could not be discovered from the FHIR server.
    #[error("SMART discovery at {url} failed: {detail}; set the token URL explicitly")]
    Discovery {
        /// The `.well-known/smart-configuration` URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The client assertion could not be signed.
    #[error("could not sign the client assertion: {0}")]
    Signing(String),
}

/// What the token endpoint's error answer says: `error: error_description` (RFC 6749 §5.2),
/// or the start of the body.
fn refusal(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return match v.get("error_description").and_then(|d| d.as_str()) {
                Some(d) => format!("{e}: {d}"),
                None => e.to_string(),
            };
        }
    }
    text.chars().take(500).collect()
}

/// Counts of the token source's work, for the replay report and the metrics.
#[derive(Debug, Default)]
pub struct TokenStats {
    /// Tokens obtained from the token endpoint.
    pub issued: AtomicU64,
    /// Requests that reused a cached token.
    pub reused: AtomicU64,
    /// Tokens dropped after the FHIR server answered 401 with them.
    pub refreshed_after_401: AtomicU64,
    /// Token requests the endpoint refused (or that could not be made).
    pub refused: AtomicU64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// Hands out `Authorization` header values, fetching and caching tokens as needed.
#[derive(Clone)]
pub struct TokenSource {
    auth: Auth,
    http: reqwest::Client,
    fhir_base: String,
    cache: Arc<Mutex<Option<Cached>>>,
    /// The token endpoint found by SMART discovery.
    discovered: Arc<Mutex<Option<String>>>,
    stats: Arc<TokenStats>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("auth", &self.auth)
            .finish()
    }
}

/// Refresh this long before the token expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);

impl TokenSource {
    /// A token source for `auth` in front of the FHIR server at `fhir_base` (where SMART
    /// discovery looks), using `http` for token requests.
    pub fn new(auth: Auth, http: reqwest::Client, fhir_base: &str) -> Self {
        TokenSource {
            auth,
            http,
            fhir_base: fhir_base.trim_end_matches('/').to_string(),
            cache: Arc::new(Mutex::new(None)),
            discovered: Arc::new(Mutex::new(None)),
            stats: Arc::new(TokenStats::default()),
        }
    }

    /// The counts of tokens issued, reused and refused.
    pub fn stats(&self) -> &TokenStats {
        &self.stats
    }

    /// The `Authorization` header value, if any.
    pub async fn header(&self) -> Result<Option<String>, AuthError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Bearer(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::ClientCredentials(_) | Auth::SmartBackend(_) => {
                let mut cache = self.cache.lock().await;
                if let Some(c) = cache.as_ref() {
                    if Instant::now() < c.refresh_at {
                        self.stats.reused.fetch_add(1, Ordering::Relaxed);
                        return Ok(Some(format!("Bearer {}", c.token)));
                    }
                }
                let fresh = match self.fetch().await {
                    Ok(f) => f,
                    Err(e) => {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                };
                self.stats.issued.fetch_add(1, Ordering::Relaxed);
                let header = format!("Bearer {}", fresh.token);
                *cache = Some(fresh);
                Ok(Some(header))
            }
        }
    }

    /// Forgets the cached token after the FHIR server answered 401 to `used` (the header value
    /// sent). A token another request has fetched since is kept, so concurrent 401s for one
    /// expired token cost one new token, not one each.
    pub async fn invalidate(&self, used: Option<&str>) {
        let mut cache = self.cache.lock().await;
        let same = match (cache.as_ref(), used) {
            (Some(c), Some(u)) => u.strip_prefix("Bearer ") == Some(c.token.as_str()),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if same {
            self.stats
                .refreshed_after_401
                .fetch_add(1, Ordering::Relaxed);
            *cache = None;
        }
    }

    /// The token endpoint of a SMART client: configured, or discovered once.
    async fn smart_token_url(&self, s: &smart::SmartBackend) -> Result<String, AuthError> {
        if let Some(u) = &s.token_url {
            return Ok(u.clone());
        }
        let mut found = self.discovered.lock().await;
        if let Some(u) = found.as_ref() {
            return Ok(u.clone());
        }
        let url = format!("{}/.well-known/smart-configuration", self.fhir_base);
        let fail = |detail: String| AuthError::Discovery {
            url: url.clone(),
            detail,
        };
        let resp = self
            .http
            .get(&url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(format!("the FHIR server answered {status}")));
        }
        let bytes = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))?;
        let token = v["token_endpoint"]
            .as_str()
            .ok_or_else(|| fail("no token_endpoint in it".into()))?
            .to_string();
        if let Some(methods) = v["token_endpoint_auth_methods_supported"].as_array() {
            if !methods.iter().any(|m| m == "private_key_jwt") {
                tracing::warn!(%url, "The server's SMART configuration does not list private_key_jwt among its token endpoint's authentication methods; trying anyway.");
            }
        }
        tracing::info!(token_url = %token, "SMART token endpoint discovered.");
        *found = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self) -> Result<Cached, AuthError> {
        let (token_url, form): (String, Vec<(&str, String)>) = match &self.auth {
            Auth::ClientCredentials(cc) => {
                let mut form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("client_id", cc.client_id.clone()),
                    ("client_secret", cc.client_secret.clone()),
                ];
                if let Some(s) = &cc.scope {
                    form.push(("scope", s.clone()));
                }
                if let Some(r) = &cc.resource {
                    form.push(("resource", r.clone()));
                }
                (cc.token_url.clone(), form)
            }
            Auth::SmartBackend(s) => {
                let url = self.smart_token_url(s).await?;
                let assertion = s
                    .key
                    .assertion(&s.client_id, &url)
                    .map_err(AuthError::Signing)?;
                let form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("scope", s.scope.clone()),
                    ("client_assertion_type", smart::ASSERTION_TYPE.to_string()),
                    ("client_assertion", assertion),
                ];
                (url, form)
            }
            Auth::None | Auth::Bearer(_) => unreachable!("no token to fetch"),
        };
        let cc_token_url = &token_url;
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .post(cc_token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|source| AuthError::Transport {
                url: token_url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(AuthError::Refused {
                url: token_url.clone(),
                status,
                body: refusal(&text),
            });
        }
        let t: TokenResponse = serde_json::from_str(&text).map_err(|e| AuthError::Refused {
            url: token_url.clone(),
            status,
            body: format!("not a token response: {e}"),
        })?;
        // Azure v1 endpoints send expires_in as a string.
        let secs = match &t.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(300);
        let life = Duration::from_secs(secs);
        let refresh_in = life.saturating_sub(REFRESH_MARGIN).max(life / 2);
        Ok(Cached {
            token: t.access_token,
            refresh_at: Instant::now() + refresh_in,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let a = Auth::ClientCredentials(ClientCredentials {
            token_url: "https://login.example/t".into(),
            client_id: "id".into(),
            client_secret: "s3cr3t".into(),
            scope: Some("https://fhir.example/.default".into()),
            resource: None,
        });
        let shown = format!("{a:?} {:?}", Auth::Bearer("tok3n".into()));
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok3n"),
            "{shown}"
        );
    }

    #[test]
    fn refusals_show_the_oauth_error() {
        assert_eq!(
            refusal(
                r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
            ),
            "invalid_client: client authentication failed"
        );
        assert_eq!(refusal(r#"{"error":"invalid_scope"}"#), "invalid_scope");
        assert_eq!(refusal("<html>gateway</html>"), "<html>gateway</html>");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(percent_encode("a b/c=d&é"), "a%20b%2Fc%3Dd%26%C3%A9");
    }
}
