//! An in-process Microsoft Entra ID token endpoint, and an App Service style managed-identity
//! endpoint, for the Event Hubs Azure AD tests.
//!
//! It is a stand-in because no Entra ID (nor any managed-identity host) can run here: no cloud.
//! It speaks the two protocols as Entra ID and App Service document them, over plain HTTP on a
//! loopback port, and checks what the connector sends:
//!
//! - `POST /<tenant>/oauth2/v2.0/token` (form): `grant_type=client_credentials`, the expected
//!   `client_id`, `client_secret` and `scope=https://eventhubs.azure.net/.default`; answers
//!   `{"token_type": "Bearer", "expires_in": 3599, "access_token": ...}`, or Entra's error
//!   answers (`invalid_client` / `AADSTS7000215` with HTTP 401 for a wrong secret, ...);
//! - `GET /msi/token?api-version=2019-08-01&resource=https://eventhubs.azure.net[&client_id=]`
//!   with header `X-IDENTITY-HEADER`: answers `{"access_token", "expires_on", ...}`.
//!
//! Every issued token is remembered ([`TokenEndpoint::issued`]) so a test can find it in the
//! Event Hubs emulator's `put-token` records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The scope a token for Event Hubs is asked for.
pub const EVENT_HUBS_SCOPE: &str = "https://eventhubs.azure.net/.default";

/// What the endpoint accepts.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The tenant (directory) id in the token URL.
    pub tenant: String,
    /// The application's client id.
    pub client_id: String,
    /// The application's client secret.
    pub client_secret: String,
    /// `X-IDENTITY-HEADER` of the managed-identity endpoint.
    pub identity_header: String,
}

struct Shared {
    expected: Expected,
    issued: Mutex<Vec<String>>,
    /// The user-assigned client id of each managed-identity request.
    identity_requests: Mutex<Vec<Option<String>>>,
    requests: AtomicUsize,
}

/// A running endpoint.
pub struct TokenEndpoint {
    /// `http://127.0.0.1:<port>`: the authority host to configure.
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TokenEndpoint {
    /// Starts an endpoint that accepts `expected`, on a free loopback port.
    pub async fn start(expected: Expected) -> TokenEndpoint {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the token endpoint");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            expected,
            issued: Mutex::new(Vec::new()),
            identity_requests: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/:tenant/oauth2/v2.0/token", post(client_credentials))
            .route("/msi/token", get(managed_identity))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenEndpoint { base, shared, task }
    }

    /// `IDENTITY_ENDPOINT` for the managed-identity protocol.
    pub fn identity_endpoint(&self) -> String {
        format!("{}/msi/token", self.base)
    }

    /// Every token issued so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.shared.issued.lock().unwrap().clone()
    }

    /// A test of whether the endpoint issued a token, usable after the endpoint is borrowed
    /// elsewhere (e.g. in the emulator's token check).
    pub fn issued_check(&self) -> impl Fn(&str) -> bool + Send + Sync + 'static {
        let shared = self.shared.clone();
        move |token| shared.issued.lock().unwrap().iter().any(|t| t == token)
    }

    /// Requests answered so far (issued or refused).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The `client_id` of every managed-identity request (None: system-assigned).
    pub fn identity_client_ids(&self) -> Vec<Option<String>> {
        self.shared.identity_requests.lock().unwrap().clone()
    }
}

impl Shared {
    fn issue(&self, kind: &str) -> String {
        let mut issued = self.issued.lock().unwrap();
        // Shaped like a JWT (three dot-separated parts); unique per request.
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.{kind}-{}-{}.c2ln",
            issued.len(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        issued.push(token.clone());
        token
    }
}

fn entra_error(status: StatusCode, error: &str, description: &str) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("{description} Trace ID: 00000000-0000-0000-0000-000000000000 Correlation ID: 00000000-0000-0000-0000-000000000001 Timestamp: 2024-05-01 10:00:00Z"),
            "error_codes": [description.split(':').next().unwrap_or("").trim_start_matches("AADSTS").parse::<u64>().unwrap_or(0)],
        })),
    )
}

async fn client_credentials(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, Json<Value>) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let e = &shared.expected;
    if headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| !v.starts_with("application/x-www-form-urlencoded"))
    {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must be form encoded.",
        );
    }
    // The form body, decoded with the query-string decoder (the same encoding).
    let uri: Uri = format!("/?{body}").parse().unwrap_or_default();
    let form: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if tenant != e.tenant {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != e.client_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{}' was not found in the directory.",
                field("client_id")
            ),
        );
    }
    if field("client_secret") != e.client_secret {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    if field("scope") != EVENT_HUBS_SCOPE {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "AADSTS70011: The provided value for the input parameter 'scope' is not valid: {}",
                field("scope")
            ),
        );
    }
    let token = shared.issue("client-secret");
    (
        StatusCode::OK,
        Json(json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "ext_expires_in": 3599,
            "access_token": token,
        })),
    )
}

async fn managed_identity(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let header = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if header != shared.expected.identity_header {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER is missing or wrong."}),
            ),
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"statusCode": 400, "message": "Unsupported api-version."})),
        );
    }
    let resource = query.get("resource").cloned().unwrap_or_default();
    if resource != EVENT_HUBS_SCOPE.trim_end_matches("/.default") {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"statusCode": 400, "message": format!("Unexpected resource {resource:?}.")}),
            ),
        );
    }
    let client_id = query.get("client_id").cloned();
    shared
        .identity_requests
        .lock()
        .unwrap()
        .push(client_id.clone());
    let token = shared.issue("managed-identity");
    (
        StatusCode::OK,
        Json(json!({
            "access_token": token,
            "expires_on": (unix_now() + 86_400).to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id.unwrap_or_else(|| "system-assigned".into()),
        })),
    )
}
