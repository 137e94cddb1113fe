//! The REST behaviours over real HTTP.

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

#[tokio::test]
async fn versions_etag_location_and_no_op_updates() {
    let s = Running::start().await;
    let p = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "patient-1"}]});
    let a = put(&s.base, &p, None).await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.etag.as_deref(), Some("W/\"1\""));
    assert_eq!(
        a.location.as_deref(),
        Some(format!("{}/Patient/p1/_history/1", s.base).as_str())
    );
    assert_eq!(a.body["meta"]["versionId"], "1");
    let first_updated = a.body["meta"]["lastUpdated"].as_str().unwrap().to_string();
    assert!(chrono::DateTime::parse_from_rfc3339(&first_updated).is_ok());

    let mut p2 = p.clone();
    p2["name"] = json!([{"family": "Doe"}]);
    let a = put(&s.base, &p2, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.etag.as_deref(), Some("W/\"2\""));
    assert_eq!(a.body["meta"]["versionId"], "2");

    // The same content again (with a stale meta) writes no new version.
    let mut same = a.body.clone();
    same["meta"] = json!({"versionId": "1", "lastUpdated": "2000-01-01T00:00:00Z"});
    let a = put(&s.base, &same, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.etag.as_deref(), Some("W/\"2\""));

    let a = get(&format!("{}/Patient/p1", s.base)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.etag.as_deref(), Some("W/\"2\""));
    assert_eq!(a.body["name"][0]["family"], "Doe");

    // vread and history.
    let a = get(&format!("{}/Patient/p1/_history/1", s.base)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.get("name").is_none());
    assert_eq!(a.etag.as_deref(), Some("W/\"1\""));
    assert_outcome(
        &get(&format!("{}/Patient/p1/_history/9", s.base)).await,
        404,
        "version 9",
    );
    let a = get(&format!("{}/Patient/p1/_history", s.base)).await;
    assert_eq!(a.body["total"], 2);
    assert_eq!(a.body["entry"][0]["resource"]["meta"]["versionId"], "2");

    // Create with a server-assigned id (an id in the body is ignored).
    let o = json!({"resourceType": "Observation", "id": "ignored", "status": "final", "code": {"text": "x"}});
    let a = send(
        Method::POST,
        &format!("{}/Observation", s.base),
        Some(&o),
        None,
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_ne!(id, "ignored");
    assert_eq!(id.len(), 36);
    assert_eq!(
        a.location.unwrap(),
        format!("{}/Observation/{id}/_history/1", s.base)
    );
    assert_eq!(
        get(&format!("{}/Observation/{id}", s.base)).await.status,
        StatusCode::OK
    );

    // Missing: 404 with an OperationOutcome.
    assert_outcome(
        &get(&format!("{}/Patient/nobody", s.base)).await,
        404,
        "Patient/nobody not found",
    );
}

#[tokio::test]
async fn if_match_refuses_stale_versions_with_412() {
    let s = Running::start().await;
    let d = json!({"resourceType": "Device", "id": "d1", "identifier": [{"value": "dev-1"}]});
    put(&s.base, &d, None).await;
    let mut linked = d.clone();
    linked["patient"] = json!({"reference": "Patient/p1"});
    let a = put(&s.base, &linked, Some("W/\"1\"")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.etag.as_deref(), Some("W/\"2\""));

    let mut other = d.clone();
    other["patient"] = json!({"reference": "Patient/p2"});
    let a = put(&s.base, &other, Some("W/\"1\"")).await;
    assert_outcome(&a, 412, "current version is 2");
    // Unchanged by the refused write.
    let now = get(&format!("{}/Device/d1", s.base)).await;
    assert_eq!(now.body["patient"]["reference"], "Patient/p1");
    // The strong and bare forms work too.
    assert_eq!(
        put(&s.base, &other, Some("\"2\"")).await.status,
        StatusCode::OK
    );
    // If-Match on a resource that does not exist.
    let ghost = json!({"resourceType": "Device", "id": "ghost"});
    assert_outcome(
        &put(&s.base, &ghost, Some("W/\"1\"")).await,
        412,
        "does not exist",
    );
}

