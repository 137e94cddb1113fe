//! The Azure Event Hubs source: the `azure_messaging_eventhubs` [`EventProcessor`] with a
//! durable local checkpoint store ([`FileCheckpointStore`], JSON files in a directory), so
//! several instances sharing one checkpoint directory split the partitions between them
//! (ownership records with ETags, the SDK's load balancer) and a restarted instance resumes
//! where the last checkpoint says.
//!
//! Each event's application properties become `properties`; its message annotations (the
//! `iothub-*` ones of IoT Hub routing, `x-opt-enqueued-time`, `x-opt-sequence-number`,
//! `x-opt-offset`, `x-opt-partition-key`, ...), the AMQP message properties (`message-id`,
//! `correlation-id`, `content-type`, ...) and `eventhubs-partition-id` become
//! `system_properties`; the enqueued time is the ingestion time.
//!
//! Sign-in is a shared access key connection string, or Microsoft Entra ID (Azure AD) tokens
//! from a client secret or the host's managed identity ([`credential`]), presented to the hub
//! with claims-based security (`put-token`, token type `jwt`) and renewed before they expire.
//!
//! At-least-once: the [`Ack`] of an event marks it done in its partition's tracker, and the
//! partition's checkpoint advances to the highest sequence number below which every event is
//! done (written to FHIR or dead-lettered). A checkpoint never moves backwards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use azure_core_amqp::message::{AmqpAnnotationKey, AmqpMessageBody, AmqpMessageId};
use azure_core_amqp::AmqpSimpleValue;
use azure_messaging_eventhubs::models::{AmqpValue, Checkpoint, Ownership, ReceivedEventData};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    CheckpointStore, ConsumerClient, EventProcessor, ProcessorStrategy, StartLocation,
    StartPosition,
};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};

use crate::{Ack, SourceError, SourceEvent};

pub mod credential;

use credential::{CredentialSettings, EntraCredential, ManagedIdentityEndpoint, EVENT_HUBS_SCOPE};

/// Where a partition without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest event the hub retains (nothing sent before the first start is missed).
    #[default]
    Earliest,
    /// Only events enqueued after the partition is opened.
    Latest,
}

/// How an instance claims partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Claim every partition this instance may own in one go (faster start).
    #[default]
    Greedy,
    /// Claim one partition per load-balancing cycle.
    Balanced,
}

/// Event Hubs source settings (the `[source]` table with `kind = "event_hubs"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// Shared access key sign-in: name of the environment variable holding the connection
    /// string (`Endpoint=sb://<namespace>/;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=<hub>]`).
    /// Leave out with `credential`.
    #[serde(default)]
    pub connection_string_env: Option<String>,
    /// Namespace host name, e.g. `<namespace>.servicebus.windows.net`; needed with `credential`
    /// (a connection string names its namespace itself).
    #[serde(default)]
    pub fully_qualified_namespace: Option<String>,
    /// Event hub name; needed with `credential`, and with a connection string that has no
    /// `EntityPath`.
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Microsoft Entra ID (Azure AD) sign-in instead of a connection string: the
    /// `[source.credential]` table, `kind = "client_secret"` or `"managed_identity"`.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Consumer group.
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Connect to this address instead of the namespace host, e.g. `amqps://10.0.0.4:5671` behind
    /// a private endpoint or proxy (`amqp://host:port` is plain TCP). The namespace of the
    /// connection string still names the hub (and keys the checkpoints).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// Directory of the checkpoint store (ownership and checkpoint JSON files), relative to the
    /// config file. Instances that split a hub's partitions must share it.
    pub checkpoint_dir: PathBuf,
    /// This instance's owner id in the ownership records; fixed, so that a restarted instance
    /// takes its partitions back at once. Distinct per instance.
    pub owner_id: String,
    /// Where a partition without a checkpoint starts: `"earliest"` or `"latest"`.
    #[serde(default)]
    pub start_position: StartFrom,
    /// Events the client prefetches per partition (AMQP link credit).
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Most events one partition may have handed to the pipeline and not yet acknowledged; the
    /// partition's reader waits when it is reached (bounds redelivery after a crash). An event
    /// is acknowledged once its window is written, up to `pipeline.flush_interval_ms` later, so
    /// this must hold a partition's events for a whole flush interval or it caps throughput at
    /// this many events per interval; the pipeline's `max_pending_measurements` bounds memory.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_per_partition: usize,
    /// `"greedy"` or `"balanced"` partition claiming.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Seconds between load-balancing cycles (ownership renewal, claiming partitions).
    #[serde(default = "default_lb_interval")]
    pub load_balancing_interval_secs: u64,
    /// Seconds after which an ownership that was not renewed may be claimed by another
    /// instance (a crashed instance's partitions move after this long). Must be larger than
    /// `load_balancing_interval_secs`.
    #[serde(default = "default_ownership_expiry")]
    pub ownership_expiry_secs: u64,
}

