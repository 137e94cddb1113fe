//! `batch` and `transaction` Bundles (`POST [base]` with a Bundle), each run in one SQLite
//! transaction.
//!
//! * `batch`: every entry is processed on its own and answered in its own `response` (status,
//!   `location`, `etag`, `lastModified`, and an `OperationOutcome` when it failed); the Bundle as
//!   a whole is 200. An entry fails before it writes anything, so a failing entry leaves nothing
//!   behind; a database failure while writing fails the whole Bundle (500, nothing written).
//! * `transaction`: all entries or none; the first failing entry rolls everything back and the
//!   Bundle is answered with that entry's status and `OperationOutcome`.
//!
//! Entries: `GET` read, vread, history and search; `PUT [type]/[id]` with `request.ifMatch`
//! (412 when stale); `POST [type]` with `request.ifNoneExist` (conditional create: 200 with the
//! one match, 412 when several match). Entries are processed in Bundle order; `urn:uuid:`
//! references between entries of a transaction are not resolved.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::http::{history_bundle, object, searchset, segments};
use crate::search::SearchQuery;
use crate::store::{
    create_in, history_in, read_in, search_in, update_in, vread_in, SearchPage, Written,
};
use crate::{Store, StoreError};

/// The kinds of Bundle the store processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Transaction,
}

/// One entry's answer.
struct Answered {
    status: u16,
    resource: Option<Value>,
    outcome: Option<Value>,
    location: Option<String>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        500 => "Internal Server Error",
        _ => "",
    }
}

impl Store {
    /// Processes a `batch` or `transaction` Bundle in one SQLite transaction and returns the
    /// `batch-response` / `transaction-response` Bundle. `base` is the server's base URL (for
    /// `fullUrl`s and search links). A malformed Bundle, or a failing entry of a transaction, is
    /// an error (a failing entry of a batch is answered in its entry).
    pub fn bundle(
        &self,
        bundle: &Value,
        base: &str,
        now: DateTime<Utc>,
    ) -> Result<Value, StoreError> {
        self.bundle_with(bundle.clone(), base, now, Return::Representation)
    }

    /// [`Store::bundle`] answering writes as `ret` asks: with `Prefer: return=minimal` a write
    /// entry's response holds its status, `location`, `etag` and `lastModified` but not the
    /// resource (a writer that keeps what it sent saves the server the encoding and itself the
    /// decoding of every resource it wrote). Reads and searches always carry their resources.
    /// The Bundle is taken by value: each entry's resource is moved into the store, not copied.
    pub fn bundle_with(
        &self,
        mut bundle: Value,
        base: &str,
        now: DateTime<Utc>,
        ret: Return,
    ) -> Result<Value, StoreError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(StoreError::Invalid(
                "POST to the base URL takes a Bundle of type batch or transaction".into(),
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("batch") => Kind::Batch,
            Some("transaction") => Kind::Transaction,
            other => {
                return Err(StoreError::Invalid(format!(
                    "Bundle type {} is not processed: only batch and transaction are",
                    other.map_or("(none)".to_string(), |t| format!("{t:?}"))
                )))
            }
        };
        let entries = match bundle.get_mut("entry").map(Value::take) {
            None => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(StoreError::Invalid("Bundle.entry is not an array".into())),
        };
        let answers = self.in_transaction(|tx| {
            let mut out = Vec::with_capacity(entries.len());
            for (index, entry) in entries.into_iter().enumerate() {
                match kind {
                    Kind::Transaction => match run_entry(tx, entry, base, now) {
                        Ok(a) => out.push(a),
                        Err(e) => {
                            return Err(StoreError::Entry {
                                index,
                                source: Box::new(e),
                            })
                        }
                    },
                    // No savepoint per entry: an entry fails on its own only before it writes
                    // anything (its checks, its version, its condition, a stored version that
                    // cannot be decoded all come first); once it writes, only the database can
                    // fail, and that fails the Bundle as a whole (rolled back, 500), which a
                    // client retries like any 5xx. A savepoint per entry cost about a third of
                    // a Bundle of creates (its journal pages copied for every entry).
                    Kind::Batch => match run_entry(tx, entry, base, now) {
                        Ok(a) => out.push(a),
                        Err(e @ StoreError::Database(_)) => return Err(e),
                        Err(e) => out.push(failed(&e)),
                    },
                }
            }
            Ok(out)
        })?;
        let response_type = match kind {
            Kind::Batch => "batch-response",
            Kind::Transaction => "transaction-response",
        };
        let entries: Vec<Value> = answers
            .into_iter()
            .map(|a| answer_json(a, base, ret))
            .collect();
        Ok(object([
            ("resourceType", json!("Bundle")),
            ("type", json!(response_type)),
            ("entry", Value::Array(entries)),
        ]))
    }
}

fn failed(e: &StoreError) -> Answered {
    if e.status() >= 500 {
        tracing::warn!(error = %e, "FHIR store Bundle entry failed.");
    }
    Answered {
        status: e.status(),
        resource: None,
        outcome: Some(e.outcome()),
        location: None,
    }
}

/// What a write entry's response carries (the `Prefer: return=` header of the Bundle's POST).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    /// The written resource (the default).
    #[default]
    Representation,
    /// Status, location, etag and lastModified only.
    Minimal,
}

