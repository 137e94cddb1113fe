//! Running the source: sign-in, one session per connection (the SDK's event processor and a
//! reader per owned partition), reconnection with backoff, and the two-step shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_messaging_eventhubs::models::{Checkpoint, ReceivedEventData};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    CheckpointStore, ConsumerClient, EventProcessor, ProcessorStrategy, StartLocation,
    StartPosition,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::checkpoint::FileCheckpointStore;
use super::config::{Auth, Connection, EventHubsConfig, LoadBalancing, StartFrom};
use super::credential::{EntraCredential, EVENT_HUBS_SCOPE};
use super::properties::{application_properties, body_bytes, system_properties};
use super::tracker::{PartitionTracker, Position};
use crate::{Ack, SourceError, SourceEvent};

/// Identifies the hub for checkpoints.
#[derive(Debug, Clone)]
struct HubKey {
    namespace: String,
    hub: String,
    group: String,
}

/// Installs the process-wide TLS crypto provider the SDK's `amqps://` connections need (ring,
/// as for MQTT over TLS); harmless when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Where the sessions connect, and how they sign in: the connection string, or the Entra ID
/// credential shared by every session (so its cached token outlives reconnections).
struct Target {
    namespace: String,
    event_hub: String,
    sign_in: SignIn,
}

enum SignIn {
    ConnectionString(azure_core::credentials::Secret),
    Entra(Arc<EntraCredential>),
}

async fn open_consumer(
    config: &EventHubsConfig,
    target: &Target,
) -> Result<(ConsumerClient, HubKey), String> {
    let mut builder = ConsumerClient::builder()
        .with_consumer_group(config.consumer_group.clone())
        .with_application_id(config.owner_id.clone());
    if let Some(e) = &config.custom_endpoint {
        builder = builder.with_custom_endpoint(e.clone());
    }
    let client = match &target.sign_in {
        SignIn::ConnectionString(cs) => {
            builder
                .open_with_connection_string(cs.secret(), Some(&target.event_hub))
                .await
        }
        SignIn::Entra(credential) => {
            builder
                .open(
                    &target.namespace,
                    target.event_hub.clone(),
                    credential.clone(),
                )
                .await
        }
    }
    .map_err(|e| e.to_string())?;
    Ok((
        client,
        HubKey {
            namespace: target.namespace.clone(),
            hub: target.event_hub.clone(),
            group: config.consumer_group.clone(),
        },
    ))
}

/// The sign-in of `connection`; with Entra ID, a first token is fetched at once so that a
/// wrong tenant, client id, secret or identity stops the start with Entra's own error
/// (`SourceError::Auth`) instead of an endless reconnect loop. An unreachable or failing
/// token endpoint is only warned about: the sessions retry it.
async fn sign_in(connection: Connection) -> Result<Target, SourceError> {
    let Connection {
        namespace,
        event_hub,
        auth,
    } = connection;
    let settings = match auth {
        Auth::ConnectionString(cs) => {
            return Ok(Target {
                namespace,
                event_hub,
                sign_in: SignIn::ConnectionString(cs),
            })
        }
        Auth::Entra(settings) => settings,
    };
    let credential =
        Arc::new(EntraCredential::new(settings).map_err(|e| SourceError::Auth(e.to_string()))?);
    match credential.token(&[EVENT_HUBS_SCOPE]).await {
        Ok(_) => tracing::info!(
            sign_in = %credential.describe(),
            namespace = %namespace,
            "Azure AD token obtained for Event Hubs."
        ),
        Err(e) if e.is_permanent() => return Err(SourceError::Auth(e.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "No Azure AD token yet; retrying with the connection.")
        }
    }
    Ok(Target {
        namespace,
        event_hub,
        sign_in: SignIn::Entra(credential),
    })
}

