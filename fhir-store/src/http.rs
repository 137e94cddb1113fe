//! The HTTP shell: FHIR R4 REST over hyper (HTTP/1.1), each request's database work on the
//! blocking pool.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HOST, IF_MATCH, LOCATION};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::error::outcome;
use crate::search::{is_resource_type, SearchQuery};
use crate::store::{SearchPage, Written};
use crate::{Store, StoreError};

/// Paths the store answers under, besides the root.
const PREFIXES: &[&str] = &["/fhir/R4", "/fhir"];

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Enables `POST /$reset`, which deletes everything (for tests; off by default).
    pub dev_reset: bool,
    /// Largest request body accepted; larger ones are answered 413. Default 16 MiB.
    pub max_body_bytes: usize,
    /// How long shutdown waits for requests in flight before closing their connections.
    /// Default 10 s.
    pub shutdown_grace: Duration,
    /// When set, every request but `GET /metadata` needs `Authorization: Bearer <this>`;
    /// others are answered 401 with `WWW-Authenticate: Bearer`. Default: none (open).
    pub bearer_token: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            dev_reset: false,
            max_body_bytes: 16 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            bearer_token: None,
        }
    }
}

struct State {
    store: Store,
    config: ServeConfig,
    local: Option<SocketAddr>,
}

/// Serves `store` on `listener` with the default [`ServeConfig`] until `shutdown` completes,
/// then lets requests in flight finish and returns.
pub async fn serve<F>(listener: TcpListener, store: Store, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    serve_with(listener, store, ServeConfig::default(), shutdown).await
}

/// Serves `store` on `listener` with `config` until `shutdown` completes, then lets requests in
/// flight finish (up to [`ServeConfig::shutdown_grace`]) and returns.
pub async fn serve_with<F>(
    listener: TcpListener,
    store: Store,
    config: ServeConfig,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let grace = config.shutdown_grace;
    let state = Arc::new(State {
        store,
        config,
        local: listener.local_addr().ok(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = Arc::clone(&state);
                    let mut stop = stop_rx.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(req, Arc::clone(&state)));
                        let mut builder = http1::Builder::new();
                        builder
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30));
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(error) = r {
                                    tracing::debug!(%error, %peer, "FHIR store connection ended with an error.");
                                }
                            }
                            _ = async { drop(stop.wait_for(|s| *s).await) } => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Err(error) => {
                    // E.g. too many open files: back off instead of spinning.
                    tracing::warn!(%error, "FHIR store could not accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            "FHIR store shutdown: closing connections still busy after the grace period."
        );
        conns.abort_all();
    }
    Ok(())
}

/// An answer before it becomes an HTTP response.
struct Reply {
    status: StatusCode,
    body: Value,
    headers: Vec<(hyper::header::HeaderName, String)>,
}

impl Reply {
    fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn error(status: StatusCode, code: &str, text: &str) -> Reply {
        Reply::json(status, outcome("error", code, text))
    }

    fn from_error(e: &StoreError) -> Reply {
        if e.status() >= 500 {
            tracing::warn!(error = %e, "FHIR store request failed.");
        }
        Reply::json(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.outcome(),
        )
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut resp = Response::new(Full::new(Bytes::from(bytes)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        resp
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let reply = match &state.config.bearer_token {
        Some(token) if !authorized(&req, &path, token) => {
            let mut r = Reply::error(
                StatusCode::UNAUTHORIZED,
                "login",
                "this FHIR store needs `Authorization: Bearer <token>` (iomt fhir-store --bearer-token-env)",
            );
            r.headers.push((
                hyper::header::WWW_AUTHENTICATE,
                "Bearer realm=\"iomt fhir-store\"".into(),
            ));
            r
        }
        _ => route(req, &state).await,
    };
    tracing::debug!(%method, %path, status = reply.status.as_u16(), "FHIR store request.");
    Ok(reply.into_response())
}

/// Whether `req` carries the bearer `token` (compared in constant time), or is the
/// capability statement, which stays open.
fn authorized(req: &Request<Incoming>, path: &str, token: &str) -> bool {
    if req.method() == Method::GET
        && PREFIXES
            .iter()
            .map(|p| format!("{p}/metadata"))
            .chain(["/metadata".to_string()])
            .any(|m| m == path)
    {
        return true;
    }
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decoded, non-empty path segments.
pub(crate) fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Value, Reply> {
    let too_large = || {
        Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            &format!("the request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_large())
        }
        Err(e) => {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("cannot read the request body: {e}"),
            ))
        }
    };
    if bytes.is_empty() {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the request needs a FHIR resource as its body",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("the body is not valid JSON: {e}"),
        )
    })
}

/// Runs a store call on the blocking pool.
async fn blocking<T, F>(state: &State, f: F) -> Result<T, Reply>
where
    T: Send + 'static,
    F: FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || f(store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Reply::from_error(&e)),
        Err(e) => {
            tracing::error!(error = %e, "FHIR store task failed.");
            Err(Reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "internal error",
            ))
        }
    }
}

