//! The REST behaviours over real HTTP.

mod bad_requests;
mod persistence;
mod search;
mod versions;

use std::collections::BTreeSet;

use fhir_store::{ServeConfig, Store};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::support::Running;

struct Answer {
    status: StatusCode,
    etag: Option<String>,
    location: Option<String>,
    body: Value,
}

async fn send(method: Method, url: &str, body: Option<&Value>, if_match: Option<&str>) -> Answer {
    let mut req = Client::new().request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    if let Some(v) = if_match {
        req = req.header("if-match", v);
    }
    let r = req.send().await.expect("request");
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, etag, location) = (r.status(), header("etag"), header("location"));
    let bytes = r.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        etag,
        location,
        body,
    }
}

async fn get(url: &str) -> Answer {
    send(Method::GET, url, None, None).await
}

async fn put(base: &str, r: &Value, if_match: Option<&str>) -> Answer {
    let url = format!(
        "{base}/{}/{}",
        r["resourceType"].as_str().unwrap(),
        r["id"].as_str().unwrap()
    );
    send(Method::PUT, &url, Some(r), if_match).await
}

fn assert_outcome(a: &Answer, status: u16, contains: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.body);
    assert_eq!(a.body["resourceType"], "OperationOutcome", "{}", a.body);
    let text = a.body["issue"][0]["details"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains(contains),
        "{text:?} should mention {contains:?}"
    );
}

/// Ids of a search's matches (one page).
async fn ids(base: &str, query: &str) -> Vec<String> {
    let a = get(&format!("{base}/{query}")).await;
    assert_eq!(a.status, StatusCode::OK, "{query}: {}", a.body);
    assert_eq!(a.body["resourceType"], "Bundle");
    a.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

async fn id_set(base: &str, query: &str) -> BTreeSet<String> {
    ids(base, query).await.into_iter().collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}
