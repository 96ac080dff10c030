//! Notices when the instance stops making progress on an input partition that has records
//! beyond what it has read: whatever wedged the consumer (e.g. a fetch left stuck by a broker
//! restart), the instance must recover or stop with an error, never sit silently while its
//! input piles up.
//!
//! A partition stalls when neither the consumer's position nor the next offset this instance
//! processed has moved for the configured time (`RuntimeConfig::stall_after`) while the partition's end (the last stable offset,
//! what a `read_committed` consumer may read) lies beyond them at two checks in a row (a broker
//! just back gets one check's time to serve). Idle partitions, read to their end, never stall.
//! The ends are asked of the broker (one request for the still partitions) every
//! [`MAX_CHECK_EVERY`] (or a quarter of the stall time, if shorter) at most, since a wedged fetch also stops updating the ends the consumer knows.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    time::{Duration, Instant},
};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};

use super::progress::ReadPositions;
use crate::runtime::watermarks::{ends, Partition};

/// How often progress is checked at most (a quarter of the stall time when that is shorter).
const MAX_CHECK_EVERY: Duration = Duration::from_secs(15);
/// How long the broker has to tell the partitions' ends.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// A partition that stopped making progress.
#[derive(Debug)]
pub(super) struct StalledPartition {
    partition: Partition,
    /// Where the instance stands (the consumer's position or the next offset processed).
    position: i64,
    /// The partition's end.
    end: i64,
    /// How long the position has not moved.
    still: Duration,
}

impl fmt::Display for StalledPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ((topic, partition), still) = (&self.partition, self.still.as_secs());
        write!(f, "{topic}/{partition} at {} of {} for {still} s", self.position, self.end)
    }
}

/// The progress of every input partition the instance processes.
pub(super) struct StallWatch {
    /// How long a partition with unread records may go without progress.
    stall_after: Duration,
    /// How often progress is checked.
    check_every: Duration,
    checked: Instant,
    /// Per partition: the furthest position seen, and since when it has not moved.
    progress: HashMap<Partition, (i64, Instant)>,
    /// The still partitions the last check found behind their ends.
    behind: HashSet<Partition>,
}

impl StallWatch {
    /// A watch taking a partition with unread records as stalled once it has not moved for
    /// `stall_after`.
    pub(super) fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            check_every: MAX_CHECK_EVERY.min(stall_after / 4),
            checked: Instant::now(),
            progress: HashMap::new(),
            behind: HashSet::new(),
        }
    }

    /// Forgets what was seen (after the instance rebuilt its tasks or rejoined its group).
    pub(super) fn reset(&mut self) {
        self.checked = Instant::now();
        self.progress.clear();
        self.behind.clear();
    }

    /// Notes `positions` seen at `now`; the partitions among them whose position has not moved
    /// for the stall time, with the position and for how long. Partitions not in `positions`
    /// are forgotten.
    fn still(
        &mut self,
        now: Instant,
        positions: impl Iterator<Item = (Partition, i64)>,
    ) -> Vec<(Partition, i64, Duration)> {
        let mut progress = HashMap::new();
        let mut still = Vec::new();
        for (key, position) in positions {
            let since = match self.progress.get(&key) {
                Some(&(seen, since)) if seen == position => since,
                _ => now,
            };
            if now.duration_since(since) >= self.stall_after {
                still.push((key.clone(), position, now.duration_since(since)));
            }
            progress.insert(key, (position, since));
        }
        self.progress = progress;
        still
    }

    /// The partitions of `processed` (next offset processed per owned input partition) that
    /// stalled; checks every `check_every` at most (empty in between). A failure to ask
    /// the ends counts as no stall: the broker may be away, and the next check asks again.
    pub(super) fn check<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        processed: &HashMap<String, BTreeMap<i32, i64>>,
    ) -> Vec<StalledPartition> {
        let now = Instant::now();
        if now.duration_since(self.checked) < self.check_every {
            return Vec::new();
        }
        self.checked = now;
        let read = ReadPositions::of(consumer);
        let positions = processed.iter().flat_map(|(topic, partitions)| {
            let read = &read;
            partitions.iter().map(move |(&partition, &done)| {
                ((topic.clone(), partition), read.consumed(topic, partition).max(done))
            })
        });
        let still = self.still(now, positions);
        if still.is_empty() {
            return Vec::new();
        }
        let asked: Vec<Partition> = still.iter().map(|(key, _, _)| key.clone()).collect();
        let Ok(ends) = ends(consumer, &asked, ASK_TIMEOUT) else { return Vec::new() };
        let behind: Vec<StalledPartition> = still
            .into_iter()
            .filter_map(|(partition, position, still)| {
                let end = *ends.get(&partition)?;
                (end > position).then_some(StalledPartition { partition, position, end, still })
            })
            .collect();
        // Behind at two checks in a row: a broker just back gets one check's time to serve.
        let before = std::mem::replace(
            &mut self.behind,
            behind.iter().map(|stalled| stalled.partition.clone()).collect(),
        );
        behind.into_iter().filter(|stalled| before.contains(&stalled.partition)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_still_once_its_position_has_not_moved_for_the_limit() {
        let mut watch = StallWatch::new(Duration::from_secs(60));
        let start = Instant::now();
        let p = |n: i32| (String::from("in"), n);
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(watch.still(at(0), [(p(0), 5), (p(1), 7)].into_iter()).is_empty());
        // Partition 0 moves on, partition 1 does not.
        assert!(watch.still(at(30), [(p(0), 9), (p(1), 7)].into_iter()).is_empty());
        let still = watch.still(at(60), [(p(0), 9), (p(1), 7)].into_iter());
        assert_eq!(still, vec![(p(1), 7, Duration::from_secs(60))]);
        // A partition that moves again starts over; one given away is forgotten.
        assert!(watch.still(at(61), [(p(1), 8)].into_iter()).is_empty());
        assert!(watch.still(at(200), [(p(0), 9)].into_iter()).is_empty(), "0 came back");
        watch.reset();
        assert!(watch.still(at(300), [(p(1), 8)].into_iter()).is_empty());
    }
}
