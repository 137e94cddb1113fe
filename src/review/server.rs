//! The review page's HTTP server: routes, the sign-in guard, security headers, the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::auth::{self, Callback, SignIn, User};
use super::{triage, Freshness, ReviewOptions, Thresholds};

/// The audit log's tracing target.
pub const AUDIT_TARGET: &str = "iomt_review_audit";

struct AppState {
    client: fhir_writer::FhirClient,
    one_page: fhir_writer::FhirClient,
    metrics_url: Option<String>,
    thresholds: Thresholds,
    dead_letters: Option<std::path::PathBuf>,
    freshness: Freshness,
    snapshot: triage::Shared,
    built: tokio::sync::watch::Receiver<u64>,
    wake: Arc<tokio::sync::Notify>,
    refresh: Duration,
    sign_in: Option<SignIn>,
    csp: HeaderValue,
}

type St = State<Arc<AppState>>;

fn audit(user: &User, action: &str, patient: &str) {
    tracing::info!(
        target: AUDIT_TARGET,
        user = %user.sub,
        action,
        patient = %format!("Patient/{patient}"),
        "Patient data viewed."
    );
}

fn fail(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

/// Adds the security headers to every answer.
fn secure(state: &AppState, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, state.csp.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if state.sign_in.as_ref().is_some_and(SignIn::secure) {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

/// Lets a request through with its [`User`], or sends it to sign in (pages) or answers 401
/// (the API).
async fn guard(State(state): St, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let open = path.starts_with("/auth/") || path == "/review.css";
    let user = match &state.sign_in {
        None => Some(User {
            sub: "anonymous".into(),
            name: String::new(),
            groups: Vec::new(),
            claims_from: "",
        }),
        Some(si) => {
            auth::cookie_value(req.headers(), auth::SESSION_COOKIE).and_then(|c| si.user(c))
        }
    };
    let resp = match user {
        Some(u) => {
            req.extensions_mut().insert(u);
            next.run(req).await
        }
        None if open => next.run(req).await,
        None if path.starts_with("/api/") => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "sign in first: /auth/login"})),
        )
            .into_response(),
        None => {
            let target = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let mut u = openidconnect::url::Url::parse("http://x/auth/login").expect("url");
            u.query_pairs_mut().append_pair("next", &target);
            Redirect::to(&format!("/auth/login?{}", u.query().unwrap_or(""))).into_response()
        }
    };
    secure(&state, resp)
}

