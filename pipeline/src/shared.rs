//! What every stage shares: the ledger, the metrics, the dead-letter store and (for
//! `iomt replay`) the report being collected.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use normalizer::{Measurement, NormalizeError};
use tokio::sync::Notify;

use crate::deadletter::{DeadLetterStore, Failure};
use crate::ledger::{Event, Ledger};
use crate::metrics::Metrics;

/// What a run through the pipeline did, event by event (collected only when asked for:
/// `iomt replay` prints it).
#[derive(Debug, Default)]
pub struct Report {
    /// Every measurement, with its event's sequence number.
    pub measurements: Vec<(u64, Measurement)>,
    /// Normalization errors.
    pub normalize_errors: Vec<(u64, NormalizeError)>,
    /// Events that were dead-lettered or, without a store, would have been (their sequence
    /// numbers).
    pub failed: BTreeSet<u64>,
    /// Events too large to parse, with the message.
    pub too_large: Vec<(u64, String)>,
    /// Events that matched no template.
    pub dropped: Vec<u64>,
    /// What the FHIR writer did, flush by flush.
    pub write: fhir_writer::WriteReport<u64>,
}

/// Shared by the stages.
#[derive(Debug)]
pub(crate) struct Shared {
    pub ledger: Mutex<Ledger>,
    pub metrics: Arc<Metrics>,
    pub dead_letters: Option<DeadLetterStore>,
    pub report: Option<Mutex<Report>>,
    /// Wakes the commit stage when events may have become done.
    pub commit: Notify,
    /// The spool, when events are read from one (dead letters read their event back from it).
    pub spool: Option<Arc<crate::ingest::SharedSpool>>,
}

impl Shared {
    pub fn new(
        ledger: Ledger,
        metrics: Arc<Metrics>,
        dead_letters: Option<DeadLetterStore>,
        report: bool,
        spool: Option<Arc<crate::ingest::SharedSpool>>,
    ) -> Self {
        Shared {
            ledger: Mutex::new(ledger),
            metrics,
            dead_letters,
            report: report.then(|| Mutex::new(Report::default())),
            commit: Notify::new(),
            spool,
        }
    }

    /// An event in flight, wherever it is kept: in memory, or read back from the spool (the
    /// rare case of an event FHIR refused). `Ok(None)`: not in flight any more (committed).
    /// `Err`: the spool could not give it back now.
    pub async fn event(&self, seq: u64) -> Result<Option<Arc<Event>>, String> {
        let lookup = self.ledger().lookup(seq);
        match lookup {
            crate::ledger::Lookup::Held(e) => Ok(Some(e)),
            crate::ledger::Lookup::Gone => Ok(None),
            crate::ledger::Lookup::Spooled => {
                let Some(spool) = self.spool.clone() else {
                    return Err("no spool is open".into());
                };
                let read = tokio::task::spawn_blocking(move || {
                    let guard = spool.lock().unwrap_or_else(|e| e.into_inner());
                    let mut reader = guard
                        .as_ref()
                        .ok_or("the spool is being reopened")?
                        .reader(seq);
                    drop(guard);
                    match reader.next() {
                        Some(Ok((s, r))) if s == seq => Ok(r),
                        Some(Err(e)) => Err(e.to_string()),
                        _ => Err(format!("record {seq} is not in the spool")),
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
                let r = read?;
                Ok(Some(Arc::new(Event {
                    body: r.body,
                    properties: r.properties,
                    system_properties: r.system_properties,
                    ingestion_time: Some(r.ingestion_time),
                    origin: r.origin,
                })))
            }
        }
    }

    /// The ledger; a poisoned lock (a panic elsewhere) is taken over, the counts stay valid.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The report, when one is collected.
    pub fn report(&self) -> Option<MutexGuard<'_, Report>> {
        self.report
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Dead-letters one event. Returns whether it is durable (stored, or no store is kept);
    /// when it is not, the caller keeps the event un-committed so it is delivered again.
    pub fn dead_letter(&self, seq: u64, ev: &Event, failure: Failure<'_>) -> bool {
        let stage = failure.stage;
        if let Some(mut r) = self.report() {
            r.failed.insert(seq);
        }
        let Some(store) = &self.dead_letters else {
            return true;
        };
        match store.put(
            failure,
            &ev.origin,
            ev.ingestion_time.unwrap_or_else(chrono::Utc::now),
            &ev.body,
            &ev.properties,
            &ev.system_properties,
        ) {
            Ok(id) => {
                self.metrics.dead_letter(stage);
                tracing::debug!(id, origin = %ev.origin, "Event dead-lettered.");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not store a dead letter; the event stays un-acknowledged and will be delivered again.");
                false
            }
        }
    }
}

/// Sends `item` to the next stage, adding the time spent waiting for room to the stage's
/// back-pressure counter as it passes (every second while blocked, so a long stall shows in
/// the metrics while it lasts, not only after). `false` if the next stage is gone.
pub(crate) async fn send_to_next<T>(
    metrics: &crate::metrics::Metrics,
    stage: &'static str,
    tx: &tokio::sync::mpsc::Sender<T>,
    item: T,
) -> bool {
    let mut t = std::time::Instant::now();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(1), tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(item);
                metrics.backpressure(stage, t.elapsed());
                return true;
            }
            Ok(Err(_)) => return false,
            Err(_) => {
                metrics.backpressure(stage, t.elapsed());
                t = std::time::Instant::now();
            }
        }
    }
}
