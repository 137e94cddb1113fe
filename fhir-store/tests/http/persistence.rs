//! The store persists across a reopen; a reset empties it when enabled.

use super::*;

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