fn page_html(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <link rel=\"stylesheet\" href=\"/review.css\"></head><body><header><span class=\"brand\">iomt review</span></header>\
         <main class=\"message\"><h1>{title}</h1>{body}</main></body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn login(State(state): St, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let Some(si) = &state.sign_in else {
        return Redirect::to("/").into_response();
    };
    let (url, csrf) = si.start(q.get("next").map(String::as_str));
    let mut resp = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&si.cookie(auth::LOGIN_COOKIE, &csrf, "/auth", 600)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn callback(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(si) = &state.sign_in else {
        return Redirect::to("/").into_response();
    };
    let clear = si.cookie(auth::LOGIN_COOKIE, "", "/auth", 0);
    if let Some(err) = q.get("error") {
        let desc = q.get("error_description").cloned().unwrap_or_default();
        tracing::warn!(target: AUDIT_TARGET, error = %err, %desc, "Sign-in failed at the identity provider.");
        return (
            StatusCode::FORBIDDEN,
            page_html(
                "Sign-in failed",
                &format!(
                    "<p>The identity provider answered <code>{}</code>: {}</p><p><a href=\"/auth/login\">Try again</a></p>",
                    escape(err),
                    escape(&desc)
                ),
            ),
        )
            .into_response();
    }
    let (Some(code), Some(st)) = (q.get("code"), q.get("state")) else {
        return (
            StatusCode::BAD_REQUEST,
            page_html("Sign-in failed", "<p>No code or state.</p>"),
        )
            .into_response();
    };
    let cookie_state = auth::cookie_value(&headers, auth::LOGIN_COOKIE);
    let mut resp = match si.callback(code, st, cookie_state).await {
        Ok(Callback::SignedIn {
            session,
            next,
            user,
        }) => {
            tracing::info!(target: AUDIT_TARGET, user = %user.sub, groups = ?user.groups, claims = user.claims_from, "Signed in.");
            let mut r = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&si.cookie(
                auth::SESSION_COOKIE,
                &session,
                "/",
                si.session_secs(),
            )) {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Callback::Refused(user)) => {
            tracing::warn!(target: AUDIT_TARGET, user = %user.sub, groups = ?user.groups, claims = user.claims_from, "Sign-in refused: in none of the allowed groups.");
            (
                StatusCode::FORBIDDEN,
                page_html(
                    "Access refused",
                    &format!(
                        "<p id=\"refused\">{} is signed in at the identity provider but is not a member of a group allowed to use this page. Ask an administrator for access.</p>",
                        escape(&user.name)
                    ),
                ),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(target: AUDIT_TARGET, error = %format!("{e:#}"), "Sign-in failed.");
            (
                StatusCode::FORBIDDEN,
                page_html(
                    "Sign-in failed",
                    &format!(
                        "<p>{}</p><p><a href=\"/auth/login\">Try again</a></p>",
                        escape(&format!("{e:#}"))
                    ),
                ),
            )
                .into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(state): St, headers: HeaderMap) -> Response {
    let Some(si) = &state.sign_in else {
        return Redirect::to("/").into_response();
    };
    let (target, user) = si.logout(auth::cookie_value(&headers, auth::SESSION_COOKIE));
    if let Some(u) = user {
        tracing::info!(target: AUDIT_TARGET, user = %u.sub, "Signed out.");
    }
    let mut r = Redirect::to(&target).into_response();
    if let Ok(v) = HeaderValue::from_str(&si.cookie(auth::SESSION_COOKIE, "", "/", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn signed_out() -> Response {
    page_html(
        "Signed out",
        "<p id=\"signed-out\">You are signed out of the review page.</p><p><a href=\"/\">Sign in again</a></p>",
    )
    .into_response()
}

async fn me(State(state): St, Extension(user): Extension<User>) -> Response {
    Json(json!({
        "signIn": state.sign_in.is_some(),
        "sub": user.sub,
        "name": user.name,
        "groups": user.groups,
    }))
    .into_response()
}

/// Waits for the first snapshot (up to 60 s).
async fn snapshot_ready(state: &AppState) -> bool {
    let mut built = state.built.clone();
    let first = tokio::time::timeout(Duration::from_secs(60), built.wait_for(|n| *n > 0))
        .await
        .is_ok_and(|r| r.is_ok());
    if !first {
        return false;
    }
    // Older than a refresh (the background rebuild is late or asleep): rebuild now, waiting a
    // few seconds for it; else the snapshot there is.
    let stale = state
        .snapshot
        .read()
        .await
        .built
        .is_none_or(|t| (Utc::now() - t).to_std().unwrap_or_default() > state.refresh);
    if stale {
        let n = *built.borrow_and_update();
        state.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(5), built.wait_for(|m| *m > n)).await;
    }
    true
}

async fn triage_page(
    State(state): St,
    Extension(user): Extension<User>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if !snapshot_ready(&state).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"loading": true})),
        )
            .into_response();
    }
    let offset = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let count = q
        .get("count")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50usize)
        .clamp(1, 500);
    let snap = state.snapshot.read().await;
    let page = triage::page(
        &snap,
        Utc::now(),
        &state.freshness,
        q.get("q").map(String::as_str),
        offset,
        count,
    );
    // The list shows many patients' latest vitals: logged too, by how many (no ids, and not
    // the filter, which may be an identifier).
    tracing::info!(
        target: AUDIT_TARGET,
        user = %user.sub,
        action = "view-list",
        offset,
        patients = page["patients"].as_array().map_or(0, Vec::len),
        "Patient list viewed."
    );
    Json(page).into_response()
}

async fn all_patients(State(state): St) -> Response {
    if !snapshot_ready(&state).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"loading": true})),
        )
            .into_response();
    }
    let snap = state.snapshot.read().await;
    if snap.built.is_none() {
        return fail(snap.error.clone().unwrap_or_default());
    }
    let page = triage::page(&snap, Utc::now(), &state.freshness, None, 0, usize::MAX);
    Json(page["patients"].clone()).into_response()
}

