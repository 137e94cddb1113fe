//! Instances of one consumer group split a hub's partitions (the SDK's load balancing over the
//! shared checkpoint store), also while events flow, and end in the state of one replay.

use super::*;

/// Two instances split a hub's partitions, each device on one partition (a partition key), so
/// each device's Observations have one writer; once the partitions are settled, every event is
/// read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_hubs_instances_split_the_partitions() {
    let server = FhirServer::acquire().await;
    let hub = EventHubsEmulator::start("telemetry", 4).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = ["es-a", "es-b", "es-c", "es-d"];
    let a = Connector::start(dir.path(), "split-a", "instance-a", &hub, &server.base);
    let b = Connector::start(dir.path(), "split-b", "instance-b", &hub, &server.base);
    // Publish once the partitions are settled, so that no partition is read by both while
    // ownership moves.
    let owners = ["instance-a".to_string(), "instance-b".to_string()];
    wait_until_settled(dir.path(), &hub, &owners, || {
        format!("{}\n---\n{}", a.log_text(), b.log_text())
    })
    .await;
    publish(&hub, hr_events(&devices, 0..1, 4), Duration::ZERO).await;
    let started = Instant::now();
    while server.all("Observation").await.len() < devices.len() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&hub, hr_events(&devices, 1..60, 4), Duration::ZERO).await;
    wait_for_complete_observations(&server, &devices, Duration::from_secs(90)).await;
    let started = Instant::now();
    while a.metric("iomt_events_acked_total") + b.metric("iomt_events_acked_total") < 240.0 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (na, nb) = (
        a.metric("iomt_events_incoming_total"),
        b.metric("iomt_events_incoming_total"),
    );
    eprintln!("EVENTHUBS_SPLIT instance_a={na} instance_b={nb}");
    assert_eq!(
        na + nb,
        240.0,
        "each event read once:\n{}\n{}",
        a.log_text(),
        b.log_text()
    );
    assert!(
        na > 0.0 && nb > 0.0,
        "both instances took partitions: {na} / {nb}"
    );
}

/// Partition → owner id, from the checkpoint store's ownership records under `dir`.
fn ownerships(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.join("checkpoints")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json")
                && p.parent().is_some_and(|d| d.ends_with("ownership"))
            {
                let Ok(r) = serde_json::from_slice::<Value>(&std::fs::read(&p).unwrap_or_default())
                else {
                    continue; // being replaced
                };
                if let (Some(partition), Some(owner)) =
                    (r["partition_id"].as_str(), r["owner_id"].as_str())
                {
                    out.insert(partition.to_string(), owner.to_string());
                }
            }
        }
    }
    out
}

