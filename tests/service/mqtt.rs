//! Events over MQTT to Observations; the protocol versions, TLS and sign-in a broker asks for;
//! the example config.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_events_become_the_expected_observations_and_sigterm_drains() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Connector::start(dir.path(), "e2e", broker.port, &server.base, "");
    let devices = ["hr-a", "hr-b"];
    publish(broker.port, hr_messages(&devices, 0..60), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    // N events → N measurements → the Observations.
    let started = Instant::now();
    while c.metric("iomt_events_committed_total") < 120.0 {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.metric("iomt_events_incoming_total"), 120.0);
    assert_eq!(c.metric("iomt_measurements_total"), 120.0);
    assert_eq!(c.metric("iomt_errors_total"), 0.0);
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    assert!(c.metric("iomt_fhir_resources_saved_total") >= 2.0);
    // Linked to the Devices named by the topic / body and their Patients.
    assert_eq!(server.all("Device").await.len(), 2);
    assert_eq!(server.all("Patient").await.len(), 2);
    c.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_works_too() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let c = Connector::start(
        dir.path(),
        "v311",
        broker.port,
        &server.base,
        "protocol = \"3.1.1\"",
    );
    let devices = ["v4-a"];
    publish(broker.port, hr_messages(&devices, 0..60), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
}

/// TLS with a private CA (`ca_file`): the connector verifies the broker's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_private_ca() {
    let server = FhirServer::acquire().await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::create(certs.path());
    let broker = Mosquitto::start_tls(&ca);
    let dir = tempfile::tempdir().unwrap();
    let c = Connector::start(
        dir.path(),
        "tls",
        broker.port,
        &server.base,
        &format!("tls = true\nca_file = \"{}\"", ca.ca_pem.display()),
    );
    // Publish over TLS too, with mosquitto_pub trusting the same CA.
    let cafile = ca.ca_pem.to_str().unwrap();
    mosquitto_pub(
        broker.port,
        &["--cafile", cafile],
        hr_messages(&["tls-a"], 0..60),
    );
    wait_for_complete_observations(&server, &["tls-a"], Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
}

/// Username and password, the password from an environment variable (not the config file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_username_and_password() {
    let server = FhirServer::acquire().await;
    let broker = Mosquitto::start_with_password("iomt", "s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    // The connector (a child process) inherits the variable.
    let extra = "username = \"iomt\"\npassword_env = \"IOMT_TEST_MQTT_PASSWORD\"";
    std::env::set_var("IOMT_TEST_MQTT_PASSWORD", "s3cret-pw");
    let c = Connector::start(dir.path(), "auth", broker.port, &server.base, extra);
    mosquitto_pub(
        broker.port,
        &["-u", "iomt", "-P", "s3cret-pw"],
        hr_messages(&["pw-a"], 0..60),
    );
    wait_for_complete_observations(&server, &["pw-a"], Duration::from_secs(60)).await;
    assert_eq!(c.metric("iomt_dead_letters_total"), 0.0);
    assert!(
        !c.log_text().contains("s3cret-pw"),
        "the password must never be logged"
    );
}

/// The committed example config documents every option; it must stay loadable and valid.
#[test]
fn example_config_loads_and_validates() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--format", "json", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert!(out.status.success());
    // Strict: an unknown option is an error that names it.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("[pipeline]\n", "[pipeline]\nbatch_size = 10\n");
    let text = text.replace(
        "\"../templates",
        &format!("\"{}/templates", env!("CARGO_MANIFEST_DIR")),
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown field `batch_size`"));
}