fn window(q: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let mut params = Vec::new();
    if let Some(f) = q.get("from") {
        params.push(("date", format!("ge{f}")));
    }
    if let Some(t) = q.get("to") {
        params.push(("date", format!("le{t}")));
    }
    params
}

async fn observations(
    state: &AppState,
    id: &str,
    q: &BTreeMap<String, String>,
) -> Result<Vec<Value>, fhir_writer::WriteError> {
    let subject = format!("Patient/{id}");
    let mut params: Vec<(&str, String)> = vec![("subject", subject), ("_count", "1000".into())];
    params.extend(window(q));
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    state.client.search("Observation", &params).await
}

async fn patient(
    State(state): St,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
) -> Response {
    audit(&user, "view-patient", &id);
    let subject = format!("Patient/{id}");
    let by_id = [("_id", id.as_str())];
    let of_patient = [("patient", subject.as_str())];
    let latest = [
        ("subject", subject.as_str()),
        ("_sort", "-date"),
        ("_count", "200"),
    ];
    let found = tokio::try_join!(
        state.client.search("Patient", &by_id),
        state.client.search("Device", &of_patient),
        state.one_page.search("Observation", &latest),
    );
    let (patients, devices, obs) = match found {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let Some(p) = patients.first() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such patient"})),
        )
            .into_response();
    };
    let now = Utc::now();
    let row = triage::Row {
        id: id.clone(),
        identifier: p["identifier"][0]["value"].as_str().map(str::to_string),
        name: p["name"][0]["text"].as_str().map(str::to_string),
        devices: devices
            .iter()
            .map(|d| {
                (
                    d["id"].as_str().unwrap_or_default().to_string(),
                    d["identifier"][0]["value"].as_str().map(str::to_string),
                )
            })
            .collect(),
        vitals: super::latest(&obs, now, &state.thresholds)["vitals"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
        last_seen: last_seen(&obs),
        sparks: BTreeMap::new(),
    };
    Json(triage::row_json(&row, now, &state.freshness)).into_response()
}

fn last_seen(obs: &[Value]) -> BTreeMap<String, DateTime<Utc>> {
    let mut out = BTreeMap::new();
    for o in obs {
        let (Some(d), Some(start)) = (o["device"]["reference"].as_str(), super::start_of(o)) else {
            continue;
        };
        let end = o["effectivePeriod"]["end"]
            .as_str()
            .and_then(normalizer::value::parse_timestamp)
            .unwrap_or(start);
        let d = d
            .rsplit_once("Device/")
            .map_or(d.to_string(), |(_, id)| format!("Device/{id}"));
        let e: &mut DateTime<Utc> = out.entry(d).or_insert(end);
        if end > *e {
            *e = end;
        }
    }
    out
}

fn max_points(q: &BTreeMap<String, String>) -> usize {
    q.get("points")
        .and_then(|p| p.parse().ok())
        .unwrap_or(600usize)
        .clamp(10, 5000)
}

async fn charts(
    State(state): St,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    audit(&user, "view-charts", &id);
    match observations(&state, &id, &q).await {
        Ok(obs) => Json(json!({
            "from": q.get("from"),
            "to": q.get("to"),
            "charts": triage::charts(&obs, max_points(&q), &state.thresholds),
        }))
        .into_response(),
        Err(e) => fail(e),
    }
}

async fn waveform(
    State(state): St,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    audit(&user, "view-waveform", &id);
    let parse = |k: &str| q.get(k).and_then(|v| normalizer::value::parse_timestamp(v));
    let (Some(key), Some(from), Some(to)) = (q.get("key"), parse("from"), parse("to")) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "waveform needs key, from and to"})),
        )
            .into_response();
    };
    match observations(&state, &id, &q).await {
        Ok(obs) => match triage::waveform(&obs, key, from, to, 20_000) {
            Ok(v) => Json(v).into_response(),
            Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
        },
        Err(e) => fail(e),
    }
}

