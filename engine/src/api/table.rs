//! A topic followed into memory by a background consumer: the latest records per key (one for
//! a compacted topic; a tombstone removes the key), and how far it has read, so a writer can
//! wait to read its own write. Records decode as Herald's schema-registry records, or as the
//! raw UTF-8 text of a saved segment.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    Message, Offset, TopicPartitionList,
};
use tokio::sync::broadcast;

use crate::{
    kafka::KafkaConfig,
    model::{Record, SchemaRegistry},
};

use super::error::ApiError;

/// What a table holds: a record decoded from a value's bytes.
pub trait Row: Sized {
    /// The row a value's bytes hold, or why not.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl<R: Record> Row for R {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        SchemaRegistry::builtin().decode(bytes).map_err(|e| e.to_string())
    }
}

/// A saved segment's file as published (`herald.segments`: the value is its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentText(pub String);

impl Row for SegmentText {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        String::from_utf8(bytes.to_vec()).map(Self).map_err(|e| e.to_string())
    }
}

/// How long a table's client may take to refresh its metadata for partitions added.
const WAIT_METADATA: Duration = Duration::from_secs(2);

/// Changed keys kept for a slow listener.
const CHANGES_BUFFERED: usize = 1_024;

struct Shared<R> {
    rows: RwLock<BTreeMap<String, VecDeque<R>>>,
    /// Records kept per key, latest last.
    keep: usize,
    /// Next offset to read, per partition.
    positions: Mutex<HashMap<i32, i64>>,
    stop: AtomicBool,
    /// The key of every record read, to whoever listens.
    changes: broadcast::Sender<String>,
}

/// The latest `R`s per key of one topic, kept up to date while it lives. Partitions added to
/// the topic later are read from their beginning once [`Followed::follow_new`] is told of them
/// (the API's readiness check does, every [`super::CHECK_EVERY`]).
pub struct Table<R> {
    topic: String,
    shared: Arc<Shared<R>>,
    /// The reading thread's consumer, shared to assign partitions added to the topic.
    consumer: Arc<BaseConsumer>,
}

