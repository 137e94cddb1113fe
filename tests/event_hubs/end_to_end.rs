//! Events to Observations, dead letters with their envelope, SIGTERM drains; SIGKILL at full
//! rate and a restart; the simulator publishing to a hub.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_events_become_the_expected_observations_and_sigterm_drains() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["eh-a", "eh-b"];
    // Published before the connector starts: a partition without a checkpoint starts at the
    // earliest event.
    publish(&hub, hr_events(&devices, 0..30, 2), Duration::ZERO).await;
    let mut c = Connector::start(dir.path(), "e2e", "instance-1", &hub, &server.base);
    publish(&hub, hr_events(&devices, 30..60, 2), Duration::ZERO).await;
    // One malformed event with IoT Hub system properties (message annotations) and an
    // application property: dead-lettered with its envelope.
    let producer = producer(&hub).await;
    let mut annotations = azure_core_amqp::message::AmqpAnnotations::new();
    annotations.insert(
        azure_core_amqp::AmqpSymbol::from("iothub-connection-device-id"),
        "eh-bad",
    );
    annotations.insert(
        azure_core_amqp::AmqpSymbol::from("iothub-enqueuedtime"),
        "2024-05-01T10:00:00Z",
    );
    let mut app = azure_core_amqp::message::AmqpApplicationProperties::new();
    app.insert("sent-by".into(), "iomt-tests");
    let bad = AmqpMessage::builder()
        .with_body(b"{\"heartRate\": 71, \"deviceId\": ".to_vec())
        .with_message_annotations(annotations)
        .with_application_properties(app)
        .with_properties(azure_core_amqp::message::AmqpMessageProperties {
            message_id: Some("iomt-test-malformed".to_string().into()),
            ..Default::default()
        })
        .build();
    // As in `publish`: sent again on a new producer when the answer is lost.
    let mut producer = producer;
    for attempt in 0.. {
        let send = producer.send_message(
            bad.clone(),
            Some(SendMessageOptions {
                partition_id: Some("1".into()),
            }),
        );
        match tokio::time::timeout(Duration::from_secs(10), send).await {
            Ok(sent) => {
                sent.unwrap();
                break;
            }
            Err(_) if attempt < 2 => producer = self::producer(&hub).await,
            Err(_) => panic!("sending the malformed event timed out three times"),
        }
    }
    producer.close().await.unwrap();
    assert_eq!(hub.total(), 121);

    wait_for_complete_observations(&server, &devices, Duration::from_secs(60)).await;
    c.wait_metric("iomt_events_acked_total", 121.0, Duration::from_secs(20))
        .await;
    assert_eq!(c.metric("iomt_events_incoming_total"), 121.0);
    assert_eq!(c.metric("iomt_measurements_total"), 120.0);
    assert_eq!(
        c.metric("iomt_dead_letters_total"),
        1.0,
        "{}",
        c.metrics_text()
    );
    assert_eq!(server.all("Device").await.len(), 2);
    assert_eq!(server.all("Patient").await.len(), 2);

    // The envelope: application properties, IoT Hub annotations, Event Hubs system properties.
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "list", "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let id = list.lines().next().unwrap().split('\t').next().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["dead-letters", "show", id, "--config"])
        .arg(&c.config)
        .output()
        .unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sp = &shown["systemProperties"];
    assert_eq!(sp["iothub-connection-device-id"], "eh-bad", "{shown:#}");
    assert_eq!(sp["x-opt-sequence-number"], 60, "{shown:#}");
    assert_eq!(sp["x-opt-offset"], "60", "{shown:#}");
    assert!(sp["x-opt-enqueued-time"].is_string(), "{shown:#}");
    assert_eq!(sp["eventhubs-partition-id"], "1", "{shown:#}");
    assert_eq!(shown["properties"]["sent-by"], "iomt-tests", "{shown:#}");

    c.stop();
    // SIGTERM drained and checkpointed everything: each partition's checkpoint is its last event.
    let mut cps: Vec<(String, i64)> = checkpoints(dir.path())
        .iter()
        .map(|c| {
            (
                c["partition_id"].as_str().unwrap().to_string(),
                c["sequence_number"].as_i64().unwrap(),
            )
        })
        .collect();
    cps.sort();
    assert_eq!(cps, [("0".to_string(), 59), ("1".to_string(), 60)]);
}

