//! The commit stage: advances the ledger's watermark whenever a stage reports progress, sends
//! the acks of sources without a spool in order (Event Hubs checkpoints), records the
//! ingestion→written latency, and publishes the watermark (the spool truncates below it).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use crate::shared::Shared;

/// Runs until `finished` turns true, then commits once more and returns the final watermark.
pub(crate) async fn run(
    shared: Arc<Shared>,
    watermark: watch::Sender<u64>,
    mut finished: watch::Receiver<bool>,
) -> u64 {
    loop {
        let last = tokio::select! {
            _ = shared.commit.notified() => false,
            _ = finished.wait_for(|f| *f) => true,
        };
        let committed = shared.ledger().commit();
        let m = &shared.metrics;
        let now = Utc::now();
        for t in &committed.ingestion_times {
            let age = (now - *t).to_std().unwrap_or_default();
            m.ingestion_to_written.0.observe(age);
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
        if last {
            return committed.watermark;
        }
    }
}
