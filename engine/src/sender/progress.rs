//! Which offsets of each partition have their receipt: commands finish out of order, and a
//! partition may only be committed up to its first unfinished command.

use std::collections::{BTreeMap, BTreeSet};

/// Consumed and unfinished offsets per partition.
#[derive(Debug, Default)]
pub(super) struct Progress {
    partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// Consumed offsets whose receipt is not produced yet.
    pending: BTreeSet<i64>,
    /// One past the highest consumed offset.
    next: i64,
    /// The last position committed.
    committed: i64,
}

impl Progress {
    /// `offset` of `partition` was consumed.
    pub(super) fn started(&mut self, partition: i32, offset: i64) {
        let entry = self.partitions.entry(partition).or_default();
        entry.pending.insert(offset);
        entry.next = entry.next.max(offset + 1);
    }

    /// The command at `offset` has its receipt.
    pub(super) fn finished(&mut self, partition: i32, offset: i64) {
        if let Some(entry) = self.partitions.get_mut(&partition) {
            entry.pending.remove(&offset);
        }
    }

    /// Commands of `partitions` still without a receipt.
    pub(super) fn unfinished(&self, partitions: &[i32]) -> usize {
        partitions.iter().filter_map(|p| self.partitions.get(p)).map(|e| e.pending.len()).sum()
    }

    /// Partitions with consumed commands.
    pub(super) fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Forgets `partitions` (revoked) and returns their final positions to commit.
    pub(super) fn release(&mut self, partitions: &[i32]) -> Vec<(i32, i64)> {
        partitions
            .iter()
            .filter_map(|p| {
                let entry = self.partitions.remove(p)?;
                Some((*p, entry.pending.first().copied().unwrap_or(entry.next)))
            })
            .collect()
    }

    /// Positions that moved since the last call: per partition, the first unfinished offset,
    /// or one past the highest consumed.
    pub(super) fn committable(&mut self) -> Vec<(i32, i64)> {
        let mut moved = Vec::new();
        for (partition, entry) in &mut self.partitions {
            let position = entry.pending.first().copied().unwrap_or(entry.next);
            if position > entry.committed {
                entry.committed = position;
                moved.push((*partition, position));
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_unfinished_command() {
        let mut progress = Progress::default();
        for offset in 10..15 {
            progress.started(0, offset);
        }
        progress.finished(0, 10);
        progress.finished(0, 12);
        assert_eq!(progress.committable(), vec![(0, 11)], "11 is still in flight");
        progress.finished(0, 11);
        assert_eq!(progress.committable(), vec![(0, 13)]);
        assert_eq!(progress.committable(), vec![], "nothing moved");
        progress.finished(0, 13);
        progress.finished(0, 14);
        assert_eq!(progress.committable(), vec![(0, 15)]);
    }

    #[test]
    fn a_revoked_partition_is_released_at_its_first_unfinished_command() {
        let mut progress = Progress::default();
        for offset in 0..3 {
            progress.started(1, offset);
            progress.started(2, offset);
        }
        progress.finished(1, 0);
        assert_eq!(progress.unfinished(&[1]), 2);
        assert_eq!(progress.release(&[1]), vec![(1, 1)]);
        assert_eq!(progress.unfinished(&[1, 2]), 3, "partition 2 is still ours");
    }
}