/// `iomt run` reading Event Hubs at full rate, killed with SIGKILL after
/// some events were committed, then started again (same owner id and checkpoint store), ends
/// in the FHIR state one `iomt replay` of exactly the same events gives, resource by resource:
/// nothing lost (every sample), nothing duplicated.
///
/// 24 devices, 3,624 events (heart rate into hourly SampledData over two hours, SpO2 in some
/// of the same messages, blood pressure in others), each device on one of 4 partitions. A
/// third waits in the hub when the connector starts, so it reads as fast as it can; the next
/// third follows paced (5 ms apart) while it runs, so that events are always in flight (read,
/// not yet committed) however fast this machine commits the backlog. It is killed once every
/// device's second-hour Observation is, most likely, written (committed is a prefix of what
/// it read, across partitions) with events in flight. The publisher goes on through the kill
/// and the restart, then sends the last third at full rate; the restarted one resumes exactly
/// at the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_hubs_kill_9_at_full_rate_ends_in_the_state_of_one_replay() {
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("ek", 24, 150);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let partition_of = |device: &str| -> usize {
        device.rsplit('-').next().unwrap().parse::<usize>().unwrap() % 4
    };
    let mut backlog: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .map(|r| (partition_of(&r.device), r.bytes()))
        .collect();
    let mut paced = backlog.split_off(total / 3);
    let rest = paced.split_off(total / 3);

    let hub = EventHubsEmulator::start("telemetry", 4).await;
    let dir = tempfile::tempdir().unwrap();
    publish_at_full_rate(&hub, backlog).await;
    let mut c = Connector::start_vitals(dir.path(), "k9", "instance-1", &hub, &server.base);
    let threshold = 2.0 * vitals::through_first_of_second_hour(&readings) as f64;
    let publishing = async {
        publish(&hub, paced, Duration::from_millis(5)).await;
        publish_at_full_rate(&hub, rest).await;
    };
    let kill_and_restart = async {
        let started = Instant::now();
        let killed_at = loop {
            let text = c.metrics_text();
            let committed = metric(&text, "iomt_events_committed_total");
            if committed >= threshold && committed < metric(&text, "iomt_events_incoming_total") {
                break text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not {threshold} committed with events in flight after 60 s:\n{text}\n{}",
                c.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        c.kill9();
        let checkpointed: i64 = checkpoints(dir.path())
            .iter()
            .map(|c| c["sequence_number"].as_i64().unwrap() + 1)
            .sum();
        assert!(checkpointed > 0, "nothing was checkpointed before the kill");
        let c2 = Connector::start_vitals(dir.path(), "k9", "instance-1", &hub, &server.base);
        (killed_at, checkpointed, c2)
    };
    let ((), (killed_at, checkpointed, mut c2)) = tokio::join!(publishing, kill_and_restart);
    let [incoming, committed] = ["iomt_events_incoming_total", "iomt_events_committed_total"]
        .map(|m| metric(&killed_at, m));
    assert_eq!(hub.total(), total);

    connector::wait_until_written(&server.base, &expected, Duration::from_secs(180), &[&c2]).await;
    // It resumed exactly at the checkpoints: every event after them once, none before.
    let after_restart = (total as i64 - checkpointed) as f64;
    c2.wait_metric(
        "iomt_events_acked_total",
        after_restart,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        c2.metric("iomt_events_incoming_total"),
        after_restart,
        "{}",
        c2.log_text()
    );
    connector::assert_clean(&[&c2]);
    let cmp = connector::stop_and_compare(&mut [&mut c2], &server.base, &expected).await;
    // The killed one created second-hour Observations; the restarted one merged what it had
    // not committed (and the last third, which it never saw) into them (`amended`), not into
    // new ones.
    assert!(
        cmp.amended > 0,
        "no Observation was merged into after the restart: {}",
        cmp.figures()
    );
    // Read just before the kill, `incoming` is a lower bound of what the killed one read.
    eprintln!(
        "EVENTHUBS_KILL9 events={total} killed_at: incoming={incoming} committed={committed} \
         checkpointed={checkpointed}; after_restart={after_restart} \
         redelivered>={} {} in {:.1?}",
        incoming - checkpointed as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}

/// `iomt simulate --target eventhubs` publishes through the real SDK producer (here into the
/// emulator): every simulated event is stored in the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_publishes_to_event_hubs() {
    let hub = EventHubsEmulator::start("telemetry", 2).await;
    let endpoint = hub.endpoint();
    let cs = hub.connection_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_iomt"))
            .args([
                "simulate",
                "--seed",
                "2",
                "--devices",
                "4",
                "--kinds",
                "heart-rate,spo2",
                "--readings",
                "5",
                "--target",
                "eventhubs",
                "--eventhubs-endpoint",
                &endpoint,
            ])
            .env("IOMT_EVENTHUBS_CONNECTION_STRING", cs)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 20 events"));
    assert_eq!(hub.total(), 20);
}
