//! Versions, `ETag` and `Location`, no-op updates, `If-Match` (412 for a stale version, one
//! winner among concurrent updates).

use super::*;

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