impl<R> Drop for Table<R> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl<R: Row + Clone + Send + Sync + 'static> Table<R> {
    /// Starts following the compacted `topic` from its beginning (the latest record per key)
    /// and waits (up to `wait`) until it has read what the topic held when it started.
    pub fn follow(kafka: &KafkaConfig, topic: &str, wait: Duration) -> Result<Self, ApiError> {
        Self::follow_keeping(kafka, topic, 1, wait)
    }

    /// [`Table::follow`] keeping the latest `keep` records of each key.
    pub fn follow_keeping(
        kafka: &KafkaConfig,
        topic: &str,
        keep: usize,
        wait: Duration,
    ) -> Result<Self, ApiError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            ApiError::Internal(format!("following {topic}: {what}: {e}"))
        };
        let consumer: Arc<BaseConsumer> = kafka
            .client_config()
            .set("group.id", "herald-api")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map(Arc::new)
            .map_err(|e| failed("creating the consumer", &e))?;
        // A topic just created may not have its leaders yet: ask again until `wait` is spent.
        let deadline = Instant::now() + wait;
        let ends = loop {
            match ends(&consumer, topic, Duration::from_secs(10)) {
                Ok(ends) => break ends,
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let mut assignment = TopicPartitionList::new();
        for &partition in ends.keys() {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| failed("assigning", &e))?;
        }
        consumer.assign(&assignment).map_err(|e| failed("assigning", &e))?;
        let shared = Arc::new(Shared {
            rows: RwLock::default(),
            keep: keep.max(1),
            positions: Mutex::new(ends.keys().map(|&p| (p, 0)).collect()),
            stop: AtomicBool::new(false),
            changes: broadcast::channel(CHANGES_BUFFERED).0,
        });
        let (thread_shared, thread_consumer) = (shared.clone(), consumer.clone());
        let thread_topic = topic.to_string();
        std::thread::Builder::new()
            .name(format!("api-{topic}"))
            .spawn(move || read(&thread_consumer, &thread_topic, &thread_shared))
            .map_err(|e| failed("starting its thread", &e))?;
        let table = Self { topic: topic.to_string(), shared, consumer };
        while !table.reached(&ends) {
            if Instant::now() >= deadline {
                return Err(ApiError::Internal(format!("{topic} not read to its end in {wait:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(table)
    }

    /// Whether every partition has been read up to `ends`.
    fn reached(&self, ends: &HashMap<i32, i64>) -> bool {
        self.behind(ends).is_none()
    }

    /// Waits until the record written at `offset` of `partition` has been read (a writer reads
    /// its own write), up to `wait`.
    pub async fn wait_for(
        &self,
        partition: i32,
        offset: i64,
        wait: Duration,
    ) -> Result<(), ApiError> {
        let ends = HashMap::from([(partition, offset + 1)]);
        let deadline = Instant::now() + wait;
        while !self.reached(&ends) {
            if Instant::now() >= deadline {
                return Err(ApiError::Internal(format!(
                    "{} not read up to {partition}/{offset} in {wait:?}",
                    self.topic
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The key of every record read from now on (a receiver that falls more than 1,024 keys
    /// behind is told it lagged).
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.shared.changes.subscribe()
    }

    /// The latest record keyed `key`.
    pub fn get(&self, key: &str) -> Option<R> {
        self.shared.rows.read().expect("table lock").get(key).and_then(|r| r.back().cloned())
    }

    /// The latest records keyed `key` (as many as kept), oldest first.
    pub fn history(&self, key: &str) -> Vec<R> {
        let rows = self.shared.rows.read().expect("table lock");
        rows.get(key).map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }

    /// Every key with its latest record, by key.
    pub fn keyed(&self) -> Vec<(String, R)> {
        let rows = self.shared.rows.read().expect("table lock");
        rows.iter().filter_map(|(k, r)| Some((k.clone(), r.back()?.clone()))).collect()
    }

    /// Every key's latest record, by key.
    pub fn all(&self) -> Vec<R> {
        let rows = self.shared.rows.read().expect("table lock");
        rows.values().filter_map(|r| r.back().cloned()).collect()
    }
}

/// A table as its readiness check sees it: a topic read up to some offsets.
pub(super) trait Followed {
    /// The topic read.
    fn topic(&self) -> &str;
    /// A partition not yet read up to its offset in `ends`: (partition, next offset to read,
    /// end), or none.
    fn behind(&self, ends: &HashMap<i32, i64>) -> Option<(i32, i64, i64)>;
    /// Starts reading, from their beginning, the partitions of `ends` not read yet (added to
    /// the topic since the table started).
    fn follow_new(&self, ends: &HashMap<i32, i64>) -> Result<(), ApiError>;
}

impl<R> Followed for Table<R> {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn behind(&self, ends: &HashMap<i32, i64>) -> Option<(i32, i64, i64)> {
        let positions = self.shared.positions.lock().expect("table lock");
        ends.iter().find_map(|(&partition, &end)| {
            let at = positions.get(&partition).copied().unwrap_or(0);
            (at < end).then_some((partition, at, end))
        })
    }

    fn follow_new(&self, ends: &HashMap<i32, i64>) -> Result<(), ApiError> {
        let failed =
            |e: KafkaError| ApiError::Internal(format!("following {}: assigning: {e}", self.topic));
        let mut positions = self.shared.positions.lock().expect("table lock");
        let mut added = TopicPartitionList::new();
        for &partition in ends.keys().filter(|p| !positions.contains_key(p)) {
            added
                .add_partition_offset(&self.topic, partition, Offset::Beginning)
                .map_err(failed)?;
        }
        if added.count() == 0 {
            return Ok(());
        }
        // The reading client's own metadata may not list the new partitions yet: ask it, so
        // it fetches from them at once rather than at its next periodic refresh.
        if let Err(error) = self.consumer.fetch_metadata(Some(&self.topic), WAIT_METADATA) {
            tracing::warn!(topic = %self.topic, %error, "refreshing metadata for new partitions");
        }
        self.consumer.incremental_assign(&added).map_err(failed)?;
        let partitions: Vec<i32> = added.elements().iter().map(|e| e.partition()).collect();
        tracing::info!(topic = %self.topic, ?partitions, "reading partitions added to the topic");
        positions.extend(partitions.into_iter().map(|partition| (partition, 0)));
        Ok(())
    }
}

/// The end offset of every partition of `topic`, each asked within `timeout`.
pub(super) fn ends(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<i32, i64>, ApiError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::Internal(format!("following {topic}: {what}: {e}"))
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| failed("reading metadata", &e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ApiError::Internal(format!("topic {topic} not found")));
    }
    partitions
        .into_iter()
        .map(|partition| {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| failed("reading offsets", &e))?;
            // A partition whose records retention deleted (low == high > 0) has nothing to
            // read, and the consumer's position never moves there: its end is the start of
            // a table's positions, so it counts as read.
            Ok((partition, if high > low { high } else { 0 }))
        })
        .collect()
}

/// The consumer's loop: until the table is dropped.
fn read<R: Row>(consumer: &BaseConsumer, topic: &str, shared: &Shared<R>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            // Past transaction markers and aborted records the position moves with no message.
            if let Ok(list) = consumer.position() {
                let mut positions = shared.positions.lock().expect("table lock");
                for element in list.elements() {
                    if let Offset::Offset(at) = element.offset() {
                        let known = positions.entry(element.partition()).or_insert(0);
                        *known = (*known).max(at);
                    }
                }
            }
            continue;
        };
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%topic, %error, "API table consumer");
                continue;
            }
        };
        if let Some(key) = message.key().map(|k| String::from_utf8_lossy(k).into_owned()) {
            let changed = key.clone();
            let mut rows = shared.rows.write().expect("table lock");
            match message.payload().map(R::decode) {
                None => {
                    rows.remove(&key);
                }
                Some(Ok(record)) => {
                    let kept = rows.entry(key).or_default();
                    if kept.len() == shared.keep {
                        kept.pop_front();
                    }
                    kept.push_back(record);
                }
                Some(Err(error)) => tracing::warn!(%topic, %key, %error, "undecodable record"),
            }
            drop(rows);
            // No listener is no error.
            let _ = shared.changes.send(changed);
        }
        shared
            .positions
            .lock()
            .expect("table lock")
            .insert(message.partition(), message.offset() + 1);
    }
}
