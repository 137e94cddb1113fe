//! A real OAuth 2.0 authorization server for the sign-in tests: `tests/oidc/server.mjs`, panva's
//! `oidc-provider` (an OpenID Certified implementation) configured by the test, one process per
//! [`OidcProvider`], on a free loopback port, stopped when it is dropped. It authenticates
//! clients itself (`private_key_jwt` with RS384/ES384, client secrets), issues
//! client-credentials tokens and answers token introspection, which is how the test FHIR
//! server (its `$auth` introspection mode) checks the tokens it is shown.
//!
//! Needs Node.js; the harness runs `npm ci --prefix tests/oidc` on first use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// The introspecting resource server's client (the test FHIR server's credentials).
pub const RESOURCE_SERVER_ID: &str = "fhir-server";
/// Its secret (a test value; oidc-provider wants 32 characters or more).
pub const RESOURCE_SERVER_SECRET: &str = "resource-server-secret-for-the-tests-only";

/// A running authorization server.
pub struct OidcProvider {
    child: Child,
    /// Its issuer, `http://127.0.0.1:<port>`.
    pub issuer: String,
    _dir: tempfile::TempDir,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn provider_dir() -> PathBuf {
    let dir = crate::workspace_root().join("tests/oidc");
    crate::npm_ci_once(&dir, "oidc-provider");
    dir
}

impl OidcProvider {
    /// Starts a provider with `clients` (RFC 7591 client metadata), the `scopes` it knows,
    /// and client-credentials tokens living `token_ttl_secs`. The test FHIR server's
    /// introspection client ([`RESOURCE_SERVER_ID`]) is added.
    pub fn start(clients: Vec<Value>, scopes: &[&str], token_ttl_secs: u64) -> OidcProvider {
        Self::start_with(clients, scopes, token_ttl_secs, json!({}))
    }

    /// [`OidcProvider::start`] with more of `server.mjs`'s config (`extra`'s keys, e.g.
    /// `"users"`: see [`crate::oidc_users`]).
    pub fn start_with(
        clients: Vec<Value>,
        scopes: &[&str],
        token_ttl_secs: u64,
        extra: Value,
    ) -> OidcProvider {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut clients = clients;
        clients.push(json!({
            "client_id": RESOURCE_SERVER_ID,
            "client_secret": RESOURCE_SERVER_SECRET,
            "grant_types": [],
            "response_types": [],
            "redirect_uris": [],
        }));
        let config = dir.path().join("config.json");
        let mut text =
            json!({"clients": clients, "scopes": scopes, "accessTokenTtl": token_ttl_secs});
        for (k, v) in extra.as_object().into_iter().flatten() {
            text[k] = v.clone();
        }
        std::fs::write(&config, text.to_string()).expect("write the provider's config");
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg("--config")
            .arg(&config)
            .args(["--exit-with-parent", &std::process::id().to_string()])
            .current_dir(provider_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the provider's address");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
        OidcProvider {
            child,
            issuer: v["issuer"].as_str().expect("issuer").to_string(),
            _dir: dir,
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// What `POST <fhir>/$auth` needs to make the test FHIR server check tokens here.
    pub fn introspection(&self, scope: &str) -> Value {
        json!({
            "url": format!("{}/token/introspection", self.issuer),
            "clientId": RESOURCE_SERVER_ID,
            "clientSecret": RESOURCE_SERVER_SECRET,
            "scope": scope,
        })
    }

    /// `{"issued": N, "refused": [{"error", "error_description", "detail"}]}`: tokens the
    /// token endpoint issued and the requests it refused.
    pub async fn stats(&self) -> Value {
        let r = reqwest::get(format!("{}/__stats", self.issuer))
            .await
            .expect("provider stats");
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("stats JSON")
    }
}

/// A new private key for `alg` (`RS384`: RSA 2048; `ES384`: P-384), PKCS#8 PEM, made with
/// OpenSSL in `dir` as `<name>.pem`.
pub fn generate_key(dir: &Path, name: &str, alg: &str) -> PathBuf {
    let out = dir.join(format!("{name}.pem"));
    let opts: &[&str] = match alg {
        "RS384" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ES384" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        other => panic!("no key kind for {other}"),
    };
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(opts)
        .arg("-out")
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl genpkey for {alg}");
    out
}

/// Client metadata for a SMART Backend Services client `client_id` whose public keys are
/// `jwks`, allowed `scope`.
pub fn backend_client(client_id: &str, jwks: Value, scope: &str) -> Value {
    json!({
        "client_id": client_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "jwks": jwks,
        "scope": scope,
    })
}
