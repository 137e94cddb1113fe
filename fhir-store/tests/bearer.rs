//! The optional bearer-token check (`ServeConfig::bearer_token`, `iomt fhir-store
//! --bearer-token-env`): without the token every request but `GET /metadata` is refused with
//! 401 and `WWW-Authenticate: Bearer`; with it the store answers as usual.

use fhir_store::ServeConfig;
use reqwest::{Client, StatusCode};
use serde_json::json;

use crate::support::Running;

#[tokio::test]
async fn a_configured_bearer_token_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-test-token-of-some-length";
    let store = Running::at(
        &dir.path().join("s.sqlite"),
        ServeConfig {
            bearer_token: Some(token.into()),
            ..Default::default()
        },
    )
    .await;
    let http = Client::new();
    let patient = json!({"resourceType": "Patient", "id": "p1"}).to_string();
    let put = |auth: Option<&str>| {
        let mut r = http
            .put(format!("{}/Patient/p1", store.base))
            .header("content-type", "application/fhir+json")
            .body(patient.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let refused = put(None).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let wrong = put(Some("Bearer a-test-token-of-some-lengtX"))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ok = put(Some(&format!("Bearer {token}"))).await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let read = http
        .get(format!("{}/Patient/p1", store.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::UNAUTHORIZED);
    let read = http
        .get(format!("{}/Patient/p1", store.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    // The capability statement stays open.
    let meta = http
        .get(format!("{}/metadata", store.base))
        .send()
        .await
        .unwrap();
    assert_eq!(meta.status(), StatusCode::OK);
    store.stop().await;
}
