//! The ingest stage: takes events from the source in chunks, admits each into the ledger (its
//! sequence number), and hands the chunk to normalization.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::ledger::Input;
use crate::normalize::Chunk;
use crate::shared::Shared;

/// Runs until the source closes its channel. Acks run once each event is committed.
pub(crate) async fn run<I: Into<Input>>(
    mut rx: mpsc::Receiver<I>,
    shared: Arc<Shared>,
    chunk_events: usize,
    tx: mpsc::Sender<Chunk>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        while events.len() < chunk_events.max(1) {
            match rx.try_recv() {
                Ok(ev) => events.push(ev),
                Err(_) => break,
            }
        }
        let n = events.len() as u64;
        let chunk: Chunk = {
            let mut ledger = shared.ledger();
            events
                .into_iter()
                .map(|ev| {
                    let Input { event, ack } = ev.into();
                    let event = Arc::new(event);
                    let seq = ledger.admit(event.clone(), Some(ack));
                    (seq, event)
                })
                .collect()
        };
        shared.metrics.incoming.fetch_add(n, Ordering::Relaxed);
        let t = Instant::now();
        if tx.send(chunk).await.is_err() {
            break;
        }
        shared.metrics.backpressure("ingest", t.elapsed());
    }
}