/// Microsoft Entra ID (Azure AD) sign-in (`[source.credential]`). The token is for
/// `https://eventhubs.azure.net/.default`; the identity needs a data role on the hub or
/// namespace (Azure Event Hubs Data Receiver).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// An app registration (service principal) with a client secret.
    ClientSecret {
        /// Directory (tenant) id, or a domain such as `contoso.onmicrosoft.com`.
        #[serde(default)]
        tenant_id: Option<String>,
        /// Application (client) id.
        #[serde(default)]
        client_id: Option<String>,
        /// Name of the environment variable holding the client secret (the secret itself is
        /// never in the file, nor in logs or errors).
        #[serde(default)]
        client_secret_env: Option<String>,
        /// Entra ID authority (another cloud, e.g. `https://login.microsoftonline.us`).
        #[serde(default = "default_authority_host")]
        authority_host: String,
    },
    /// The host's managed identity: the instance metadata service, or `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER` where App Service / Container Apps set them.
    ManagedIdentity {
        /// Client id of a user-assigned identity; leave out for the system-assigned one.
        #[serde(default)]
        client_id: Option<String>,
        /// Token endpoint spoken to with the instance metadata service protocol, instead of
        /// `IDENTITY_ENDPOINT` or `http://169.254.169.254/metadata/identity/oauth2/token`.
        #[serde(default)]
        endpoint: Option<String>,
    },
}

fn default_authority_host() -> String {
    credential::DEFAULT_AUTHORITY_HOST.into()
}

/// Where the source connects and how it signs in: [`EventHubsConfig`] checked, with the
/// secrets read from the environment (`Debug` redacts them).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Namespace host name (keys the checkpoints with the hub and consumer group).
    pub namespace: String,
    /// Event hub name.
    pub event_hub: String,
    /// How to sign in.
    pub auth: Auth,
}

/// How the source signs in to Event Hubs.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A shared access key connection string.
    ConnectionString(azure_core::credentials::Secret),
    /// Microsoft Entra ID tokens ([`credential::EntraCredential`]).
    Entra(CredentialSettings),
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > "https://".len()
}

fn default_consumer_group() -> String {
    "$Default".into()
}
fn default_prefetch() -> u32 {
    300
}
fn default_max_unacked() -> usize {
    100_000
}
fn default_lb_interval() -> u64 {
    10
}
fn default_ownership_expiry() -> u64 {
    60
}

impl EventHubsConfig {
    /// Where to connect and how to sign in, with the secrets read from the environment; or
    /// every problem with those settings.
    pub fn connection(&self) -> Result<Connection, Vec<String>> {
        self.connection_with_env(|name| std::env::var(name).ok())
    }

