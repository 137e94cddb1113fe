//! Append, sync, commit and reopen; segments roll, and go once committed.

use super::*;

#[test]
fn append_sync_reopen_replays_every_record_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 1 << 20);
    {
        let (mut spool, replayed) = open(&config);
        assert!(replayed.is_empty());
        assert!(!spool.sync().expect("syncs"), "nothing to sync yet");
        append_synced(&mut spool, 0..50, 120);
        assert!(!spool.sync().expect("syncs"), "nothing new to sync");
    }
    let (mut spool, replayed) = open(&config);
    let expected: Vec<_> = (0..50).map(|i| (i, record(i, 120))).collect();
    assert_eq!(replayed, expected);
    assert_eq!(spool.next_seq(), 50);
    assert_eq!(spool.append(&record(50, 1)).expect("appends"), 50);
}

#[test]
fn commit_then_reopen_replays_only_the_rest_and_seqs_keep_increasing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 1 << 20);
    {
        let (mut spool, _) = open(&config);
        append_synced(&mut spool, 0..20, 50);
        spool.commit(7).expect("commits");
        assert_eq!(spool.committed(), 7);
        spool.commit(3).expect("a lower watermark is a no-op");
        assert_eq!(spool.committed(), 7);
    }
    {
        let (mut spool, replayed) = open(&config);
        assert_eq!(seqs(&replayed), (7..20).collect::<Vec<_>>());
        assert_eq!(replayed[0].1, record(7, 50));
        append_synced(&mut spool, 20..21, 50);
        spool.commit(21).expect("commits everything");
        assert_eq!(spool.bytes(), 0, "a wholly committed spool holds nothing");
        assert!(segment_files(dir.path()).is_empty());
    }
    let (mut spool, replayed) = open(&config);
    assert!(replayed.is_empty());
    assert_eq!(
        spool.next_seq(),
        21,
        "the watermark carries the sequence on"
    );
    assert_eq!(spool.append(&record(21, 50)).expect("appends"), 21);
}

#[test]
fn commit_beyond_the_last_sequence_number_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut spool, _) = open(&config(dir.path(), 1 << 30, 1 << 20));
    append_synced(&mut spool, 0..3, 10);
    let err = spool.commit(4).expect_err("beyond the end");
    assert!(
        matches!(err, SpoolError::CommitBeyondEnd { upto: 4, next: 3 }),
        "{err}"
    );
    assert_eq!(spool.committed(), 0);
}

#[test]
fn segments_roll_at_segment_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(300);
    let segment_bytes = 8 + 3 * frame + frame / 2; // room for three records, not four
    let (mut spool, _) = open(&config(dir.path(), 1 << 30, segment_bytes));
    append_synced(&mut spool, 0..10, 300);
    let files = segment_files(dir.path());
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().expect("named").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [0, 3, 6, 9].map(|first: u64| format!("segment-{first:020}.log"))
    );
    for (file, records) in files.iter().zip([3, 3, 3, 1]) {
        let len = fs::metadata(file).expect("stat").len();
        assert_eq!(len, 8 + records * frame, "{}", file.display());
        assert!(len <= segment_bytes);
    }
    assert_eq!(spool.bytes(), disk_bytes(dir.path()));
}

#[test]
fn a_record_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), 1 << 30, 256);
    let (mut spool, _) = open(&config);
    spool.append(&record(0, 10)).expect("appends");
    spool.append(&record(1, 1000)).expect("appends");
    spool.append(&record(2, 10)).expect("appends");
    spool.sync().expect("syncs");
    assert_eq!(segment_files(dir.path()).len(), 3);
    drop(spool);
    let (_, replayed) = open(&config);
    assert_eq!(
        replayed,
        vec![(0, record(0, 10)), (1, record(1, 1000)), (2, record(2, 10))]
    );
}

#[test]
fn commit_deletes_whole_segments_below_the_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(300);
    let config = config(dir.path(), 1 << 30, 8 + 3 * frame);
    let (mut spool, _) = open(&config);
    append_synced(&mut spool, 0..12, 300); // segments 0-2, 3-5, 6-8, 9-11
    let full = spool.bytes();
    assert_eq!(segment_files(dir.path()).len(), 4);

    spool.commit(4).expect("commits");
    assert_eq!(
        segment_files(dir.path()).len(),
        3,
        "only 0-2 is wholly below 4"
    );
    assert_eq!(spool.bytes(), full - (8 + 3 * frame));
    assert_eq!(spool.bytes(), disk_bytes(dir.path()));

    spool.commit(5).expect("commits");
    assert_eq!(
        segment_files(dir.path()).len(),
        3,
        "3-5 still holds record 5"
    );

    spool.commit(9).expect("commits");
    assert_eq!(segment_files(dir.path()).len(), 1, "9-11 is the active one");
    assert_eq!(spool.bytes(), 8 + 3 * frame);
    drop(spool);

    let (spool, replayed) = open(&config);
    assert_eq!(seqs(&replayed), [9, 10, 11]);
    assert_eq!(spool.bytes(), disk_bytes(dir.path()));
}

#[test]
fn a_crash_between_watermark_and_deletion_is_finished_by_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = frame_len(40);
    let config = config(dir.path(), 1 << 30, 8 + 2 * frame);
    let (mut spool, _) = open(&config);
    append_synced(&mut spool, 0..6, 40); // 0-1, 2-3, 4-5
    let first = segment_files(dir.path())[0].clone();
    let kept = fs::read(&first).expect("reads");
    spool.commit(3).expect("commits");
    drop(spool);
    fs::write(&first, kept).expect("a segment the crash did not get to delete");

    let (spool, replayed) = open(&config);
    assert_eq!(seqs(&replayed), [3, 4, 5]);
    assert!(!first.exists(), "open deleted the committed segment");
    assert_eq!(spool.bytes(), disk_bytes(dir.path()));
}
