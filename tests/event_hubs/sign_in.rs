//! Azure AD (Microsoft Entra ID) sign-in, against the in-test token endpoint
//! (`testkit::event_hubs::token_endpoint`, a stand-in: no Entra ID can run here).

use super::*;

const SECRET_ENV: &str = "IOMT_TEST_EVENTHUBS_CLIENT_SECRET";
const SECRET: &str = "eh~Test.Secret_value+/=";
const NAMESPACE: &str = "iomt-emulator.servicebus.windows.net";

fn entra_expected() -> token_endpoint::Expected {
    token_endpoint::Expected {
        tenant: "iomt-test.onmicrosoft.com".into(),
        client_id: "7f3c0b8e-1a2b-4c3d-8e9f-10e7c0c0ffee".into(),
        client_secret: SECRET.into(),
        identity_header: "identity-header-value-7d1e".into(),
    }
}

fn client_secret_sign_in(entra: &TokenEndpoint, secret: &str) -> SignIn {
    let e = entra_expected();
    SignIn {
        keys: format!(
            r#"fully_qualified_namespace = "{NAMESPACE}"
event_hub = "telemetry"
credential = {{ kind = "client_secret", tenant_id = "{}", client_id = "{}", client_secret_env = "{SECRET_ENV}", authority_host = "{}" }}"#,
            e.tenant, e.client_id, entra.base
        ),
        env: vec![(SECRET_ENV.into(), secret.into())],
    }
}

/// The emulator accepts only `jwt` tokens that `entra` issued (the test's own producer signs
/// in with the connection string, as `servicebus.windows.net:sastoken`).
fn accept_only_issued_jwts(hub: &EventHubsEmulator, entra: &TokenEndpoint) {
    let issued = entra.issued_check();
    hub.check_tokens(move |t| t.token_type != "jwt" || issued(&t.token));
}

/// The `jwt` put-tokens the emulator received; each carries `token` and expires about
/// `life_secs` from now.
fn assert_jwt_put_tokens(hub: &EventHubsEmulator, token: &str, life_secs: i64) {
    let all = hub.put_tokens();
    let jwts: Vec<_> = all.iter().filter(|t| t.token_type == "jwt").collect();
    assert!(!jwts.is_empty(), "no jwt put-token: {all:#?}");
    let now_ms = chrono::Utc::now().timestamp_millis();
    for t in &jwts {
        assert_eq!(t.token, token, "{t:#?}");
        assert!(t.audience.contains("/telemetry"), "{t:#?}");
        let left = t.expiration_ms.expect("put-token expiration") - now_ms;
        assert!(
            left > (life_secs - 600) * 1000 && left <= life_secs * 1000,
            "expiration {left} ms from now: {t:#?}"
        );
    }
    // The connection-string sign-in was not used by the connector.
    assert!(
        all.iter()
            .all(|t| t.token_type == "jwt" || t.token_type == "servicebus.windows.net:sastoken"),
        "{all:#?}"
    );
}

/// `iomt run` with `[source.credential] kind = "client_secret"`: the connector gets a token
/// from the token endpoint (which checks grant type, client id, secret and scope), presents it
/// to the hub with CBS `put-token` type `jwt` (the emulator refuses any other jwt), and reads
/// every event end to end; the token is fetched once and reused for every link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_an_azure_ad_client_secret_reads_everything_with_the_issued_jwt() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    accept_only_issued_jwts(&hub, &entra);
    let dir = tempfile::tempdir().unwrap();
    let devices = ["ea-a", "ea-b"];
    publish(&hub, hr_events(&devices, 0..30, 2), Duration::ZERO).await;
    let mut c = Connector::start_with(
        dir.path(),
        "aad",
        "instance-1",
        &hub,
        &server.base,
        &client_secret_sign_in(&entra, SECRET),
    );
    publish(&hub, hr_events(&devices, 30..60, 2), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    c.wait_metric("iomt_events_acked_total", 120.0, Duration::from_secs(20))
        .await;
    assert_eq!(c.metric("iomt_events_incoming_total"), 120.0);

    let issued = entra.issued();
    assert_eq!(
        issued.len(),
        1,
        "one token, cached for every link: {issued:?}"
    );
    assert_jwt_put_tokens(&hub, &issued[0], 3599);
    c.stop();
    let log = c.log_text();
    assert!(
        log.contains("Azure AD token obtained for Event Hubs."),
        "{log}"
    );
    assert!(!log.contains(SECRET), "{log}");
}

/// A wrong client secret stops `iomt run` at start (exit 2) with Entra's own error (HTTP
/// status, error code, AADSTS description) and never prints the secret; the hub never sees a
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_a_wrong_client_secret_stops_at_start_with_entras_error() {
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = "not~the.secret_value";
    let sign_in = client_secret_sign_in(&entra, wrong);
    let config = write_config(
        dir.path(),
        "aad-wrong",
        "instance-1",
        &hub,
        "http://127.0.0.1:9/fhir",
        &sign_in,
        free_port(),
        &heart_rate_set(),
    );
    let log = dir.path().join("aad-wrong.log");
    let mut child = spawn_connector(&config, &sign_in.env, &log);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "the connector kept running:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    let e = entra_expected();
    assert!(
        text.contains(&format!(
            "error: source sign-in: Azure AD client secret sign-in (tenant {}, client {}): {}/{}/oauth2/v2.0/token answered HTTP 401: invalid_client: AADSTS7000215: Invalid client secret provided.",
            e.tenant, e.client_id, entra.base, e.tenant
        )),
        "{text}"
    );
    assert!(!text.contains(wrong), "{text}");
    assert_eq!(entra.requests(), 1);
    assert!(entra.issued().is_empty());
    assert!(hub.put_tokens().is_empty(), "{:#?}", hub.put_tokens());
}

/// `iomt run` with `[source.credential] kind = "managed_identity"` (user-assigned) on a host
/// that sets `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` (App Service, Container Apps): the
/// token comes from that endpoint (the header checked) and reaches the hub as a `jwt`
/// put-token; every event is read end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_with_a_managed_identity_from_identity_endpoint_reads_with_its_token() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let entra = TokenEndpoint::start(entra_expected()).await;
    accept_only_issued_jwts(&hub, &entra);
    let dir = tempfile::tempdir().unwrap();
    let devices = ["em-a", "em-b"];
    publish(&hub, hr_events(&devices, 0..60, 2), Duration::ZERO).await;
    let header = entra_expected().identity_header;
    let sign_in = SignIn {
        keys: format!(
            r#"fully_qualified_namespace = "{NAMESPACE}"
event_hub = "telemetry"
credential = {{ kind = "managed_identity", client_id = "user-assigned-client-id" }}"#
        ),
        env: vec![
            ("IDENTITY_ENDPOINT".into(), entra.identity_endpoint()),
            ("IDENTITY_HEADER".into(), header.clone()),
        ],
    };
    let mut c = Connector::start_with(dir.path(), "mi", "instance-1", &hub, &server.base, &sign_in);
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    c.wait_metric("iomt_events_acked_total", 120.0, Duration::from_secs(20))
        .await;
    let issued = entra.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(
        entra.identity_client_ids(),
        [Some("user-assigned-client-id".to_string())]
    );
    assert_jwt_put_tokens(&hub, &issued[0], 86_400);
    c.stop();
    assert!(!c.log_text().contains(&header), "{}", c.log_text());
}
