//! Commands read while their app was at its in-flight bound. The poll thread never waits for a
//! permit: it parks the command here and pauses the command's partition (the consumer keeps
//! polling, so the group never evicts the instance), then dispatches the backlog in order as
//! permits return and resumes the partition once its backlog is empty.

use std::collections::{BTreeMap, VecDeque};

use crate::model::SendCommand;

/// A consumed command not dispatched yet.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The command.
    pub command: SendCommand,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// Waiting commands per paused partition, in offset order.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    partitions: BTreeMap<i32, VecDeque<Waiting>>,
}

impl Backlog {
    /// Whether `partition` has waiting commands (it is paused; later ones queue behind).
    pub fn holds(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Queues `waiting` behind its partition's others.
    pub fn push(&mut self, waiting: Waiting) {
        self.partitions.entry(waiting.partition).or_default().push_back(waiting);
    }

    /// Partitions with waiting commands.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Takes the first waiting command of `partition`.
    pub fn pop(&mut self, partition: i32) -> Option<Waiting> {
        self.partitions.get_mut(&partition)?.pop_front()
    }

    /// Puts back a command taken by [`Backlog::pop`] that still cannot be dispatched.
    pub fn unpop(&mut self, waiting: Waiting) {
        self.partitions.entry(waiting.partition).or_default().push_front(waiting);
    }

    /// Forgets `partition` when it has nothing waiting; true if it was forgotten (resume it).
    pub fn release_if_empty(&mut self, partition: i32) -> bool {
        if self.partitions.get(&partition).is_some_and(VecDeque::is_empty) {
            self.partitions.remove(&partition);
            return true;
        }
        false
    }

    /// Drops the waiting commands of `partitions` (revoked: their next owner reads them again)
    /// and returns how many were dropped.
    pub fn drop_partitions(&mut self, partitions: &[i32]) -> usize {
        partitions.iter().filter_map(|p| self.partitions.remove(p)).map(|q| q.len()).sum()
    }

    /// Commands waiting in all partitions.
    pub fn len(&self) -> usize {
        self.partitions.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Platform;

    fn waiting(partition: i32, offset: i64) -> Waiting {
        let command = SendCommand {
            message_id: format!("m{partition}-{offset}"),
            campaign_id: "c".into(),
            variant_id: "A".into(),
            run_id: "r".into(),
            app_id: "shop".into(),
            user_id: "u".into(),
            device_id: "d".into(),
            platform: Platform::Ios,
            token: "t".into(),
            payload: "{}".into(),
            headers: Default::default(),
            created_at_ms: 0,
            expires_at_ms: None,
            confirm: false,
            place_key: None,
        };
        Waiting { command, partition, offset }
    }

    #[test]
    fn a_backlog_keeps_offset_order_and_forgets_revoked_partitions() {
        let mut backlog = Backlog::default();
        assert!(!backlog.holds(0));
        for offset in 5..8 {
            backlog.push(waiting(0, offset));
        }
        backlog.push(waiting(1, 2));
        assert!(backlog.holds(0) && backlog.holds(1));
        let first = backlog.pop(0).unwrap();
        assert_eq!(first.offset, 5);
        backlog.unpop(first);
        assert_eq!(backlog.pop(0).unwrap().offset, 5, "a command given back stays first");
        assert_eq!(backlog.pop(0).unwrap().offset, 6);
        assert!(!backlog.release_if_empty(0), "7 still waits");
        assert_eq!(backlog.pop(0).unwrap().offset, 7);
        assert!(backlog.release_if_empty(0), "empty: resume the partition");
        assert!(!backlog.holds(0));
        assert_eq!(backlog.drop_partitions(&[0, 1]), 1);
        assert_eq!(backlog.len(), 0);
    }
}