/// Many writers PUT from the same version at once: exactly one wins, the others get 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_if_match_updates_have_exactly_one_winner() {
    let s = Running::start().await;
    let base = s.base.clone();
    put(
        &base,
        &json!({"resourceType": "Basic", "id": "b", "code": {"text": "v0"}}),
        None,
    )
    .await;
    for round in 1..=3 {
        let expected = format!("W/\"{round}\"");
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (base, expected) = (base.clone(), expected.clone());
                tokio::spawn(async move {
                    let r = json!({"resourceType": "Basic", "id": "b", "code": {"text": format!("round {round} writer {i}")}});
                    put(&base, &r, Some(&expected)).await.status
                })
            })
            .collect();
        let mut ok = 0;
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                StatusCode::OK => ok += 1,
                StatusCode::PRECONDITION_FAILED => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!((ok, refused), (1, 15), "round {round}");
        let a = get(&format!("{base}/Basic/b")).await;
        assert_eq!(a.etag, Some(format!("W/\"{}\"", round + 1)));
    }
}

async fn seed_search_data(base: &str) {
    for r in [
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "A1"}, {"value": "plain"}]}),
        json!({"resourceType": "Patient", "id": "p2", "identifier": [{"system": "urn:other", "value": "A1"}]}),
        json!({"resourceType": "Patient", "id": "p3", "identifier": [{"value": "A1"}]}),
        json!({"resourceType": "Patient", "id": "p4", "identifier": [{"system": "urn:mrn", "value": "A10"}, {"system": "urn:mrn", "value": "a1"}]}),
        json!({"resourceType": "Device", "id": "d1", "identifier": [{"value": "dev-1"}], "patient": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Device", "id": "d2", "identifier": [{"value": "dev-2"}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p1"}, "device": {"reference": "Device/d1"},
               "effectiveDateTime": "2024-03-01T10:15:00Z"}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}, {"system": "urn:local", "code": "spo2"}]},
               "subject": {"reference": "http://elsewhere/fhir/Patient/p1"}, "device": {"reference": "Device/d2/_history/1"},
               "effectivePeriod": {"start": "2024-03-01T10:00:00Z", "end": "2024-03-01T10:59:59.999Z"}}),
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p2"},
               "effectivePeriod": {"start": "2024-03-02T00:00:00+01:00"}}),
        json!({"resourceType": "Observation", "id": "o4", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Group/g1"}}),
    ] {
        let a = put(base, &r, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
}

#[tokio::test]
async fn search_by_identifier_id_references_and_code() {
    let s = Running::start().await;
    let b = &s.base;
    seed_search_data(b).await;
    // identifier: system|value, |value (no system), value (any system); exact, case-sensitive.
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|A1").await,
        set(&["p1"])
    );
    assert_eq!(id_set(b, "Patient?identifier=%7CA1").await, set(&["p3"]));
    assert_eq!(
        id_set(b, "Patient?identifier=A1").await,
        set(&["p1", "p2", "p3"])
    );
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|").await,
        set(&["p1", "p4"])
    );
    assert_eq!(id_set(b, "Patient?identifier=a1").await, set(&["p4"]));
    assert_eq!(id_set(b, "Patient?identifier=A").await, set(&[]));
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|A1,urn:other|A1").await,
        set(&["p1", "p2"])
    );
    assert_eq!(
        id_set(b, "Patient?identifier=A1&identifier=plain").await,
        set(&["p1"])
    );
    // A full (long) identifier value is compared whole (the reference compared 128 characters).
    let long_a = "x".repeat(200) + "a";
    let long_b = "x".repeat(200) + "b";
    put(
        b,
        &json!({"resourceType": "Patient", "id": "long", "identifier": [{"value": long_a}]}),
        None,
    )
    .await;
    assert_eq!(
        id_set(b, &format!("Patient?identifier={long_b}")).await,
        set(&[])
    );
    assert_eq!(
        id_set(b, &format!("Patient?identifier={long_a}")).await,
        set(&["long"])
    );
    // _id.
    assert_eq!(
        id_set(b, "Patient?_id=p2,p3,nope").await,
        set(&["p2", "p3"])
    );
    // References: Type/id, bare id, absolute URL, versioned; patient covers Device.patient.
    assert_eq!(
        id_set(b, "Observation?subject=Patient/p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?subject=p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?subject=http://x/fhir/R4/Patient/p2").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?subject:Group=g1").await,
        set(&["o4"])
    );
    assert_eq!(
        id_set(b, "Observation?patient=p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(id_set(b, "Observation?patient=g1").await, set(&[]));
    assert_eq!(id_set(b, "Device?patient=Patient/p1").await, set(&["d1"]));
    assert_eq!(id_set(b, "Observation?device=d2").await, set(&["o2"]));
    assert_eq!(
        id_set(b, "Observation?device=Device/d1").await,
        set(&["o1"])
    );
    // code against code.coding.
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|8867-4").await,
        set(&["o1", "o3", "o4"])
    );
    assert_eq!(id_set(b, "Observation?code=spo2").await, set(&["o2"]));
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|spo2").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|8867-4&subject=p1").await,
        set(&["o1"])
    );
    // An update re-indexes.
    put(b, &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "none"}, "subject": {"reference": "Patient/p3"}}), None).await;
    assert_eq!(id_set(b, "Observation?subject=p1").await, set(&["o2"]));
    assert_eq!(id_set(b, "Observation?subject=p3").await, set(&["o1"]));
    // Unknown parameters and bad values are refused, not ignored.
    assert_outcome(
        &get(&format!("{b}/Observation?colour=red")).await,
        400,
        "unknown search parameter",
    );
    assert_outcome(
        &get(&format!("{b}/Observation?patient=Device/d1")).await,
        400,
        "references a Patient",
    );
    assert_outcome(
        &get(&format!("{b}/Observation?date=yesterday")).await,
        400,
        "not a FHIR date",
    );
}

