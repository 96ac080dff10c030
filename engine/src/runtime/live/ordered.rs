//! Records of a task's time-ordered sources, held between polls so that they reach the
//! processor in record-timestamp order across those sources. A task waits for an ordered
//! source that is behind (nothing held from it and not read to its end) rather than overtake
//! its unread records, e.g. a user's profile written before the user's event on another topic:
//! the consumer fetches partitions independently, so after downtime one topic's backlog can
//! arrive long before the other's. The wait is bounded in time and in records held.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use rdkafka::{message::BorrowedMessage, Message};

use crate::runtime::TaskId;

/// How long a task waits for an ordered source that is behind before going on without it.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(2);

/// Records a task holds at most while waiting; beyond, it goes on without the lagging source.
const MAX_HELD: usize = 50_000;

/// A polled record, owned until its turn.
pub(super) struct HeldRecord {
    pub(super) offset: i64,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) timestamp_ms: i64,
}

/// One task's held records: a queue per ordered source, in the order the sources were declared.
struct TaskQueues {
    queues: Vec<(String, VecDeque<HeldRecord>)>,
    held: usize,
    waiting_since: Option<Instant>,
    /// The current wait ran out: records go on until no source is behind.
    gave_up: bool,
}

/// The held records of every task with time-ordered sources.
#[derive(Default)]
pub(super) struct OrderedInputs {
    tasks: HashMap<TaskId, TaskQueues>,
}

/// What [`OrderedInputs::next`] hands out.
pub(super) struct Turn {
    /// The source topic of the record.
    pub(super) topic: String,
    /// The record to process next.
    pub(super) record: HeldRecord,
    /// Whether this record ends a wait that ran out (a source is still behind).
    pub(super) gave_up: bool,
}

impl OrderedInputs {
    /// Holds `message` of task `id`, whose ordered sources are `ordered`.
    pub(super) fn hold(
        &mut self,
        id: TaskId,
        ordered: &[String],
        message: &BorrowedMessage<'_>,
        now_ms: i64,
    ) {
        let task = self.tasks.entry(id).or_insert_with(|| TaskQueues {
            queues: ordered.iter().map(|topic| (topic.clone(), VecDeque::new())).collect(),
            held: 0,
            waiting_since: None,
            gave_up: false,
        });
        let Some((_, queue)) = task.queues.iter_mut().find(|(topic, _)| topic == message.topic())
        else {
            return;
        };
        queue.push_back(HeldRecord {
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(now_ms),
        });
        task.held += 1;
    }

    /// Tasks holding records.
    pub(super) fn tasks(&self) -> Vec<TaskId> {
        self.tasks.iter().filter(|(_, task)| task.held > 0).map(|(id, _)| *id).collect()
    }

    /// Whether task `id` holds records of `topic` (not yet processed).
    pub(super) fn holds(&self, id: TaskId, topic: &str) -> bool {
        self.tasks.get(&id).is_some_and(|task| {
            task.queues.iter().any(|(source, queue)| source == topic && !queue.is_empty())
        })
    }

    /// Drops what task `id` holds (its partitions were revoked: the next owner reads them).
    pub(super) fn forget(&mut self, id: TaskId) {
        self.tasks.remove(&id);
    }

    /// Drops everything held (the inputs are rewound to the last commit and read again).
    pub(super) fn clear(&mut self) {
        self.tasks.clear();
    }

    /// The next record of task `id`: the earliest held one across its ordered sources (ties go
    /// to the source declared first), once every source holding nothing is read to its end
    /// (`at_end(topic)`), or the wait for it ran out ([`MAX_WAIT`], or [`MAX_HELD`] records).
    /// `None` when nothing is held or the task waits.
    pub(super) fn next(
        &mut self,
        id: TaskId,
        now: Instant,
        mut at_end: impl FnMut(&str) -> bool,
    ) -> Option<Turn> {
        let task = self.tasks.get_mut(&id)?;
        let (_, index) = task
            .queues
            .iter()
            .enumerate()
            .filter_map(|(index, (_, queue))| queue.front().map(|r| (r.timestamp_ms, index)))
            .min()?;
        let behind = task.queues.iter().any(|(topic, queue)| queue.is_empty() && !at_end(topic));
        let mut gave_up = false;
        if !behind {
            task.waiting_since = None;
            task.gave_up = false;
        } else if !task.gave_up {
            let since = *task.waiting_since.get_or_insert(now);
            if now.duration_since(since) < MAX_WAIT && task.held < MAX_HELD {
                return None;
            }
            task.gave_up = true;
            gave_up = true;
        }
        let (topic, queue) = &mut task.queues[index];
        let record = queue.pop_front().expect("a held record");
        task.held -= 1;
        Some(Turn { topic: topic.clone(), record, gave_up })
    }
}
