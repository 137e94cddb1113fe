//! Every fault kind (429, 503, 412, dropped connections, and all mixed) through the fault
//! proxy leaves exactly what a fault-free run leaves; the Device link under a lost answer; the
//! proxy itself.

use super::*;

/// The fault test for one template set: a fault-free baseline, then one run per fault kind
/// on a reset server, each compared with the baseline.
async fn survives_every_fault_kind(set: Set) {
    let server = FhirServer::acquire().await;

    let baseline_run = write_set(&set, &server.base).await;
    let rejected: HashSet<usize> = baseline_run
        .errors
        .iter()
        .flat_map(|(_, events)| events.iter().copied())
        .collect();
    let expected = set.expected_samples(&rejected);
    let baseline = snapshot(&server).await;
    assert_same_samples(
        &format!("{} / fault-free", set.name),
        &baseline.samples,
        &expected,
    );
    assert!(
        !baseline.observations.is_empty() && !baseline.devices.is_empty(),
        "{}: nothing written",
        set.name
    );
    eprintln!(
        "FAULTS set={} kind=none requests={} retries={} injected=0 observations={} measurements={}",
        set.name,
        baseline_run.requests,
        baseline_run.retries,
        baseline.observations.len(),
        set.measurements()
    );

    for kind in Kind::ALL {
        server.reset().await;
        let proxy = FaultProxy::start(&server.base, kind.script()).await;
        let run = write_set(&set, &proxy.base).await;
        let got = snapshot(&server).await;
        let injected = proxy.injected();
        eprintln!(
            "FAULTS set={} kind={} requests={} retries={} injected={} ({}) conflicts={} gave_up={} proxied={} elapsed_ms={}",
            set.name,
            kind.name(),
            run.requests,
            run.retries,
            proxy.injected_total(),
            injected
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(","),
            run.conflicts,
            run.gave_up,
            proxy.requests(),
            run.elapsed.as_millis(),
        );
        let ctx = format!("{} / {}", set.name, kind.name());
        assert_eq!(proxy.broken(), 0, "{ctx}: the proxy itself failed");
        assert_eq!(
            proxy.requests(),
            run.requests,
            "{ctx}: the proxy saw other requests than the client sent"
        );
        for label in kind.must_inject() {
            assert!(
                injected.get(*label).copied().unwrap_or(0) > 0,
                "{ctx}: no {label} injected: {injected:?}"
            );
        }
        if kind == Kind::PreconditionOnUpdate {
            // 412 is not a transient failure: the writer re-reads and re-merges.
            assert!(run.conflicts > 0, "{ctx}: no conflict handled");
        } else {
            assert!(run.retries > 0, "{ctx}: nothing retried");
        }
        if kind == Kind::DropAfterForward {
            // The retry of an update the server applied carries a stale If-Match: the real
            // server answers 412 and the writer must find its data already there.
            assert!(
                run.conflicts > 0,
                "{ctx}: no dropped update was retried into a 412"
            );
        }
        assert_eq!(run.gave_up, 0, "{ctx}: the client gave up");
        assert_eq!(run.errors, baseline_run.errors, "{ctx}: errors differ");
        assert_same_samples(&ctx, &got.samples, &expected);
        assert_eq!(got.patients, baseline.patients, "{ctx}: Patients differ");
        assert_eq!(got.devices, baseline.devices, "{ctx}: Devices differ");
        assert_eq!(
            got.observations.keys().collect::<Vec<_>>(),
            baseline.observations.keys().collect::<Vec<_>>(),
            "{ctx}: Observation identifiers differ"
        );
        for (id, obs) in &got.observations {
            assert_eq!(obs, &baseline.observations[id], "{ctx}: Observation {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_rate_sampled_data_survives_every_fault_kind() {
    survives_every_fault_kind(Set::load(
        "heart-rate",
        heart_rate_events(),
        Some(60_000),
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blood_pressure_components_survive_every_fault_kind() {
    survives_every_fault_kind(Set::load(
        "blood-pressure",
        blood_pressure_events(),
        None,
        true,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spo2_quantity_survives_every_fault_kind() {
    survives_every_fault_kind(Set::load("spo2", spo2_events(), None, false)).await;
}

/// `ResolutionMode::Create` links an existing Device that has no patient with a PUT carrying
/// `If-Match`. When that PUT is applied but its answer is lost, the retry meets a real 412:
/// the writer must see that the Device is now linked to the right Patient and go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_link_survives_a_dropped_answer() {
    let server = FhirServer::acquire().await;
    let device_id = logical_id("", "hr-unlinked");
    server
        .put(json!({
            "resourceType": "Device",
            "id": device_id,
            "identifier": [{"value": "hr-unlinked"}],
        }))
        .await;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(|s: &Seen<'_>| {
            if s.method == "PUT"
                && s.if_match.is_some()
                && s.target.contains("/Device/")
                && s.attempt == 0
            {
                Fault::DropAfter
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let dir = templates_dir("heart-rate");
    let templates = fhir_templates(&read(dir.join("fhirmapping.json")));
    let n = device_normalizer(&read(dir.join("devicecontent.json")));
    let events: Vec<Value> = (0..5)
        .map(|m| {
            json!({"body": {"deviceId": "hr-unlinked", "patientId": "patient-unlinked",
                            "endDate": format!("2024-03-01T10:0{m}:00Z"), "heartRate": 70 + m}})
        })
        .collect();
    let w = writer(&proxy.base, &templates);
    let report = w.write_batch(normalize(&n, &events, 0), None).await;
    assert_eq!(
        proxy.injected().get("drop-after"),
        Some(&1),
        "{:?}",
        proxy.injected()
    );
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.observations_created, 1);
    let devices = server.all("Device").await;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        devices[0]["patient"]["reference"],
        format!("Patient/{}", logical_id("", "patient-unlinked"))
    );
    assert_eq!(server.all("Patient").await.len(), 1);
    assert_eq!(server.all("Observation").await.len(), 1);
}

/// The proxy's faults are real: a dropped-after-forward PUT reached the server although the
/// client got no answer; 429 carries `Retry-After`; counts are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_injects_the_faults_it_is_told_to() {
    let server = FhirServer::acquire().await;
    let mut n = 0;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            n += 1;
            match (n, s.method) {
                (1, "PUT") => Fault::DropAfter,
                (2, _) => TOO_MANY_REQUESTS,
                (3, _) => Fault::DropBefore,
                _ => Fault::Pass,
            }
        }),
    )
    .await;
    let http = reqwest::Client::new();
    let patient = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "p1"}]});
    let put = http
        .put(format!("{}/Patient/p1", proxy.base))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await;
    assert!(
        put.is_err(),
        "drop-after must leave the client without an answer"
    );
    assert_eq!(
        server.all("Patient").await.len(),
        1,
        "but the server wrote it"
    );

    let r = http
        .get(format!("{}/Patient/p1", proxy.base))
        .send()
        .await
        .expect("429");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let dropped = http.get(format!("{}/Patient/p1", proxy.base)).send().await;
    assert!(dropped.is_err(), "drop-before");
    let r = http
        .get(format!("{}/Patient/p1", proxy.base))
        .send()
        .await
        .expect("pass");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("etag"));
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(body["id"], "p1");
    assert_eq!(proxy.requests(), 4);
    assert_eq!(
        proxy.injected(),
        BTreeMap::from([
            ("429".to_string(), 1),
            ("drop-after".to_string(), 1),
            ("drop-before".to_string(), 1)
        ])
    );
    assert_eq!(proxy.broken(), 0);
}
