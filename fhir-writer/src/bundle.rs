//! FHIR `batch` Bundles: the entries the writer sends, the Bundle they travel in, and what each
//! entry's answer means. Pure: no I/O (the client sends them, the writer decides on the
//! outcomes).
//!
//! A `batch` (not a `transaction`): every entry succeeds or fails on its own, so one stale
//! version or one refused resource costs that entry only, and the server need not hold locks
//! across hundreds of resources. Entries of one Bundle never depend on each other (the writer
//! sends Patients before the Devices that reference them, in separate Bundles).

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// One request, sent as a Bundle entry or, where the server takes no Bundles, on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// `GET` a URL relative to the base: a read (`Patient/1`), a search
    /// (`Observation?identifier=...`, the query already percent-encoded) or a history.
    Get {
        /// Relative URL.
        url: String,
    },
    /// `PUT [type]/[id]`: update, or create with that id; with `If-Match` when `if_match` is a
    /// version id.
    Put {
        /// The resource (with `resourceType` and `id`).
        resource: Value,
        /// The version the update is based on.
        if_match: Option<String>,
    },
}

impl Entry {
    /// A search: `GET [type]?[params]`.
    pub fn search(resource_type: &str, params: &[(&str, &str)]) -> Entry {
        let mut query = String::new();
        for (i, (k, v)) in params.iter().enumerate() {
            if i > 0 {
                query.push('&');
            }
            query.push_str(&percent_encode(k));
            query.push('=');
            query.push_str(&percent_encode(v));
        }
        Entry::Get {
            url: format!("{resource_type}?{query}"),
        }
    }

    /// The HTTP method.
    pub fn method(&self) -> &'static str {
        match self {
            Entry::Get { .. } => "GET",
            Entry::Put { .. } => "PUT",
        }
    }

    /// The URL relative to the base.
    pub fn url(&self) -> String {
        match self {
            Entry::Get { url } => url.clone(),
            Entry::Put { resource, .. } => format!(
                "{}/{}",
                resource["resourceType"].as_str().unwrap_or(""),
                resource["id"].as_str().unwrap_or("")
            ),
        }
    }

    /// Method and resource type only (a search URL holds identifiers, which may be patient
    /// data, so it stays out of logs above debug).
    pub fn describe(&self) -> String {
        let url = self.url();
        let rt = url.split(['/', '?']).next().unwrap_or("");
        format!("{} {rt}", self.method())
    }
}

/// An entry's `request` as it goes into a Bundle.
#[derive(Serialize)]
struct Request {
    method: &'static str,
    url: String,
    #[serde(rename = "ifMatch", skip_serializing_if = "Option::is_none")]
    if_match: Option<String>,
}

/// The entry as it goes into a Bundle (`request`, and the `resource` of a `PUT`), serialised
/// from the entry itself: the resource is not copied into a new `Value` first.
impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let request = Request {
            method: self.method(),
            url: self.url(),
            if_match: match self {
                Entry::Put {
                    if_match: Some(v), ..
                } => Some(format!("W/\"{v}\"")),
                _ => None,
            },
        };
        let mut map = serializer.serialize_map(None)?;
        if let Entry::Put { resource, .. } = self {
            map.serialize_entry("resource", resource)?;
        }
        map.serialize_entry("request", &request)?;
        map.end()
    }
}

/// Percent-encodes a query or form component (everything but RFC 3986's unreserved
/// characters): Bundle entry URLs and the token request's form body.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_unreserved(b) {
            out.push(b as char)
        } else {
            out.push_str(&format!("%{b:02X}"))
        }
    }
    out
}

/// The length of `s` once [`percent_encode`]d.
pub(crate) fn percent_encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| if is_unreserved(b) { 1 } else { 3 })
        .sum()
}

/// RFC 3986's unreserved characters, the only ones left as they are.
fn is_unreserved(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~')
}

/// A `batch` Bundle of `entries`, serialised as it is sent (`serde_json::to_vec`) straight from
/// the entries.
pub struct BatchBundle<'a>(pub &'a [Entry]);

impl Serialize for BatchBundle<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("resourceType", "Bundle")?;
        map.serialize_entry("type", "batch")?;
        map.serialize_entry("entry", self.0)?;
        map.end()
    }
}

impl BatchBundle<'_> {
    /// The `Prefer` header it is sent with: a Bundle of writes only asks for minimal answers
    /// (its entries' status, location and etag; the writer keeps what it sent), one with reads
    /// for the resources.
    pub fn prefer(&self) -> &'static str {
        if self.0.iter().all(|e| matches!(e, Entry::Put { .. })) {
            "return=minimal"
        } else {
            "return=representation"
        }
    }
}

