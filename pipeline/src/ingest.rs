//! The ingest stage: takes events from the source in chunks, admits each into the ledger (its
//! sequence number), and hands the chunk to normalization. With the spool, each chunk is first
//! appended and fsynced, then acknowledged to the source; the sequence numbers are the spool's,
//! and a restart replays the spool's un-committed tail first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::ledger::{Event, Input};
use crate::normalize::Chunk;
use crate::shared::Shared;
use crate::spool::{Replay, Spool, SpoolConfig, SpoolError, SpoolRecord};

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

/// The spool as the stages share it: ingest appends and syncs, commit truncates. `None` inside
/// while it is being reopened after a failed fsync.
pub(crate) type SharedSpool = std::sync::Mutex<Option<Spool>>;

fn lock(spool: &SharedSpool) -> std::sync::MutexGuard<'_, Option<Spool>> {
    spool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replays the spool's un-committed tail into the pipeline (those events were acknowledged
/// before the restart), chunk by chunk, before anything new is read.
pub(crate) async fn replay(
    replay: Replay,
    shared: &Arc<Shared>,
    chunk_events: usize,
    tx: &mpsc::Sender<Chunk>,
) -> u64 {
    let mut replay = Some(replay);
    let mut total = 0u64;
    while let Some(mut r) = replay.take() {
        let n = chunk_events.max(1);
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(n);
            for item in r.by_ref() {
                out.push(item);
                if out.len() >= n {
                    return (out, Some(r));
                }
            }
            (out, None)
        })
        .await;
        let Ok((items, rest)) = read else {
            tracing::error!(
                "Reading the spool failed; the rest of its tail is replayed on the next start."
            );
            break;
        };
        replay = rest;
        let mut chunk: Chunk = Vec::with_capacity(items.len());
        {
            let mut ledger = shared.ledger();
            for item in items {
                match item {
                    Ok((seq, record)) => {
                        if seq < ledger.next_seq() {
                            continue;
                        }
                        let event = Arc::new(Event {
                            body: record.body,
                            properties: record.properties,
                            system_properties: record.system_properties,
                            ingestion_time: Some(record.ingestion_time),
                            origin: record.origin,
                        });
                        ledger.admit_at(seq, event.clone());
                        chunk.push((seq, event));
                    }
                    Err(e) => {
                        // Damage in the middle of the spool: those records are gone (the
                        // error names the file, offset and sequence numbers); the rest goes on.
                        shared.metrics.spool_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "Spool records lost to damage on disk.");
                    }
                }
            }
        }
        total += chunk.len() as u64;
        shared
            .metrics
            .incoming
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if !chunk.is_empty() && tx.send(chunk).await.is_err() {
            break;
        }
    }
    if total > 0 {
        tracing::info!(events = total, "Replayed the spool's un-committed events.");
    }
    total
}

/// Appends as many of `events` as fit and syncs them; returns the spool's next sequence number
/// before the first append, the sequence numbers of the durable prefix and the error that
/// stopped it, if any. On a failed fsync nothing of this
/// call is durable and the spool is reopened before the next append (it refuses to go on after
/// one); records of the failed call that reached the disk anyway are replayed after a restart
/// (harmless) and passed by the watermark meanwhile.
fn append_all(
    spool: &SharedSpool,
    config: &SpoolConfig,
    events: &[SpoolRecord],
) -> (u64, Vec<u64>, Option<SpoolError>) {
    let mut guard = lock(spool);
    if guard.is_none() {
        match Spool::open(config) {
            Ok((s, _replay)) => *guard = Some(s),
            Err(e) => return (0, Vec::new(), Some(e)),
        }
    }
    let first = guard.as_ref().map_or(0, |s| s.next_seq());
    let Some(s) = guard.as_mut() else {
        return (0, Vec::new(), None);
    };
    let mut seqs = Vec::with_capacity(events.len());
    let mut error = None;
    for e in events {
        match s.append(e) {
            Ok(seq) => seqs.push(seq),
            Err(err) => {
                error = Some(err);
                break;
            }
        }
    }
    if matches!(error, Some(SpoolError::Poisoned { .. })) {
        *guard = None;
        return (first, Vec::new(), error);
    }
    if let Err(err) = s.sync() {
        if s.is_poisoned() {
            *guard = None; // a failed fsync: reopen before the next append
        } else {
            // The buffered records could not be written (a full disk): forget them, they are
            // appended again on the next try.
            s.discard_unsynced();
        }
        return (first, Vec::new(), Some(err));
    }
    (first, seqs, error)
}