/// Runs the Event Hubs source, delivering events into `out`. Connection failures are retried
/// forever with backoff.
///
/// Shutdown has two steps, as for every source: when `shutdown` turns true the partition
/// readers stop (dropping `out`, so the pipeline drains what it has); when `done` turns true
/// (the pipeline finished and acknowledged), the last checkpoints are written, this
/// instance's partitions are released for other instances, and the function returns.
///
/// The SDK's partition event stream is not `Send`, so the source runs on a single-threaded
/// runtime of its own thread; only channels cross between it and the pipeline.
pub async fn run(
    config: EventHubsConfig,
    out: mpsc::Sender<SourceEvent>,
    shutdown: watch::Receiver<bool>,
    done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(SourceError::Config(errors.join("; ")));
    }
    let connection = config
        .connection()
        .map_err(|e| SourceError::Config(e.join("; ")))?;
    install_crypto_provider();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("event-hubs".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => tokio::task::LocalSet::new()
                    .block_on(&rt, run_local(config, connection, out, shutdown, done)),
                Err(e) => Err(SourceError::Config(format!("starting a runtime: {e}"))),
            };
            let _ = tx.send(result);
        })
        .map_err(|e| SourceError::Config(format!("starting the Event Hubs thread: {e}")))?;
    rx.await
        .unwrap_or_else(|_| Err(SourceError::Config("the Event Hubs thread panicked".into())))
}

async fn run_local(
    config: EventHubsConfig,
    connection: Connection,
    out: mpsc::Sender<SourceEvent>,
    shutdown: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
) -> Result<(), SourceError> {
    let store = Arc::new(
        FileCheckpointStore::open(&config.checkpoint_dir).map_err(|e| {
            SourceError::Config(format!(
                "source.checkpoint_dir {}: {e}",
                config.checkpoint_dir.display()
            ))
        })?,
    );
    let target = sign_in(connection).await?;
    let writers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let mut out = Some(out);
    let mut key = None;
    let mut attempt = 0u32;
    while let Some(o) = out.take() {
        if *shutdown.borrow() {
            break;
        }
        let outcome = session(
            &config,
            &target,
            &store,
            &writers,
            o.clone(),
            shutdown.clone(),
            &mut key,
        )
        .await;
        match outcome {
            Ok(()) => break, // shut down
            Err(e) => {
                tracing::warn!(error = %e, attempt, "Event Hubs connection failed; reconnecting.");
                let delay = Duration::from_millis((200u64 << attempt.min(5)).min(10_000));
                attempt += 1;
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = until_true(&mut sd) => break,
                }
                out = Some(o);
            }
        }
    }
    drop(out);
    // The pipeline drains and acknowledges; then the last checkpoints are written.
    until_true(&mut done).await;
    let handles: Vec<_> = std::mem::take(&mut *writers.lock().unwrap_or_else(|e| e.into_inner()));
    let flush = futures::future::join_all(handles);
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::error!(
            "Timed out writing the last checkpoints; their events will be delivered again."
        );
    }
    if let Some(k) = key {
        store
            .relinquish(&k.namespace, &k.hub, &k.group, &config.owner_id)
            .await;
    }
    Ok(())
}

