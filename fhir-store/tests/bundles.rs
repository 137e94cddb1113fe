//! `batch` and `transaction` Bundles over real HTTP: per-entry answers, `If-Match` and
//! conditional create per entry, all-or-nothing transactions, and the CapabilityStatement.

use reqwest::Client;
use serde_json::{json, Value};

use crate::support::Running;

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let r = Client::new()
        .post(base)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST the Bundle");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn read(base: &str, path: &str) -> (u16, Value) {
    let r = Client::new()
        .get(format!("{base}/{path}"))
        .send()
        .await
        .expect("GET");
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

fn statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn patient(id: &str, mrn: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:mrn", "value": mrn}]})
}

#[tokio::test]
async fn batch_answers_every_entry_on_its_own() {
    let s = Running::start().await;
    let (status, _) = post(
        &s.base,
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": patient("p1", "1"), "request": {"method": "PUT", "url": "Patient/p1"}}
        ]}),
    )
    .await;
    assert_eq!(status, 200);
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        // update with the current version
        {"resource": {"resourceType": "Patient", "id": "p1", "active": true, "identifier": [{"system": "urn:mrn", "value": "1"}]},
         "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": "W/\"1\""}},
        // a stale version
        {"resource": patient("p1", "stale"), "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": "W/\"1\""}},
        // update-as-create
        {"resource": patient("p2", "2"), "request": {"method": "PUT", "url": "Patient/p2"}},
        // conditional create matching one resource: no write
        {"resource": patient("ignored", "1"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|1"}},
        // conditional create matching none: created
        {"resource": patient("ignored", "3"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|3"}},
        // search, read of a missing resource, a malformed entry
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|2"}},
        {"request": {"method": "GET", "url": "Patient/nope"}},
        {"resource": {"resourceType": "Device"}, "request": {"method": "PUT", "url": "Patient/p9"}},
        {"request": {"method": "DELETE", "url": "Patient/p1"}}
    ]});
    let (status, response) = post(&s.base, &bundle).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    assert_eq!(
        statuses(&response),
        [
            "200 OK",
            "412 Precondition Failed",
            "201 Created",
            "200 OK",
            "201 Created",
            "200 OK",
            "404 Not Found",
            "400 Bad Request",
            "405 Method Not Allowed"
        ]
    );
    let e = &response["entry"];
    assert_eq!(e[0]["response"]["etag"], "W/\"2\"");
    assert_eq!(e[0]["response"]["location"], "Patient/p1/_history/2");
    assert_eq!(e[0]["resource"]["active"], true);
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(e[3]["resource"]["id"], "p1");
    assert_eq!(e[5]["resource"]["type"], "searchset");
    assert_eq!(e[5]["resource"]["entry"][0]["resource"]["id"], "p2");
    assert!(e[7]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("Device"));
    // What the entries did is there; the failed ones left nothing.
    let (_, p1) = read(&s.base, "Patient/p1").await;
    assert_eq!(p1["meta"]["versionId"], "2");
    assert_eq!(p1["identifier"][0]["value"], "1");
    let (_, mrn3) = read(&s.base, "Patient?identifier=urn:mrn|3").await;
    assert_eq!(mrn3["total"], 1);
    assert_eq!(read(&s.base, "Patient/p9").await.0, 404);
    // Replaying the conditional create creates nothing.
    let (_, again) = post(&s.base, &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("ignored", "3"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|3"}}
    ]}))
    .await;
    assert_eq!(statuses(&again), ["200 OK"]);
    let (_, mrn3) = read(&s.base, "Patient?identifier=urn:mrn|3").await;
    assert_eq!(mrn3["total"], 1);
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    let s = Running::start().await;
    let ok = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("a", "a"), "request": {"method": "PUT", "url": "Patient/a"}},
        {"resource": patient("b", "b"), "request": {"method": "PUT", "url": "Patient/b"}}
    ]});
    let (status, response) = post(&s.base, &ok).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    assert_eq!(statuses(&response), ["201 Created", "201 Created"]);
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("c", "c"), "request": {"method": "PUT", "url": "Patient/c"}},
        {"resource": patient("a", "changed"), "request": {"method": "PUT", "url": "Patient/a", "ifMatch": "W/\"7\""}}
    ]});
    let (status, response) = post(&s.base, &failing).await;
    assert_eq!(status, 412, "{response}");
    assert_eq!(response["resourceType"], "OperationOutcome");
    assert!(response["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("entry 1"));
    assert_eq!(
        read(&s.base, "Patient/c").await.0,
        404,
        "entry 0 was rolled back"
    );
    assert_eq!(
        read(&s.base, "Patient/a").await.1["identifier"][0]["value"],
        "a"
    );
}

#[tokio::test]
async fn malformed_bundles_are_refused_and_batches_are_announced() {
    let s = Running::start().await;
    let (status, body) = post(
        &s.base,
        &json!({"resourceType": "Bundle", "type": "collection"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("collection"));
    let (status, _) = post(&s.base, &json!({"resourceType": "Patient"})).await;
    assert_eq!(status, 400);
    let (status, empty) = post(&s.base, &json!({"resourceType": "Bundle", "type": "batch"})).await;
    assert_eq!(
        (status, empty["type"].as_str()),
        (200, Some("batch-response"))
    );
    let (_, cs) = read(&s.base, "metadata").await;
    let codes: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(codes, ["batch", "transaction"]);
}

/// `Prefer: return=minimal`: write entries are answered with status, location and etag only;
/// a read in the same Bundle still carries its resource.
#[tokio::test]
async fn return_minimal_answers_writes_without_their_resources() {
    let s = Running::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("p1", "1"), "request": {"method": "PUT", "url": "Patient/p1"}},
        {"resource": patient("p2", "2"), "request": {"method": "PUT", "url": "Patient/p2"}},
    ]});
    let r = Client::new()
        .post(&s.base)
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(statuses(&body), ["201 Created", "201 Created"]);
    for e in body["entry"].as_array().unwrap() {
        assert!(e.get("resource").is_none(), "{e}");
        assert_eq!(e["response"]["etag"], "W/\"1\"", "{e}");
        assert!(
            e["response"]["location"]
                .as_str()
                .unwrap()
                .ends_with("/_history/1"),
            "{e}"
        );
    }
    let mixed = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("p1", "1b"), "request": {"method": "PUT", "url": "Patient/p1"}},
        {"request": {"method": "GET", "url": "Patient/p2"}},
    ]});
    let r = Client::new()
        .post(&s.base)
        .header("prefer", "return=minimal")
        .body(mixed.to_string())
        .send()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(body["entry"][0].get("resource").is_none());
    assert_eq!(body["entry"][0]["response"]["etag"], "W/\"2\"");
    assert_eq!(
        body["entry"][1]["resource"]["id"], "p2",
        "a read keeps its resource"
    );
    // Without the header, as before.
    let (_, body) = post(&s.base, &bundle).await;
    assert_eq!(body["entry"][0]["resource"]["id"], "p1");
}
