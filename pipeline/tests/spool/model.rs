//! The model-based property test: a following reader reads every record once across rolls,
//! commits and restarts.

use super::*;

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Sync,
    /// Commit this fraction (per mille) of the records not yet committed.
    Commit(u64),
    /// Drop the spool without syncing (a crash of the process) and open it again.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..200).prop_map(Op::Append),
        2 => Just(Op::Sync),
        2 => (0u64..=1000).prop_map(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the sequence of appends, syncs, commits and crashes, a reopen replays
    /// exactly the records not committed: all the synced ones, then possibly some of the
    /// unsynced ones (those the OS had written before the crash), in order.
    #[test]
    fn replay_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), 1 << 30, 700);
        let (mut spool, _) = open(&config);
        // Records not committed, in order; the first `synced` of them are durable.
        let mut live: Vec<(u64, SpoolRecord)> = Vec::new();
        let mut synced = 0;
        let mut committed = 0;
        for op in ops.iter().chain([Op::Reopen].iter()) {
            match *op {
                Op::Append(len) => {
                    let seq = spool.next_seq();
                    let record = record(seq, len);
                    prop_assert_eq!(spool.append(&record).expect("appends"), seq);
                    live.push((seq, record));
                }
                Op::Sync => {
                    spool.sync().expect("syncs");
                    synced = live.len();
                    prop_assert_eq!(spool.bytes(), disk_bytes(dir.path()));
                }
                Op::Commit(per_mille) => {
                    let next = spool.next_seq();
                    let upto = committed + (next - committed) * per_mille / 1000;
                    spool.commit(upto).expect("commits");
                    committed = upto;
                    let dropped = live.iter().take_while(|(seq, _)| *seq < upto).count();
                    live.drain(..dropped);
                    synced = synced.saturating_sub(dropped);
                    prop_assert_eq!(spool.committed(), committed);
                }
                Op::Reopen => {
                    let before = spool.next_seq();
                    drop(spool);
                    let (reopened, replayed) = open(&config);
                    spool = reopened;
                    prop_assert!(replayed.len() >= synced, "a synced record was lost");
                    prop_assert!(replayed.len() <= live.len());
                    prop_assert_eq!(&replayed[..], &live[..replayed.len()]);
                    live.truncate(replayed.len());
                    synced = live.len();
                    let next = spool.next_seq();
                    prop_assert!(next <= before && next >= committed);
                    prop_assert!(live.last().is_none_or(|(seq, _)| next == seq + 1));
                    prop_assert_eq!(spool.committed(), committed);
                    prop_assert_eq!(spool.bytes(), disk_bytes(dir.path()));
                }
            }
        }
    }
}

/// Reads what a following reader has now, until it pauses.
fn read_now(reader: &mut Replay) -> Vec<u64> {
    reader
        .by_ref()
        .map(|item| item.unwrap_or_else(|e| panic!("reader error: {e}")).0)
        .collect()
}

#[test]
fn a_following_reader_reads_every_record_once_across_rolls_commits_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let frame = frame_len(100);
    // Three records per segment.
    let config = config(dir.path(), 1 << 30, 8 + 3 * frame);
    let (mut spool, _) = open(&config);
    let mut reader = spool.reader(0);
    assert_eq!(read_now(&mut reader), Vec::<u64>::new(), "nothing yet");
    let mut seen = Vec::new();
    // Bursts of different sizes: inside a segment, across one roll, across several.
    for (burst, n) in [(0u64, 1u64), (1, 1), (2, 4), (3, 7), (4, 2)] {
        let start = spool.next_seq();
        append_synced(&mut spool, start..start + n, 100);
        spool.refresh(&mut reader);
        let got = read_now(&mut reader);
        assert_eq!(got, (start..start + n).collect::<Vec<_>>(), "burst {burst}");
        seen.extend(got);
        // Commits of what was read delete segments under the reader; it goes on.
        spool.commit(start + n / 2).unwrap();
        assert_eq!(read_now(&mut reader), Vec::<u64>::new(), "paused");
    }
    // Everything committed: the active segment is deleted, and the next append starts a new one.
    spool.commit(spool.next_seq()).unwrap();
    let start = spool.next_seq();
    append_synced(&mut spool, start..start + 5, 100);
    spool.refresh(&mut reader);
    assert_eq!(
        read_now(&mut reader),
        (start..start + 5).collect::<Vec<_>>()
    );
    // Buffered records (appended, not synced) are not read until they are written.
    let seq = spool.append(&record(99, 100)).unwrap();
    spool.refresh(&mut reader);
    assert_eq!(read_now(&mut reader), Vec::<u64>::new(), "not yet written");
    spool.sync().unwrap();
    spool.refresh(&mut reader);
    assert_eq!(read_now(&mut reader), vec![seq]);
    assert_eq!(seen.len(), 15);

    // A reader from the watermark after a restart reads the un-committed tail, then follows.
    spool.commit(seq - 2).unwrap();
    drop(spool);
    let (mut spool, _) = open(&config);
    let mut reader = spool.reader(spool.committed());
    assert_eq!(read_now(&mut reader), vec![seq - 2, seq - 1, seq]);
    append_synced(&mut spool, seq + 1..seq + 3, 100);
    spool.refresh(&mut reader);
    assert_eq!(read_now(&mut reader), vec![seq + 1, seq + 2]);
}