#[tokio::test]
async fn search_by_date_with_prefixes() {
    let s = Running::start().await;
    let b = &s.base;
    seed_search_data(b).await;
    // o1: instant 10:15:00 (the whole second); o2: 10:00–10:59:59.999; o3: from 2024-03-01T23:00Z, open.
    assert_eq!(
        id_set(b, "Observation?date=2024-03-01").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=eq2024-03-01T10:00Z").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?date=2024-03-01T10:15:00Z").await,
        set(&["o1"])
    );
    assert_eq!(
        id_set(b, "Observation?date=ge2024-03-01T10:30:00Z").await,
        set(&["o2", "o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=gt2024-03-01T10:59:59.999Z").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=le2024-03-01T10:00:00Z").await,
        set(&["o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=lt2024-03-01T10:15:00Z").await,
        set(&["o2"])
    );
    assert_eq!(
        id_set(
            b,
            "Observation?date=ge2024-03-01T10:10:00Z&date=le2024-03-01T10:20:00Z"
        )
        .await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=ge2024-03-01T23:00:00%2B00:00").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=sa2024-03-01T12:00:00Z").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=eb2024-03-01T10:15:00Z").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?date=ne2024-03-01").await,
        set(&["o3"])
    );
    assert_eq!(id_set(b, "Observation?date=2024").await, set(&["o1", "o2"]));
    assert_eq!(
        id_set(
            b,
            "Observation?date=lt2024-03-01T10:15:00Z,sa2024-03-01T12:00:00Z"
        )
        .await,
        set(&["o2", "o3"])
    );
    // _lastUpdated.
    assert_eq!(
        id_set(b, "Observation?_lastUpdated=gt2000-01-01")
            .await
            .len(),
        4
    );
    assert_eq!(
        id_set(b, "Observation?_lastUpdated=lt2000-01-01")
            .await
            .len(),
        0
    );
}