fn version_headers(
    base: &str,
    resource_type: &str,
    w: &Value,
) -> Vec<(hyper::header::HeaderName, String)> {
    let mut h = Vec::new();
    let version = w.pointer("/meta/versionId").and_then(Value::as_str);
    if let Some(v) = version {
        h.push((ETAG, format!("W/\"{v}\"")));
        if let Some(id) = w.get("id").and_then(Value::as_str) {
            h.push((
                LOCATION,
                format!("{base}/{resource_type}/{id}/_history/{v}"),
            ));
        }
    }
    if let Some(t) = w
        .pointer("/meta/lastUpdated")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        h.push((
            hyper::header::LAST_MODIFIED,
            t.with_timezone(&Utc)
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        ));
    }
    h
}

fn written_reply(base: &str, resource_type: &str, w: Written) -> Reply {
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let headers = version_headers(base, resource_type, &w.resource);
    Reply {
        status,
        body: w.resource,
        headers,
    }
}

async fn route(req: Request<Incoming>, state: &Arc<State>) -> Reply {
    let raw_path = req.uri().path().to_string();
    let mut prefix = "";
    let mut path = raw_path.as_str();
    for p in PREFIXES {
        if let Some(rest) = raw_path.strip_prefix(p) {
            if rest.is_empty() || rest.starts_with('/') {
                prefix = p;
                path = rest;
                break;
            }
        }
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| state.local.map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    let base = format!("http://{host}{prefix}");
    let segs = segments(path);
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let bad_method = || {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            &format!("{method} is not supported on {raw_path}"),
        )
    };
    match (seg.as_slice(), &method) {
        (["$reset"], &Method::POST) => {
            if !state.config.dev_reset {
                return Reply::error(
                    StatusCode::NOT_FOUND,
                    "not-supported",
                    "$reset is disabled: it is only available when the store is started for tests (--dev-reset)",
                );
            }
            match blocking(state, |s| s.reset()).await {
                Ok(()) => Reply::json(
                    StatusCode::OK,
                    outcome("information", "informational", "reset"),
                ),
                Err(r) => r,
            }
        }
        (["metadata"], &Method::GET) => Reply::json(StatusCode::OK, capability_statement()),
        ([], &Method::POST) => {
            let ret = match req
                .headers()
                .get("prefer")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(';').any(|p| p.trim() == "return=minimal"))
            {
                true => crate::bundle::Return::Minimal,
                false => crate::bundle::Return::Representation,
            };
            let body = match read_body(req, state.config.max_body_bytes).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match blocking(state, move |s| s.bundle_with(body, &base, Utc::now(), ret)).await {
                Ok(response) => Reply::json(StatusCode::OK, response),
                Err(r) => r,
            }
        }
        ([t], _) if !is_resource_type(t) => Reply::error(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!("{raw_path} is not a FHIR resource type or operation"),
        ),
        ([t], &Method::GET) => {
            let params: Vec<(String, String)> =
                form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                    .into_owned()
                    .collect();
            search(state, &base, t, params).await
        }
        ([t], &Method::POST) => {
            let t = t.to_string();
            let body = match read_body(req, state.config.max_body_bytes).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let tt = t.clone();
            match blocking(state, move |s| s.create(&tt, body, Utc::now())).await {
                Ok(w) => written_reply(&base, &t, w),
                Err(r) => r,
            }
        }
        ([t, id], &Method::GET) => {
            let (t, id) = (t.to_string(), id.to_string());
            let tt = t.clone();
            match blocking(state, move |s| s.read(&tt, &id)).await {
                Ok(r) => Reply {
                    status: StatusCode::OK,
                    headers: version_headers(&base, &t, &r),
                    body: r,
                },
                Err(r) => r,
            }
        }
        ([t, id], &Method::PUT) => {
            let (t, id) = (t.to_string(), id.to_string());
            let if_match = req
                .headers()
                .get(IF_MATCH)
                .map(|v| v.to_str().map(str::to_string));
            let if_match = match if_match {
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    return Reply::error(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "the If-Match header is not readable text",
                    )
                }
                None => None,
            };
            let body = match read_body(req, state.config.max_body_bytes).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let tt = t.clone();
            match blocking(state, move |s| {
                s.update(&tt, &id, body, if_match.as_deref(), Utc::now())
            })
            .await
            {
                Ok(w) => written_reply(&base, &t, w),
                Err(r) => r,
            }
        }
        ([t, id, "_history"], &Method::GET) => {
            let (t, id) = (t.to_string(), id.to_string());
            let tt = t.clone();
            match blocking(state, move |s| s.history(&tt, &id)).await {
                Ok(versions) => Reply::json(StatusCode::OK, history_bundle(&base, &t, versions)),
                Err(r) => r,
            }
        }
        ([t, id, "_history", v], &Method::GET) => {
            let (t, id, v) = (t.to_string(), id.to_string(), v.to_string());
            let tt = t.clone();
            match blocking(state, move |s| s.vread(&tt, &id, &v)).await {
                Ok(r) => Reply {
                    status: StatusCode::OK,
                    headers: version_headers(&base, &t, &r),
                    body: r,
                },
                Err(r) => r,
            }
        }
        ([_] | [_, _] | [_, _, "_history"] | [_, _, "_history", _], _) => bad_method(),
        _ => Reply::error(
            StatusCode::NOT_FOUND,
            "not-supported",
            &format!("no FHIR interaction at {raw_path}"),
        ),
    }
}

