//! Two writers on one hourly Observation, a create that replaces another's, a server without
//! history, and the request count of an hour of 1 Hz heart rate.

use super::*;

/// The hourly Observation of [`one_hz_hour`], read from the server; asserts there is exactly
/// one and that slot `i` holds measurement `i`'s value (so every sample once, at its slot).
async fn assert_one_hz_hour_complete(server: &FhirServer, measurements: &[(usize, Measurement)]) {
    let all = server.all("Observation").await;
    assert_eq!(all.len(), 1, "one hourly Observation expected");
    let obs = &all[0];
    let sd = &obs["valueSampledData"];
    assert_eq!(sd["period"].as_f64(), Some(1000.0));
    let data = sd["data"].as_str().expect("data");
    let tokens: Vec<&str> = data.split(' ').collect();
    assert_eq!(tokens.len(), 3600, "slots");
    let start = obs
        .pointer("/effectivePeriod/start")
        .and_then(Value::as_str)
        .and_then(parse_fhir_datetime)
        .expect("start");
    let decoded = sampled_data_to_time_values(data, start, 1000.0);
    assert_eq!(decoded.len(), 3600, "samples present");
    for (i, (tv, (_, m))) in decoded.iter().zip(measurements).enumerate() {
        assert_eq!(tv.time, m.occurrence_time_utc, "slot {i}");
        assert_eq!(
            number(&tv.value),
            number(&m.properties[0].value),
            "value at slot {i}"
        );
    }
}

/// Two independent writers (own clients and caches, like two processes) merge interleaved
/// batches into one hourly SampledData Observation, concurrently, with `If-Match`.
///
/// Writer A creates the Observation; writer B's first update goes through the proxy, which
/// answers it 412 although its version is current (so B's re-read and re-merge run on every
/// run), and leaves A's cached version stale (so A's first concurrent update gets a real 412
/// from the server). Then both write at once, minutes alternating between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_merge_one_hourly_sampled_data_observation() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let mut injected_once = false;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            if s.is_observation_update() && !injected_once {
                injected_once = true;
                PRECONDITION_FAILED
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let a = writer(&server.base, &templates);
    let b = writer(&proxy.base, &templates);

    write_batches(&a, vec![all[..10].to_vec()]).await;
    assert_eq!(a.stats().created.load(Ordering::SeqCst), 1);
    write_batches(&b, vec![all[10..60].to_vec()]).await;
    assert_eq!(b.stats().updated.load(Ordering::SeqCst), 1);

    let (mut for_a, mut for_b) = (Vec::new(), Vec::new());
    for (i, chunk) in all[60..].chunks(60).enumerate() {
        if i % 2 == 0 {
            for_a.push(chunk.to_vec());
        } else {
            for_b.push(chunk.to_vec());
        }
    }
    tokio::join!(write_batches(&a, for_a), write_batches(&b, for_b));

    let (ca, cb) = (
        a.stats().conflicts.load(Ordering::SeqCst),
        b.stats().conflicts.load(Ordering::SeqCst),
    );
    let injected = proxy.injected().get("412").copied().unwrap_or(0);
    eprintln!(
        "CONCURRENCY conflicts_a={ca} conflicts_b={cb} injected_412={injected} server_412={} updates_a={} updates_b={} requests_a={} requests_b={}",
        ca + cb - injected,
        a.stats().updated.load(Ordering::SeqCst),
        b.stats().updated.load(Ordering::SeqCst),
        a.client().stats().requests.load(Ordering::SeqCst),
        b.client().stats().requests.load(Ordering::SeqCst),
    );
    assert_eq!(injected, 1, "the proxy's 412 for writer B's first update");
    assert!(cb >= 1, "writer B handled no conflict");
    assert!(
        ca >= 1,
        "writer A wrote from a stale cache without a conflict"
    );
    assert_eq!(proxy.broken(), 0);
    assert_one_hz_hour_complete(&server, &all).await;
}