    /// [`Self::connection`] with the environment given (tests).
    pub fn connection_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        match (&self.connection_string_env, &self.credential) {
            (Some(_), Some(_)) => Err(vec![
                "source.credential: give either connection_string_env (a shared access key connection string) or [source.credential] (Azure AD), not both".into(),
            ]),
            (None, None) => Err(vec![
                "source: no sign-in: set connection_string_env (a shared access key connection string) or add a [source.credential] table (Azure AD)".into(),
            ]),
            (Some(cs_env), None) => self.connection_string(cs_env, &env),
            (None, Some(credential)) => self.entra(credential, &env),
        }
    }

    fn connection_string(
        &self,
        cs_env: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        let mut errors = Vec::new();
        if self.fully_qualified_namespace.is_some() {
            errors.push("source.fully_qualified_namespace: only used with [source.credential]; the connection string names the namespace".into());
        }
        let Some(cs) = env(cs_env) else {
            errors.push(format!(
                "source.connection_string_env: environment variable {cs_env} is not set"
            ));
            return Err(errors);
        };
        let parsed = match cs.parse::<azure_messaging_eventhubs::ConnectionString>() {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!(
                    "source.connection_string_env: {cs_env} does not hold a valid connection string: {e}"
                ));
                return Err(errors);
            }
        };
        let hub = match (&self.event_hub, &parsed.entity_path) {
            (Some(h), Some(p)) if h != p => {
                errors.push(format!(
                    "source.event_hub: {h:?} differs from the connection string's EntityPath {p:?}"
                ));
                None
            }
            (Some(h), _) => Some(h.clone()),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => {
                errors.push(
                    "source.event_hub: needed when the connection string has no EntityPath".into(),
                );
                None
            }
        };
        match hub {
            Some(hub) if errors.is_empty() => Ok(Connection {
                namespace: parsed.fully_qualified_namespace.clone(),
                event_hub: hub,
                auth: Auth::ConnectionString(azure_core::credentials::Secret::new(cs)),
            }),
            _ => Err(errors),
        }
    }

    fn entra(
        &self,
        credential: &CredentialConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        let mut errors = Vec::new();
        let namespace = match self.fully_qualified_namespace.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("source.fully_qualified_namespace: needed with [source.credential], e.g. \"<namespace>.servicebus.windows.net\"".into());
                None
            }
            Some(ns)
                if ns.contains("://") || ns.contains('/') || ns.contains(char::is_whitespace) =>
            {
                errors.push(format!("source.fully_qualified_namespace: {ns:?} is not a host name; write \"<namespace>.servicebus.windows.net\", without sb:// or a path"));
                None
            }
            Some(ns) => Some(ns.to_string()),
        };
        let hub = match self.event_hub.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("source.event_hub: needed with [source.credential]".into());
                None
            }
            Some(h) => Some(h.to_string()),
        };
        let settings = match credential {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret_env,
                authority_host,
            } => {
                let mut required = |value: &Option<String>, key: &str, what: &str| match value
                    .as_deref()
                    .map(str::trim)
                {
                    None | Some("") => {
                        errors.push(format!(
                            "source.credential.{key}: needed for kind = \"client_secret\" ({what})"
                        ));
                        None
                    }
                    Some(v) => Some(v.to_string()),
                };
                let tenant = required(tenant_id, "tenant_id", "the directory (tenant) id");
                let client = required(client_id, "client_id", "the application (client) id");
                let secret_env = required(
                    client_secret_env,
                    "client_secret_env",
                    "the name of the environment variable holding the client secret",
                );
                if let Some(t) = &tenant {
                    if !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    {
                        errors.push(format!("source.credential.tenant_id: {t:?} is not a tenant id (a GUID, or a domain such as contoso.onmicrosoft.com)"));
                    }
                }
                if !is_http_url(authority_host) {
                    errors.push(format!(
                        "source.credential.authority_host: {authority_host:?} is not an http(s) URL"
                    ));
                }
                let secret = secret_env.as_ref().and_then(|name| match env(name) {
                    None => {
                        errors.push(format!(
                            "source.credential.client_secret_env: environment variable {name} is not set"
                        ));
                        None
                    }
                    Some(v) if v.trim().is_empty() => {
                        errors.push(format!(
                            "source.credential.client_secret_env: environment variable {name} is empty"
                        ));
                        None
                    }
                    Some(v) => Some(v),
                });
                match (tenant, client, secret) {
                    (Some(tenant_id), Some(client_id), Some(secret)) => {
                        Some(CredentialSettings::ClientSecret {
                            authority_host: authority_host.trim_end_matches('/').to_string(),
                            tenant_id,
                            client_id,
                            client_secret: azure_core::credentials::Secret::new(secret),
                        })
                    }
                    _ => None,
                }
            }
            CredentialConfig::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                if client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    errors.push("source.credential.client_id: must not be empty (leave it out for the system-assigned identity)".into());
                }
                if let Some(e) = endpoint {
                    if !is_http_url(e) {
                        errors.push(format!(
                            "source.credential.endpoint: {e:?} is not an http(s) URL"
                        ));
                    }
                }
                match ManagedIdentityEndpoint::select(endpoint.as_deref(), |k| env(k)) {
                    Ok(endpoint) => Some(CredentialSettings::ManagedIdentity {
                        client_id: client_id.clone(),
                        endpoint,
                    }),
                    Err(e) => {
                        errors.push(format!("source.credential: {e}"));
                        None
                    }
                }
            }
        };
        match (namespace, hub, settings) {
            (Some(namespace), Some(event_hub), Some(settings)) if errors.is_empty() => {
                Ok(Connection {
                    namespace,
                    event_hub,
                    auth: Auth::Entra(settings),
                })
            }
            _ => Err(errors),
        }
    }

    /// Checks the settings, reporting every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = self.connection().err().unwrap_or_default();
        if self.consumer_group.trim().is_empty() {
            errors.push("source.consumer_group: must not be empty".into());
        }
        if self.owner_id.trim().is_empty() {
            errors.push("source.owner_id: a fixed, per-instance owner id is needed".into());
        }
        if let Some(e) = &self.custom_endpoint {
            if !(e.starts_with("amqp://") || e.starts_with("amqps://")) {
                errors.push(format!(
                    "source.custom_endpoint: {e:?} is not an amqp:// or amqps:// URL"
                ));
            }
        }
        if self.prefetch == 0 {
            errors.push("source.prefetch: must be at least 1".into());
        }
        if self.max_unacked_per_partition == 0 {
            errors.push("source.max_unacked_per_partition: must be at least 1".into());
        }
        if self.load_balancing_interval_secs == 0 {
            errors.push("source.load_balancing_interval_secs: must be at least 1".into());
        }
        if self.ownership_expiry_secs <= self.load_balancing_interval_secs {
            errors.push(
                "source.ownership_expiry_secs: must be larger than load_balancing_interval_secs"
                    .into(),
            );
        }
        errors
    }
}

// ---------------------------------------------------------------------------------------------
// The checkpoint store.

