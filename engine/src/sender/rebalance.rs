//! The consumer context of a sender. Before partitions are revoked it drops their commands
//! waiting in the backlog, waits for the receipts of their commands in flight and commits
//! them, so the next owner neither re-sends nor re-receipts; when partitions are assigned it
//! learns what their previous owner sent ([`super::takeover`]) before any of their commands
//! is read.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    Offset, TopicPartitionList,
};

use super::{
    backlog::Backlog, dedup::DedupStore, metrics::SenderMetrics, progress::Progress,
    takeover::Takeover, Tasks,
};
use crate::runtime::Readiness;

/// How long a revocation waits for requests in flight.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between two attempts at learning a takeover.
const MAX_TAKEOVER_BACKOFF: Duration = Duration::from_secs(10);

/// Drains revoked partitions and learns assigned ones.
pub(super) struct SenderContext {
    pub progress: Arc<Mutex<Progress>>,
    pub backlog: Arc<Mutex<Backlog>>,
    pub tasks: Arc<Mutex<Tasks>>,
    pub dedup: Arc<DedupStore>,
    pub takeover: Takeover,
    pub metrics: Arc<SenderMetrics>,
    /// The sender's `/readyz`: ready once the group has given this member its partitions
    /// (none, too, with more senders than partitions) and it has learnt what their previous
    /// owner sent.
    pub readiness: Arc<Mutex<Readiness>>,
}

impl rdkafka::ClientContext for SenderContext {
    /// Publishes the consumer lag librdkafka reports (every `statistics.interval.ms`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.takeover.push_topic) else { return };
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SenderContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        let dropped = self.backlog.lock().expect("backlog lock").drop_partitions(&partitions);
        self.metrics.backlog.sub(dropped as i64);
        // Parked commands hold no request: nothing to wait for (their offsets stay uncommitted).
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        let waited = || {
            let parked = self.tasks.lock().expect("tasks lock").parked(Some(&partitions));
            dropped + parked
        };
        while self.progress.lock().expect("progress lock").unfinished(&partitions) > waited()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever is still running (parked commands, retries past the drain) stops here: the
        // next owner sends what was never delivered and receipts the rest `interrupted`.
        let aborted = self.tasks.lock().expect("tasks lock").abort(&partitions);
        if aborted > 0 {
            tracing::warn!(aborted, ?partitions, "delivery tasks of revoked partitions aborted");
        }
        let positions = self.progress.lock().expect("progress lock").release(&partitions);
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in positions {
            let topic = &self.takeover.push_topic;
            let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(offset));
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(%error, "commit before revocation failed; the next owner learns what was sent from the intents and receipts");
            }
        }
        tracing::info!(?partitions, "partitions revoked after their commands in flight finished");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else { return };
        let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        if partitions.is_empty() {
            self.ready();
            return;
        }
        // A partition paused for its backlog before it was revoked starts unpaused.
        if let Err(error) = consumer.resume(assigned) {
            tracing::warn!(%error, "resuming assigned partitions");
        }
        // Until it is known what the previous owner sent, none of these commands is read: the
        // consumer waits here (a broker outage makes this retry, never skip).
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.takeover.learn(consumer, &partitions, &self.dedup) {
                Ok(learnt) => {
                    tracing::info!(
                        ?partitions,
                        receipted = learnt.receipted,
                        interrupted = learnt.interrupted,
                        "partitions assigned; learnt what was sent from them"
                    );
                    self.ready();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_TAKEOVER_BACKOFF);
                }
            }
        }
    }
}

impl SenderContext {
    /// The group has given this member its partitions: the sender is ready.
    fn ready(&self) {
        let mut readiness = self.readiness.lock().expect("readiness lock");
        if *readiness != Readiness::Ready {
            tracing::info!("sender ready: the group gave it its partitions");
            *readiness = Readiness::Ready;
        }
    }
}
