//! The Bundle path leaves what the single-request path leaves: fault-free, with entries
//! answering 412, 429 and 500, through a server that splits (413) or refuses Bundles.

use super::*;

/// Entry faults for the Bundle path: among new entries, an update (`ifMatch`) gets 412 every
/// second time; every 5th new entry 429 with `Retry-After: 1` (twice in all: a real second
/// each), every 7th 500 (6 in all); every 4th write is applied by the server and then answered
/// 500 (4 in all), so its retry meets a real 412. Retries of an entry pass.
fn entry_faults() -> EntryScript {
    let (mut fresh, mut updates, mut writes) = (0u64, 0u64, 0u64);
    let (mut b429, mut b500, mut b_applied) = (2u32, 6u32, 4u32);
    Box::new(move |e: &EntrySeen<'_>| {
        if e.attempt > 0 {
            return EntryFault::Pass;
        }
        fresh += 1;
        if e.if_match {
            updates += 1;
            if updates % 2 == 1 {
                return EntryFault::Status {
                    code: 412,
                    retry_after: None,
                };
            }
        }
        if e.method == "PUT" && e.url.starts_with("Observation/") {
            writes += 1;
            if writes % 4 == 2 && b_applied > 0 {
                b_applied -= 1;
                return EntryFault::AppliedThen { code: 500 };
            }
        }
        if fresh % 5 == 3 && b429 > 0 {
            b429 -= 1;
            return EntryFault::Status {
                code: 429,
                retry_after: Some(1),
            };
        }
        if fresh % 7 == 4 && b500 > 0 {
            b500 -= 1;
            return EntryFault::Status {
                code: 500,
                retry_after: None,
            };
        }
        EntryFault::Pass
    })
}

/// A server that takes Bundles of at most `max` entries and answers larger ones 413 (Payload
/// Too Large), as a server with a request-size limit does.
fn bundles_at_most(max: usize) -> Script {
    Box::new(move |s: &Seen<'_>| {
        if s.method == "POST" && s.entries > max {
            Fault::Status {
                code: 413,
                retry_after: None,
            }
        } else {
            Fault::Pass
        }
    })
}

/// A server that refuses Bundles as a whole (here: 501 to every `POST` of a Bundle, as a
/// server without batch support answers; the test server itself takes them).
fn refuse_bundles() -> Script {
    Box::new(|s: &Seen<'_>| {
        if s.method == "POST" && !s.target.contains("/$") {
            Fault::Status {
                code: 501,
                retry_after: None,
            }
        } else {
            Fault::Pass
        }
    })
}

/// The Bundle path against the real test server, resource by resource the same as the
/// single-request path: fault-free; with entries answering 412, 429 (`Retry-After`) and 500
/// (also after the server applied them) through the fault proxy; and through a server that
/// refuses Bundles (fallback to single requests). Every reading written once in each.
async fn bundles_match_single_requests_under_entry_faults(set: Set) {
    let server = FhirServer::acquire().await;
    let single = write_set(&set, &server.base).await;
    let rejected: HashSet<usize> = single
        .errors
        .iter()
        .flat_map(|(_, events)| events.iter().copied())
        .collect();
    let expected = set.expected_samples(&rejected);
    let baseline = snapshot(&server).await;
    assert_same_samples(
        &format!("{} / single", set.name),
        &baseline.samples,
        &expected,
    );
    assert_eq!(
        single.bundles, 0,
        "{}: the single path sent Bundles",
        set.name
    );

    let same = |ctx: &str, run: &Run, got: &Snapshot| {
        assert_eq!(run.gave_up, 0, "{ctx}: the client gave up");
        assert_eq!(run.errors, single.errors, "{ctx}: errors differ");
        assert_same_samples(ctx, &got.samples, &expected);
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
    };

    server.reset().await;
    let run = write_set_with(&set, &server.base, true).await;
    let ctx = format!("{} / bundles", set.name);
    same(&ctx, &run, &snapshot(&server).await);
    assert!(run.used_bundles && run.bundles > 0, "{ctx}: no Bundles");
    assert!(
        run.requests * 2 < single.requests,
        "{ctx}: {} requests, single path {}",
        run.requests,
        single.requests
    );
    eprintln!(
        "BUNDLES set={} single_requests={} bundle_requests={} bundles={} measurements={}",
        set.name,
        single.requests,
        run.requests,
        run.bundles,
        set.measurements()
    );

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, Box::new(|_: &Seen<'_>| Fault::Pass))
        .await
        .with_entry_faults(entry_faults());
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / entry faults", set.name);
    let injected = proxy.injected();
    eprintln!(
        "BUNDLE_FAULTS set={} requests={} retries={} conflicts={} injected={injected:?}",
        set.name, run.requests, run.retries, run.conflicts
    );
    assert_eq!(proxy.broken(), 0, "{ctx}: the proxy itself failed");
    for label in ["entry-412", "entry-429", "entry-500", "entry-applied-500"] {
        assert!(
            injected.get(label).copied().unwrap_or(0) > 0,
            "{ctx}: no {label} injected: {injected:?}"
        );
    }
    assert!(run.conflicts > 0, "{ctx}: no 412 handled");
    assert!(run.retries > 0, "{ctx}: nothing retried");
    assert!(run.used_bundles, "{ctx}: fell back although Bundles work");
    same(&ctx, &run, &snapshot(&server).await);

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, bundles_at_most(2)).await;
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / Bundles over 2 entries refused as too large", set.name);
    assert!(
        proxy.injected().get("413").copied().unwrap_or(0) > 0,
        "{ctx}: no Bundle was large enough to be refused: {:?}",
        proxy.injected()
    );
    assert!(run.used_bundles, "{ctx}: fell back instead of splitting");
    eprintln!(
        "BUNDLES_413 set={} requests={} bundles={} injected={:?}",
        set.name,
        run.requests,
        run.bundles,
        proxy.injected()
    );
    same(&ctx, &run, &snapshot(&server).await);

    server.reset().await;
    let proxy = FaultProxy::start(&server.base, refuse_bundles()).await;
    let run = write_set_with(&set, &proxy.base, true).await;
    let ctx = format!("{} / Bundles refused", set.name);
    assert_eq!(
        proxy.injected().get("501").copied(),
        Some(1),
        "{ctx}: one refused Bundle, then single requests"
    );
    assert!(!run.used_bundles, "{ctx}: did not fall back");
    same(&ctx, &run, &snapshot(&server).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_rate_bundles_match_single_requests_under_entry_faults() {
    bundles_match_single_requests_under_entry_faults(Set::load(
        "heart-rate",
        heart_rate_events(),
        Some(60_000),
        false,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spo2_bundles_match_single_requests_under_entry_faults() {
    bundles_match_single_requests_under_entry_faults(Set::load("spo2", spo2_events(), None, false))
        .await;
}
