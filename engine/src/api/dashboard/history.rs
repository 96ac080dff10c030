//! The latest records of each key of a topic, followed from its beginning by a background
//! consumer: the dashboard's lifecycle events per campaign (`herald.campaign-events`: runs,
//! limits, the A/B winner with its p-value) and stats snapshots per campaign (`herald.stats`,
//! compacted: the snapshots since the API started, or since the last compaction, give the
//! sends-over-time chart).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

use crate::{
    kafka::KafkaConfig,
    model::{Record, SchemaRegistry},
};

/// The latest `kept` records of each key, kept up to date while it lives.
pub struct History<R> {
    kept: usize,
    by_key: RwLock<HashMap<String, VecDeque<R>>>,
}

impl<R: Record + Clone + Send + Sync + 'static> History<R> {
    /// Starts following `topic`, keeping `kept` records per key; the consumer stops once the
    /// returned value is dropped.
    pub fn follow(kafka: KafkaConfig, topic: String, kept: usize) -> Arc<Self> {
        let history = Arc::new(Self { kept, by_key: RwLock::default() });
        let weak = Arc::downgrade(&history);
        let spawned = std::thread::Builder::new()
            .name(format!("api-{topic}"))
            .spawn(move || follow(&kafka, &topic, &weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting a history consumer");
        }
        history
    }

    /// The key's kept records, oldest first.
    pub fn of(&self, key: &str) -> Vec<R> {
        let by_key = self.by_key.read().expect("history lock");
        by_key.get(key).map(|kept| kept.iter().cloned().collect()).unwrap_or_default()
    }

    fn keep(&self, key: &str, record: R) {
        let mut by_key = self.by_key.write().expect("history lock");
        let kept = by_key.entry(key.to_string()).or_default();
        if kept.len() == self.kept {
            kept.pop_front();
        }
        kept.push_back(record);
    }
}

/// A consumer assigned every partition of `topic` from its beginning.
fn subscribe(kafka: &KafkaConfig, topic: &str) -> Result<BaseConsumer, String> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-api-dashboard")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("creating the consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("reading metadata: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .map_err(|e| format!("assigning: {e}"))?;
    }
    if assignment.count() == 0 {
        return Err("topic not found".into());
    }
    consumer.assign(&assignment).map_err(|e| format!("assigning: {e}"))?;
    Ok(consumer)
}

/// The consumer's loop, until the history is dropped; an unusable topic is retried every 5 s.
fn follow<R: Record + Clone + Send + Sync + 'static>(
    kafka: &KafkaConfig,
    topic: &str,
    history: &Weak<History<R>>,
) {
    let registry = SchemaRegistry::builtin();
    let consumer = loop {
        match subscribe(kafka, topic) {
            Ok(consumer) => break consumer,
            Err(e) => tracing::warn!(topic, error = %e, "following a topic; retrying"),
        }
        std::thread::sleep(Duration::from_secs(5));
        if history.strong_count() == 0 {
            return;
        }
    };
    while let Some(history) = history.upgrade() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default());
                // A tombstone (compaction) removes nothing already kept.
                match message.payload().map(|bytes| registry.decode(bytes)) {
                    Some(Ok(record)) => history.keep(&key, record),
                    Some(Err(e)) => {
                        tracing::warn!(topic, offset = message.offset(), error = %e, "undecodable record skipped")
                    }
                    None => {}
                }
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading a followed topic"),
            None => {}
        }
    }
}
