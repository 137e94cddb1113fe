//! `iomt replay` signing in with SMART Backend Services, against real peers: the test
//! authorization server (`testkit::oidc::OidcProvider`, oidc-provider, an OpenID Certified
//! implementation) authenticates the `private_key_jwt` assertions, and the test FHIR server
//! (Medplum's router) accepts only tokens the authorization server's introspection calls active.
//! The clients' public keys are registered as the JWKS `iomt jwks` prints.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use testkit::fhir::FhirServer;
use testkit::oidc::{backend_client, generate_key, OidcProvider};

const SCOPE: &str = "system/Observation.write system/Device.write system/Patient.write";

fn iomt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iomt"))
}

fn jwks(key: &Path, alg: &str, kid: &str) -> Value {
    let out = iomt()
        .args(["jwks", "--alg", alg, "--kid", kid, "--key"])
        .arg(key)
        .output()
        .expect("run iomt jwks");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !text.contains("\"d\""),
        "a private part in the JWKS: {text}"
    );
    serde_json::from_str(&text).expect("JWKS JSON")
}

/// `iomt replay` of the simulator set's events with SMART settings from the environment.
fn replay(base: &str, env: &[(&str, String)]) -> Output {
    let set = testkit::workspace_root().join("templates/simulator");
    let mut c = testkit::set_command(
        env!("CARGO_BIN_EXE_iomt"),
        "replay",
        &set,
        Some(&set.join("events.json")),
    );
    c.args([
        "--fhir-url",
        base,
        "--resolution",
        "Create",
        "--retry-deadline",
        "2",
    ]);
    for k in [
        "IOMT_FHIR_BEARER_TOKEN",
        "IOMT_FHIR_CLIENT_SECRET",
        "IOMT_FHIR_TOKEN_URL",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run iomt replay")
}

/// The report's errors past normalization (the simulator's events include malformed ones on
/// purpose; those fail before any FHIR request).
fn write_errors(r: &Value) -> Vec<Value> {
    r["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|e| e["stage"] != "normalize")
        .cloned()
        .collect()
}

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The report of a replay that signed in: it succeeded, nothing failed past normalization, and
/// one token carried every request.
fn signed_in(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(out);
    assert_eq!(write_errors(&r), Vec::<Value>::new(), "{r:#}");
    let requests = r["fhirRequests"].as_u64().unwrap();
    assert_eq!(
        r["fhirTokens"]["issued"], 1,
        "one token for {requests} requests: {r:#}"
    );
    assert_eq!(
        r["fhirTokens"]["reused"].as_u64().unwrap(),
        requests - 1,
        "{r:#}"
    );
    r
}

#[tokio::test]
async fn replays_sign_in_with_rs384_and_es384_keys_and_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rs = generate_key(dir.path(), "rs", "RS384");
    let es = generate_key(dir.path(), "es", "ES384");
    let stranger = generate_key(dir.path(), "stranger", "RS384");
    let provider = OidcProvider::start(
        vec![
            backend_client("iomt-rs", jwks(&rs, "RS384", "rs-1"), SCOPE),
            backend_client("iomt-es", jwks(&es, "ES384", "es-1"), SCOPE),
        ],
        &SCOPE.split(' ').collect::<Vec<_>>(),
        3600,
    );
    let server = FhirServer::acquire().await;
    let access = json!({
        "required": true,
        "introspect": provider.introspection("system/Observation.write"),
        "smart": {"token_endpoint": provider.token_url(), "token_endpoint_auth_methods_supported": ["private_key_jwt"]},
    });
    server.auth(access.clone()).await;
    let env = |client: &str, key: &Path, alg: &str, kid: &str| {
        vec![
            ("IOMT_FHIR_CLIENT_ID", client.to_string()),
            ("IOMT_FHIR_SMART_KEY_FILE", key.display().to_string()),
            ("IOMT_FHIR_SMART_ALG", alg.to_string()),
            ("IOMT_FHIR_SMART_KID", kid.to_string()),
            ("IOMT_FHIR_SCOPE", SCOPE.to_string()),
        ]
    };

    // RS384, the token endpoint discovered from the FHIR server's smart-configuration.
    let r = signed_in(&replay(&server.base, &env("iomt-rs", &rs, "RS384", "rs-1")));
    assert!(r["observationsCreated"].as_u64().unwrap() > 0, "{r:#}");
    let written = r["observationsCreated"].as_u64().unwrap();

    // ES384, the token URL given, into the emptied server: the same Observations.
    server.reset().await;
    server.auth(access.clone()).await;
    let mut es_env = env("iomt-es", &es, "ES384", "es-1");
    es_env.push(("IOMT_FHIR_TOKEN_URL", provider.token_url()));
    let r = signed_in(&replay(&server.base, &es_env));
    assert_eq!(r["observationsCreated"].as_u64().unwrap(), written, "{r:#}");
    assert_eq!(provider.stats().await["issued"], 2);

    // A key the authorization server does not know, under a registered kid.
    let out = replay(&server.base, &env("iomt-rs", &stranger, "RS384", "rs-1"));
    let r = report(&out);
    let errors = write_errors(&r);
    assert!(!errors.is_empty(), "{r:#}");
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("invalid_client: client authentication failed")
            && message.contains(&provider.token_url()),
        "{message}"
    );
    let pem = std::fs::read_to_string(&stranger).unwrap();
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !everything.contains(pem.lines().nth(1).unwrap()),
        "key material in the output"
    );
    assert_eq!(r["observationsCreated"], 0);
    assert!(r["fhirTokens"]["refused"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(
        provider.stats().await["refused"][0]["error"],
        "invalid_client"
    );
}

#[test]
fn jwks_names_a_key_that_does_not_fit_its_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let es = generate_key(dir.path(), "es", "ES384");
    let out = iomt()
        .args(["jwks", "--alg", "RS384", "--kid", "k", "--key"])
        .arg(&es)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a RSA private key") && err.contains("es.pem"),
        "{err}"
    );
}
