//! Sign-in to the review page: OpenID Connect, authorization code flow with PKCE (S256),
//! against an issuer found by discovery (`<issuer>/.well-known/openid-configuration`), with the
//! `openidconnect` crate (ID-token signature, issuer, audience, expiry and nonce checks).
//!
//! * `GET /auth/login?next=/path` starts a sign-in: the PKCE verifier, nonce and `next` are kept
//!   server-side under the `state` value, which a short-lived HttpOnly cookie binds to the
//!   browser that started it.
//! * `GET /auth/callback` takes the code back, checks `state` against that cookie, exchanges the
//!   code with the PKCE verifier, validates the ID token and reads the group/role claim
//!   (`--oidc-groups-claim`, from the ID token, or from the userinfo endpoint when the ID token
//!   has none). A user in none of the allowed groups is refused (403) and gets no session.
//! * A session is a random 256-bit id in an HttpOnly, SameSite=Lax cookie (Secure when the
//!   public URL is https), held in memory: a restart signs everyone out.
//! * `POST /auth/logout` ends the session and, when the provider offers RP-initiated logout
//!   (`end_session_endpoint`), the provider's session too, coming back to `/auth/signed-out`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Cookie holding the session id.
pub const SESSION_COOKIE: &str = "iomt_review_session";
/// Cookie binding a sign-in in progress to the browser that started it.
pub const LOGIN_COOKIE: &str = "iomt_review_login";

/// Sign-in settings (`iomt review --oidc-*`).
#[derive(Debug, Clone)]
pub struct SignInConfig {
    /// The OpenID Provider's issuer URL.
    pub issuer: String,
    /// This page's client id at the provider.
    pub client_id: String,
    /// Its client secret (none: a public client, PKCE only).
    pub client_secret: Option<String>,
    /// The page's URL as browsers reach it (the redirect URI is `<public_url>/auth/callback`).
    pub public_url: String,
    /// Members of any of these groups (or roles) may sign in.
    pub allowed_groups: Vec<String>,
    /// The claim holding the groups or roles (`groups`, `roles`, ...).
    pub groups_claim: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// How long a session lasts.
    pub session_ttl: Duration,
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Claims beyond the standard ones, whatever their names (the groups claim is configurable).
#[derive(Debug, Clone, Deserialize, Serialize)]
struct AnyClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, Value>,
}
impl AdditionalClaims for AnyClaims {}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct User {
    /// The provider's subject identifier.
    pub sub: String,
    /// Display name (the `name` claim, else the subject).
    pub name: String,
    /// The user's groups or roles.
    pub groups: Vec<String>,
    /// Where the groups were read: `id_token` or `userinfo` (empty without sign-in).
    pub claims_from: &'static str,
}

struct Session {
    user: User,
    id_token: String,
    expires: Instant,
}

struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    next: String,
    started: Instant,
}

/// The sign-in machinery of a running page.
pub struct SignIn {
    config: SignInConfig,
    client: Client,
    http: openidconnect::reqwest::Client,
    end_session: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
    secure: bool,
}

/// How a sign-in callback ended.
pub enum Callback {
    /// Signed in: the new session id and where to go.
    SignedIn {
        /// The session id (the cookie's value).
        session: String,
        /// The page to return to.
        next: String,
        /// Who.
        user: User,
    },
    /// Authenticated, but in none of the allowed groups.
    Refused(User),
}

fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The groups in a claim's value: an array of strings, or one space- or comma-separated string.
fn groups_of(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect(),
        ),
        Value::String(s) => Some(
            s.split([' ', ','])
                .filter(|g| !g.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

/// A `next` target that stays on this site: a path starting with one `/`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

impl SignIn {
    /// Discovers the provider and sets up the client.
    pub async fn discover(config: SignInConfig) -> Result<SignIn> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects would open the client to SSRF.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()?;
        let issuer = IssuerUrl::new(config.issuer.clone())
            .with_context(|| format!("--oidc-issuer {}", config.issuer))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .with_context(|| {
                format!(
                    "OpenID Connect discovery at {}/.well-known/openid-configuration",
                    config.issuer.trim_end_matches('/')
                )
            })?;
        // RP-initiated logout is an extension the core metadata type does not carry.
        let end_session = http
            .get(format!(
                "{}/.well-known/openid-configuration",
                config.issuer.trim_end_matches('/')
            ))
            .send()
            .await
            .ok()
            .and_then(|r| r.error_for_status().ok());
        let end_session = match end_session {
            Some(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["end_session_endpoint"].as_str().map(str::to_string)),
            None => None,
        };
        let public = config.public_url.trim_end_matches('/').to_string();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(RedirectUrl::new(format!("{public}/auth/callback"))?);
        Ok(SignIn {
            secure: public.starts_with("https://"),
            config,
            client,
            http,
            end_session,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer (for the page's form-action policy).
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Whether cookies get `Secure`.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Starts a sign-in: the provider's authorization URL and the `state` to bind in a cookie.
    pub fn start(&self, next: Option<&str>) -> (String, String) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let mut pending = self.pending.lock().expect("pending sign-ins");
        // Abandoned sign-ins expire after 10 minutes.
        pending.retain(|_, p| p.started.elapsed() < Duration::from_secs(600));
        // Bounded however many sign-ins are started and abandoned: the oldest goes.
        if pending.len() >= 10_000 {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                verifier,
                nonce,
                next: safe_next(next),
                started: Instant::now(),
            },
        );
        (url.to_string(), state.secret().clone())
    }

    /// Completes a sign-in with the provider's `code` and `state`; `cookie_state` is the login
    /// cookie's value.
    pub async fn callback(
        &self,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
    ) -> Result<Callback> {
        if cookie_state != Some(state) {
            anyhow::bail!("the sign-in was not started in this browser (state mismatch)");
        }
        let pending = self
            .pending
            .lock()
            .expect("pending sign-ins")
            .remove(state)
            .context("unknown or expired sign-in (state)")?;
        let token = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| anyhow::anyhow!("token request: {e}"))?;
        let id_token = token
            .id_token()
            .context("the provider returned no ID token")?;
        let claims = id_token
            .claims(&self.client.id_token_verifier(), &pending.nonce)
            .map_err(|e| anyhow::anyhow!("ID token: {e}"))?;
        // The access token is the one the ID token was issued with (when it says).
        if let Some(expected) = claims.access_token_hash() {
            let verifier = self.client.id_token_verifier();
            let actual = openidconnect::AccessTokenHash::from_token(
                token.access_token(),
                id_token
                    .signing_alg()
                    .map_err(|e| anyhow::anyhow!("ID token: {e}"))?,
                id_token
                    .signing_key(&verifier)
                    .map_err(|e| anyhow::anyhow!("ID token: {e}"))?,
            )
            .map_err(|e| anyhow::anyhow!("ID token at_hash: {e}"))?;
            if actual != *expected {
                anyhow::bail!("the access token does not match the ID token's at_hash");
            }
        }
        let sub = claims.subject().as_str().to_string();
        // The ID token's own claims, verified above (its payload, decoded again for claims
        // whose names are configured).
        let raw: Value = {
            use base64::Engine;
            let s = id_token.to_string();
            let payload = s.split('.').nth(1).unwrap_or_default();
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        };
        let mut groups = groups_of(raw.get(&self.config.groups_claim));
        let mut name = raw["name"].as_str().map(str::to_string);
        let mut claims_from = "id_token";
        if groups.is_none() || name.is_none() {
            if let Ok(req) = self
                .client
                .user_info(token.access_token().clone(), Some(claims.subject().clone()))
            {
                let info: openidconnect::UserInfoClaims<AnyClaims, CoreGenderClaim> = req
                    .request_async(&self.http)
                    .await
                    .map_err(|e| anyhow::anyhow!("userinfo: {e}"))?;
                let extra = &info.additional_claims().claims;
                if groups.is_none() {
                    groups = groups_of(extra.get(&self.config.groups_claim));
                    claims_from = "userinfo";
                }
                if name.is_none() {
                    name = info
                        .name()
                        .and_then(|n| n.get(None))
                        .map(|n| n.as_str().to_string());
                }
            }
        }
        let user = User {
            name: name.unwrap_or_else(|| sub.clone()),
            sub,
            groups: groups.unwrap_or_default(),
            claims_from,
        };
        if !user
            .groups
            .iter()
            .any(|g| self.config.allowed_groups.contains(g))
        {
            return Ok(Callback::Refused(user));
        }
        let session = random_id();
        let mut sessions = self.sessions.lock().expect("sessions");
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(
            session.clone(),
            Session {
                user: user.clone(),
                id_token: id_token.to_string(),
                expires: Instant::now() + self.config.session_ttl,
            },
        );
        Ok(Callback::SignedIn {
            session,
            next: pending.next,
            user,
        })
    }

    /// The user of a live session.
    pub fn user(&self, session: &str) -> Option<User> {
        let sessions = self.sessions.lock().expect("sessions");
        sessions
            .get(session)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.user.clone())
    }

    /// Ends a session; returns where to send the browser (the provider's logout, or the
    /// page's signed-out page) and who it was.
    pub fn logout(&self, session: Option<&str>) -> (String, Option<User>) {
        let ended = session.and_then(|s| self.sessions.lock().expect("sessions").remove(s));
        let back = format!(
            "{}/auth/signed-out",
            self.config.public_url.trim_end_matches('/')
        );
        let target = match (&self.end_session, &ended) {
            (Some(end), Some(s)) => {
                let mut u = match url_with(end) {
                    Some(u) => u,
                    None => return (back, ended.map(|s| s.user)),
                };
                u.query_pairs_mut()
                    .append_pair("id_token_hint", &s.id_token)
                    .append_pair("client_id", &self.config.client_id)
                    .append_pair("post_logout_redirect_uri", &back);
                u.to_string()
            }
            _ => back,
        };
        (target, ended.map(|s| s.user))
    }

    /// A cookie header value for `name=value` living `max_age` seconds (0: delete).
    pub fn cookie(&self, name: &str, value: &str, path: &str, max_age: u64) -> String {
        format!(
            "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// Session lifetime, seconds.
    pub fn session_secs(&self) -> u64 {
        self.config.session_ttl.as_secs()
    }
}

fn url_with(s: &str) -> Option<openidconnect::url::Url> {
    openidconnect::url::Url::parse(s).ok()
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_site_and_groups_parse() {
        assert_eq!(
            safe_next(Some("/patient/p1?range=24h")),
            "/patient/p1?range=24h"
        );
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(
            groups_of(Some(&serde_json::json!(["a", "b", 3]))),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            groups_of(Some(&serde_json::json!("a b,c"))),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(groups_of(None), None);
    }
}