/// What one entry (or one single request) came to.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryOutcome {
    /// 2xx: the resource as the server has it (a searchset or history Bundle for those `GET`s),
    /// if it sent one, and its version.
    Done {
        /// Status code (200, 201, ...).
        status: u16,
        /// The resource in the answer.
        resource: Option<Value>,
        /// Its version id (from `etag`, `location` or `meta.versionId`).
        version: Option<String>,
    },
    /// 404 or 410.
    NotFound {
        /// The status.
        status: u16,
    },
    /// 409 or 412: the resource changed since the version the write was based on.
    Conflict {
        /// The status.
        status: u16,
    },
    /// 408, 429, 5xx, or no answer: worth trying again.
    Unavailable {
        /// The status, if there was an answer.
        status: Option<u16>,
        /// `Retry-After` (of the Bundle's response: entries carry no headers).
        retry_after: Option<String>,
        /// What happened (no patient data).
        detail: String,
        /// Whether the client already retried it until its deadline (single requests), so the
        /// writer must not retry it again.
        exhausted: bool,
    },
    /// Any other 4xx: final for this resource.
    Refused {
        /// The status.
        status: u16,
        /// The server's `OperationOutcome`, as text.
        outcome: String,
    },
}

impl EntryOutcome {
    /// The status code, for metrics (0 when there was no answer).
    pub fn status(&self) -> u16 {
        match self {
            EntryOutcome::Done { status, .. }
            | EntryOutcome::NotFound { status }
            | EntryOutcome::Conflict { status }
            | EntryOutcome::Refused { status, .. } => *status,
            EntryOutcome::Unavailable { status, .. } => status.unwrap_or(0),
        }
    }

    /// What a status means, with the entry's resource and `OperationOutcome`.
    pub fn classify(
        status: u16,
        resource: Option<Value>,
        version: Option<String>,
        outcome: String,
        retry_after: Option<&str>,
    ) -> EntryOutcome {
        match status {
            200..=299 => EntryOutcome::Done {
                status,
                resource,
                version,
            },
            404 | 410 => EntryOutcome::NotFound { status },
            409 | 412 => EntryOutcome::Conflict { status },
            s if crate::retry::is_retryable_status(s) => EntryOutcome::Unavailable {
                status: Some(s),
                retry_after: retry_after.map(str::to_string),
                detail: format!("HTTP {s}: {outcome}"),
                exhausted: false,
            },
            _ => EntryOutcome::Refused { status, outcome },
        }
    }
}

/// The leading status code of `response.status` ("201", "201 Created").
fn status_code(s: &str) -> Option<u16> {
    s.split_whitespace().next()?.parse().ok()
}

/// The version in an `ETag` (`W/"3"`) or a `location` ending in `/_history/3`.
fn version_from(response: &Value) -> Option<String> {
    if let Some(e) = response.get("etag").and_then(Value::as_str) {
        let e = e.trim();
        let e = e.strip_prefix("W/").unwrap_or(e).trim_matches('"');
        if !e.is_empty() {
            return Some(e.to_string());
        }
    }
    let loc = response.get("location").and_then(Value::as_str)?;
    let (_, v) = loc.rsplit_once("/_history/")?;
    (!v.is_empty()).then(|| v.to_string())
}

