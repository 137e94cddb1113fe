//! The durable spool against real files in a temporary directory: replay, commit, segment
//! rolling, crash recovery (every torn or damaged byte of the last record), damage in older
//! segments, back-pressure, a full disk (a real tmpfs, when this process may mount one) and a
//! model-based property test.

mod capacity;
mod model;
mod recovery;
mod segments;

use std::fmt::Write as _;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use chrono::DateTime;
use pipeline::spool::{Replay, Spool, SpoolConfig, SpoolError, SpoolRecord};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: NonZeroU64::new(max_bytes).expect("non-zero"),
        segment_bytes: NonZeroU64::new(segment_bytes).expect("non-zero"),
    }
}

/// A record whose every field depends on `i`; bodies of one length encode to frames of one
/// length (for `i` below 1000), which lets tests compute offsets.
fn record(i: u64, body_len: usize) -> SpoolRecord {
    let Value::Object(properties) = json!({"i": format!("{i:03}"), "unit": "bpm"}) else {
        unreachable!("an object literal")
    };
    let Value::Object(system_properties) = json!({"topic": format!("devices/d{i:03}")}) else {
        unreachable!("an object literal")
    };
    SpoolRecord {
        body: (0..body_len).map(|b| (b as u64 ^ i) as u8).collect(),
        properties,
        system_properties,
        ingestion_time: DateTime::from_timestamp(1_700_000_000 + i as i64, 987_654_321)
            .expect("in range"),
        origin: "mqtt".into(),
    }
}

/// Every replayed item, failing the test on an error item.
fn collect(replay: Replay) -> Vec<(u64, SpoolRecord)> {
    replay
        .map(|item| item.unwrap_or_else(|e| panic!("replay error: {e}")))
        .collect()
}

fn open(config: &SpoolConfig) -> (Spool, Vec<(u64, SpoolRecord)>) {
    let (spool, replay) = Spool::open(config).expect("opens");
    (spool, collect(replay))
}

fn seqs(records: &[(u64, SpoolRecord)]) -> Vec<u64> {
    records.iter().map(|(seq, _)| *seq).collect()
}

/// The segment files, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("lists")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("segment-"))
        })
        .collect();
    files.sort();
    files
}

fn disk_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

/// Appends records `range` (bodies of `body_len`) and syncs.
fn append_synced(spool: &mut Spool, range: std::ops::Range<u64>, body_len: usize) {
    for i in range {
        assert_eq!(spool.append(&record(i, body_len)).expect("appends"), i);
    }
    assert!(spool.sync().expect("syncs"));
}

/// The size of one frame of a record with a body of `body_len`.
fn frame_len(body_len: usize) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(&config(dir.path(), 1 << 30, 1 << 30));
    let empty = spool.bytes();
    spool.append(&record(0, body_len)).expect("appends");
    spool.bytes() - empty - 8
}

/// Collects the WARN and ERROR events emitted while `f` runs on this thread.
fn capture_warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Capture(lines.clone()), f);
    let lines = lines.lock().expect("not poisoned").clone();
    (out, lines)
}

/// A minimal subscriber: records warnings and errors as `field=value` lines.
struct Capture(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        matches!(
            *metadata.level(),
            tracing::Level::WARN | tracing::Level::ERROR
        )
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("{} ", event.metadata().level()));
        event.record(&mut fields);
        self.0.lock().expect("not poisoned").push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
