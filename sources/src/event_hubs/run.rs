//! Running the source: sign-in, one session per processor connection (the SDK's event
//! processor, and a [`Reader`] per partition it hands over), reconnection with backoff, and the
//! two-step shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_messaging_eventhubs::{ConsumerClient, EventProcessor, ProcessorStrategy};
use tokio::sync::{mpsc, watch};

use super::checkpoint::FileCheckpointStore;
use super::config::{Auth, Connection, EventHubsConfig, LoadBalancing};
use super::credential::{EntraCredential, EVENT_HUBS_SCOPE};
use super::reader::{default_start, Newest, Reader, Writers};
use crate::{SourceError, SourceEvent};

/// Identifies the hub for checkpoints.
#[derive(Debug, Clone)]
pub(super) struct HubKey {
    pub namespace: String,
    pub hub: String,
    pub group: String,
}

/// Installs the process-wide TLS crypto provider the SDK's `amqps://` connections need (ring,
/// as for MQTT over TLS); harmless when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub(super) async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Where the sessions connect, and how they sign in: the connection string, or the Entra ID
/// credential shared by every session (so its cached token outlives reconnections).
pub(super) struct Target {
    namespace: String,
    event_hub: String,
    sign_in: SignIn,
}

enum SignIn {
    ConnectionString(azure_core::credentials::Secret),
    Entra(Arc<EntraCredential>),
}

/// A consumer client (one AMQP connection) for the hub; `receiver_name` names the receivers it
/// opens (a random name without it).
pub(super) async fn open_consumer(
    config: &EventHubsConfig,
    target: &Target,
    receiver_name: Option<String>,
) -> Result<(ConsumerClient, HubKey), String> {
    let mut builder = ConsumerClient::builder()
        .with_consumer_group(config.consumer_group.clone())
        .with_application_id(config.owner_id.clone());
    if let Some(name) = receiver_name {
        builder = builder.with_instance_id(name);
    }
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
    let mut shared = Shared {
        target: Arc::new(sign_in(connection).await?),
        config: Arc::new(config),
        store,
        writers: Writers::default(),
        newest: Newest::default(),
        readers: 0,
    };
    let mut out = Some(out);
    let mut key = None;
    let mut attempt = 0u32;
    while let Some(o) = out.take() {
        if *shutdown.borrow() {
            break;
        }
        let outcome = session(&mut shared, o.clone(), shutdown.clone(), &mut key).await;
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
    let handles: Vec<_> =
        std::mem::take(&mut *shared.writers.lock().unwrap_or_else(|e| e.into_inner()));
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
        shared
            .store
            .relinquish(&k.namespace, &k.hub, &k.group, &shared.config.owner_id)
            .await;
    }
    Ok(())
}

/// What the sessions of the source share.
struct Shared {
    config: Arc<EventHubsConfig>,
    target: Arc<Target>,
    store: Arc<FileCheckpointStore>,
    writers: Writers,
    newest: Newest,
    /// Readers started so far; a reader's number is its generation.
    readers: u64,
}

/// One processor connection: the processor, and a [`Reader`] per partition it hands over,
/// until shutdown (`Ok`) or the processor fails (`Err`). Either way the readers are stopped
/// (each closes its own connection) before it returns.
async fn session(
    shared: &mut Shared,
    out: mpsc::Sender<SourceEvent>,
    mut shutdown: watch::Receiver<bool>,
    key_slot: &mut Option<HubKey>,
) -> Result<(), String> {
    let config = shared.config.clone();
    let (consumer, key) = open_consumer(&config, &shared.target, None).await?;
    *key_slot = Some(key.clone());
    // The processor's consumer client only reads the hub's partitions and hands them over: the
    // readers receive on connections of their own (see `reader`).
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
            default: default_start(config.start_position),
        })
        .build(consumer, shared.store.clone())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(event_hub = %key.hub, consumer_group = %key.group, owner_id = %config.owner_id, "Event Hubs processor started.");
    let mut runner = tokio::spawn({
        let p = processor.clone();
        async move { p.run().await }
    });
    let (stop, stopped) = watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    let result = loop {
        tokio::select! {
            pc = processor.next_partition_client() => match pc {
                Ok(pc) => {
                    shared.readers += 1;
                    shared
                        .newest
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(pc.get_partition_id().to_string(), shared.readers);
                    let reader = Reader {
                        client: pc,
                        generation: shared.readers,
                        newest: shared.newest.clone(),
                        config: config.clone(),
                        target: shared.target.clone(),
                        store: shared.store.clone(),
                        key: key.clone(),
                        out: out.clone(),
                        writers: shared.writers.clone(),
                    };
                    readers.spawn_local(reader.run(stopped.clone()));
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
    // The readers stop (and close their connections); those that do not in time are dropped.
    stop.send_replace(true);
    let wait = async { while readers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
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