/// Waits (up to 60 s) until the ownership records split the hub's partitions evenly between
/// `owners` and each partition is read by one receiver, its owner's (the source names its
/// receivers `<owner id>/<partition>/<n>`). From then on the balancers leave the partitions be
/// and no event is read by two instances.
async fn wait_until_settled(
    dir: &Path,
    hub: &EventHubsEmulator,
    owners: &[String],
    logs: impl Fn() -> String,
) {
    let partitions = hub.partition_count();
    let started = Instant::now();
    loop {
        let owned = ownerships(dir);
        let shares: Vec<usize> = owners
            .iter()
            .map(|o| owned.values().filter(|v| *v == o).count())
            .collect();
        let even = owned.len() == partitions
            && shares.iter().sum::<usize>() == partitions
            && shares.iter().max().unwrap_or(&0) - shares.iter().min().unwrap_or(&0) <= 1;
        let receivers: Vec<Vec<String>> = (0..partitions).map(|p| hub.receivers(p)).collect();
        let read_by_owner = (0..partitions).all(|p| match receivers[p].as_slice() {
            [one] => owned
                .get(&p.to_string())
                .is_some_and(|o| one.split('/').next() == Some(o.as_str())),
            _ => false,
        });
        if even && read_by_owner {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "partitions not settled after 60 s: owners {owned:?}, receivers {receivers:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Scale-out: `instances` connectors in one consumer group split a hub's
/// 6 partitions (the SDK's load balancing over the shared checkpoint store) and end in the
/// FHIR state one `iomt replay` of the same events gives, resource by resource. The events go
/// to the partitions round robin, as a sender without partition keys spreads them, so every
/// device's readings reach every instance: they write the same hourly Observations at the same
/// time and race on creating them (repaired by the writer, docs/FHIR.md) and on updating them.
async fn event_hubs_instances_end_in_the_state_of_one_replay(instances: usize) {
    const PARTITIONS: usize = 6;
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings(&format!("es{instances}"), 10, 60);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let hub = EventHubsEmulator::start("telemetry", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let owners: Vec<String> = (0..instances).map(|i| format!("instance-{i}")).collect();
    let connectors: Vec<Connector> = owners
        .iter()
        .map(|owner| Connector::start_vitals(dir.path(), owner, owner, &hub, &server.base))
        .collect();
    let all: Vec<&ConnectorProcess> = connectors.iter().map(|c| &c.process).collect();
    let logs = || connector::logs(&all);
    // Publish once the partitions are settled (spread evenly, each read by its owner), so
    // that each instance reads a share.
    wait_until_settled(dir.path(), &hub, &owners, logs).await;
    let events: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| (i % PARTITIONS, r.bytes()))
        .collect();
    publish_at_full_rate(&hub, events).await;
    assert_eq!(hub.total(), total);
    connector::wait_until_written(&server.base, &expected, Duration::from_secs(120), &all).await;
    let total_of = |name: &str| connector::total(&all, name);
    connector::wait_total(
        &all,
        "iomt_events_acked_total",
        total as f64,
        Duration::from_secs(30),
    )
    .await;
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    let (races, requests) = (
        total_of("iomt_fhir_create_races_total"),
        total_of("iomt_fhir_requests_total"),
    );
    // At least once: a partition whose receiver moves between instances while the balancers
    // settle (or after a reconnect) is read again from its checkpoint.
    let read = per_instance.iter().sum::<f64>();
    assert!(
        read >= total as f64,
        "{read} of {total} read: {per_instance:?}\n{}",
        logs()
    );
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance read a share: {per_instance:?}"
    );
    connector::assert_clean(&all);
    let mut connectors = connectors;
    let mut stopping: Vec<_> = connectors.iter_mut().map(|c| &mut c.process).collect();
    let cmp = connector::stop_and_compare(&mut stopping, &server.base, &expected).await;
    eprintln!(
        "EVENTHUBS_SCALE_OUT instances={instances} partitions={PARTITIONS} events={total} \
         per_instance={per_instance:?} read_again={} create_races={races} \
         fhir_requests={requests} {} in {:.1?}",
        read - total as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_event_hubs_instances_end_in_the_state_of_one_replay() {
    event_hubs_instances_end_in_the_state_of_one_replay(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_event_hubs_instances_end_in_the_state_of_one_replay() {
    event_hubs_instances_end_in_the_state_of_one_replay(3).await;
}

/// Scale-out while events flow: a second instance joins one that is reading every partition,
/// and takes its share of the partitions while events keep arriving on all of them (the first
/// instance's readers of those partitions are displaced mid-stream); the two end in the FHIR
/// state one `iomt replay` of the same events gives, resource by resource. The first
/// instance's other partitions keep being read: a partition moving away no longer takes the
/// instance's connection, and with it every other partition, down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_hubs_instance_joining_mid_stream_ends_in_the_state_of_one_replay() {
    const PARTITIONS: usize = 6;
    let test_started = Instant::now();
    let server = FhirServer::acquire().await;
    let readings = vitals::readings("ej", 10, 120);
    let total = readings.len();
    let expected = one_replay_of(&server, &readings).await;
    let hub = EventHubsEmulator::start("telemetry", PARTITIONS).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Connector::start_vitals(dir.path(), "join-0", "instance-0", &hub, &server.base);
    wait_until_settled(dir.path(), &hub, &["instance-0".to_string()], || {
        first.log_text()
    })
    .await;
    let events: Vec<(usize, Vec<u8>)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| (i % PARTITIONS, r.bytes()))
        .collect();
    // The events arrive paced, on every partition in turn; a third of the way through, the
    // second instance starts, claims its share and displaces the first one's readers.
    let joined = async {
        let started = Instant::now();
        while hub.total() < total / 3 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "publishing stalled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let second = Connector::spawn_full(
            dir.path(),
            "join-1",
            "instance-1",
            &hub,
            &server.base,
            &SignIn::connection_string(&hub),
            &vitals::template_set(),
        );
        let reading = |p: usize| {
            hub.receivers(p)
                .iter()
                .any(|n| n.starts_with("instance-1/"))
        };
        while !(0..PARTITIONS).any(reading) {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the second instance read nothing:\n{}",
                second.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (second, hub.total())
    };
    let ((), (second, stored_at_join)) =
        tokio::join!(publish(&hub, events, Duration::from_millis(8)), joined);
    assert!(
        stored_at_join < total,
        "the second instance joined after the last event: not mid-stream"
    );
    let connectors = [first, second];
    let all: Vec<&ConnectorProcess> = connectors.iter().map(|c| &c.process).collect();
    assert_eq!(hub.total(), total);
    connector::wait_until_written(&server.base, &expected, Duration::from_secs(120), &all).await;
    connector::wait_total(
        &all,
        "iomt_events_acked_total",
        total as f64,
        Duration::from_secs(30),
    )
    .await;
    let per_instance: Vec<f64> = connectors
        .iter()
        .map(|c| c.metric("iomt_events_incoming_total"))
        .collect();
    assert!(
        per_instance.iter().all(|&n| n > 0.0),
        "every instance read a share: {per_instance:?}"
    );
    connector::assert_clean(&all);
    let read = per_instance.iter().sum::<f64>();
    let mut connectors = connectors;
    let mut stopping: Vec<_> = connectors.iter_mut().map(|c| &mut c.process).collect();
    let cmp = connector::stop_and_compare(&mut stopping, &server.base, &expected).await;
    eprintln!(
        "EVENTHUBS_JOIN partitions={PARTITIONS} events={total} \
         stored_when_the_second_joined={stored_at_join} per_instance={per_instance:?} \
         read_again={} {} in {:.1?}",
        read - total as f64,
        cmp.figures(),
        test_started.elapsed()
    );
}
