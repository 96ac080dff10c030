//! What a sender learns when it is assigned `herald.push` partitions: the intents and receipts
//! written since the oldest command it may read again (the record at each partition's committed
//! offset), by whichever instance owned them before. Ids with a receipt are remembered as
//! receipted; ids whose last intent is `sending` and that have no receipt as sending (never
//! sent again). The new owner thus knows what the old one sent up to its crash.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

use super::{
    dedup::{DedupStore, Seen},
    intents::Intent,
};
use crate::{
    kafka::KafkaConfig,
    model::{Receipt, SchemaRegistry},
};

/// How long one broker request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Read this much before the oldest command's timestamp: producer clocks may differ.
const CLOCK_MARGIN: Duration = Duration::from_secs(300);

/// Reading the intents and receipts failed; the partitions are not read until it succeeds.
#[derive(Debug, thiserror::Error)]
#[error("learning what the previous owner of {topic} sent: {context}: {source}")]
pub struct TakeoverError {
    /// The partitions' topic.
    pub topic: String,
    /// What was being done.
    pub context: &'static str,
    /// The client error.
    pub source: rdkafka::error::KafkaError,
}

/// Where to read from, and what was learnt.
pub(super) struct Takeover {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Send commands topic.
    pub push_topic: String,
    /// Intents topic.
    pub intents_topic: String,
    /// Receipts topic.
    pub receipts_topic: String,
    /// The dedup window: how far back to read when a partition was never committed.
    pub window: Duration,
}

/// What one takeover found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Learnt {
    /// Ids with a receipt.
    pub receipted: usize,
    /// Ids with an intent and no receipt: never sent again.
    pub interrupted: usize,
}