async fn search(state: &State, base: &str, t: &str, params: Vec<(String, String)>) -> Reply {
    let query = match SearchQuery::parse(&params) {
        Ok(q) => q,
        Err(e) => return Reply::from_error(&e),
    };
    let tt = t.to_string();
    let q = query.clone();
    let page: SearchPage = match blocking(state, move |s| s.search(&tt, &q)).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    Reply::json(StatusCode::OK, searchset(base, t, &params, &query, page))
}

/// A `searchset` Bundle for one page of a search, with `self`/`next`/`previous` links (also the
/// `resource` of a search entry in a batch-response).
pub(crate) fn searchset(
    base: &str,
    t: &str,
    params: &[(String, String)],
    query: &SearchQuery,
    page: SearchPage,
) -> Value {
    let link_to = |offset: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params.iter().filter(|(k, _)| k != "_offset") {
            ser.append_pair(k, v);
        }
        if offset > 0 {
            ser.append_pair("_offset", &offset.to_string());
        }
        let qs = ser.finish();
        if qs.is_empty() {
            format!("{base}/{t}")
        } else {
            format!("{base}/{t}?{qs}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": link_to(query.offset)})];
    let shown = query.offset.saturating_add(page.resources.len());
    if query.count > 0 && !page.resources.is_empty() && (shown as u64) < page.total {
        links.push(json!({"relation": "next", "url": link_to(shown)}));
    }
    if query.count > 0 && query.offset > 0 {
        links.push(json!({"relation": "previous", "url": link_to(query.offset.saturating_sub(query.count))}));
    }
    let entries: Vec<Value> = page
        .resources
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            let full_url = format!("{base}/{t}/{id}");
            object([
                ("fullUrl", Value::String(full_url)),
                ("resource", r),
                ("search", json!({"mode": "match"})),
            ])
        })
        .collect();
    object([
        ("resourceType", json!("Bundle")),
        ("type", json!("searchset")),
        ("total", json!(page.total)),
        ("link", Value::Array(links)),
        ("entry", Value::Array(entries)),
    ])
}

/// A `history` Bundle of `versions` (newest first) of one resource.
pub(crate) fn history_bundle(base: &str, t: &str, versions: Vec<Value>) -> Value {
    let entries: Vec<Value> = versions
        .into_iter()
        .map(|r| {
            let v = r
                .pointer("/meta/versionId")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            let full_url = format!("{base}/{t}/{id}/_history/{v}");
            object([("fullUrl", Value::String(full_url)), ("resource", r)])
        })
        .collect();
    object([
        ("resourceType", json!("Bundle")),
        ("type", json!("history")),
        ("total", json!(entries.len())),
        ("entry", Value::Array(entries)),
    ])
}

/// A JSON object of `members`, moved in. (`json!` would copy every interpolated `Value`: it
/// serialises them into new ones, which for a searchset or a Bundle's answer is every resource.)
pub(crate) fn object<const N: usize>(members: [(&str, Value); N]) -> Value {
    Value::Object(
        members
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn capability_statement() -> Value {
    let search_params = json!([
        {"name": "_id", "type": "token"},
        {"name": "identifier", "type": "token"},
        {"name": "code", "type": "token"},
        {"name": "subject", "type": "reference"},
        {"name": "patient", "type": "reference"},
        {"name": "device", "type": "reference"},
        {"name": "encounter", "type": "reference"},
        {"name": "date", "type": "date"},
        {"name": "_lastUpdated", "type": "date"}
    ]);
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024-01-01",
        "kind": "instance",
        "software": {"name": "iomt fhir-store (development store)", "version": env!("CARGO_PKG_VERSION")},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "A development FHIR store: read, vread, history, create, update (If-Match) and search on every resource type; batch and transaction Bundles (one SQLite transaction per Bundle; If-Match and conditional create per entry). Not for production.",
            "interaction": [{"code": "batch"}, {"code": "transaction"}],
            "resource": [{
                "type": "Resource",
                "versioning": "versioned",
                "updateCreate": true,
                "conditionalCreate": true,
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "history-instance"},
                    {"code": "create"}, {"code": "update"}, {"code": "search-type"}
                ],
                "searchParam": search_params
            }]
        }]
    })
}