#[tokio::test]
async fn paging_follows_next_links_and_sorts_by_date() {
    let s = Running::start().await;
    let b = &s.base;
    // Created in a shuffled order of their dates.
    for i in 0..25u32 {
        let minute = (i * 7) % 25;
        let o = json!({"resourceType": "Observation", "id": format!("m{minute:02}"), "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "subject": {"reference": "Patient/p"},
                       "effectiveDateTime": format!("2024-03-01T10:{minute:02}:00Z")});
        put(b, &o, None).await;
    }
    put(b, &json!({"resourceType": "Observation", "id": "undated", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}}), None).await;

    async fn walk(first: String) -> (Vec<String>, Vec<u64>, usize) {
        let mut url = first;
        let (mut out, mut totals, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let a = get(&url).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            pages += 1;
            totals.push(a.body["total"].as_u64().unwrap());
            for e in a.body["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"]["id"].as_str().unwrap().to_string());
            }
            match a.body["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(l) => url = l["url"].as_str().unwrap().to_string(),
                None => return (out, totals, pages),
            }
        }
    }
    let (desc, totals, pages) = walk(format!(
        "{b}/Observation?subject=Patient/p&_sort=-date&_count=10"
    ))
    .await;
    assert_eq!(pages, 3);
    assert!(totals.iter().all(|t| *t == 26));
    let mut want: Vec<String> = (0..25).rev().map(|m| format!("m{m:02}")).collect();
    want.push("undated".into());
    assert_eq!(desc, want, "newest first, undated last");

    let (asc, _, _) = walk(format!(
        "{b}/Observation?_sort=date&_count=7&date=ge2024-03-01T10:05:00Z"
    ))
    .await;
    let want: Vec<String> = (5..25).map(|m| format!("m{m:02}")).collect();
    assert_eq!(asc, want);

    // The next link keeps the prefix and the parameters, and moves _offset.
    let a = get(&format!(
        "{b}/Observation?_count=10&code=http://loinc.org%7C8867-4"
    ))
    .await;
    let next = a.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.starts_with(&format!("{b}/Observation?")), "{next}");
    assert!(
        next.contains("_offset=10") && next.contains("code=http"),
        "{next}"
    );
    // Default order is creation order; _count=0 and _summary=count give only the total.
    assert_eq!(ids(b, "Observation?_count=2").await, vec!["m00", "m07"]);
    let a = get(&format!("{b}/Observation?_summary=count")).await;
    assert_eq!(a.body["total"], 26);
    assert!(a.body["entry"].as_array().unwrap().is_empty());
    // Served at the root too.
    let root = b.trim_end_matches("/fhir/R4");
    assert_eq!(ids(root, "Observation?_id=m03").await, vec!["m03"]);
    assert_eq!(
        ids(&format!("{root}/fhir"), "Observation?_id=m04").await,
        vec!["m04"]
    );
}

#[tokio::test]
async fn persists_across_reopen() {
    let s = Running::start().await;
    let p = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "keep"}]});
    put(&s.base, &p, None).await;
    let mut p2 = p.clone();
    p2["active"] = json!(true);
    put(&s.base, &p2, None).await;
    let path = s.path.clone();
    let dir = s.stop().await;

    let s = Running::at(&path, ServeConfig::default()).await;
    let a = get(&format!("{}/Patient/p1", s.base)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.etag.as_deref(), Some("W/\"2\""));
    assert_eq!(a.body["active"], true);
    assert_eq!(ids(&s.base, "Patient?identifier=keep").await, vec!["p1"]);
    // Versions go on counting.
    let mut p3 = p2.clone();
    p3["active"] = json!(false);
    assert_eq!(
        put(&s.base, &p3, Some("W/\"2\"")).await.etag.as_deref(),
        Some("W/\"3\"")
    );
    // $reset is off unless asked for.
    assert_outcome(
        &send(Method::POST, &format!("{}/$reset", s.base), None, None).await,
        404,
        "--dev-reset",
    );
    assert_eq!(
        get(&format!("{}/Patient/p1", s.base)).await.status,
        StatusCode::OK
    );
    drop(s.stop().await);

    // And the library API sees the same file.
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.read("Patient", "p1").unwrap()["meta"]["versionId"],
        "3"
    );
    drop(dir);
}

