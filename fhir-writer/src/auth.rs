//! Authentication to the FHIR server: none, a static bearer token, or OAuth2 client
//! credentials (what Azure API for FHIR and Azure Health Data Services use), with the token
//! cached and refreshed before it expires. Secrets are never logged (`Debug` redacts them).

use std::fmt;
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
        /// The answer (error description; never contains our secret).
        body: String,
    },
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
    cache: Arc<Mutex<Option<Cached>>>,
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
    /// A token source for `auth`, using `http` for token requests.
    pub fn new(auth: Auth, http: reqwest::Client) -> Self {
        TokenSource {
            auth,
            http,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The `Authorization` header value, if any.
    pub async fn header(&self) -> Result<Option<String>, AuthError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Bearer(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::ClientCredentials(cc) => {
                let mut cache = self.cache.lock().await;
                if let Some(c) = cache.as_ref() {
                    if Instant::now() < c.refresh_at {
                        return Ok(Some(format!("Bearer {}", c.token)));
                    }
                }
                let fresh = self.fetch(cc).await?;
                let header = format!("Bearer {}", fresh.token);
                *cache = Some(fresh);
                Ok(Some(header))
            }
        }
    }

    /// Forgets the cached token (after a 401).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self, cc: &ClientCredentials) -> Result<Cached, AuthError> {
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", &cc.client_id),
            ("client_secret", &cc.client_secret),
        ];
        if let Some(s) = &cc.scope {
            form.push(("scope", s));
        }
        if let Some(r) = &cc.resource {
            form.push(("resource", r));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .post(&cc.token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|source| AuthError::Transport {
                url: cc.token_url.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(AuthError::Refused {
                url: cc.token_url.clone(),
                status,
                body: text.chars().take(500).collect(),
            });
        }
        let t: TokenResponse = serde_json::from_str(&text).map_err(|e| AuthError::Refused {
            url: cc.token_url.clone(),
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
    fn form_encoding() {
        assert_eq!(percent_encode("a b/c=d&é"), "a%20b%2Fc%3Dd%26%C3%A9");
    }
}
