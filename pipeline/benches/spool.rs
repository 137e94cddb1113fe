//! Spool append + sync throughput: 300-byte records (the body; a frame is 387 bytes with its
//! topic and the other fields), with a group commit (one `sync`, so one fsync) every 1, 100 and
//! 1000 records.
//!
//! Each iteration opens a fresh spool in a directory under the target directory (a real
//! disk, not a tmpfs: fsync cost is the point), outside the timed part (`iter_batched`),
//! then appends and syncs `RECORDS` records. Throughput is reported per record; MB/s is that
//! times the frame size printed at start.
//!
//! Run: `cargo bench -p pipeline --bench spool`. On the 2-core development VM (ext4 on a
//! virtual disk, shared with other builds): a sync every record ~340 records/s (one fsync is
//! ~3 ms); every 100 ~32 K records/s (~12 MB/s of frames); every 1000 ~180 K records/s
//! (~70 MB/s).

use std::hint::black_box;
use std::num::NonZeroU64;
use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pipeline::spool::{Spool, SpoolConfig, SpoolRecord};
use serde_json::{json, Value};

/// Records per iteration.
const RECORDS: u64 = 2_000;

/// Body bytes per record.
const BODY: usize = 300;

fn record(i: u64) -> SpoolRecord {
    let Value::Object(system_properties) = json!({"topic": "devices/device-0042/telemetry"}) else {
        unreachable!("an object literal")
    };
    let body = format!(
        r#"{{"deviceId":"device-0042","heartRate":{},"ts":"{i}"}}"#,
        i % 200
    );
    let mut body = body.into_bytes();
    body.resize(BODY, b' ');
    SpoolRecord {
        body,
        properties: Default::default(),
        system_properties,
        ingestion_time: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        origin: "mqtt".into(),
    }
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: NonZeroU64::new(1 << 30).unwrap_or(NonZeroU64::MIN),
        segment_bytes: NonZeroU64::new(64 << 20).unwrap_or(NonZeroU64::MIN),
    }
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spool-bench");
    std::fs::create_dir_all(&root).expect("bench directory");
    let records: Vec<SpoolRecord> = (0..RECORDS).map(record).collect();
    {
        let dir = tempfile::tempdir_in(&root).expect("tempdir");
        let (mut spool, _) = Spool::open(&config(dir.path())).expect("opens");
        spool.append(&records[0]).expect("appends");
        eprintln!("spool bench: one frame is {} bytes", spool.bytes() - 8);
    }

    let mut group = c.benchmark_group("spool_append_sync");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for sync_every in [1u64, 100, 1000] {
        group.bench_function(format!("sync_every_{sync_every}"), |b| {
            b.iter_batched(
                || {
                    let dir = tempfile::tempdir_in(&root).expect("tempdir");
                    let (spool, _) = Spool::open(&config(dir.path())).expect("opens");
                    (dir, spool)
                },
                |(dir, mut spool)| {
                    for (i, record) in records.iter().enumerate() {
                        black_box(spool.append(record).expect("appends"));
                        if (i as u64 + 1) % sync_every == 0 {
                            spool.sync().expect("syncs");
                        }
                    }
                    spool.sync().expect("syncs");
                    (dir, spool)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
