//! The durable local checkpoint store: partition checkpoints and ownerships as JSON files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use azure_messaging_eventhubs::CheckpointStore;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
