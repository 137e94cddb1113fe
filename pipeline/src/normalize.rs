//! The normalize stage: chunks of events are normalized on every core (blocking worker
//! threads), in order, while writes are in flight. Bad events are dead-lettered here with their
//! reason; the pipeline goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};
use normalizer::{Measurement, Normalizer};
use tokio::sync::mpsc;

use crate::deadletter::Failure;
use crate::ledger::Event;
use crate::shared::Shared;

/// Events on their way to normalization, with their sequence numbers.
pub(crate) type Chunk = Vec<(u64, Arc<Event>)>;
/// Normalized events (only those with measurements).
pub(crate) type Normalized = Vec<(u64, Vec<Measurement>)>;

/// Runs the stage until `rx` closes; at most `workers` chunks are normalized at once, and their
/// results leave in the order the chunks came.
pub(crate) async fn run(
    normalizer: Arc<Normalizer>,
    shared: Arc<Shared>,
    max_event_bytes: usize,
    workers: usize,
    mut rx: mpsc::Receiver<Chunk>,
    tx: mpsc::Sender<Normalized>,
) {
    let mut inflight = FuturesOrdered::new();
    let mut open = true;
    loop {
        let can_take = open && inflight.len() < workers.max(1);
        if !can_take && inflight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                let out: Normalized = match done {
                    Ok(out) => out,
                    Err(e) => {
                        // A worker panicked: its events stay un-committed (delivered again
                        // after a restart).
                        tracing::error!(error = %e, "A normalization worker failed.");
                        continue;
                    }
                };
                shared.commit.notify_one();
                if out.is_empty() {
                    continue;
                }
                if !crate::shared::send_to_next(&shared.metrics, "normalize", &tx, out).await {
                    return;
                }
            }
            chunk = rx.recv(), if can_take => match chunk {
                Some(chunk) => {
                    let (n, s) = (normalizer.clone(), shared.clone());
                    inflight.push_back(tokio::task::spawn_blocking(move || {
                        normalize_chunk(&n, &s, max_event_bytes, chunk)
                    }));
                }
                None => open = false,
            },
        }
    }
}

/// Normalizes one chunk (on a worker thread).
fn normalize_chunk(
    normalizer: &Normalizer,
    shared: &Shared,
    max_event_bytes: usize,
    chunk: Chunk,
) -> Normalized {
    let m = &shared.metrics;
    let mut out = Vec::with_capacity(chunk.len());
    // Ledger updates of the chunk, applied under one lock: (seq, measurements, durable).
    let mut updates: Vec<(u64, usize, bool)> = Vec::with_capacity(chunk.len());
    for (seq, ev) in chunk {
        if ev.body.len() > max_event_bytes {
            let msg = format!(
                "The event body is {} bytes; the limit (pipeline.max_event_bytes) is {}",
                ev.body.len(),
                max_event_bytes
            );
            m.error("normalize", "PayloadTooLargeException");
            tracing::warn!(
                error_type = "PayloadTooLargeException",
                bytes = ev.body.len(),
                "Event too large."
            );
            if let Some(mut r) = shared.report() {
                r.too_large.push((seq, msg.clone()));
            }
            let durable = shared.dead_letter(
                seq,
                &ev,
                Failure {
                    stage: "normalize",
                    error_type: "PayloadTooLargeException",
                    message: &msg,
                },
            );
            updates.push((seq, 0, durable));
            continue;
        }
        let t = Instant::now();
        let result = normalizer.normalize(
            &ev.body,
            &ev.properties,
            &ev.system_properties,
            ev.ingestion_time,
        );
        m.normalize_latency.observe(t.elapsed());
        match result {
            Ok(ms) if ms.is_empty() => {
                m.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(origin = %ev.origin, "Event matched no template.");
                if let Some(mut r) = shared.report() {
                    r.dropped.push(seq);
                }
                updates.push((seq, 0, true));
            }
            Ok(ms) => {
                m.normalized.fetch_add(1, Ordering::Relaxed);
                m.measurements.fetch_add(ms.len() as u64, Ordering::Relaxed);
                if let Some(mut r) = shared.report() {
                    r.measurements.extend(ms.iter().map(|x| (seq, x.clone())));
                }
                updates.push((seq, ms.len(), true));
                out.push((seq, ms));
            }
            Err(e) => {
                m.error("normalize", e.type_name());
                tracing::warn!(error_type = e.type_name(), "Event could not be normalized.");
                tracing::debug!(error = %e, origin = %ev.origin, "Normalization error.");
                let durable = shared.dead_letter(
                    seq,
                    &ev,
                    Failure {
                        stage: "normalize",
                        error_type: e.type_name(),
                        message: &e.message,
                    },
                );
                if let Some(mut r) = shared.report() {
                    r.normalize_errors.push((seq, e));
                }
                updates.push((seq, 0, durable));
            }
        }
    }
    let mut ledger = shared.ledger();
    for (seq, n, durable) in updates {
        ledger.normalized(seq, n);
        if !durable {
            ledger.stick(seq);
        }
    }
    out
}
