//! The ingest stage: takes events from the source in chunks, admits each into the ledger (its
//! sequence number), and hands the chunk to normalization. With the spool, each chunk is first
//! appended and fsynced, then acknowledged to the source; the sequence numbers are the spool's,
//! and a restart replays the spool's un-committed tail first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::ledger::{Event, Input};
use crate::normalize::Chunk;
use crate::shared::{send_to_next, Shared};
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
        if !send_to_next(&shared.metrics, "ingest", &tx, chunk).await {
            break;
        }
    }
}

/// The spool as the stages share it: ingest appends and syncs, commit truncates. `None` inside
/// while it is being reopened after a failed fsync.
pub(crate) type SharedSpool = std::sync::Mutex<Option<Spool>>;

fn lock(spool: &SharedSpool) -> std::sync::MutexGuard<'_, Option<Spool>> {
    spool.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pipeline's side of the spool: follows it from `start` (the committed watermark at
/// open), so the un-committed tail of a previous run comes first and then every record the
/// source's task appends, in sequence order, chunk by chunk, admitting each into the ledger.
/// Only what the next stage takes is in memory: while FHIR is slow the spool grows on disk
/// (up to `max_bytes`, then the source stops), memory does not. Records just appended are
/// read back from the page cache; one decode per event is the price of a single code path for
/// replay and live reading. `durable` is the spool's next sequence number after each sync.
/// Stops at shutdown (what is not read yet stays in the spool for the next start), or when the
/// source's task has ended and everything durable is read.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_spool(
    shared: Arc<Shared>,
    spool: Arc<SharedSpool>,
    mut durable: watch::Receiver<u64>,
    start: u64,
    replay_end: u64,
    chunk_events: usize,
    tx: mpsc::Sender<Chunk>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut cursor = start;
    shared
        .metrics
        .spool_read_seq
        .store(start, Ordering::Relaxed);
    shared
        .metrics
        .spool_durable_seq
        .fetch_max(replay_end, Ordering::Relaxed);
    let mut reader: Option<Replay> = None;
    let mut replayed = 0u64;
    let n = chunk_events.max(1);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let target = *durable.borrow_and_update();
        if cursor < target {
            let s = spool.clone();
            let r = reader.take();
            let read = tokio::task::spawn_blocking(move || {
                let guard = lock(&s);
                let Some(sp) = guard.as_ref() else {
                    return (Vec::new(), r); // being reopened
                };
                let mut r = match r {
                    Some(mut r) => {
                        sp.refresh(&mut r);
                        r
                    }
                    None => sp.reader(cursor),
                };
                drop(guard);
                let items: Vec<_> = r.by_ref().take(n).collect();
                (items, Some(r))
            })
            .await;
            let Ok((items, r)) = read else {
                tracing::error!("Reading the spool failed; retrying.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            reader = r;
            let mut chunk: Chunk = Vec::with_capacity(items.len());
            let mut progressed = false;
            {
                let mut ledger = shared.ledger();
                for item in items {
                    match item {
                        Ok((seq, record)) => {
                            progressed = true;
                            if seq < cursor {
                                continue;
                            }
                            cursor = seq + 1;
                            if seq < replay_end {
                                replayed += 1;
                            }
                            let event = Arc::new(Event {
                                body: record.body,
                                properties: record.properties,
                                system_properties: record.system_properties,
                                ingestion_time: Some(record.ingestion_time),
                                origin: record.origin,
                            });
                            ledger.admit_spooled(seq, event.ingestion_time);
                            chunk.push((seq, event));
                        }
                        Err(e) => {
                            // Damage on disk: those records are gone (the error names the
                            // file, offset and sequence numbers); the rest goes on.
                            progressed = true;
                            if let SpoolError::Corrupt { lost, .. } = &e {
                                cursor = cursor.max(lost.end);
                                ledger.skip_to(cursor);
                            }
                            shared.metrics.spool_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "Spool records lost to damage on disk.");
                        }
                    }
                }
            }
            let m = &shared.metrics;
            m.incoming.fetch_add(
                chunk.iter().filter(|(seq, _)| *seq < replay_end).count() as u64,
                Ordering::Relaxed,
            );
            m.spool_read_seq.store(cursor, Ordering::Relaxed);
            if !chunk.is_empty() && !send_to_next(m, "ingest", &tx, chunk).await {
                break;
            }
            if !progressed {
                // The reader saw nothing new (the spool is being reopened after an error):
                // wait a little rather than spin.
                reader = None;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            continue;
        }
        if replayed > 0 && cursor >= replay_end {
            tracing::info!(
                events = replayed,
                "Replayed the spool's un-committed events."
            );
            replayed = 0;
        }
        tokio::select! {
            changed = durable.changed() => {
                if changed.is_err() && cursor >= *durable.borrow() {
                    break; // the source's task is done and everything is read
                }
            }
            _ = shutdown.changed() => {}
            // Caught up and nothing new: let the reader close segments that commits deleted
            // meanwhile (an open file keeps its space; on a full disk nothing new is appended
            // to wake it).
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)), if reader.is_some() => {
                let s = spool.clone();
                let r = reader.take();
                reader = tokio::task::spawn_blocking(move || {
                    let mut r = r?;
                    if let Some(sp) = lock(&s).as_ref() {
                        sp.refresh(&mut r);
                    }
                    Some(r)
                })
                .await
                .ok()
                .flatten();
            }
        }
    }
}