/// One connection: the processor and a reader per owned partition, until shutdown (`Ok`) or
/// the processor fails (`Err`).
async fn session(
    config: &EventHubsConfig,
    target: &Target,
    store: &Arc<FileCheckpointStore>,
    writers: &Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    out: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    key_slot: &mut Option<HubKey>,
) -> Result<(), String> {
    let (consumer, key) = open_consumer(config, target).await?;
    *key_slot = Some(key.clone());
    let default_start = StartPosition {
        location: match config.start_position {
            StartFrom::Earliest => StartLocation::Earliest,
            StartFrom::Latest => StartLocation::Latest,
        },
        inclusive: false,
    };
    let processor = EventProcessor::builder()
        .with_prefetch(config.prefetch)
        .with_load_balancing_strategy(match config.load_balancing {
            LoadBalancing::Greedy => ProcessorStrategy::Greedy,
            LoadBalancing::Balanced => ProcessorStrategy::Balanced,
        })
        .with_update_interval(azure_core::time::Duration::seconds(
            config.load_balancing_interval_secs as i64,
        ))
        .with_partition_expiration_duration(azure_core::time::Duration::seconds(
            config.ownership_expiry_secs as i64,
        ))
        .with_start_positions(azure_messaging_eventhubs::models::StartPositions {
            per_partition: HashMap::new(),
            default: default_start,
        })
        .build(consumer, store.clone())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(event_hub = %key.hub, consumer_group = %key.group, owner_id = %config.owner_id, "Event Hubs processor started.");
    let mut runner = tokio::spawn({
        let p = processor.clone();
        async move { p.run().await }
    });
    let mut readers = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            pc = processor.next_partition_client() => match pc {
                Ok(pc) => {
                    let reader = Reader {
                        client: pc,
                        store: store.clone(),
                        key: key.clone(),
                        out: out.clone(),
                        max_unacked: config.max_unacked_per_partition,
                        writers: writers.clone(),
                    };
                    readers.spawn_local(reader.run(shutdown.clone()));
                }
                Err(e) => break Err(e.to_string()),
            },
            r = &mut runner => break match r {
                Ok(Ok(())) => Err("the processor stopped".into()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            _ = until_true(&mut shutdown) => break Ok(()),
        }
    };
    let _ = processor.shutdown().await;
    runner.abort();
    if result.is_ok() {
        // Readers stop on shutdown by themselves; wait so their clients close cleanly.
        let wait = async { while readers.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            readers.abort_all();
        }
    } else {
        readers.abort_all();
        while readers.join_next().await.is_some() {}
    }
    drop(out);
    let _ = runner.await;
    match Arc::try_unwrap(processor) {
        Ok(p) => {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.close()).await;
        }
        Err(_) => tracing::debug!("Event processor still referenced; dropped without close."),
    }
    result
}

struct Reader {
    client: Arc<PartitionClient>,
    store: Arc<FileCheckpointStore>,
    key: HubKey,
    out: mpsc::Sender<SourceEvent>,
    max_unacked: usize,
    writers: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Reader {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let partition_id = self.client.get_partition_id().to_string();
        tracing::info!(partition_id = %partition_id, "Reading partition.");
        let tracker = Arc::new(Mutex::new(PartitionTracker::default()));
        // Checkpoints are written by one task per partition reading, coalescing acks.
        let (pos_tx, mut pos_rx) = watch::channel::<Option<Position>>(None);
        let acked = Arc::new(tokio::sync::Notify::new());
        {
            let store = self.store.clone();
            let key = self.key.clone();
            let pid = partition_id.clone();
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
            self.writers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
        }
        let pos_tx = Arc::new(pos_tx);
        {
            let mut stream = self.client.stream_events();
            loop {
                // Back-pressure: at most `max_unacked` events outstanding.
                while tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .outstanding()
                    >= self.max_unacked
                {
                    tokio::select! {
                        _ = acked.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = until_true(&mut shutdown) => break,
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                }
                let next = tokio::select! {
                    n = stream.next() => n,
                    _ = until_true(&mut shutdown) => break,
                };
                let event = match next {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, partition_id = %partition_id, "Partition reading stopped.");
                        break;
                    }
                    None => break,
                };
                let ev = self.convert(&event, &partition_id, &tracker, &pos_tx, &acked);
                tokio::select! {
                    r = self.out.send(ev) => if r.is_err() { break },
                    _ = until_true(&mut shutdown) => break,
                }
            }
        }
        drop(self.out);
        // Hand the partition back to the processor (it reopens it on its next cycle if it
        // still owns it).
        match Arc::try_unwrap(self.client) {
            Ok(c) => {
                if let Err(e) = c.close().await {
                    tracing::debug!(error = %e, partition_id = %partition_id, "Closing the partition client failed.");
                }
            }
            Err(_) => {
                tracing::debug!(partition_id = %partition_id, "Partition client still referenced.")
            }
        }
        tracing::info!(partition_id = %partition_id, "Stopped reading partition.");
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