/// The outcomes of a `batch-response` to a Bundle of `sent` entries, in entry order;
/// `retry_after` is the response's `Retry-After` header. An error says why the answer is not a
/// batch-response for those entries.
pub fn parse_batch_response(
    body: &Value,
    sent: usize,
    retry_after: Option<&str>,
) -> Result<Vec<EntryOutcome>, String> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(format!("expected a Bundle, got {}", body["resourceType"]));
    }
    match body.get("type").and_then(Value::as_str) {
        Some("batch-response") => {}
        other => return Err(format!("expected a batch-response, got type {other:?}")),
    }
    let empty = Vec::new();
    let entries = body
        .get("entry")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if entries.len() != sent {
        return Err(format!(
            "{} entries answered for {sent} sent",
            entries.len()
        ));
    }
    Ok(entries
        .iter()
        .map(|e| {
            let response = e.get("response").cloned().unwrap_or(Value::Null);
            let Some(status) = response
                .get("status")
                .and_then(Value::as_str)
                .and_then(status_code)
            else {
                return EntryOutcome::Unavailable {
                    status: None,
                    retry_after: None,
                    detail: "the entry's answer has no status".into(),
                    exhausted: false,
                };
            };
            let resource = e.get("resource").cloned();
            let version = version_from(&response).or_else(|| {
                resource
                    .as_ref()
                    .and_then(|r| r.pointer("/meta/versionId"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            let outcome = outcome_text(&response.get("outcome").cloned());
            EntryOutcome::classify(status, resource, version, outcome, retry_after)
        })
        .collect())
}

/// The text of an OperationOutcome (or the raw body).
pub fn outcome_text(body: &Option<Value>) -> String {
    match body {
        Some(v) if v["resourceType"] == "OperationOutcome" => {
            let issues: Vec<String> = v["issue"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            i.pointer("/details/text")
                                .or_else(|| i.get("diagnostics"))
                                .and_then(Value::as_str)
                                .or_else(|| i.get("code").and_then(Value::as_str))
                                .unwrap_or("unknown issue")
                                .to_string()
                        })
                        .collect()
                })
                .unwrap_or_default();
            issues.join("; ")
        }
        Some(v) => v.to_string().chars().take(500).collect(),
        None => String::from("(no body)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_as_bundle_json() {
        let search = Entry::search("Observation", &[("identifier", "https://x/|p.d.t 1&2")]);
        assert_eq!(
            search.url(),
            "Observation?identifier=https%3A%2F%2Fx%2F%7Cp.d.t%201%262"
        );
        assert_eq!(search.describe(), "GET Observation");
        let put = Entry::Put {
            resource: json!({"resourceType": "Observation", "id": "abc"}),
            if_match: Some("7".into()),
        };
        let entries = [search, put];
        let b = serde_json::to_value(BatchBundle(&entries)).unwrap();
        assert_eq!(b["type"], "batch");
        assert_eq!(b["entry"][0]["request"]["method"], "GET");
        assert!(b["entry"][0].get("resource").is_none());
        assert_eq!(b["entry"][1]["request"]["url"], "Observation/abc");
        assert_eq!(b["entry"][1]["request"]["ifMatch"], "W/\"7\"");
        assert_eq!(b["entry"][1]["resource"]["id"], "abc");
        assert_eq!(BatchBundle(&entries).prefer(), "return=representation");
        assert_eq!(BatchBundle(&entries[1..]).prefer(), "return=minimal");
    }

    #[test]
    fn outcomes_by_status() {
        let answer = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created", "etag": "W/\"1\""}, "resource": {"id": "a"}},
            {"response": {"status": "200", "location": "Observation/b/_history/u-u-i-d"}},
            {"response": {"status": "200"}, "resource": {"meta": {"versionId": "9"}}},
            {"response": {"status": "412 Precondition Failed"}},
            {"response": {"status": "409"}},
            {"response": {"status": "404 Not Found"}},
            {"response": {"status": "429", "outcome": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "slow down"}]}}},
            {"response": {"status": "503"}},
            {"response": {"status": "422", "outcome": {"resourceType": "OperationOutcome", "issue": [{"details": {"text": "bad code"}}]}}},
            {"response": {"status": "501"}},
            {"response": {}}
        ]});
        let got = parse_batch_response(&answer, 11, Some("2")).unwrap();
        let statuses: Vec<u16> = got.iter().map(EntryOutcome::status).collect();
        assert_eq!(
            statuses,
            [201, 200, 200, 412, 409, 404, 429, 503, 422, 501, 0]
        );
        assert!(
            matches!(&got[0], EntryOutcome::Done { version: Some(v), resource: Some(_), .. } if v == "1")
        );
        assert!(
            matches!(&got[1], EntryOutcome::Done { version: Some(v), resource: None, .. } if v == "u-u-i-d")
        );
        assert!(matches!(&got[2], EntryOutcome::Done { version: Some(v), .. } if v == "9"));
        assert_eq!(got[3], EntryOutcome::Conflict { status: 412 });
        assert_eq!(got[4], EntryOutcome::Conflict { status: 409 });
        assert_eq!(got[5], EntryOutcome::NotFound { status: 404 });
        assert!(
            matches!(&got[6], EntryOutcome::Unavailable { status: Some(429), retry_after: Some(r), exhausted: false, detail } if r == "2" && detail.contains("slow down"))
        );
        assert!(matches!(
            &got[7],
            EntryOutcome::Unavailable {
                status: Some(503),
                ..
            }
        ));
        assert_eq!(
            got[8],
            EntryOutcome::Refused {
                status: 422,
                outcome: "bad code".into()
            }
        );
        // 501 for one entry: that entry's request is not implemented, a final answer.
        assert!(matches!(&got[9], EntryOutcome::Refused { status: 501, .. }));
        assert!(matches!(
            &got[10],
            EntryOutcome::Unavailable { status: None, .. }
        ));
    }

    #[test]
    fn answers_that_are_not_batch_responses() {
        let ok = json!({"resourceType": "Bundle", "type": "batch-response", "entry": []});
        assert_eq!(parse_batch_response(&ok, 0, None), Ok(vec![]));
        assert!(parse_batch_response(&ok, 1, None)
            .unwrap_err()
            .contains("0 entries"));
        let wrong = json!({"resourceType": "Bundle", "type": "transaction-response"});
        assert!(parse_batch_response(&wrong, 0, None).is_err());
        let oo = json!({"resourceType": "OperationOutcome"});
        assert!(parse_batch_response(&oo, 0, None).is_err());
    }
}
