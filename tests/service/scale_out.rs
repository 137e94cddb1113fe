//! Instances on a shared subscription (`$share/...`) end in the state of one replay.

use super::*;

/// Scale-out: `instances` connectors on one MQTT v5 shared subscription
/// (`$share/iomt/devices/+/telemetry`) split the stream and end in the FHIR state one
/// `iomt replay` of the same events gives, resource by resource. Mosquitto hands each message
/// to one member of the group (round robin), so every device's readings are spread over all
/// instances: they write the same hourly Observations at the same time, each from its own
/// cache, and race on creating them (repaired by the writer, docs/FHIR.md) and on updating
/// them (`If-Match`, re-read and merge on 412).
async fn shared_subscription_ends_in_the_state_of_one_replay(instances: usize) {
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings(&format!("sh{instances}"), 10, 60);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = "shared_group = \"iomt\"";
    let connectors: Vec<Connector> = (0..instances)
        .map(|i| {
            let name = format!("share-{i}");
            let c = Connector::start_vitals(dir.path(), &name, broker.port, &server.base, shared);
            broker.wait_for_log(
                &format!("{name} 1 $share/iomt/devices/+/telemetry"),
                Duration::from_secs(20),
            );
            c
        })
        .collect();
    publish(broker.port, vitals_messages(&readings), Duration::ZERO).await;
    let all: Vec<&ConnectorProcess> = connectors.iter().map(|c| &c.process).collect();
    connector::wait_until_written(&server.base, &expected, Duration::from_secs(120), &all).await;
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    let total_of = |name: &str| connector::total(&all, name);
    let (races, requests) = (
        total_of("iomt_fhir_create_races_total"),
        total_of("iomt_fhir_requests_total"),
    );
    assert_eq!(
        per_instance.iter().sum::<f64>(),
        total as f64,
        "each event delivered once: {per_instance:?}"
    );
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance took a share: {per_instance:?}"
    );
    connector::assert_clean(&all);
    let mut connectors = connectors;
    let mut stopping: Vec<_> = connectors.iter_mut().map(|c| &mut c.process).collect();
    let cmp = connector::stop_and_compare(&mut stopping, &server.base, &expected).await;
    eprintln!(
        "SHARED_SUBSCRIPTION instances={instances} events={total} per_instance={per_instance:?} \
         create_races={races} fhir_requests={requests} {} in {:.1?}",
        cmp.figures(),
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_shared_subscription_end_in_the_state_of_one_replay() {
    shared_subscription_ends_in_the_state_of_one_replay(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_shared_subscription_end_in_the_state_of_one_replay() {
    shared_subscription_ends_in_the_state_of_one_replay(3).await;
}
