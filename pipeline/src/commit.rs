//! The commit stage: advances the ledger's watermark whenever a stage reports progress, sends
//! the acks of sources without a spool in order (Event Hubs checkpoints), records the
//! ingestion→written latency, publishes the watermark and truncates the spool below it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use crate::ingest::SharedSpool;
use crate::shared::Shared;

/// Runs until `finished` turns true, then commits once more and returns the final watermark.
pub(crate) async fn run(
    shared: Arc<Shared>,
    watermark: watch::Sender<u64>,
    mut finished: watch::Receiver<bool>,
    spool: Option<Arc<SharedSpool>>,
) -> u64 {
    let mut truncated = 0u64;
    loop {
        // Woken by progress, and once a second (a spool truncation that failed is retried).
        let last = tokio::select! {
            _ = shared.commit.notified() => false,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
            _ = finished.wait_for(|f| *f) => true,
        };
        let committed = shared.ledger().commit();
        let m = &shared.metrics;
        let now = Utc::now();
        for t in &committed.done_ingestion_times {
            let age = (now - *t).to_std().unwrap_or_default();
            m.ingestion_to_written.0.observe(age);
        }
        for t in &committed.ingestion_times {
            let age = (now - *t).to_std().unwrap_or_default();
            m.ingestion_to_committed.0.observe(age);
        }
        m.committed
            .fetch_add(committed.events as u64, Ordering::Relaxed);
        let acks = committed.acks.len() as u64;
        for ack in committed.acks {
            ack.ack().await;
        }
        m.acked.fetch_add(acks, Ordering::Relaxed);
        m.events_in_flight
            .store(shared.ledger().in_flight() as u64, Ordering::Relaxed);
        watermark.send_replace(committed.watermark);
        if let Some(spool) = &spool {
            if committed.watermark > truncated {
                let (s, w, metrics) = (spool.clone(), committed.watermark, shared.metrics.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(sp) = guard.as_mut() else {
                        return false; // being reopened; tried again on the next wake
                    };
                    let ok = match sp.commit(w) {
                        Ok(()) => true,
                        Err(e) => {
                            metrics.spool_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "Spool truncation failed; retrying.");
                            false
                        }
                    };
                    metrics.spool_bytes.store(sp.bytes(), Ordering::Relaxed);
                    metrics.spool_fsyncs.store(sp.fsyncs(), Ordering::Relaxed);
                    ok
                })
                .await;
                if let Ok(true) = done {
                    truncated = committed.watermark;
                }
                if done.is_err() {
                    tracing::error!("Spool truncation task failed.");
                }
            }
        }
        if last {
            return committed.watermark;
        }
    }
}