/// A durable [`CheckpointStore`] in a local directory: one JSON file per partition checkpoint
/// and per partition ownership, under `<dir>/<namespace>/<hub>/<consumer group>/`. Writes go to
/// a temporary file that is fsynced and renamed over the old one (and the directory fsynced),
/// so a crash leaves either the old or the new record. Ownership claims are compare-and-swap
/// on the ETag under a lock file, so instances in several processes sharing the directory
/// cannot both win a partition.
pub struct FileCheckpointStore {
    dir: PathBuf,
    /// Serialises this process's writers (the lock file serialises processes).
    local: tokio::sync::Mutex<()>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointRecord {
    partition_id: String,
    #[serde(default)]
    offset: Option<String>,
    #[serde(default)]
    sequence_number: Option<i64>,
    updated: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct OwnershipRecord {
    partition_id: String,
    #[serde(default)]
    owner_id: Option<String>,
    etag: String,
    /// Unix time in milliseconds.
    last_modified_ms: i64,
}

fn store_error(message: impl Into<String>) -> azure_core::Error {
    azure_core::Error::with_message(azure_core::error::ErrorKind::Io, message.into())
}

fn io_error(context: &Path, e: std::io::Error) -> azure_core::Error {
    store_error(format!("{}: {e}", context.display()))
}

/// A path segment for a name (namespace, hub, consumer group, partition id).
fn segment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl FileCheckpointStore {
    /// Opens (creating it if needed) a store in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FileCheckpointStore {
            dir: dir.to_path_buf(),
            local: tokio::sync::Mutex::new(()),
        })
    }

    fn group_dir(&self, namespace: &str, hub: &str, group: &str, kind: &str) -> PathBuf {
        self.dir
            .join(segment(namespace))
            .join(segment(hub))
            .join(segment(group))
            .join(kind)
    }

    fn read_dir_records<T: for<'de> Deserialize<'de>>(dir: &Path) -> azure_core::Result<Vec<T>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io_error(dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match read_json::<T>(&path) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "Unreadable checkpoint store record; ignored.");
                }
            }
        }
        Ok(out)
    }

    /// Runs `f` holding the cross-process lock of `dir` (a lock file created exclusively; a
    /// lock older than 10 s is taken to be left by a crashed process and removed).
    async fn locked<R>(
        &self,
        dir: &Path,
        f: impl FnOnce() -> azure_core::Result<R>,
    ) -> azure_core::Result<R> {
        let _local = self.local.lock().await;
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let lock = dir.join(".lock");
        let started = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&lock)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(10));
                    if stale {
                        tracing::warn!(path = %lock.display(), "Removing a stale checkpoint store lock.");
                        let _ = std::fs::remove_file(&lock);
                        continue;
                    }
                    if started.elapsed() > Duration::from_secs(30) {
                        return Err(store_error(format!(
                            "{}: lock held for 30 s",
                            lock.display()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(io_error(&lock, e)),
            }
        }
        let result = f();
        let _ = std::fs::remove_file(&lock);
        result
    }

    /// Gives up this owner's partitions (graceful shutdown): another instance may claim them
    /// at once instead of after `ownership_expiry_secs`.
    pub async fn relinquish(&self, namespace: &str, hub: &str, group: &str, owner_id: &str) {
        let dir = self.group_dir(namespace, hub, group, "ownership");
        let result = self
            .locked(&dir, || {
                for mut r in Self::read_dir_records::<OwnershipRecord>(&dir)? {
                    if r.owner_id.as_deref() == Some(owner_id) {
                        r.owner_id = None;
                        r.etag = uuid_like();
                        r.last_modified_ms = now_ms();
                        let path = dir.join(format!("{}.json", segment(&r.partition_id)));
                        write_json_atomic(&path, &r).map_err(|e| io_error(&path, e))?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "Could not release partition ownerships.");
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A fresh ETag: unique across processes (time, pid, counter).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{:x}-{:x}",
        Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` to `path` atomically and durably: temporary file, fsync, rename, fsync of
/// the directory.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn ownership_from(
    r: OwnershipRecord,
    namespace: &str,
    hub: &str,
    group: &str,
) -> azure_core::Result<Ownership> {
    Ok(Ownership {
        fully_qualified_namespace: namespace.to_string(),
        event_hub_name: hub.to_string(),
        consumer_group: group.to_string(),
        partition_id: r.partition_id,
        owner_id: r.owner_id,
        etag: Some(Etag::from(r.etag)),
        last_modified_time: Some(
            OffsetDateTime::from_unix_timestamp_nanos(r.last_modified_ms as i128 * 1_000_000)
                .map_err(|e| store_error(format!("ownership time: {e}")))?,
        ),
    })
}

#[async_trait::async_trait]
impl CheckpointStore for FileCheckpointStore {
    async fn claim_ownership(
        &self,
        ownerships: &[Ownership],
    ) -> azure_core::Result<Vec<Ownership>> {
        let mut claimed = Vec::new();
        for o in ownerships {
            let dir = self.group_dir(
                &o.fully_qualified_namespace,
                &o.event_hub_name,
                &o.consumer_group,
                "ownership",
            );
            let path = dir.join(format!("{}.json", segment(&o.partition_id)));
            let won = self
                .locked(&dir, || {
                    let current: Option<OwnershipRecord> =
                        read_json(&path).map_err(|e| io_error(&path, e))?;
                    let expected = o.etag.as_ref().map(|e| e.to_string());
                    if let Some(c) = &current {
                        if expected.as_deref() != Some(c.etag.as_str()) {
                            return Ok(None); // somebody else changed it: the claim loses
                        }
                    }
                    let record = OwnershipRecord {
                        partition_id: o.partition_id.clone(),
                        owner_id: o.owner_id.clone(),
                        etag: uuid_like(),
                        last_modified_ms: now_ms(),
                    };
                    write_json_atomic(&path, &record).map_err(|e| io_error(&path, e))?;
                    Ok(Some(record))
                })
                .await?;
            match won {
                Some(r) => claimed.push(ownership_from(
                    r,
                    &o.fully_qualified_namespace,
                    &o.event_hub_name,
                    &o.consumer_group,
                )?),
                None => tracing::debug!(partition_id = %o.partition_id, "Ownership claim lost."),
            }
        }
        Ok(claimed)
    }

    async fn list_checkpoints(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Checkpoint>> {
        let dir = self.group_dir(namespace, event_hub_name, consumer_group, "checkpoint");
        let mut out: Vec<Checkpoint> = Self::read_dir_records::<CheckpointRecord>(&dir)?
            .into_iter()
            .map(|r| Checkpoint {
                fully_qualified_namespace: namespace.to_string(),
                event_hub_name: event_hub_name.to_string(),
                consumer_group: consumer_group.to_string(),
                partition_id: r.partition_id,
                offset: r.offset,
                sequence_number: r.sequence_number,
            })
            .collect();
        out.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
        Ok(out)
    }

    async fn list_ownerships(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Ownership>> {
        let dir = self.group_dir(namespace, event_hub_name, consumer_group, "ownership");
        let mut out = Vec::new();
        for r in Self::read_dir_records::<OwnershipRecord>(&dir)? {
            out.push(ownership_from(
                r,
                namespace,
                event_hub_name,
                consumer_group,
            )?);
        }
        out.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
        Ok(out)
    }

    /// Writes the checkpoint unless the stored one is already further (a checkpoint never
    /// moves backwards, e.g. when a partition's former owner acknowledges late).
    async fn update_checkpoint(&self, checkpoint: Checkpoint) -> azure_core::Result<()> {
        let dir = self.group_dir(
            &checkpoint.fully_qualified_namespace,
            &checkpoint.event_hub_name,
            &checkpoint.consumer_group,
            "checkpoint",
        );
        let path = dir.join(format!("{}.json", segment(&checkpoint.partition_id)));
        self.locked(&dir, || {
            let current: Option<CheckpointRecord> = read_json(&path).unwrap_or(None);
            if let (Some(c), Some(new)) = (
                current.as_ref().and_then(|c| c.sequence_number),
                checkpoint.sequence_number,
            ) {
                if new <= c {
                    return Ok(());
                }
            }
            let record = CheckpointRecord {
                partition_id: checkpoint.partition_id.clone(),
                offset: checkpoint.offset.clone(),
                sequence_number: checkpoint.sequence_number,
                updated: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            };
            write_json_atomic(&path, &record).map_err(|e| io_error(&path, e))
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Per-partition progress.

/// Which of a partition's delivered events are done; the checkpoint is the last event of the
/// done prefix.
#[derive(Debug, Default)]
pub struct PartitionTracker {
    /// Delivered events not yet checkpointable: sequence number → (offset, done).
    pending: BTreeMap<i64, (Option<String>, bool)>,
}

/// A position to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Sequence number of the last done event.
    pub sequence_number: i64,
    /// Its offset.
    pub offset: Option<String>,
}

impl PartitionTracker {
    /// Records a delivered event.
    pub fn delivered(&mut self, sequence_number: i64, offset: Option<String>) {
        self.pending.insert(sequence_number, (offset, false));
    }

    /// Marks an event done; returns the new checkpoint if the done prefix grew.
    pub fn done(&mut self, sequence_number: i64) -> Option<Position> {
        if let Some(e) = self.pending.get_mut(&sequence_number) {
            e.1 = true;
        }
        let mut last = None;
        while let Some(entry) = self.pending.first_entry() {
            if !entry.get().1 {
                break;
            }
            let seq = *entry.key();
            let (offset, _) = entry.remove();
            last = Some(Position {
                sequence_number: seq,
                offset,
            });
        }
        last
    }

    /// Events delivered and not yet acknowledged (or behind one that is not).
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions.

fn timestamp_json(t: Option<SystemTime>) -> Value {
    match t {
        Some(t) => {
            Value::String(DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true))
        }
        None => Value::Null,
    }
}

fn simple_json(v: &AmqpSimpleValue) -> Value {
    use AmqpSimpleValue as S;
    match v {
        S::Null => Value::Null,
        S::Boolean(b) => Value::Bool(*b),
        S::UByte(n) => Value::from(*n),
        S::Byte(n) => Value::from(*n),
        S::UShort(n) => Value::from(*n),
        S::Short(n) => Value::from(*n),
        S::UInt(n) => Value::from(*n),
        S::Int(n) => Value::from(*n),
        S::ULong(n) => Value::from(*n),
        S::Long(n) => Value::from(*n),
        S::Float(f) => Value::from(*f as f64),
        S::Double(f) => Value::from(*f),
        S::Char(c) => Value::String(c.to_string()),
        S::TimeStamp(t) => timestamp_json(t.0),
        S::Uuid(u) => Value::String(u.to_string()),
        S::String(s) => Value::String(s.clone()),
        S::Symbol(s) => Value::String(s.0.clone()),
        S::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        other => Value::String(format!("{other:?}")),
    }
}

fn value_json(v: &AmqpValue) -> Value {
    use AmqpValue as A;
    match v {
        A::Null => Value::Null,
        A::Boolean(b) => Value::Bool(*b),
        A::UByte(n) => Value::from(*n),
        A::Byte(n) => Value::from(*n),
        A::UShort(n) => Value::from(*n),
        A::Short(n) => Value::from(*n),
        A::UInt(n) => Value::from(*n),
        A::Int(n) => Value::from(*n),
        A::ULong(n) => Value::from(*n),
        A::Long(n) => Value::from(*n),
        A::Float(f) => Value::from(*f as f64),
        A::Double(f) => Value::from(*f),
        A::Char(c) => Value::String(c.to_string()),
        A::TimeStamp(t) => timestamp_json(t.0),
        A::Uuid(u) => Value::String(u.to_string()),
        A::String(s) => Value::String(s.clone()),
        A::Symbol(s) => Value::String(s.0.clone()),
        A::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        A::List(l) => Value::Array(l.0.iter().map(value_json).collect()),
        A::Array(l) => Value::Array(l.iter().map(value_json).collect()),
        A::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m.iter() {
                let key = match value_json(k) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, value_json(v));
            }
            Value::Object(out)
        }
        other => Value::String(format!("{other:?}")),
    }
}

fn message_id_json(id: &AmqpMessageId) -> Value {
    match id {
        AmqpMessageId::String(s) => Value::String(s.clone()),
        AmqpMessageId::Uuid(u) => Value::String(u.to_string()),
        AmqpMessageId::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        AmqpMessageId::Ulong(n) => Value::from(*n),
    }
}

/// The body bytes: the data section(s), or a string/binary AMQP value.
fn body_bytes(event: &ReceivedEventData) -> Vec<u8> {
    if let Some(b) = event.event_data().body() {
        return b.to_vec();
    }
    match &event.raw_amqp_message().body {
        AmqpMessageBody::Binary(parts) => parts.concat(),
        AmqpMessageBody::Value(AmqpValue::String(s)) => s.clone().into_bytes(),
        AmqpMessageBody::Value(AmqpValue::Binary(b)) => b.clone(),
        AmqpMessageBody::Value(v) => value_json(v).to_string().into_bytes(),
        _ => Vec::new(),
    }
}

/// Application properties of an event, as JSON.
pub fn application_properties(event: &ReceivedEventData) -> Map<String, Value> {
    event
        .event_data()
        .properties()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), simple_json(v))).collect())
        .unwrap_or_default()
}

/// System properties of an event, as JSON: every message annotation, the AMQP properties and
/// the partition id.
pub fn system_properties(event: &ReceivedEventData, partition_id: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let message = event.raw_amqp_message();
    if let Some(annotations) = &message.message_annotations {
        for (k, v) in annotations.0.iter() {
            let key = match k {
                AmqpAnnotationKey::Symbol(s) => s.0.clone(),
                AmqpAnnotationKey::Ulong(n) => n.to_string(),
            };
            m.insert(key, value_json(v));
        }
    }
    if let Some(p) = &message.properties {
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                m.insert(k.to_string(), v);
            }
        };
        if let Some(id) = &p.message_id {
            put("message-id", message_id_json(id));
        }
        if let Some(id) = &p.correlation_id {
            put("correlation-id", message_id_json(id));
        }
        if let Some(u) = &p.user_id {
            put(
                "user-id",
                Value::String(String::from_utf8_lossy(u).into_owned()),
            );
        }
        if let Some(s) = &p.to {
            put("to", Value::String(s.clone()));
        }
        if let Some(s) = &p.subject {
            put("subject", Value::String(s.clone()));
        }
        if let Some(s) = &p.reply_to {
            put("reply-to", Value::String(s.clone()));
        }
        if let Some(s) = &p.content_type {
            put("content-type", Value::String(s.0.clone()));
        }
        if let Some(s) = &p.content_encoding {
            put("content-encoding", Value::String(s.0.clone()));
        }
        if let Some(t) = &p.absolute_expiry_time {
            put("absolute-expiry-time", timestamp_json(t.0));
        }
        if let Some(t) = &p.creation_time {
            put("creation-time", timestamp_json(t.0));
        }
    }
    m.insert(
        "eventhubs-partition-id".into(),
        Value::String(partition_id.to_string()),
    );
    m
}

// ---------------------------------------------------------------------------------------------
// Running.

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(fields: Value) -> EventHubsConfig {
        let mut c = json!({"checkpoint_dir": "checkpoints", "owner_id": "instance-1"});
        for (k, v) in fields.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn errors(c: &EventHubsConfig, vars: &[(&str, &str)]) -> Vec<String> {
        c.connection_with_env(env(vars)).err().unwrap_or_default()
    }

    const CS: &str =
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hub";

    #[test]
    fn a_connection_string_names_namespace_and_hub() {
        let c = config(json!({"connection_string_env": "CS"}));
        let conn = c.connection_with_env(env(&[("CS", CS)])).unwrap();
        assert_eq!(conn.namespace, "ns.servicebus.windows.net");
        assert_eq!(conn.event_hub, "hub");
        assert!(matches!(conn.auth, Auth::ConnectionString(_)));
        assert!(!format!("{conn:?}").contains("a2V5"));
        assert_eq!(
            errors(&c, &[]),
            ["source.connection_string_env: environment variable CS is not set"]
        );
        let c = config(json!({"connection_string_env": "CS", "event_hub": "other",
            "fully_qualified_namespace": "ns.servicebus.windows.net"}));
        assert_eq!(
            errors(&c, &[("CS", CS)]),
            [
                "source.fully_qualified_namespace: only used with [source.credential]; the connection string names the namespace",
                "source.event_hub: \"other\" differs from the connection string's EntityPath \"hub\"",
            ]
        );
    }

    #[test]
    fn sign_in_is_a_connection_string_or_a_credential_never_both_nor_neither() {
        let both = config(json!({"connection_string_env": "CS",
            "fully_qualified_namespace": "ns.servicebus.windows.net", "event_hub": "hub",
            "credential": {"kind": "managed_identity"}}));
        let e = errors(&both, &[("CS", CS)]);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("source.credential: give either connection_string_env"),
            "{e:?}"
        );
        let neither = config(json!({"event_hub": "hub"}));
        let e = errors(&neither, &[]);
        assert!(
            e[0].starts_with("source: no sign-in: set connection_string_env"),
            "{e:?}"
        );
        // validate() reports them with the other settings' problems.
        let mut bad = neither.clone();
        bad.prefetch = 0;
        let all = bad.validate();
        assert!(
            all.iter().any(|e| e.starts_with("source: no sign-in")),
            "{all:?}"
        );
        assert!(
            all.contains(&"source.prefetch: must be at least 1".to_string()),
            "{all:?}"
        );
    }

    #[test]
    fn a_client_secret_credential_reports_every_missing_key() {
        let c = config(json!({"credential": {"kind": "client_secret"}}));
        assert_eq!(
            errors(&c, &[]),
            [
                "source.fully_qualified_namespace: needed with [source.credential], e.g. \"<namespace>.servicebus.windows.net\"",
                "source.event_hub: needed with [source.credential]",
                "source.credential.tenant_id: needed for kind = \"client_secret\" (the directory (tenant) id)",
                "source.credential.client_id: needed for kind = \"client_secret\" (the application (client) id)",
                "source.credential.client_secret_env: needed for kind = \"client_secret\" (the name of the environment variable holding the client secret)",
            ]
        );
        let c = config(
            json!({"fully_qualified_namespace": "sb://ns.servicebus.windows.net/",
            "event_hub": "hub",
            "credential": {"kind": "client_secret", "tenant_id": "a/b", "client_id": "app",
                "client_secret_env": "SECRET", "authority_host": "login.example"}}),
        );
        assert_eq!(
            errors(&c, &[]),
            [
                "source.fully_qualified_namespace: \"sb://ns.servicebus.windows.net/\" is not a host name; write \"<namespace>.servicebus.windows.net\", without sb:// or a path",
                "source.credential.tenant_id: \"a/b\" is not a tenant id (a GUID, or a domain such as contoso.onmicrosoft.com)",
                "source.credential.authority_host: \"login.example\" is not an http(s) URL",
                "source.credential.client_secret_env: environment variable SECRET is not set",
            ]
        );
        assert_eq!(
            errors(&c, &[("SECRET", "  ")])[3],
            "source.credential.client_secret_env: environment variable SECRET is empty"
        );
    }

    #[test]
    fn a_client_secret_credential_compiles_with_the_secret_from_the_environment() {
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub",
            "credential": {"kind": "client_secret", "tenant_id": "contoso.onmicrosoft.com",
                "client_id": "app", "client_secret_env": "SECRET"}}),
        );
        let conn = c
            .connection_with_env(env(&[("SECRET", "very-secret-value")]))
            .unwrap();
        assert_eq!(conn.namespace, "ns.servicebus.windows.net");
        assert_eq!(conn.event_hub, "hub");
        match &conn.auth {
            Auth::Entra(CredentialSettings::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                client_secret,
            }) => {
                assert_eq!(authority_host, "https://login.microsoftonline.com");
                assert_eq!(tenant_id, "contoso.onmicrosoft.com");
                assert_eq!(client_id, "app");
                assert_eq!(client_secret.secret(), "very-secret-value");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{conn:?} {c:?}").contains("very-secret-value"));
    }

    #[test]
    fn a_managed_identity_credential_picks_its_endpoint_and_checks_it() {
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub", "credential": {"kind": "managed_identity"}}),
        );
        let conn = c.connection_with_env(env(&[])).unwrap();
        assert!(matches!(
            conn.auth,
            Auth::Entra(CredentialSettings::ManagedIdentity {
                client_id: None,
                endpoint: ManagedIdentityEndpoint::Imds(ref u),
            }) if u == credential::DEFAULT_IMDS_ENDPOINT
        ));
        let conn = c
            .connection_with_env(env(&[
                ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
                ("IDENTITY_HEADER", "hdr"),
            ]))
            .unwrap();
        assert!(matches!(
            conn.auth,
            Auth::Entra(CredentialSettings::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService { .. },
                ..
            })
        ));
        assert_eq!(
            errors(&c, &[("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token")]),
            ["source.credential: IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not (Azure Arc's managed identity is not supported); set source.credential.endpoint to use the instance metadata service"]
        );
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub",
            "credential": {"kind": "managed_identity", "client_id": "", "endpoint": "169.254.169.254"}}),
        );
        assert_eq!(
            errors(&c, &[]),
            [
                "source.credential.client_id: must not be empty (leave it out for the system-assigned identity)",
                "source.credential.endpoint: \"169.254.169.254\" is not an http(s) URL",
            ]
        );
    }

    #[test]
    fn unknown_credential_keys_and_kinds_are_refused() {
        let bad_key = serde_json::from_value::<EventHubsConfig>(json!({
            "checkpoint_dir": "c", "owner_id": "o",
            "credential": {"kind": "client_secret", "client_secret": "inline"}}));
        assert!(bad_key
            .unwrap_err()
            .to_string()
            .contains("unknown field `client_secret`"));
        let bad_kind = serde_json::from_value::<EventHubsConfig>(json!({
            "checkpoint_dir": "c", "owner_id": "o", "credential": {"kind": "certificate"}}));
        assert!(bad_kind
            .unwrap_err()
            .to_string()
            .contains("unknown variant `certificate`"));
    }

    #[test]
    fn the_checkpoint_is_the_end_of_the_done_prefix() {
        let mut t = PartitionTracker::default();
        for s in 10..15 {
            t.delivered(s, Some(format!("o{s}")));
        }
        assert_eq!(t.done(11), None); // 10 is not done yet
        assert_eq!(t.done(12), None);
        assert_eq!(
            t.done(10),
            Some(Position {
                sequence_number: 12,
                offset: Some("o12".into())
            })
        );
        assert_eq!(t.outstanding(), 2);
        assert_eq!(t.done(14), None);
        assert_eq!(t.done(13).map(|p| p.sequence_number), Some(14));
        assert_eq!(t.outstanding(), 0);
    }

    fn cp(seq: i64) -> Checkpoint {
        Checkpoint {
            fully_qualified_namespace: "ns.example".into(),
            event_hub_name: "hub".into(),
            consumer_group: "$Default".into(),
            partition_id: "0".into(),
            offset: Some(seq.to_string()),
            sequence_number: Some(seq),
        }
    }

    #[tokio::test]
    async fn checkpoints_persist_and_never_move_backwards() {
        let dir = std::env::temp_dir().join(format!("iomt-cp-{}", uuid_like()));
        let store = FileCheckpointStore::open(&dir).unwrap();
        store.update_checkpoint(cp(5)).await.unwrap();
        store.update_checkpoint(cp(3)).await.unwrap();
        let again = FileCheckpointStore::open(&dir).unwrap();
        let list = again
            .list_checkpoints("ns.example", "hub", "$Default")
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].sequence_number, Some(5));
        assert_eq!(list[0].offset.as_deref(), Some("5"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_ownership_claim_with_a_stale_etag_loses() {
        let dir = std::env::temp_dir().join(format!("iomt-own-{}", uuid_like()));
        let store = FileCheckpointStore::open(&dir).unwrap();
        let claim = |owner: &str, etag: Option<Etag>| Ownership {
            fully_qualified_namespace: "ns.example".into(),
            event_hub_name: "hub".into(),
            consumer_group: "$Default".into(),
            partition_id: "1".into(),
            owner_id: Some(owner.into()),
            etag,
            last_modified_time: None,
        };
        let a = store.claim_ownership(&[claim("a", None)]).await.unwrap();
        assert_eq!(a.len(), 1);
        // b read nothing (no etag) but a owns it now: b loses.
        assert!(store
            .claim_ownership(&[claim("b", None)])
            .await
            .unwrap()
            .is_empty());
        // b with a's current etag (after expiry, say) wins; a's old etag then loses.
        let b = store
            .claim_ownership(&[claim("b", a[0].etag.clone())])
            .await
            .unwrap();
        assert_eq!(b[0].owner_id.as_deref(), Some("b"));
        assert!(store
            .claim_ownership(&[claim("a", a[0].etag.clone())])
            .await
            .unwrap()
            .is_empty());
        let list = store
            .list_ownerships("ns.example", "hub", "$Default")
            .await
            .unwrap();
        assert_eq!(list[0].owner_id.as_deref(), Some("b"));
        store.relinquish("ns.example", "hub", "$Default", "b").await;
        let list = store
            .list_ownerships("ns.example", "hub", "$Default")
            .await
            .unwrap();
        assert_eq!(list[0].owner_id, None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