async fn series(
    State(state): St,
    Extension(user): Extension<User>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    audit(&user, "view-series", &id);
    match observations(&state, &id, &q).await {
        Ok(obs) => Json(json!(super::series(&obs, max_points(&q)))).into_response(),
        Err(e) => fail(e),
    }
}

async fn dead_letters(State(s): St) -> Response {
    let Some(dir) = &s.dead_letters else {
        return Json(json!([])).into_response();
    };
    match pipeline::deadletter::DeadLetterStore::open(dir).and_then(|d| d.list()) {
        Ok(list) => Json(json!(list
            .iter()
            .rev()
            .take(50)
            .map(|d| json!({"id": d.id, "time": d.time, "stage": d.stage, "errorType": d.error_type, "message": d.message}))
            .collect::<Vec<_>>()))
        .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn dead_letter(State(s): St, Path(id): Path<String>) -> Response {
    let Some(dir) = &s.dead_letters else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match pipeline::deadletter::DeadLetterStore::open(dir).and_then(|d| d.get(&id)) {
        Ok(dl) => Json(json!(dl)).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn health(state: &AppState) -> Value {
    let Some(url) = &state.metrics_url else {
        return json!({"available": false});
    };
    let Ok(resp) = reqwest::get(url).await else {
        return json!({"available": false});
    };
    let text = resp.text().await.unwrap_or_default();
    let mut counters = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        if let Some(labels) = name.strip_prefix("iomt_errors_total{") {
            let t = labels
                .split("error_type=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("Other");
            *errors.entry(t.to_string()).or_insert(0.0) += v;
        } else if !name.contains('{') && name.starts_with("iomt_") && name.ends_with("_total") {
            counters.insert(name.to_string(), v);
        } else if let Some((base, _)) = name.split_once('{') {
            if base.ends_with("_total") {
                *counters.entry(base.to_string()).or_insert(0.0) += v;
            }
        }
    }
    json!({"available": true, "counters": counters, "errorsByType": errors})
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Serves the review page until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    fhir: fhir_writer::FhirClientConfig,
    options: ReviewOptions,
) -> Result<()> {
    let mut first_page = fhir.clone();
    first_page.max_search_pages = 1;
    let client = fhir_writer::FhirClient::new(fhir)?;
    let one_page = fhir_writer::FhirClient::new(first_page)?;
    let sign_in = match options.sign_in {
        Some(c) => Some(SignIn::discover(c).await?),
        None => None,
    };
    let issuer_origin = sign_in
        .as_ref()
        .and_then(|s| openidconnect::url::Url::parse(s.issuer()).ok())
        .map(|u| format!(" {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    let csp = HeaderValue::from_str(&format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'{issuer_origin}; frame-ancestors 'none'; base-uri 'none'"
    ))?;
    let snapshot = triage::Shared::default();
    let (built_tx, built) = tokio::sync::watch::channel(0u64);
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(triage::refresh_loop(
        client.clone(),
        one_page.clone(),
        options.thresholds.clone(),
        snapshot.clone(),
        built_tx,
        wake.clone(),
        options.refresh,
    ));
    let state = Arc::new(AppState {
        client,
        one_page,
        metrics_url: options.metrics_url,
        thresholds: options.thresholds,
        dead_letters: options.dead_letters,
        freshness: options.freshness,
        snapshot,
        built,
        wake,
        refresh: options.refresh,
        sign_in,
        csp,
    });
    let page = || async { Html(include_str!("page.html")) };
    let app = axum::Router::new()
        .route("/", get(page))
        .route("/patient/:id", get(page))
        .route(
            "/review.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("page.js")) }),
        )
        .route(
            "/review.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("page.css")) }),
        )
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
        .route("/auth/signed-out", get(signed_out))
        .route("/api/me", get(me))
        .route("/api/triage", get(triage_page))
        .route("/api/patients", get(all_patients))
        .route("/api/patients/:id", get(patient))
        .route("/api/patients/:id/charts", get(charts))
        .route("/api/patients/:id/waveform", get(waveform))
        .route("/api/patients/:id/series", get(series))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/:id", get(dead_letter))
        .route(
            "/api/health",
            get(|State(s): St| async move { Json(health(&s).await) }),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}
