//! The dead-letter store: every event that could not be processed (malformed, no required
//! value, FHIR 4xx, identity errors, too large) is kept durably with its raw bytes, envelope,
//! stage, error type and message — one JSON file per event, written to a temporary name,
//! synced and renamed, so a crash never leaves half a record. `iomt dead-letters list|show|replay`
//! reads it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// File-name id.
    pub id: String,
    /// When it was stored.
    pub time: DateTime<Utc>,
    /// `source`, `normalize` or `fhir`.
    pub stage: String,
    /// The reference-style error type.
    pub error_type: String,
    /// What went wrong.
    pub message: String,
    /// Topic or partition.
    pub origin: String,
    /// When the event arrived.
    pub ingestion_time: DateTime<Utc>,
    /// The body, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Application properties.
    pub properties: Map<String, Value>,
    /// System properties.
    pub system_properties: Map<String, Value>,
}

impl DeadLetter {
    /// The raw body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

/// A directory of dead letters.
#[derive(Debug)]
pub struct DeadLetterStore {
    dir: PathBuf,
    seq: AtomicU64,
}

/// What to record about a failed event.
pub struct Failure<'a> {
    /// Stage.
    pub stage: &'static str,
    /// Error type.
    pub error_type: &'a str,
    /// Message.
    pub message: &'a str,
}

impl DeadLetterStore {
    /// Opens (creating) the store.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(DeadLetterStore {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    /// Stores a failed event durably; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &self,
        failure: Failure<'_>,
        origin: &str,
        ingestion_time: DateTime<Utc>,
        body: &[u8],
        properties: &Map<String, Value>,
        system_properties: &Map<String, Value>,
    ) -> std::io::Result<String> {
        let now = Utc::now();
        let id = format!(
            "{}-{:06}-{}",
            now.format("%Y%m%dT%H%M%S%.6fZ"),
            self.seq.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        let (body, body_base64) = match std::str::from_utf8(body) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(body)),
            ),
        };
        let dl = DeadLetter {
            id: id.clone(),
            time: now,
            stage: failure.stage.to_string(),
            error_type: failure.error_type.to_string(),
            message: failure.message.to_string(),
            origin: origin.to_string(),
            ingestion_time,
            body,
            body_base64,
            properties: properties.clone(),
            system_properties: system_properties.clone(),
        };
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let path = self.dir.join(format!("{id}.json"));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&dl)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(id)
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> std::io::Result<Vec<DeadLetter>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for p in names {
            let text = std::fs::read(&p)?;
            match serde_json::from_slice::<DeadLetter>(&text) {
                Ok(dl) => out.push(dl),
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "Unreadable dead letter.")
                }
            }
        }
        Ok(out)
    }

    /// One dead letter.
    pub fn get(&self, id: &str) -> std::io::Result<DeadLetter> {
        if id.contains('/') || id.contains("..") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "bad dead-letter id",
            ));
        }
        let text = std::fs::read(self.dir.join(format!("{id}.json")))?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Deletes one (after a successful replay).
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.dir.join(format!("{id}.json")))
    }
}
