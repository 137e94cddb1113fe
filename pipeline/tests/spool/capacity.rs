//! Back-pressure, the replay alongside appends and commits, a reader of deleted segments,
//! a full disk (a real tmpfs, when this process may mount one).

use super::*;

#[test]
fn is_full_applies_back_pressure_until_commit_frees_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(300);
    let segment_bytes = 8 + 3 * frame;
    let max_bytes = 3 * segment_bytes;
    let (mut spool, _) = open(&config(dir.path(), max_bytes, segment_bytes));
    let mut n = 0;
    while !spool.is_full() {
        assert!(spool.bytes() < max_bytes);
        spool.append(&record(n, 300)).expect("appends");
        n += 1;
    }
    assert_eq!(n, 9, "three segments of three records");
    assert_eq!(spool.bytes(), max_bytes);
    spool
        .append(&record(n, 300))
        .expect("full is a signal, not a refusal");
    spool.sync().expect("syncs");
    assert!(spool.is_full());
    spool.commit(2).expect("commits");
    assert!(spool.is_full(), "no whole segment is committed yet");
    spool.commit(3).expect("commits");
    assert!(!spool.is_full());
    assert_eq!(spool.bytes(), disk_bytes(dir.path()));
}

#[test]
fn the_replay_runs_alongside_appends_and_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(50);
    let config = config(dir.path(), 1 << 30, 8 + 4 * frame);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..10, 50);
    }
    let (mut spool, replay) = Spool::open(&config).expect("opens");
    let mut replayed = Vec::new();
    for item in replay {
        let (seq, record) = item.expect("intact");
        assert_eq!(record, self::record(seq, 50));
        replayed.push(seq);
        // A new event arrives, and the replayed one is done.
        spool.append(&self::record(100 + seq, 50)).expect("appends");
        spool.sync().expect("syncs");
        spool.commit(seq + 1).expect("commits");
    }
    assert_eq!(replayed, (0..10).collect::<Vec<_>>());
    drop(spool);
    let (_, replayed) = open(&config);
    assert_eq!(seqs(&replayed), (10..20).collect::<Vec<_>>());
    assert_eq!(replayed[0].1, record(100, 50));
}

/// Files this process holds open that have been deleted (`/proc/self/fd`, Linux).
fn open_deleted_files_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&dir.display().to_string()) && p.ends_with("(deleted)"))
        .collect()
}

/// A following reader caught up on the active segment lets go of it once a commit deletes it:
/// an open file keeps its disk space, and on a full disk (nothing new appended to move the
/// reader on) that space was never freed (`service::a_full_spool_disk_…` stalled so).
#[test]
fn a_reader_closes_a_segment_that_a_commit_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 1 << 20);
    let (mut spool, _) = open(&config);
    append_synced(&mut spool, 0..5, 50);
    let mut reader = spool.reader(0);
    let read: Vec<u64> = reader.by_ref().map(|r| r.expect("intact").0).collect();
    assert_eq!(read, (0..5).collect::<Vec<_>>());
    // Everything committed: the active segment is deleted.
    spool.commit(5).expect("commits");
    assert!(segment_files(dir.path()).is_empty());
    assert!(
        !open_deleted_files_under(dir.path()).is_empty(),
        "the reader holds it still"
    );
    spool.refresh(&mut reader);
    assert_eq!(open_deleted_files_under(dir.path()), Vec::<String>::new());
    // And reads on from the next segment.
    append_synced(&mut spool, 5..7, 50);
    spool.refresh(&mut reader);
    let read: Vec<u64> = reader.by_ref().map(|r| r.expect("intact").0).collect();
    assert_eq!(read, vec![5, 6]);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or `None` where this process
    /// may not mount (not root, or in a container without the capability).
    fn mount(size: &str) -> Option<Tmpfs> {
        let mount_point = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .output()
            .ok()?;
        status.status.success().then_some(Tmpfs { mount_point })
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

/// A real full file system: a 2 MiB tmpfs. Records of 300 KiB are larger than the write
/// buffer, so each `append` writes, and the one that does not fit fails there. Skipped (with
/// a note) where this process may not mount a tmpfs.
#[test]
fn a_full_disk_fails_the_append_loses_nothing_and_recovers_after_commit() {
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full test did not run"
        );
        return;
    };
    let dir = tmpfs.path().join("spool");
    let body = 300 * 1024;
    let frame = frame_len(body);
    let config = config(&dir, 1 << 30, 8 + 3 * frame);
    let (mut spool, _) = open(&config);
    let mut n = 0;
    let err = loop {
        let before = spool.bytes();
        match spool.append(&record(n, body)) {
            Ok(seq) => {
                assert_eq!(seq, n);
                spool
                    .sync()
                    .expect("syncs: tmpfs has no delayed allocation");
                n += 1;
            }
            Err(e) => {
                // At most the header of a segment the failed append started remains.
                assert!(
                    spool.bytes() <= before + 8,
                    "the failed record takes no space"
                );
                break e;
            }
        }
        assert!(
            n < 20,
            "a 2 MiB file system cannot take 20 records of 300 KiB"
        );
    };
    eprintln!("disk full after {n} records: {err}");
    assert!(err.is_disk_full(), "{err}");
    assert!(
        matches!(&err, SpoolError::Io { path, .. } if path.starts_with(&dir)),
        "names the file: {err}"
    );
    assert!(n >= 3, "at least one segment fitted before the disk filled");
    assert_eq!(
        spool.bytes(),
        disk_bytes(&dir),
        "the partial frame was cut off"
    );
    let again = spool.append(&record(n, body)).expect_err("still full");
    assert!(again.is_disk_full(), "{again}");
    assert_eq!(
        spool.next_seq(),
        n,
        "failed appends hand out no sequence number"
    );

    // The pipeline catches up: the first segment is done and goes.
    spool.commit(3).expect("commit frees space on a full disk");
    assert_eq!(spool.append(&record(n, body)).expect("fits now"), n);
    spool.sync().expect("syncs");
    drop(spool);
    let (_, replayed) = open(&config);
    let expected: Vec<_> = (3..=n).map(|i| (i, record(i, body))).collect();
    assert_eq!(replayed, expected, "nothing before the failure was lost");
}
