//! One partition's reader: the partition's events into the pipeline, each with an ack that
//! advances the partition's checkpoint, from when the processor hands the partition over until
//! shutdown, until another instance owns it, or until its receiver fails.
//!
//! The processor's [`PartitionClient`] is only the token that this instance owns the partition.
//! The reader receives on a connection of its own, with a receiver it opens itself (owner level
//! 0, as the processor's would be) at the partition's checkpoint, and closes itself: the stream
//! first, then a detach, then the connection. Reading through the processor's receiver instead
//! loses partitions: when the processor revokes a partition whose stream is waiting for an
//! event, the SDK (0.16) cannot detach the link and drops it later with the receive, and
//! fe2o3-amqp (0.16) then ends the session when the hub answers the detach
//! (`UnattachedHandle`), and with it the connection every partition of the instance shared. The
//! SDK's recovery of that connection re-attached links for partitions the instance no longer
//! owned and left others on sessions that had ended ("Illegal session state", "Link name is not
//! unique"). On a connection of its own, a reader's failure ends only that reader; the
//! processor hands the partition over again on its next cycle.
//!
//! A reader stops when another instance takes the partition: at once when the hub detaches its
//! link (`amqp:link:stolen`, the new owner attached with the same owner level), and otherwise
//! when the ownership records name another owner (checked every load-balancing interval).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_messaging_eventhubs::error::ErrorKind;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership, ReceivedEventData};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    CheckpointStore, ConsumerClient, EventReceiver, OpenReceiverOptions, StartLocation,
    StartPosition,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::checkpoint::FileCheckpointStore;
use super::config::{EventHubsConfig, StartFrom};
use super::properties::{application_properties, body_bytes, system_properties};
use super::run::{open_consumer, until_true, HubKey, Target};
use super::tracker::{PartitionTracker, Position};
use crate::{Ack, SourceEvent};

/// The owner level of every receiver, as the SDK's processor uses (and the .NET and Java
/// processors): a new receiver at 0 displaces an older one at 0.
const OWNER_LEVEL: i64 = 0;

/// How long closing a receiver or a connection may take before it is left to be dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checkpoint writers of every reader so far: the source waits for them at shutdown.
pub(super) type Writers = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// Per partition, the generation of the newest reader this instance started for it.
pub(super) type Newest = Arc<Mutex<HashMap<String, u64>>>;

/// Where a partition without a checkpoint starts.
pub fn default_start(from: StartFrom) -> StartPosition {
    StartPosition {
        location: match from {
            StartFrom::Earliest => StartLocation::Earliest,
            StartFrom::Latest => StartLocation::Latest,
        },
        inclusive: false,
    }
}

/// Where a partition's reader starts: after its checkpoint (offset, else sequence number), or
/// at `default` when it has none.
pub fn start_position(checkpoint: Option<&Checkpoint>, default: &StartPosition) -> StartPosition {
    let location = checkpoint.and_then(|c| match (&c.offset, c.sequence_number) {
        (Some(offset), _) => Some(StartLocation::Offset(offset.clone())),
        (None, Some(seq)) => Some(StartLocation::SequenceNumber(seq)),
        (None, None) => None,
    });
    match location {
        Some(location) => StartPosition {
            location,
            inclusive: false,
        },
        None => default.clone(),
    }
}

/// Whether the ownership records say that `partition_id` is no longer `owner_id`'s: another
/// owner, or none (given up). No record at all is not taken as a loss.
pub fn owned_elsewhere(ownerships: &[Ownership], partition_id: &str, owner_id: &str) -> bool {
    ownerships
        .iter()
        .find(|o| o.partition_id == partition_id)
        .is_some_and(|o| o.owner_id.as_deref() != Some(owner_id))
}

pub(super) struct Reader {
    /// The processor's token for the partition.
    pub client: Arc<PartitionClient>,
    /// This reader's generation for the partition (see [`Newest`]).
    pub generation: u64,
    pub newest: Newest,
    pub config: Arc<EventHubsConfig>,
    pub target: Arc<Target>,
    pub store: Arc<FileCheckpointStore>,
    pub key: HubKey,
    pub out: mpsc::Sender<SourceEvent>,
    pub writers: Writers,
}

/// Why a reader stopped.
enum Stop {
    Shutdown,
    /// The pipeline is gone.
    Closed,
    Lost,
    Failed,
}

