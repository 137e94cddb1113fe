//! A small FHIR R4 REST client: read, search (following `next` links), and update by PUT
//! with `If-Match`. Works with any conformant server: versions are opaque strings.
//! Transient failures are retried with [`RetryPolicy`]; every retry is counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::auth::{Auth, TokenSource};
use crate::bundle::{outcome_text, parse_batch_response, BatchBundle, Entry, EntryOutcome};
use crate::error::WriteError;
use crate::retry::{Attempt, Decision, GiveUp, RetryPolicy};

/// Client settings.
#[derive(Debug, Clone)]
pub struct FhirClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080/fhir/R4` (no trailing slash needed).
    pub base_url: String,
    /// Authentication.
    pub auth: Auth,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Most search pages followed for one search.
    pub max_search_pages: usize,
}

impl FhirClientConfig {
    /// Defaults for a base URL.
    pub fn new(base_url: impl Into<String>) -> Self {
        FhirClientConfig {
            base_url: base_url.into(),
            auth: Auth::None,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            max_search_pages: 100,
        }
    }
}

/// Counters of what the client did (for metrics and reports).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// HTTP requests sent (every attempt).
    pub requests: AtomicU64,
    /// Attempts that were retried after a transient failure.
    pub retries: AtomicU64,
    /// Requests abandoned after the retry deadline.
    pub gave_up: AtomicU64,
    /// `batch` Bundles answered with a batch-response.
    pub bundles: AtomicU64,
    /// Entries per Bundle sent: counts per bucket of [`ENTRY_BUCKETS`] (upper bounds), the
    /// last one for larger Bundles.
    pub bundle_entries: [AtomicU64; ENTRY_BUCKETS.len() + 1],
    /// Entries sent in Bundles, in all.
    pub bundle_entries_sum: AtomicU64,
    /// Outcomes of entries (in Bundles or as single requests), by HTTP status (0: no answer).
    pub entry_statuses: Mutex<BTreeMap<u16, u64>>,
}

/// Upper bounds of the entries-per-Bundle histogram buckets.
pub const ENTRY_BUCKETS: [u64; 9] = [1, 5, 10, 25, 50, 100, 250, 500, 1000];

impl ClientStats {
    fn bundle_sent(&self, entries: usize) {
        let n = entries as u64;
        let at = ENTRY_BUCKETS
            .iter()
            .position(|b| n <= *b)
            .unwrap_or(ENTRY_BUCKETS.len());
        self.bundle_entries[at].fetch_add(1, Ordering::Relaxed);
        self.bundle_entries_sum.fetch_add(n, Ordering::Relaxed);
    }

    fn entry_status(&self, status: u16) {
        if let Ok(mut m) = self.entry_statuses.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    /// The entry outcomes by status so far.
    pub fn entry_statuses(&self) -> BTreeMap<u16, u64> {
        self.entry_statuses
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// A resource with its version (from `ETag` or `meta.versionId`).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// The resource.
    pub resource: Value,
    /// Its version id, if the server gave one.
    pub version: Option<String>,
}

impl crate::cache::Weight for Versioned {
    fn weight(&self) -> usize {
        json_weight(&self.resource) + self.version.as_ref().map_or(0, String::len)
    }
}

/// Roughly the heap a JSON value holds: its strings and keys, plus a node's overhead each.
pub(crate) fn json_weight(v: &Value) -> usize {
    const NODE: usize = 32;
    NODE + match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(json_weight).sum(),
        Value::Object(o) => o.iter().map(|(k, v)| NODE + k.len() + json_weight(v)).sum(),
        _ => 0,
    }
}

/// The FHIR client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FhirClient {
    base: String,
    http: reqwest::Client,
    tokens: TokenSource,
    retry: RetryPolicy,
    max_search_pages: usize,
    request_timeout: Duration,
    stats: Arc<ClientStats>,
}

struct Answer {
    status: StatusCode,
    etag: Option<String>,
    retry_after: Option<String>,
    body: Option<Value>,
}

fn etag_version(etag: &str) -> String {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_string()
}

fn version_of(resource: &Value, etag: Option<&str>) -> Option<String> {
    etag.map(etag_version).or_else(|| {
        resource
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

/// A response body that must be a Bundle (`what`: "search", "history").
fn as_bundle(url: &str, body: Option<Value>, what: &str) -> Result<Value, WriteError> {
    let bundle = body.ok_or_else(|| WriteError::InvalidResponse {
        url: url.to_string(),
        detail: format!("empty {what} body"),
    })?;
    if bundle["resourceType"] != "Bundle" {
        return Err(WriteError::InvalidResponse {
            url: url.to_string(),
            detail: format!("expected a Bundle, got {}", bundle["resourceType"]),
        });
    }
    Ok(bundle)
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

impl FhirClient {
    /// A client for `config`.
    pub fn new(config: FhirClientConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(FhirClient {
            base: config.base_url.trim_end_matches('/').to_string(),
            tokens: TokenSource::new(config.auth, http.clone(), &config.base_url),
            http,
            retry: config.retry,
            max_search_pages: config.max_search_pages,
            request_timeout: config.request_timeout,
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The retry policy (the writer also backs off by it between version conflicts).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// What the client has done so far.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Tokens issued, reused and refused (all zero without OAuth2).
    pub fn token_stats(&self) -> &crate::auth::TokenStats {
        self.tokens.stats()
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, WriteError> {
        let encoded = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let body = encoded.as_deref().map(|b| (b, "return=representation"));
        self.send_timed(method, url, query, body, if_match, None)
            .await
    }

    /// [`Self::send`] with a body already encoded (and the `Prefer` header it goes with), and a
    /// timeout of its own instead of the client's (a Bundle does the work of many requests).
    async fn send_timed(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        body: Option<(&[u8], &'static str)>,
        if_match: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Answer, WriteError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut reauthenticated = false;
        loop {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(method.clone(), url)
                .header("accept", "application/fhir+json");
            if !query.is_empty() {
                req = req.query(query);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let sent_auth = self.tokens.header().await?;
            if let Some(auth) = &sent_auth {
                req = req.header("authorization", auth);
            }
            if let Some(v) = if_match {
                req = req.header("if-match", format!("W/\"{v}\""));
            }
            if let Some((b, prefer)) = body {
                req = req
                    .header("content-type", "application/fhir+json")
                    .header("prefer", prefer)
                    .body(b.to_vec());
            }
            let (what, last): (Attempt<'_>, String);
            let retry_after_owned: Option<String>;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let etag = resp
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    retry_after_owned = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let bytes = match resp.bytes().await {
                        Ok(b) => Some(b),
                        Err(e) if status.is_success() => {
                            // The body was cut off: treat like a dropped connection.
                            tracing::debug!(error = %e, %url, "Response body interrupted.");
                            None
                        }
                        Err(_) => None,
                    };
                    let parsed: Option<Value> = bytes
                        .as_ref()
                        .filter(|b| !b.is_empty())
                        .and_then(|b| serde_json::from_slice(b).ok());
                    if status.is_success() && (bytes.is_some() || method == Method::DELETE) {
                        return Ok(Answer {
                            status,
                            etag,
                            retry_after: retry_after_owned,
                            body: parsed,
                        });
                    }
                    if status.is_success() {
                        what = Attempt::Connection;
                        last = "response body interrupted".into();
                    } else if status == StatusCode::UNAUTHORIZED && !reauthenticated {
                        reauthenticated = true;
                        self.tokens.invalidate(sent_auth.as_deref()).await;
                        continue;
                    } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
                        return Ok(Answer {
                            status,
                            etag,
                            retry_after: retry_after_owned,
                            body: parsed,
                        });
                    } else if status == StatusCode::CONFLICT
                        || status == StatusCode::PRECONDITION_FAILED
                    {
                        return Err(WriteError::Conflict {
                            method: method.to_string(),
                            url: url.to_string(),
                            status: status.as_u16(),
                        });
                    } else {
                        what = Attempt::Status {
                            code: status.as_u16(),
                            retry_after: retry_after_owned.as_deref(),
                        };
                        last = format!("HTTP {}: {}", status.as_u16(), outcome_text(&parsed));
                        if !crate::retry::is_retryable_status(status.as_u16()) {
                            return Err(WriteError::Rejected {
                                method: method.to_string(),
                                url: url.to_string(),
                                status: status.as_u16(),
                                outcome: outcome_text(&parsed),
                            });
                        }
                    }
                }
                Err(e) => {
                    what = Attempt::Connection;
                    last = e.to_string();
                }
            }
            match self.retry.decide(
                what,
                attempt,
                started.elapsed(),
                jitter(),
                chrono::Utc::now(),
            ) {
                Decision::RetryAfter(delay) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    // The query (identifiers) stays out of logs above debug.
                    let path = url.split('?').next().unwrap_or(url);
                    tracing::warn!(%method, url = %path, attempt, delay_ms = delay.as_millis() as u64, status = %last.split(':').next().unwrap_or(""), "FHIR request failed; retrying.");
                    tracing::debug!(%method, %url, reason = %last, "FHIR request failure detail.");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Decision::GiveUp(GiveUp::NotRetryable) => {
                    return Err(WriteError::Rejected {
                        method: method.to_string(),
                        url: url.to_string(),
                        status: 0,
                        outcome: last,
                    })
                }
                Decision::GiveUp(GiveUp::DeadlineExceeded) => {
                    self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                    return Err(WriteError::GaveUp {
                        method: method.to_string(),
                        url: url.to_string(),
                        attempts: attempt + 1,
                        elapsed: started.elapsed(),
                        last,
                    });
                }
            }
        }
    }

    /// Reads `type/id`; `Ok(None)` when it does not exist.
    pub async fn read(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Versioned>, WriteError> {
        let url = format!("{}/{resource_type}/{id}", self.base);
        let a = self.send(Method::GET, &url, &[], None, None).await?;
        if a.status == StatusCode::NOT_FOUND || a.status == StatusCode::GONE {
            return Ok(None);
        }
        let resource = a.body.ok_or_else(|| WriteError::InvalidResponse {
            url: url.clone(),
            detail: "empty body".into(),
        })?;
        let version = version_of(&resource, a.etag.as_deref());
        Ok(Some(Versioned { resource, version }))
    }

    /// The versions of `type/id`, newest first (the first page of its history, which is
    /// where recent writes are); empty when it does not exist.
    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Vec<Versioned>, WriteError> {
        let url = format!("{}/{resource_type}/{id}/_history", self.base);
        let a = self
            .send(Method::GET, &url, &[("_count", "20")], None, None)
            .await?;
        if a.status == StatusCode::NOT_FOUND || a.status == StatusCode::GONE {
            return Ok(Vec::new());
        }
        let bundle = as_bundle(&url, a.body, "history")?;
        Ok(bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource"))
            .map(|r| Versioned {
                version: version_of(r, None),
                resource: r.clone(),
            })
            .collect())
    }

    /// Searches `type?params`, following `next` links; returns the matched resources.
    pub async fn search(
        &self,
        resource_type: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<Value>, WriteError> {
        let mut url = format!("{}/{resource_type}", self.base);
        let mut out = Vec::new();
        let mut query: Vec<(&str, &str)> = params.to_vec();
        for _ in 0..self.max_search_pages {
            let a = self.send(Method::GET, &url, &query, None, None).await?;
            if a.status == StatusCode::NOT_FOUND {
                return Err(WriteError::Rejected {
                    method: "GET".into(),
                    url,
                    status: 404,
                    outcome: outcome_text(&a.body),
                });
            }
            let bundle = as_bundle(&url, a.body, "search")?;
            let (matches, next) = searchset_matches(bundle);
            out.extend(matches);
            match next {
                Some(n) => {
                    url = n;
                    query.clear();
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Searches by identifier and keeps only resources whose identifier matches exactly
    /// (the whole value, and the system when one is given).
    pub async fn search_by_identifier(
        &self,
        resource_type: &str,
        system: Option<&str>,
        value: &str,
    ) -> Result<Vec<Versioned>, WriteError> {
        let token = match system {
            Some(s) => format!("{s}|{value}"),
            None => value.to_string(),
        };
        let found = self
            .search(resource_type, &[("identifier", token.as_str())])
            .await?;
        Ok(found
            .into_iter()
            .filter(|r| {
                r["identifier"].as_array().is_some_and(|ids| {
                    ids.iter().any(|i| {
                        i["value"].as_str() == Some(value)
                            && system.is_none_or(|s| i["system"].as_str() == Some(s))
                    })
                })
            })
            .map(|resource| {
                let version = version_of(&resource, None);
                Versioned { resource, version }
            })
            .collect())
    }

    /// Creates or updates `resource` by PUT to its id; with `if_match`, only if the server's
    /// version is still that one (else [`WriteError::Conflict`]).
    pub async fn put(
        &self,
        resource: &Value,
        if_match: Option<&str>,
    ) -> Result<Versioned, WriteError> {
        let (Some(rt), Some(id)) = (resource["resourceType"].as_str(), resource["id"].as_str())
        else {
            return Err(WriteError::InvalidResponse {
                url: self.base.clone(),
                detail: "a resource to PUT needs resourceType and id".into(),
            });
        };
        let url = format!("{}/{rt}/{id}", self.base);
        let a = self
            .send(Method::PUT, &url, &[], Some(resource), if_match)
            .await?;
        if a.status == StatusCode::NOT_FOUND {
            return Err(WriteError::Rejected {
                method: "PUT".into(),
                url,
                status: 404,
                outcome: outcome_text(&a.body),
            });
        }
        let written = a.body.unwrap_or_else(|| resource.clone());
        let version = version_of(&written, a.etag.as_deref());
        Ok(Versioned {
            resource: written,
            version,
        })
    }

    /// The server's CapabilityStatement (`GET [base]/metadata`); `None` when it has none.
    pub async fn capabilities(&self) -> Result<Option<Value>, WriteError> {
        let url = format!("{}/metadata", self.base);
        let a = self.send(Method::GET, &url, &[], None, None).await?;
        Ok(a.body
            .filter(|b| a.status.is_success() && b["resourceType"] == "CapabilityStatement"))
    }

    /// Sends `entries` as one `batch` Bundle (the Bundle itself retried on transient failures
    /// like any request) and returns each entry's outcome, in order. An error is about the
    /// Bundle as a whole: [`WriteError::Rejected`] or [`WriteError::InvalidResponse`] when the
    /// server does not process it as a batch (the writer then falls back to single requests),
    /// [`WriteError::GaveUp`] when the server stayed unavailable.
    pub async fn batch(&self, entries: &[Entry]) -> Result<Vec<EntryOutcome>, WriteError> {
        let bundle = BatchBundle(entries);
        let encoded = serde_json::to_vec(&bundle).unwrap_or_default();
        let url = self.base.clone();
        self.stats.bundle_sent(entries.len());
        // A Bundle does the work of its entries: the request timeout once per 10 entries,
        // at most 10 minutes.
        let per = u32::try_from(entries.len().div_ceil(10).max(1)).unwrap_or(u32::MAX);
        let timeout = self
            .request_timeout
            .saturating_mul(per)
            .min(Duration::from_secs(600));
        let a = match self
            .send_timed(
                Method::POST,
                &url,
                &[],
                Some((&encoded, bundle.prefer())),
                None,
                Some(timeout),
            )
            .await
        {
            Ok(a) => a,
            Err(WriteError::Conflict { status, .. }) => {
                return Err(WriteError::Rejected {
                    method: "POST".into(),
                    url,
                    status,
                    outcome: "the Bundle itself was answered with a version conflict".into(),
                })
            }
            Err(e) => return Err(e),
        };
        if !a.status.is_success() {
            return Err(WriteError::Rejected {
                method: "POST".into(),
                url,
                status: a.status.as_u16(),
                outcome: outcome_text(&a.body),
            });
        }
        let body = a.body.unwrap_or(Value::Null);
        let outcomes = parse_batch_response(&body, entries.len(), a.retry_after.as_deref())
            .map_err(|detail| WriteError::InvalidResponse {
                url: url.clone(),
                detail,
            })?;
        self.stats.bundles.fetch_add(1, Ordering::Relaxed);
        for o in &outcomes {
            self.stats.entry_status(o.status());
        }
        Ok(outcomes)
    }

    /// Sends one entry as a single request (retried on transient failures up to the deadline).
    pub async fn single(&self, entry: &Entry) -> EntryOutcome {
        let url = format!("{}/{}", self.base, entry.url());
        let answer = match entry {
            Entry::Get { .. } => self.send(Method::GET, &url, &[], None, None).await,
            Entry::Put { resource, if_match } => {
                self.send(Method::PUT, &url, &[], Some(resource), if_match.as_deref())
                    .await
            }
        };
        let outcome = match answer {
            Ok(a) => {
                let version = a
                    .body
                    .as_ref()
                    .and_then(|b| version_of(b, a.etag.as_deref()))
                    .or_else(|| a.etag.as_deref().map(etag_version));
                EntryOutcome::classify(
                    a.status.as_u16(),
                    a.body.clone(),
                    version,
                    outcome_text(&a.body),
                    a.retry_after.as_deref(),
                )
            }
            Err(WriteError::Conflict { status, .. }) => EntryOutcome::Conflict { status },
            Err(WriteError::Rejected {
                status, outcome, ..
            }) => EntryOutcome::Refused { status, outcome },
            Err(WriteError::InvalidResponse { detail, .. }) => EntryOutcome::Refused {
                status: 0,
                outcome: format!("invalid response: {detail}"),
            },
            Err(e @ (WriteError::GaveUp { .. } | WriteError::Auth(_))) => {
                EntryOutcome::Unavailable {
                    status: None,
                    retry_after: None,
                    detail: e.to_string(),
                    exhausted: true,
                }
            }
        };
        self.stats.entry_status(outcome.status());
        outcome
    }

    /// The matches of a search from an absolute URL (a searchset's `next` link), following
    /// further `next` links.
    pub async fn search_from(&self, next: &str) -> Result<Vec<Value>, WriteError> {
        let mut out = Vec::new();
        let mut url = next.to_string();
        for _ in 0..self.max_search_pages {
            let a = self.send(Method::GET, &url, &[], None, None).await?;
            let bundle = as_bundle(&url, a.body, "search")?;
            let (matches, next) = searchset_matches(bundle);
            out.extend(matches);
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(out)
    }
}

/// The `match` resources of a searchset Bundle and its `next` link (moved out of it).
pub fn searchset_matches(mut bundle: Value) -> (Vec<Value>, Option<String>) {
    let next = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string);
    let mut out = Vec::new();
    if let Some(Value::Array(entries)) = bundle.get_mut("entry").map(Value::take) {
        for mut e in entries {
            let mode = e
                .pointer("/search/mode")
                .and_then(Value::as_str)
                .unwrap_or("match");
            if mode == "match" {
                if let Some(r) = e.get_mut("resource") {
                    out.push(r.take());
                }
            }
        }
    }
    (out, next)
}

/// Whether `resource` carries the identifier `value` (and `system`, when given), exactly.
pub fn has_exact_identifier(resource: &Value, system: Option<&str>, value: &str) -> bool {
    resource["identifier"].as_array().is_some_and(|ids| {
        ids.iter().any(|i| {
            i["value"].as_str() == Some(value)
                && system.is_none_or(|s| i["system"].as_str() == Some(s))
        })
    })
}