impl Takeover {
    /// Fills `store` with what was sent from `partitions` (newly assigned) since their committed
    /// offsets; `consumer` is the group member (for the committed offsets).
    pub fn learn<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
        store: &DedupStore,
    ) -> Result<Learnt, TakeoverError> {
        let Some(since_ms) = self.oldest_unfinished(consumer, partitions)? else {
            return Ok(Learnt::default());
        };
        let since_ms = since_ms - CLOCK_MARGIN.as_millis() as i64;
        let mut intents: HashMap<String, Intent> = HashMap::new();
        self.read(&self.intents_topic, since_ms, |key, value| {
            if let Some(intent) = Intent::parse(value) {
                intents.insert(String::from_utf8_lossy(key).into_owned(), intent);
            }
        })?;
        let mut receipted = HashSet::new();
        self.read(&self.receipts_topic, since_ms, |_, value| {
            if let Ok(receipt) = SchemaRegistry::builtin().decode::<Receipt>(value) {
                receipted.insert(receipt.message_id);
            }
        })?;
        let mut learnt = Learnt::default();
        for id in &receipted {
            if !matches!(store.seen(id), Ok(Seen::Receipted)) {
                remember(store.receipted(id));
            }
            learnt.receipted += 1;
        }
        for (id, intent) in intents.iter().filter(|(id, _)| !receipted.contains(*id)) {
            match (intent, store.seen(id)) {
                (Intent::Sending, Ok(Seen::New)) => {
                    remember(store.sending(id));
                    learnt.interrupted += 1;
                }
                (Intent::Parked, Ok(Seen::Sending)) => remember(store.forget(id)),
                _ => {}
            }
        }
        Ok(learnt)
    }

    /// The timestamp of the oldest command that may be read again (at a committed offset below
    /// the end), `now - window` for a partition never committed, `None` when nothing is left.
    fn oldest_unfinished<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partitions: &[i32],
    ) -> Result<Option<i64>, TakeoverError> {
        let fail = |context| move |source| self.error(context, source);
        let mut asked = TopicPartitionList::new();
        for partition in partitions {
            asked.add_partition(&self.push_topic, *partition);
        }
        let committed = consumer
            .committed_offsets(asked, TIMEOUT)
            .map_err(fail("reading committed offsets"))?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let scratch = self.scratch()?;
        let mut at = TopicPartitionList::new();
        for element in committed.elements() {
            let Offset::Offset(offset) = element.offset() else {
                return Ok(Some(now_ms - self.window.as_millis() as i64));
            };
            let (_, high) = scratch
                .fetch_watermarks(&self.push_topic, element.partition(), TIMEOUT)
                .map_err(fail("reading watermarks"))?;
            if offset < high {
                let _ = at.add_partition_offset(
                    &self.push_topic,
                    element.partition(),
                    Offset::Offset(offset),
                );
            }
        }
        if at.count() == 0 {
            return Ok(None);
        }
        scratch.assign(&at).map_err(fail("reading the oldest commands"))?;
        let mut oldest = now_ms;
        let mut seen = HashSet::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while seen.len() < at.count() && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = scratch.poll(Duration::from_millis(100)) {
                if seen.insert(message.partition()) {
                    let timestamp = message.timestamp().to_millis().unwrap_or(now_ms);
                    oldest = oldest.min(timestamp);
                }
            }
        }
        if seen.len() < at.count() {
            // Unreadable (aborted records only, or slow): read the whole window.
            oldest = now_ms - self.window.as_millis() as i64;
        }
        Ok(Some(oldest))
    }

    /// Calls `each(key, value)` for every record of every partition of `topic` from `since_ms`
    /// up to the end at the time of the call.
    fn read(
        &self,
        topic: &str,
        since_ms: i64,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), TakeoverError> {
        let fail = |context| move |source| self.error(context, source);
        let scratch = self.scratch()?;
        let metadata =
            scratch.fetch_metadata(Some(topic), TIMEOUT).map_err(fail("reading metadata"))?;
        let mut times = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (_, high) = scratch
                .fetch_watermarks(topic, partition.id(), TIMEOUT)
                .map_err(fail("reading watermarks"))?;
            ends.insert(partition.id(), high);
            let _ = times.add_partition_offset(topic, partition.id(), Offset::Offset(since_ms));
        }
        let starts = scratch.offsets_for_times(times, TIMEOUT).map_err(fail("seeking by time"))?;
        let mut assignment = TopicPartitionList::new();
        for element in starts.elements() {
            if let Offset::Offset(offset) = element.offset() {
                if offset < ends[&element.partition()] {
                    let _ = assignment.add_partition_offset(
                        topic,
                        element.partition(),
                        Offset::Offset(offset),
                    );
                    continue;
                }
            }
            ends.remove(&element.partition());
        }
        scratch.assign(&assignment).map_err(fail("reading"))?;
        while !ends.is_empty() {
            match scratch.poll(TIMEOUT) {
                Some(Ok(message)) => {
                    if let (Some(key), Some(value)) = (message.key(), message.payload()) {
                        each(key, value);
                    }
                    if ends
                        .get(&message.partition())
                        .is_some_and(|end| message.offset() + 1 >= *end)
                    {
                        ends.remove(&message.partition());
                    }
                }
                Some(Err(error)) => return Err(self.error("reading", error)),
                None => {
                    // Nothing within the timeout: the rest are transaction markers or gone.
                    for (partition, end) in ends.clone() {
                        let position = scratch
                            .position()
                            .ok()
                            .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
                        if position.is_none_or(|o| matches!(o, Offset::Offset(o) if o >= end)) {
                            ends.remove(&partition);
                        }
                    }
                    if !ends.is_empty() {
                        return Err(self.error(
                            "reading",
                            rdkafka::error::KafkaError::MessageConsumption(
                                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn scratch(&self) -> Result<BaseConsumer, TakeoverError> {
        self.kafka
            .client_config()
            .set("group.id", "herald-sender-takeover")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|source| self.error("creating a reader", source))
    }

    fn error(&self, context: &'static str, source: rdkafka::error::KafkaError) -> TakeoverError {
        TakeoverError { topic: self.push_topic.clone(), context, source }
    }
}

fn remember(result: Result<(), String>) {
    if let Err(error) = result {
        tracing::error!(%error, "dedup store");
    }
}
