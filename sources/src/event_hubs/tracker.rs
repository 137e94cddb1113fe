//! Per-partition progress: which delivered events are done, and so where the checkpoint is.

use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
