//! The test OpenID Provider ([`crate::oidc::OidcProvider`], `tests/oidc/server.mjs`) signing
//! people in: test users with a `groups` claim and a web client for the authorization code flow
//! with PKCE (the provider requires PKCE of every client). The login and consent pages are
//! oidc-provider's development interactions: a browser test types a user's `sub` as the login
//! (any password) and presses "Continue" on the consent page.

use serde_json::{json, Value};

use crate::oidc::OidcProvider;

/// A test user: `sub` (also the login), display `name`, and `groups`.
pub fn user(sub: &str, name: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "name": name, "groups": groups})
}

/// [`user`] whose `name` and `groups` are only at the userinfo endpoint, never in the ID token
/// (also when the provider puts claims in ID tokens).
pub fn userinfo_only_user(sub: &str, name: &str, groups: &[&str]) -> Value {
    json!({"sub": sub, "name": name, "groups": groups, "claimsAtUserinfoOnly": true})
}

/// A confidential web client (`client_secret_basic`) for the authorization code flow,
/// redirecting to `redirect_uri`.
pub fn web_client(client_id: &str, secret: &str, redirect_uri: &str) -> Value {
    json!({
        "client_id": client_id,
        "client_secret": secret,
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "client_secret_basic",
    })
}

/// Starts a provider with `clients` and `users` that signs people in; the scopes `openid`,
/// `profile` (claim `name`) and `groups` (claim `groups`) are known. With `id_token_claims`
/// the ID token carries `name` and `groups` too (but for a [`userinfo_only_user`]); without,
/// only the userinfo endpoint does (oidc-provider's default for the code flow).
pub fn start_with_users(
    clients: Vec<Value>,
    users: Vec<Value>,
    id_token_claims: bool,
) -> OidcProvider {
    OidcProvider::start_with(
        clients,
        &[],
        3600,
        json!({"users": users, "idTokenClaims": id_token_claims}),
    )
}