/// Appends as many of `events` as fit and syncs them; returns the sequence numbers of the
/// durable prefix and the error that stopped it, if any. On a failed fsync nothing of this
/// call is acknowledged and the spool is reopened before the next append (it refuses to go on
/// after one); records of the failed call that reached the disk anyway are read like any
/// other, and the source's redelivery of them is appended again: a harmless duplicate.
fn append_all(
    spool: &SharedSpool,
    config: &SpoolConfig,
    events: &[SpoolRecord],
) -> (Vec<u64>, Option<SpoolError>) {
    let mut guard = lock(spool);
    if guard.is_none() {
        match Spool::open(config) {
            Ok((s, _replay)) => *guard = Some(s),
            Err(e) => return (Vec::new(), Some(e)),
        }
    }
    let Some(s) = guard.as_mut() else {
        return (Vec::new(), None);
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
        return (Vec::new(), error);
    }
    if let Err(err) = s.sync() {
        if s.is_poisoned() {
            *guard = None; // a failed fsync: reopen before the next append
        } else {
            // The buffered records could not be written (a full disk): forget them, they are
            // appended again on the next try.
            s.discard_unsynced();
        }
        return (Vec::new(), Some(err));
    }
    (seqs, error)
}

/// Runs until the source closes its channel: each chunk is appended to the spool and fsynced
/// (one sync per chunk: group commit), then acknowledged to the source; [`read_spool`] takes
/// it from there.
/// A full spool stops reading (back-pressure); an I/O error or a full disk stops acknowledging
/// and retries, with an ERROR log and `iomt_spool_errors_total`; nothing is dropped.
pub(crate) async fn run_spooled<I: Into<Input>>(
    mut rx: mpsc::Receiver<I>,
    shared: Arc<Shared>,
    chunk_events: usize,
    spool: Arc<SharedSpool>,
    config: SpoolConfig,
    durable: watch::Sender<u64>,
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
            let (seqs, error) = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(error = %e, "Spool task failed; retrying.");
                    (Vec::new(), None)
                }
            };
            if let Some(s) = lock(&spool).as_ref() {
                m.spool_fsyncs.store(s.fsyncs(), Ordering::Relaxed);
                m.spool_bytes.store(s.bytes(), Ordering::Relaxed);
                if !seqs.is_empty() {
                    durable.send_replace(s.next_seq());
                    m.spool_durable_seq.store(s.next_seq(), Ordering::Relaxed);
                }
            }
            let seqs_made_progress = !seqs.is_empty();
            // The durable prefix: acknowledge in order (MQTT PUBACK); the reader takes it on.
            let rest_inputs = inputs.split_off(seqs.len());
            records.drain(..seqs.len());
            let n = inputs.len() as u64;
            for input in inputs {
                input.ack.ack().await;
            }
            inputs = rest_inputs;
            m.acked.fetch_add(n, Ordering::Relaxed);
            m.incoming.fetch_add(n, Ordering::Relaxed);
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
