//! SMART Backend Services against real peers: the test authorization server
//! (`testkit::oidc::OidcProvider`, oidc-provider) authenticates the writer's `private_key_jwt`
//! assertions and issues tokens; the test FHIR server (`testkit::fhir::FhirServer`, Medplum's
//! router) accepts a request only with a token that the authorization server's introspection
//! calls active. Tokens are counted on all three sides: the writer's `TokenStats`, the
//! provider's issued count, the FHIR server's distinct tokens seen.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use fhir_writer::auth::smart::{SigningKey, SmartBackend};
use fhir_writer::auth::Auth;
use fhir_writer::{
    FhirClient, FhirClientConfig, FhirTemplates, FhirWriter, ResolutionMode, WriterConfig,
};
use normalizer::{Measurement, MeasurementProperty};
use serde_json::{json, Value};
use testkit::fhir::FhirServer;
use testkit::oidc::{backend_client, generate_key, OidcProvider};

const MAPPING: &str = r#"{
  "templateType": "CollectionFhir",
  "template": [{
    "templateType": "CodeValueFhir",
    "template": {
      "typeName": "spo2", "periodInterval": 0, "category": [],
      "codes": [{"code": "59408-5", "system": "http://loinc.org", "display": "SpO2"}],
      "value": {"valueType": "Quantity", "valueName": "spo2", "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    }
  }]
}"#;

const SCOPE: &str = "system/Observation.write system/Device.write system/Patient.write";

fn reading(device: &str, minute: u32) -> Measurement {
    Measurement {
        type_name: "spo2".into(),
        occurrence_time_utc: Utc.with_ymd_and_hms(2024, 3, 1, 9, minute, 0).unwrap(),
        ingestion_time_utc: None,
        device_id: device.into(),
        patient_id: Some(format!("patient-{device}").into()),
        encounter_id: None,
        correlation_id: None,
        properties: vec![MeasurementProperty {
            name: "spo2".into(),
            value: "97".into(),
        }],
    }
}

fn writer(base: &str, auth: Auth) -> FhirWriter {
    let (templates, errors) = FhirTemplates::load(MAPPING);
    assert!(errors.is_empty(), "{errors:?}");
    let mut cc = FhirClientConfig::new(base);
    cc.auth = auth;
    cc.retry.deadline = Duration::from_secs(2);
    FhirWriter::new(
        FhirClient::new(cc).unwrap(),
        Arc::new(templates),
        WriterConfig {
            resolution: ResolutionMode::Create,
            ..Default::default()
        },
    )
}

/// A static token the test itself reads the server with.
const READER: &str = "test-reader-token";

/// The server's Observations, read with the test's own token (a 401 fails the test).
async fn observations(server: &FhirServer) -> usize {
    let r = reqwest::Client::new()
        .get(format!("{}/Observation?_count=1000", server.base))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reading the Observations");
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["entry"].as_array().map_or(0, Vec::len)
}

fn key(dir: &std::path::Path, name: &str, alg: &str, kid: &str) -> SigningKey {
    let pem = std::fs::read(generate_key(dir, name, alg)).unwrap();
    SigningKey::from_pem(&pem, alg, kid).unwrap()
}

/// One token for many requests; a new one before it expires; after a revocation (the FHIR
/// server answers 401) exactly one new token, and the write goes through. The token endpoint
/// is found by SMART discovery here (`.well-known/smart-configuration`).
#[tokio::test]
async fn tokens_are_reused_refreshed_before_expiry_and_after_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(dir.path(), "rs", "RS384", "rs-1");
    // Tokens live 4 s: the writer refreshes at half-life.
    let provider = OidcProvider::start(
        vec![backend_client("iomt", k.jwks().unwrap(), SCOPE)],
        &SCOPE.split(' ').collect::<Vec<_>>(),
        4,
    );
    let server = FhirServer::acquire().await;
    server.auth(
        json!({
            "required": true,
            "tokens": [READER],
            "introspect": provider.introspection("system/Observation.write"),
            "smart": {"token_endpoint": provider.token_url(), "token_endpoint_auth_methods_supported": ["private_key_jwt"]},
        }),
    )
    .await;
    let w = writer(
        &server.base,
        Auth::SmartBackend(SmartBackend {
            client_id: "iomt".into(),
            token_url: None,
            key: k,
            scope: SCOPE.into(),
        }),
    );
    let tokens = || {
        let t = w.client().token_stats();
        (
            t.issued.load(Ordering::Relaxed),
            t.reused.load(Ordering::Relaxed),
            t.refreshed_after_401.load(Ordering::Relaxed),
        )
    };

    for minute in 0..4 {
        let r = w
            .write_batch(vec![(0, reading("dev-a", minute))], None)
            .await;
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
    }
    let requests = w.client().stats().requests.load(Ordering::Relaxed);
    let (issued, reused, after_401) = tokens();
    assert_eq!(
        (issued, after_401),
        (1, 0),
        "one token for {requests} requests"
    );
    assert_eq!(reused + issued, requests, "every request carried the token");
    assert_eq!(provider.stats().await["issued"], 1);
    assert_eq!(server.auth_counts().await["tokensSeen"], 1);

    // Past half of its 4 s life the token is replaced before the server would refuse it.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let r = w.write_batch(vec![(0, reading("dev-a", 10))], None).await;
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    assert_eq!(tokens().0, 2, "refreshed before expiry");
    assert_eq!(tokens().2, 0, "without a 401");

    // Revoked at the FHIR server: one 401, one new token, the write succeeds.
    server.auth(json!({"revokeSeen": true})).await;
    let r = w.write_batch(vec![(0, reading("dev-a", 11))], None).await;
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    assert_eq!(tokens().0, 3);
    assert_eq!(tokens().2, 1, "one refresh after the 401");
    assert_eq!(provider.stats().await["issued"], 3);
    let seen = server.auth_counts().await;
    assert_eq!(seen["tokensSeen"], 3, "{seen}");
    assert!(seen["rejected"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(observations(&server).await, 6);
}

/// A key the authorization server does not know is refused with the server's own error, and
/// nothing of the key appears in the message; an ES384 key registered for the client works.
#[tokio::test]
async fn a_wrong_key_is_refused_with_the_servers_error_and_es384_signs_in() {
    let dir = tempfile::tempdir().unwrap();
    let registered = key(dir.path(), "es", "ES384", "es-1");
    let mut scopes: Vec<&str> = SCOPE.split(' ').collect();
    scopes.push("system/Patient.read");
    let provider = OidcProvider::start(
        vec![backend_client("iomt-es", registered.jwks().unwrap(), SCOPE)],
        &scopes,
        3600,
    );
    let server = FhirServer::acquire().await;
    server.auth(
        json!({"required": true, "tokens": [READER], "introspect": provider.introspection("system/Observation.write")}),
    )
    .await;
    let auth = |key: SigningKey| {
        Auth::SmartBackend(SmartBackend {
            client_id: "iomt-es".into(),
            token_url: Some(provider.token_url()),
            key,
            scope: SCOPE.into(),
        })
    };

    // Same kid, another key: the signature does not verify.
    let stranger_pem = std::fs::read(generate_key(dir.path(), "stranger", "ES384")).unwrap();
    let stranger = SigningKey::from_pem(&stranger_pem, "ES384", "es-1").unwrap();
    let w = writer(&server.base, auth(stranger));
    let r = w.write_batch(vec![(0, reading("dev-b", 0))], None).await;
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    let message = &r.errors[0].message;
    assert!(
        message.contains(&provider.token_url())
            && message.contains("invalid_client: client authentication failed"),
        "{message}"
    );
    let pem_text = String::from_utf8_lossy(&stranger_pem);
    let body_line = pem_text.lines().nth(1).unwrap();
    assert!(!message.contains(body_line), "key material in {message}");
    assert!(w.client().token_stats().refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        provider.stats().await["refused"][0]["error"],
        "invalid_client"
    );
    assert_eq!(observations(&server).await, 0);

    // A scope the authorization server knows but this client is not allowed.
    let w = writer(
        &server.base,
        Auth::SmartBackend(SmartBackend {
            client_id: "iomt-es".into(),
            token_url: Some(provider.token_url()),
            key: registered.clone(),
            scope: "system/Observation.write system/Patient.read".into(),
        }),
    );
    let r = w.write_batch(vec![(0, reading("dev-b", 0))], None).await;
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    assert!(
        r.errors[0].message.contains("invalid_scope"),
        "{}",
        r.errors[0].message
    );

    // The registered ES384 key.
    let w = writer(&server.base, auth(registered));
    let r = w.write_batch(vec![(0, reading("dev-b", 1))], None).await;
    assert!(r.errors.is_empty(), "{:#?}", r.errors);
    assert_eq!(observations(&server).await, 1);
    assert_eq!(w.client().token_stats().issued.load(Ordering::Relaxed), 1);
}