fn answer_json(a: Answered, base: &str, ret: Return) -> Value {
    // A write is answered with a location; reads and searches are not.
    let drop_resource = ret == Return::Minimal && a.location.is_some();
    let mut response =
        json!({"status": format!("{} {}", a.status, reason(a.status)).trim_end().to_string()});
    if let Some(l) = &a.location {
        response["location"] = json!(l);
    }
    if let Some(o) = a.outcome {
        response["outcome"] = o;
    }
    let mut entry = json!({});
    if let Some(r) = a.resource {
        let version = r.pointer("/meta/versionId").and_then(Value::as_str);
        if let Some(v) = version {
            response["etag"] = json!(format!("W/\"{v}\""));
        }
        if let Some(t) = r.pointer("/meta/lastUpdated").and_then(Value::as_str) {
            response["lastModified"] = json!(t);
        }
        if let (Some(t), Some(id)) = (
            r.get("resourceType").and_then(Value::as_str),
            r.get("id").and_then(Value::as_str),
        ) {
            if t != "Bundle" {
                entry["fullUrl"] = json!(format!("{base}/{t}/{id}"));
            }
        }
        if !drop_resource {
            entry["resource"] = r;
        }
    }
    entry["response"] = response;
    entry
}

fn written(resource_type: &str, w: Written) -> Answered {
    let id = w
        .resource
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Answered {
        status: if w.created { 201 } else { 200 },
        location: Some(format!("{resource_type}/{id}/_history/{}", w.version)),
        resource: Some(w.resource),
        outcome: None,
    }
}

fn found(resource: Value) -> Answered {
    Answered {
        status: 200,
        resource: Some(resource),
        outcome: None,
        location: None,
    }
}

/// The path (below the base) and query of an entry's `request.url`: relative (`Patient/1`,
/// `/Patient?identifier=x`) or absolute (`http://host/fhir/R4/Patient/1`).
fn split_url(url: &str) -> (String, String) {
    let mut rest = url;
    // Absolute only when the URL itself starts with a scheme (a query may hold "https://").
    let before_query = rest.split('?').next().unwrap_or("");
    if let Some(at) = before_query.find("://") {
        let after = &rest[at + 3..];
        rest = after.find(['/', '?']).map_or("", |cut| &after[cut..]);
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut path = path.trim_start_matches('/').to_string();
    for prefix in ["fhir/R4/", "fhir/"] {
        if let Some(p) = path.strip_prefix(prefix) {
            path = p.to_string();
            break;
        }
    }
    (path, query.to_string())
}

fn run_entry(
    tx: &Connection,
    mut entry: Value,
    base: &str,
    now: DateTime<Utc>,
) -> Result<Answered, StoreError> {
    // Moved out (a Bundle of writes is mostly its resources); the entry's other members stay.
    let resource = entry.as_object_mut().and_then(|e| e.remove("resource"));
    let request = entry
        .get("request")
        .ok_or_else(|| StoreError::Invalid("the entry has no request".into()))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Invalid("the entry's request has no url".into()))?;
    let (path, query) = split_url(url);
    let segs = segments(&path);
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let resource = move || {
        resource.ok_or_else(|| StoreError::Invalid(format!("the {method} entry has no resource")))
    };
    match (method, seg.as_slice()) {
        ("GET", [t]) => {
            let q = SearchQuery::parse(&params)?;
            let page: SearchPage = search_in(tx, t, &q)?;
            Ok(found(searchset(base, t, &params, &q, page)))
        }
        ("GET", [t, id]) => read_in(tx, t, id).map(found),
        ("GET", [t, id, "_history"]) => {
            history_in(tx, t, id).map(|versions| found(history_bundle(base, t, versions)))
        }
        ("GET", [t, id, "_history", v]) => vread_in(tx, t, id, v).map(found),
        ("PUT", [t, id]) => {
            let if_match = request.get("ifMatch").and_then(Value::as_str);
            update_in(tx, t, id, resource()?, if_match, now).map(|w| written(t, w))
        }
        ("POST", [t]) => {
            let body = resource()?;
            if let Some(condition) = request.get("ifNoneExist").and_then(Value::as_str) {
                let condition = condition.split_once('?').map_or(condition, |(_, q)| q);
                let cparams: Vec<(String, String)> = form_urlencoded::parse(condition.as_bytes())
                    .into_owned()
                    .filter(|(k, _)| !k.starts_with('_'))
                    .chain([("_count".to_string(), "2".to_string())])
                    .collect();
                let q = SearchQuery::parse(&cparams)?;
                if q.filters.is_empty() {
                    return Err(StoreError::Invalid(
                        "ifNoneExist names no search parameter".into(),
                    ));
                }
                let page = search_in(tx, t, &q)?;
                match page.total {
                    0 => {}
                    1 => return Ok(found(page.resources.into_iter().next().unwrap_or(Value::Null))),
                    n => {
                        return Err(StoreError::PreconditionFailed(format!(
                            "ifNoneExist {condition:?} matches {n} {t} resources"
                        )))
                    }
                }
            }
            create_in(tx, t, body, now).map(|w| written(t, w))
        }
        ("GET" | "PUT" | "POST" | "DELETE" | "PATCH" | "HEAD", _) => Err(StoreError::NotSupported(format!(
            "{method} {url} is not supported in a Bundle entry (GET read/vread/history/search, PUT [type]/[id], POST [type])"
        ))),
        _ => Err(StoreError::Invalid(format!(
            "the entry's request method {method:?} is not an HTTP method FHIR uses"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_urls() {
        assert_eq!(split_url("Patient/1"), ("Patient/1".into(), "".into()));
        assert_eq!(
            split_url("/Observation?identifier=a%7Cb"),
            ("Observation".into(), "identifier=a%7Cb".into())
        );
        assert_eq!(
            split_url("http://h:1/fhir/R4/Device/x/_history/2"),
            ("Device/x/_history/2".into(), "".into())
        );
        assert_eq!(split_url("http://h:1"), ("".into(), "".into()));
        // A query that holds a URL (an identifier system) is still a relative URL.
        assert_eq!(
            split_url("Observation?identifier=https://x/y|v"),
            ("Observation".into(), "identifier=https://x/y|v".into())
        );
    }
}