/// Runs until the source closes its channel: each chunk is appended to the spool and fsynced
/// (one sync per chunk: group commit), then acknowledged to the source, then handed on.
/// A full spool stops reading (back-pressure); an I/O error or a full disk stops acknowledging
/// and retries, with an ERROR log and `iomt_spool_errors_total`; nothing is dropped.
pub(crate) async fn run_spooled<I: Into<Input>>(
    mut rx: mpsc::Receiver<I>,
    shared: Arc<Shared>,
    chunk_events: usize,
    tx: mpsc::Sender<Chunk>,
    spool: Arc<SharedSpool>,
    config: SpoolConfig,
) {
    let m = shared.metrics.clone();
    loop {
        // Back-pressure: a full spool waits for commits to free whole segments.
        let t = Instant::now();
        let mut warned = false;
        while lock(&spool).as_ref().is_some_and(|s| s.is_full()) {
            if !warned {
                tracing::warn!(
                    max_bytes = config.max_bytes.get(),
                    "Spool full; not reading from the source until written events free space."
                );
                warned = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        m.backpressure("source", t.elapsed());

        let Some(first) = rx.recv().await else { break };
        let mut inputs: Vec<Input> = vec![first.into()];
        while inputs.len() < chunk_events.max(1) {
            match rx.try_recv() {
                Ok(ev) => inputs.push(ev.into()),
                Err(_) => break,
            }
        }
        let records: Vec<SpoolRecord> = inputs
            .iter()
            .map(|i| SpoolRecord {
                body: i.event.body.clone(),
                properties: i.event.properties.clone(),
                system_properties: i.event.system_properties.clone(),
                ingestion_time: i.event.ingestion_time.unwrap_or_else(chrono::Utc::now),
                origin: i.event.origin.clone(),
            })
            .collect();
        let mut records = records;
        let mut inputs = inputs;
        let mut attempt = 0u32;
        // Records tried at once: halved after a write that made nothing durable (a chunk larger
        // than the space left must not stop every chunk), back to all after progress.
        let mut limit = records.len();
        while !inputs.is_empty() {
            let (s, c, r) = (spool.clone(), config.clone(), Arc::new(records));
            let result = tokio::task::spawn_blocking({
                let r = r.clone();
                let n = limit.min(r.len());
                move || append_all(&s, &c, &r[..n])
            })
            .await;
            records = Arc::try_unwrap(r).unwrap_or_else(|r| (*r).clone());
            let (first, seqs, error) = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(error = %e, "Spool task failed; retrying.");
                    (0, Vec::new(), None)
                }
            };
            // Records the spool holds below `first` that the pipeline never admitted (left by
            // a failed write, appended again now) must not hold the watermark.
            shared.ledger().skip_to(first);
            if let Some(s) = lock(&spool).as_ref() {
                m.spool_fsyncs.store(s.fsyncs(), Ordering::Relaxed);
                m.spool_bytes.store(s.bytes(), Ordering::Relaxed);
            }
            let seqs_made_progress = !seqs.is_empty();
            // The durable prefix: acknowledge in order (MQTT PUBACK), then hand on.
            let rest_inputs = inputs.split_off(seqs.len());
            records.drain(..seqs.len());
            let n = inputs.len() as u64;
            let mut chunk: Chunk = Vec::with_capacity(inputs.len());
            let mut acks = Vec::with_capacity(inputs.len());
            {
                let mut ledger = shared.ledger();
                for (input, seq) in inputs.into_iter().zip(seqs) {
                    let event = Arc::new(input.event);
                    ledger.admit_at(seq, event.clone());
                    chunk.push((seq, event));
                    acks.push(input.ack);
                }
            }
            inputs = rest_inputs;
            for ack in acks {
                ack.ack().await;
            }
            m.acked.fetch_add(n, Ordering::Relaxed);
            m.incoming.fetch_add(n, Ordering::Relaxed);
            if !chunk.is_empty() {
                let t = Instant::now();
                if tx.send(chunk).await.is_err() {
                    return;
                }
                m.backpressure("ingest", t.elapsed());
            }
            if inputs.is_empty() {
                break;
            }
            // Not all durable: say why, acknowledge nothing more, try again (committed events
            // free the spool's space meanwhile).
            m.spool_errors.fetch_add(1, Ordering::Relaxed);
            match &error {
                Some(e) if e.is_disk_full() => {
                    tracing::error!(error = %e, "Spool disk full; not acknowledging until space returns.")
                }
                Some(e) => {
                    tracing::error!(error = %e, "Spool write failed; not acknowledging, retrying.")
                }
                None => {}
            }
            if seqs_made_progress {
                limit = records.len();
            } else {
                limit = (limit / 2).max(1);
            }
            let delay = crate::write::retry_delay(attempt).min(std::time::Duration::from_secs(5));
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }
}
