//! The write stage: one flush at a time to the FHIR writer, which writes different devices
//! concurrently and one device's Observations in order. Per event: measurements written count
//! down in the ledger; an event whose measurements FHIR refused (4xx, template not found,
//! identity errors) is dead-lettered with the reason; when the server is unavailable the
//! affected measurements are retried with back-off, holding the stage (back-pressure up to the
//! source), never dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fhir_writer::{FhirWriter, WriteReport};
use tokio::sync::{mpsc, watch};

use crate::deadletter::Failure;
use crate::group::Flush;
use crate::shared::Shared;

/// Back-off before retrying measurements the server could not take: 0.5 s doubling to 30 s.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((500u64 << attempt.min(6)).min(30_000))
}

/// Runs the stage until `rx` closes. With `retry_unavailable` false (one-shot runs such as
/// `iomt replay`), measurements the server could not take are reported and left un-committed
/// instead of retried; after `give_up` turns true (shutdown drain over) likewise.
pub(crate) async fn run(
    writer: Arc<FhirWriter>,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Flush>,
    give_up: watch::Receiver<bool>,
    retry_unavailable: bool,
) {
    while let Some(flush) = rx.recv().await {
        write_flush(&writer, &shared, flush, &give_up, retry_unavailable).await;
        shared.commit.notify_one();
    }
}

async fn write_flush(
    writer: &FhirWriter,
    shared: &Shared,
    flush: Flush,
    give_up: &watch::Receiver<bool>,
    retry_unavailable: bool,
) {
    let metrics = &shared.metrics;
    let mut todo = flush;
    let mut attempt = 0u32;
    while !todo.is_empty() {
        let t = Instant::now();
        let report = writer.write_batch(todo.clone(), Some(Utc::now())).await;
        metrics.fhir_write_latency.observe(t.elapsed());
        copy_stats(writer, shared, &report);

        let mut retry: BTreeSet<u64> = BTreeSet::new();
        let mut failed: BTreeMap<u64, (&'static str, String)> = BTreeMap::new();
        for e in &report.errors {
            metrics.error("fhir", e.error_type);
            if e.retryable {
                retry.extend(e.events.iter().copied());
            } else {
                tracing::warn!(error_type = e.error_type, measurement_type = %e.measurement_type, "Measurements could not be written.");
                for ev in &e.events {
                    failed
                        .entry(*ev)
                        .or_insert((e.error_type, e.message.clone()));
                }
            }
        }
        let mut written: HashMap<u64, usize> = HashMap::new();
        for (seq, _) in &todo {
            if !retry.contains(seq) && !failed.contains_key(seq) {
                *written.entry(*seq).or_default() += 1;
            }
        }
        for (seq, (error_type, message)) in &failed {
            if retry.contains(seq) {
                continue;
            }
            let durable = match shared.event(*seq).await {
                Ok(Some(ev)) => shared.dead_letter(
                    *seq,
                    &ev,
                    Failure {
                        stage: "fhir",
                        error_type,
                        message,
                    },
                ),
                Ok(None) => true, // committed meanwhile (an earlier failure of the same event)
                Err(e) => {
                    tracing::error!(error = %e, "The refused event cannot be read back from the spool to dead-letter it; it stays un-acknowledged and is read again after a restart.");
                    false
                }
            };
            let mut ledger = shared.ledger();
            if durable {
                ledger.finish(*seq);
            } else {
                ledger.stick(*seq);
            }
        }
        {
            let mut ledger = shared.ledger();
            for (seq, n) in &written {
                ledger.written(*seq, *n);
            }
        }
        let unavailable = report.errors.iter().any(|e| e.retryable);
        if let Some(mut r) = shared.report() {
            merge_report(&mut r.write, report);
        }
        if retry.is_empty() {
            break;
        }
        if !retry_unavailable || *give_up.borrow() {
            tracing::warn!(
                events = retry.len(),
                "FHIR server unavailable; the events stay un-acknowledged and will be delivered again."
            );
            break;
        }
        debug_assert!(unavailable);
        // The FHIR server is unavailable: keep the measurements and try again (never drop).
        metrics.batch_retries.fetch_add(1, Ordering::Relaxed);
        let delay = retry_delay(attempt);
        attempt += 1;
        tracing::warn!(
            events = retry.len(),
            delay_ms = delay.as_millis() as u64,
            "FHIR server unavailable; retrying."
        );
        todo.retain(|(seq, _)| retry.contains(seq));
        let mut give_up = give_up.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = give_up.wait_for(|g| *g) => {}
        }
    }
}

fn copy_stats(writer: &FhirWriter, shared: &Shared, report: &WriteReport<u64>) {
    let m = &shared.metrics;
    let stats = writer.client().stats();
    m.fhir_requests
        .store(stats.requests.load(Ordering::Relaxed), Ordering::Relaxed);
    m.fhir_retries
        .store(stats.retries.load(Ordering::Relaxed), Ordering::Relaxed);
    let t = writer.client().token_stats();
    for (to, from) in
        m.fhir_tokens
            .iter()
            .zip([&t.issued, &t.reused, &t.refreshed_after_401, &t.refused])
    {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    m.fhir_bundles
        .store(stats.bundles.load(Ordering::Relaxed), Ordering::Relaxed);
    if let Ok(mut h) = m.fhir_bundle_entries.lock() {
        h.0 = stats
            .bundle_entries
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        h.1 = stats.bundle_entries_sum.load(Ordering::Relaxed);
    }
    if let Ok(mut s) = m.fhir_entry_statuses.lock() {
        *s = stats.entry_statuses();
    }
    m.fhir_create_races.store(
        writer.stats().create_races.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    m.saved("Observation", "Created", report.observations_created);
    m.saved("Observation", "Updated", report.observations_updated);
    m.saved("Observation", "NoOperation", report.observations_unchanged);
    let groups =
        report.observations_created + report.observations_updated + report.observations_unchanged;
    m.groups.fetch_add(groups, Ordering::Relaxed);
}

/// Adds one flush's report to the run's: Observations by id (the latest version wins), errors
/// and counts.
fn merge_report(into: &mut WriteReport<u64>, from: WriteReport<u64>) {
    into.errors.extend(from.errors);
    into.observations_created += from.observations_created;
    into.observations_updated += from.observations_updated;
    into.observations_unchanged += from.observations_unchanged;
    // By id through an index: a replay of 10,000 readings merges 10,000 Observations, and a
    // linear search for each was quadratic.
    let mut at: HashMap<String, usize> = into
        .observations
        .iter()
        .enumerate()
        .map(|(i, o)| (o["id"].as_str().unwrap_or_default().to_string(), i))
        .collect();
    for o in from.observations {
        let id = o["id"].as_str().unwrap_or_default().to_string();
        match at.get(&id) {
            Some(&i) => into.observations[i] = o,
            None => {
                at.insert(id, into.observations.len());
                into.observations.push(o);
            }
        }
    }
}
