//! Crash recovery (every torn or damaged byte of the last record), damage in older segments,
//! a damaged watermark, a second open of one directory.

use super::*;

/// The bytes of the only segment with `n` records of `body_len`, and where the last starts.
fn one_segment(dir: &Path, n: u64, body_len: usize) -> (PathBuf, Vec<u8>, usize) {
    let (mut spool, _) = open(&config(dir, 1 << 30, 1 << 20));
    append_synced(&mut spool, 0..n - 1, body_len);
    let last_start = spool.bytes() as usize;
    append_synced(&mut spool, n - 1..n, body_len);
    drop(spool);
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    let bytes = fs::read(&files[0]).expect("reads");
    (files[0].clone(), bytes, last_start)
}

/// After the last record was damaged: open replays the others, warns, and appends go on.
fn assert_recovers(dir: &Path, n: u64, body_len: usize, what: &str) {
    let config = config(dir, 1 << 30, 1 << 20);
    let ((mut spool, replayed), warnings) = capture_warnings(|| open(&config));
    assert_eq!(
        seqs(&replayed),
        (0..n - 1).collect::<Vec<_>>(),
        "{what}: replayed"
    );
    assert!(
        warnings.iter().any(|w| w.contains("torn record")),
        "{what}: warned: {warnings:?}"
    );
    assert_eq!(spool.next_seq(), n - 1, "{what}");
    assert_eq!(spool.bytes(), disk_bytes(dir), "{what}: cut off on disk");
    append_synced(&mut spool, n - 1..n + 1, body_len);
    drop(spool);
    let (_, replayed) = open(&config);
    let expected: Vec<_> = (0..n + 1).map(|i| (i, record(i, body_len))).collect();
    assert_eq!(replayed, expected, "{what}: after appending again");
}

#[test]
fn a_torn_last_record_is_cut_off_at_every_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bytes, last_start) = one_segment(dir.path(), 5, 60);
    for cut in last_start + 1..bytes.len() {
        fs::write(&path, &bytes[..cut]).expect("writes");
        assert_recovers(dir.path(), 5, 60, &format!("cut at {cut}"));
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, bytes, last_start) = one_segment(dir.path(), 5, 60);
    for at in last_start..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        fs::write(&path, &damaged).expect("writes");
        assert_recovers(dir.path(), 5, 60, &format!("byte {at} flipped"));
    }
}

#[test]
fn a_torn_segment_creation_is_started_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 1 << 20);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..3, 10);
    }
    let torn = dir.path().join(format!("segment-{:020}.log", 3));
    fs::write(&torn, b"IOM").expect("a header cut short");
    let ((mut spool, replayed), warnings) = capture_warnings(|| open(&config));
    assert_eq!(seqs(&replayed), [0, 1, 2]);
    assert!(
        warnings.iter().any(|w| w.contains("cut short")),
        "{warnings:?}"
    );
    append_synced(&mut spool, 3..4, 10);
    drop(spool);
    assert_eq!(seqs(&open(&config).1), [0, 1, 2, 3]);
}

#[test]
fn a_foreign_last_segment_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("segment-{:020}.log", 0));
    fs::write(&path, b"not a spool segment at all").expect("writes");
    let err = Spool::open(&config(dir.path(), 1 << 30, 1 << 20)).expect_err("refused");
    assert!(
        matches!(&err, SpoolError::BadHeader { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

/// Three equal records per segment: the file and offset of record `seq`.
fn locate(dir: &Path, seq: u64, frame: u64) -> (PathBuf, usize) {
    let file = segment_files(dir)[(seq / 3) as usize].clone();
    (file, (8 + (seq % 3) * frame) as usize)
}

#[test]
fn damage_in_an_older_segment_is_reported_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(80);
    let config = config(dir.path(), 1 << 30, 8 + 3 * frame);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..12, 80);
    }
    // Record 4: a payload byte. Record 6: its length field.
    let (file4, at4) = locate(dir.path(), 4, frame);
    let (file6, at6) = locate(dir.path(), 6, frame);
    for (file, at) in [(&file4, at4 + 30), (&file6, at6 + 1)] {
        let mut bytes = fs::read(file).expect("reads");
        bytes[at] ^= 0x01;
        fs::write(file, bytes).expect("writes");
    }

    let (mut spool, replay) =
        Spool::open(&config).expect("damage in the middle does not stop open");
    let items: Vec<_> = replay.collect();
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for item in items {
        match item {
            Ok((seq, record)) => ok.push((seq, record)),
            Err(SpoolError::Corrupt {
                path, offset, lost, ..
            }) => errors.push((path, offset, lost)),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(seqs(&ok), [0, 1, 2, 3, 5, 7, 8, 9, 10, 11]);
    assert_eq!(ok[4], (5, record(5, 80)));
    assert_eq!(
        errors,
        [
            (file4.clone(), at4 as u64, 4..5),
            (file6.clone(), at6 as u64, 6..7)
        ]
    );
    // The error names the file and the offset.
    let message = SpoolError::Corrupt {
        path: file4.clone(),
        offset: at4 as u64,
        reason: "checksum mismatch",
        lost: 4..5,
    }
    .to_string();
    assert!(message.contains(&file4.display().to_string()) && message.contains(&at4.to_string()));

    // Appending goes on, and committing past the damage drops it with its segments.
    append_synced(&mut spool, 12..13, 80);
    spool.commit(9).expect("commits");
    drop(spool);
    assert_eq!(seqs(&open(&config).1), [9, 10, 11, 12]);
}

#[test]
fn damage_in_the_middle_of_the_last_segment_is_kept_not_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(80);
    let config = config(dir.path(), 1 << 30, 1 << 20);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..5, 80);
    }
    let file = segment_files(dir.path())[0].clone();
    let mut bytes = fs::read(&file).expect("reads");
    let at = (8 + 2 * frame + 40) as usize; // inside record 2
    bytes[at] ^= 0xff;
    fs::write(&file, &bytes).expect("writes");

    let ((mut spool, replay), warnings) = capture_warnings(|| Spool::open(&config).expect("opens"));
    assert!(
        warnings.iter().any(|w| w.contains("damaged in the middle")),
        "{warnings:?}"
    );
    assert_eq!(spool.next_seq(), 5, "records 3 and 4 are kept");
    let items: Vec<_> = replay.collect();
    assert_eq!(items.len(), 5);
    assert!(matches!(
        &items[2],
        Err(SpoolError::Corrupt { lost, offset, .. }) if *lost == (2..3) && *offset == 8 + 2 * frame
    ));
    append_synced(&mut spool, 5..6, 80);
    drop(spool);
    let (_, replay) = Spool::open(&config).expect("opens");
    let ok: Vec<u64> = replay.filter_map(Result::ok).map(|(seq, _)| seq).collect();
    assert_eq!(ok, [0, 1, 3, 4, 5]);
}

#[test]
fn a_damaged_watermark_replays_everything_still_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(20);
    let config = config(dir.path(), 1 << 30, 8 + 3 * frame);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..6, 20);
        spool.commit(4).expect("commits");
    }
    fs::write(dir.path().join("committed"), b"garbage").expect("writes");
    let ((spool, replay), warnings) = capture_warnings(|| Spool::open(&config).expect("opens"));
    assert!(
        warnings.iter().any(|w| w.contains("watermark is damaged")),
        "{warnings:?}"
    );
    assert_eq!(seqs(&collect(replay)), [3, 4, 5]);
    assert_eq!(spool.next_seq(), 6);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 1 << 20);
    let (spool, _) = open(&config);
    let err = Spool::open(&config).expect_err("locked");
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    drop(spool);
    open(&config);
}