#[tokio::test]
async fn reset_empties_the_store_when_enabled() {
    let s = Running::start().await;
    put(
        &s.base,
        &json!({"resourceType": "Patient", "id": "p1"}),
        None,
    )
    .await;
    let a = send(Method::POST, &format!("{}/$reset", s.base), None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(s.all("Patient").await.is_empty());
    assert_eq!(
        get(&format!("{}/Patient/p1", s.base)).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_requests_get_an_operation_outcome_never_a_crash() {
    let s = Running::start().await;
    let b = &s.base;
    let raw = |method: Method, url: String, body: Vec<u8>| async move {
        let r = Client::new()
            .request(method, url)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        (status.as_u16(), v)
    };
    let cases: Vec<(Method, String, Vec<u8>, u16)> = vec![
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            b"{not json".to_vec(),
            400,
        ),
        (Method::PUT, format!("{b}/Patient/p1"), Vec::new(), 400),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            b"[1,2]".to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Device","id":"p1"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","id":"p2"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","id":7}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/bad%20id"),
            br#"{"resourceType":"Patient"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/{}", "x".repeat(65)),
            br#"{"resourceType":"Patient"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","meta":"odd"}"#.to_vec(),
            201,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            "[".repeat(100_000).into_bytes(),
            400,
        ),
        (
            Method::POST,
            format!("{b}/Patient"),
            br#"{"resourceType":"Observation"}"#.to_vec(),
            400,
        ),
        (Method::DELETE, format!("{b}/Patient/p1"), Vec::new(), 405),
        (Method::GET, format!("{b}/patient"), Vec::new(), 404),
        (
            Method::GET,
            format!("{b}/Patient/p1/_history/x"),
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            format!("{b}/Patient/p1/a/b/c"),
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_count=abc"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_offset=99999999999999999999"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_offset=9223372036854775807"),
            Vec::new(),
            200,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier=%FF%FE"),
            Vec::new(),
            200,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier=%7C"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?date=ge99999-01-01"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier={}", vec!["v"; 5000].join(",")),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_id={}", vec!["a"; 100].join(",")),
            Vec::new(),
            200,
        ),
        (Method::GET, format!("{b}/metadata"), Vec::new(), 200),
    ];
    for (method, url, body, want) in cases {
        let (status, v) = raw(method.clone(), url.clone(), body).await;
        assert_eq!(status, want, "{method} {url}: {v}");
        if status >= 400 {
            assert_eq!(v["resourceType"], "OperationOutcome", "{method} {url}");
        }
    }
    // The store still works.
    assert_eq!(get(&format!("{b}/Patient/p1")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_answered_413() {
    // The default limit: 16 MiB.
    let s = Running::start().await;
    let big = json!({"resourceType": "Basic", "id": "big", "code": {"text": "x".repeat(17 * 1024 * 1024)}});
    let a = put(&s.base, &big, None).await;
    assert_outcome(&a, 413, "exceeds");
    let fits =
        json!({"resourceType": "Basic", "id": "fits", "code": {"text": "x".repeat(1024 * 1024)}});
    assert_eq!(put(&s.base, &fits, None).await.status, StatusCode::CREATED);

    // A configured limit, also when the body is chunked (no Content-Length).
    let dir = tempfile::tempdir().unwrap();
    let small = Running::at(
        &dir.path().join("s.sqlite"),
        ServeConfig {
            max_body_bytes: 1000,
            ..Default::default()
        },
    )
    .await;
    let body =
        json!({"resourceType": "Basic", "id": "b", "code": {"text": "y".repeat(2000)}}).to_string();
    let addr = small
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut req = format!("PUT /fhir/R4/Basic/b HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for c in body.as_bytes().chunks(100) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            c.len(),
            String::from_utf8_lossy(c)
        ));
    }
    req.push_str("0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