impl Reader {
    pub(super) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let partition_id = self.client.get_partition_id().to_string();
        let opened = tokio::select! {
            o = self.open(&partition_id) => o,
            _ = until_true(&mut shutdown) => return self.hand_back(&partition_id).await,
        };
        let (consumer, receiver) = match opened {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, partition_id = %partition_id, "Could not open the partition; it is retried on the next load-balancing cycle.");
                return self.hand_back(&partition_id).await;
            }
        };
        tracing::info!(partition_id = %partition_id, "Reading partition.");
        let stop = self.read(&receiver, &partition_id, &mut shutdown).await;
        if matches!(stop, Stop::Lost) {
            tracing::info!(partition_id = %partition_id, "Partition owned by another instance now.");
        }
        // The stream is gone (so no receive holds the link): detach, then close the connection.
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await {
            tracing::debug!(error = %e, partition_id = %partition_id, "Closing the receiver failed.");
        }
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()).await {
            tracing::debug!(error = %e, partition_id = %partition_id, "Closing the partition's connection failed.");
        }
        self.hand_back(&partition_id).await;
        tracing::info!(partition_id = %partition_id, "Stopped reading partition.");
    }

    /// The reader's own connection, and a receiver on it after the partition's checkpoint.
    async fn open(&self, partition_id: &str) -> Result<(ConsumerClient, EventReceiver), String> {
        let checkpoints = self
            .store
            .list_checkpoints(&self.key.namespace, &self.key.hub, &self.key.group)
            .await
            .map_err(|e| format!("reading the checkpoints: {e}"))?;
        let start = start_position(
            checkpoints.iter().find(|c| c.partition_id == partition_id),
            &default_start(self.config.start_position),
        );
        // A receiver name that says whose it is (the hub names the receivers involved when it
        // displaces one), unique to the reader.
        let name = format!(
            "{}/{partition_id}/{}",
            self.config.owner_id, self.generation
        );
        let (consumer, _) = open_consumer(&self.config, &self.target, Some(name)).await?;
        let receiver = consumer
            .open_receiver_on_partition(
                partition_id.to_string(),
                Some(OpenReceiverOptions {
                    owner_level: Some(OWNER_LEVEL),
                    prefetch: Some(self.config.prefetch),
                    start_position: Some(start),
                    receive_timeout: None,
                }),
            )
            .await;
        match receiver {
            Ok(r) => Ok((consumer, r)),
            Err(e) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, consumer.close()).await;
                Err(e.to_string())
            }
        }
    }

    /// Delivers the partition's events until shutdown, a lost partition or a failed receiver.
    async fn read(
        &self,
        receiver: &EventReceiver,
        partition_id: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Stop {
        let tracker = Arc::new(Mutex::new(PartitionTracker::default()));
        let pos_tx = Arc::new(self.checkpoint_writer(partition_id));
        let acked = Arc::new(tokio::sync::Notify::new());
        let lost = self.until_owned_elsewhere(partition_id);
        tokio::pin!(lost);
        let mut stream = receiver.stream_events();
        loop {
            // Back-pressure: at most `max_unacked_per_partition` events outstanding.
            while tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .outstanding()
                >= self.config.max_unacked_per_partition
            {
                tokio::select! {
                    _ = acked.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = &mut lost => return Stop::Lost,
                    _ = until_true(shutdown) => return Stop::Shutdown,
                }
            }
            let next = tokio::select! {
                n = stream.next() => n,
                _ = &mut lost => return Stop::Lost,
                _ = until_true(shutdown) => return Stop::Shutdown,
            };
            let event = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) if matches!(e.kind, ErrorKind::ConsumerDisconnected(_)) => {
                    // Another receiver (the new owner's) displaced this one.
                    return Stop::Lost;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition_id = %partition_id, "Partition reading stopped.");
                    return Stop::Failed;
                }
                None => return Stop::Failed,
            };
            let ev = self.convert(&event, partition_id, &tracker, &pos_tx, &acked);
            tokio::select! {
                r = self.out.send(ev) => if r.is_err() { return Stop::Closed },
                _ = until_true(shutdown) => return Stop::Shutdown,
            }
        }
    }

    /// Resolves once the ownership records say another instance owns the partition.
    async fn until_owned_elsewhere(&self, partition_id: &str) {
        let every = Duration::from_secs(self.config.load_balancing_interval_secs.max(1));
        loop {
            tokio::time::sleep(every).await;
            match self
                .store
                .list_ownerships(&self.key.namespace, &self.key.hub, &self.key.group)
                .await
            {
                Ok(o) if owned_elsewhere(&o, partition_id, &self.config.owner_id) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, partition_id = %partition_id, "Could not read the ownerships.")
                }
            }
        }
    }

    /// Starts the partition's checkpoint writer (one task, coalescing acks) and returns where
    /// to send the positions to checkpoint.
    fn checkpoint_writer(&self, partition_id: &str) -> watch::Sender<Option<Position>> {
        let (pos_tx, mut pos_rx) = watch::channel::<Option<Position>>(None);
        let store = self.store.clone();
        let key = self.key.clone();
        let pid = partition_id.to_string();
        let handle = tokio::spawn(async move {
            let mut written: Option<i64> = None;
            loop {
                let closed = pos_rx.changed().await.is_err();
                let pos = pos_rx.borrow_and_update().clone();
                if let Some(p) = pos {
                    if written != Some(p.sequence_number) {
                        let cp = Checkpoint {
                            fully_qualified_namespace: key.namespace.clone(),
                            event_hub_name: key.hub.clone(),
                            consumer_group: key.group.clone(),
                            partition_id: pid.clone(),
                            offset: p.offset.clone(),
                            sequence_number: Some(p.sequence_number),
                        };
                        match store.update_checkpoint(cp).await {
                            Ok(()) => written = Some(p.sequence_number),
                            Err(e) => {
                                tracing::error!(error = %e, partition_id = %pid, "Checkpoint not written; events will be delivered again.")
                            }
                        }
                    }
                }
                if closed {
                    break;
                }
            }
        });
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        writers.retain(|h| !h.is_finished());
        writers.push(handle);
        pos_tx
    }

    /// Gives the partition back to the processor, which hands it over again on its next cycle
    /// while this instance owns it, unless a newer reader has it already (then the processor's
    /// record of it is the newer reader's).
    async fn hand_back(self, partition_id: &str) {
        let newest = {
            let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
            let mine = newest.get(partition_id) == Some(&self.generation);
            if mine {
                newest.remove(partition_id);
            }
            mine
        };
        if !newest {
            return;
        }
        match Arc::try_unwrap(self.client) {
            Ok(c) => {
                if let Err(e) = c.close().await {
                    tracing::debug!(error = %e, partition_id = %partition_id, "Handing the partition back failed.");
                }
            }
            Err(_) => {
                tracing::debug!(partition_id = %partition_id, "Partition client still referenced.")
            }
        }
    }

    fn convert(
        &self,
        event: &ReceivedEventData,
        partition_id: &str,
        tracker: &Arc<Mutex<PartitionTracker>>,
        pos_tx: &Arc<watch::Sender<Option<Position>>>,
        acked: &Arc<tokio::sync::Notify>,
    ) -> SourceEvent {
        let ingestion_time = event
            .enqueued_time()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(Utc::now);
        let ack = match event.sequence_number() {
            Some(seq) => {
                tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .delivered(seq, event.offset().clone());
                let tracker = tracker.clone();
                let pos_tx = pos_tx.clone();
                let acked = acked.clone();
                Ack::new(move || {
                    Box::pin(async move {
                        let advanced = tracker.lock().unwrap_or_else(|e| e.into_inner()).done(seq);
                        if let Some(p) = advanced {
                            pos_tx.send_replace(Some(p));
                        }
                        acked.notify_one();
                    })
                })
            }
            None => {
                tracing::warn!(partition_id = %partition_id, "Event without a sequence number; it cannot be checkpointed.");
                Ack::none()
            }
        };
        SourceEvent {
            body: body_bytes(event),
            properties: application_properties(event),
            system_properties: system_properties(event, partition_id),
            ingestion_time,
            origin: format!("{}/Partitions/{partition_id}", self.key.hub),
            ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(offset: Option<&str>, seq: Option<i64>) -> Checkpoint {
        Checkpoint {
            fully_qualified_namespace: "ns.example".into(),
            event_hub_name: "hub".into(),
            consumer_group: "$Default".into(),
            partition_id: "3".into(),
            offset: offset.map(String::from),
            sequence_number: seq,
        }
    }

    fn ownership(partition: &str, owner: Option<&str>) -> Ownership {
        Ownership {
            fully_qualified_namespace: "ns.example".into(),
            event_hub_name: "hub".into(),
            consumer_group: "$Default".into(),
            partition_id: partition.into(),
            owner_id: owner.map(String::from),
            etag: None,
            last_modified_time: None,
        }
    }

    #[test]
    fn a_reader_starts_after_the_checkpoint_or_at_the_default() {
        let earliest = StartPosition {
            location: StartLocation::Earliest,
            inclusive: false,
        };
        let cases = [
            (None, StartLocation::Earliest),
            (
                Some(checkpoint(Some("812"), Some(40))),
                StartLocation::Offset("812".into()),
            ),
            (
                Some(checkpoint(None, Some(40))),
                StartLocation::SequenceNumber(40),
            ),
            (Some(checkpoint(None, None)), StartLocation::Earliest),
        ];
        for (cp, expected) in cases {
            let start = start_position(cp.as_ref(), &earliest);
            assert_eq!(start.location, expected, "{cp:?}");
            assert!(!start.inclusive, "{cp:?}");
        }
    }

    #[test]
    fn a_partition_is_lost_when_its_record_names_another_owner_or_none() {
        let records = [
            ownership("0", Some("a")),
            ownership("1", Some("b")),
            ownership("2", None),
        ];
        assert!(!owned_elsewhere(&records, "0", "a"));
        assert!(owned_elsewhere(&records, "1", "a"));
        assert!(owned_elsewhere(&records, "2", "a"));
        assert!(!owned_elsewhere(&records, "3", "a"), "no record yet");
    }
}