/// Two writers create the same hourly SampledData Observation at once: writer B searches,
/// finds nothing, and its create (a `PUT` to the deterministic id) is held by the proxy while
/// writer A searches and creates the Observation with its own samples. Then B's create goes
/// through and replaces A's version. B must notice (the version before its own in the
/// Observation's history) and merge A's samples back: in the end every sample of both is there
/// once, and B counted one create race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_replaces_another_writers_create_merges_its_samples_back() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let mut held_once = false;
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(move |s: &Seen<'_>| {
            let observation_create =
                s.method == "PUT" && s.if_match.is_none() && s.target.contains("/Observation/");
            if observation_create && !held_once {
                held_once = true;
                Fault::Hold
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let a = writer(&server.base, &templates);
    let b = writer(&proxy.base, &templates);

    let b_batch = all[1800..].to_vec();
    let b_task = tokio::spawn(async move {
        let r = b.write_batch(b_batch, None).await;
        (b, r)
    });
    proxy.wait_held(1).await;
    // B has searched and found nothing; its create is on hold. A creates meanwhile.
    write_batches(&a, vec![all[..1800].to_vec()]).await;
    assert_eq!(a.stats().created.load(Ordering::SeqCst), 1);
    proxy.release();
    let (b, r) = b_task.await.expect("writer B");
    assert!(r.errors.is_empty(), "{:?}", r.errors);

    let races = b.stats().create_races.load(Ordering::SeqCst);
    eprintln!(
        "CREATE_RACE races_b={races} created_b={} updated_b={} conflicts_b={}",
        b.stats().created.load(Ordering::SeqCst),
        b.stats().updated.load(Ordering::SeqCst),
        b.stats().conflicts.load(Ordering::SeqCst),
    );
    assert_eq!(proxy.injected().get("hold").copied(), Some(1));
    assert_eq!(
        races, 1,
        "writer B did not notice it replaced A's Observation"
    );
    assert_eq!(proxy.broken(), 0);
    assert_one_hz_hour_complete(&server, &all).await;
}

/// A server that shows no history (here the proxy answers every `_history` read 405): a
/// create still succeeds, only the create-race check is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_history_still_gets_its_creates() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let proxy = FaultProxy::start(
        &server.base,
        Box::new(|s: &Seen<'_>| {
            if s.method == "GET" && s.target.contains("/_history") {
                Fault::Status {
                    code: 405,
                    retry_after: None,
                }
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let w = writer(&proxy.base, &templates);
    write_batches(&w, vec![all[..600].to_vec(), all[600..].to_vec()]).await;
    assert_eq!(w.stats().created.load(Ordering::SeqCst), 1);
    assert_eq!(w.stats().create_races.load(Ordering::SeqCst), 0);
    assert_eq!(
        proxy.injected().get("405").copied(),
        Some(1),
        "one history read"
    );
    assert_one_hz_hour_complete(&server, &all).await;
}

/// FHIR requests per measurement for an hour of 1 Hz heart rate into an hourly SampledData
/// Observation, written as the service batches it (300 measurements), by a fresh writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hz_heart_rate_needs_at_most_0_02_requests_per_measurement() {
    let server = FhirServer::acquire().await;
    let templates = fhir_templates(HR_1HZ_FHIR_MAPPING);
    let all = one_hz_hour();
    let w = writer(&server.base, &templates);
    for batch in all.chunks(300) {
        let r = w.write_batch(batch.to_vec(), None).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let requests = w.client().stats().requests.load(Ordering::SeqCst);
    let ratio = requests as f64 / all.len() as f64;
    eprintln!(
        "REQUESTS_PER_MEASUREMENT requests={requests} measurements={} ratio={ratio:.4}",
        all.len()
    );
    assert!(
        ratio <= 0.02,
        "{requests} requests for {} measurements",
        all.len()
    );
    assert_one_hz_hour_complete(&server, &all).await;
}
