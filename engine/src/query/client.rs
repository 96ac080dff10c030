//! The client side of the query channel: send a request, gather the tasks' replies until every
//! partition answered or the deadline passed, delete the request.

use std::{
    collections::BTreeMap,
    sync::LazyLock,
    time::{Duration, Instant},
};

use prometheus::{HistogramOpts, HistogramVec};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{BaseProducer, BaseRecord, Producer},
    Message, Offset, TopicPartitionList,
};
use thiserror::Error;

use super::{
    sign::{rejected_replies, KeyError, ReplyKey},
    QueryReply, QueryRequest, QueryStatus, KINDS,
};
use crate::{
    kafka::KafkaConfig,
    model::{CodecError, SchemaRegistry},
    runtime::partition_for,
};

/// How long metadata, watermark and produce calls may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query could not be asked.
#[derive(Debug, Error)]
pub enum QueryError {
    /// A topic of the channel does not exist (no engine created it yet).
    #[error("topic {0} does not exist: is an engine running with these topics?")]
    NoTopic(String),
    /// The shared key of the replies could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The request did not encode.
    #[error("encoding the request: {0}")]
    Encode(#[from] CodecError),
    /// The broker failed us.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> QueryError {
    let context = context.into();
    move |source| QueryError::Kafka { context, source }
}

/// What the tasks answered by the deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// The last final reply (`DONE` or `REFUSED`) of each partition that answered.
    pub done: BTreeMap<i32, QueryReply>,
    /// Partitions expected to answer that did not, by the deadline.
    pub missing: Vec<i32>,
}

/// Where the replies stand, each time one arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Partitions that gave their final reply.
    pub answered: usize,
    /// Partitions expected to answer.
    pub expected: usize,
    /// Items looked at so far over every partition (as last reported).
    pub scanned: i64,
}

/// Asks the engine's tasks through `queries` and reads their replies from `replies`.
pub struct QueryClient {
    kafka: KafkaConfig,
    queries: String,
    replies: String,
}

impl QueryClient {
    /// A client of the channel on topics `queries` and `replies` (see `TopicNames`).
    pub fn new(kafka: &KafkaConfig, queries: &str, replies: &str) -> Self {
        Self { kafka: kafka.clone(), queries: queries.into(), replies: replies.into() }
    }

    /// Partitions of `topic` (e.g. the events topic: one user-stage task each).
    pub fn partitions_of(&self, topic: &str) -> Result<i32, QueryError> {
        let consumer: BaseConsumer =
            self.kafka.client_config().create().map_err(kafka("creating a Kafka client"))?;
        partition_count(&consumer, topic)
    }

    /// Sends `request` to the tasks of a sub-topology with `partitions` partitions and waits
    /// until each expected partition (every one; the owner of the request's key, if it has one)
    /// gave its final reply, or the request's deadline passed; `progress` is told of each reply.
    /// The request is deleted from the queries topic at the end. With a query key in the
    /// environment ([`ReplyKey::from_env`]), replies whose signature does not verify for `request` (its exact
    /// fields: another question under the same id does not) are dropped.
    pub fn ask(
        &self,
        request: &QueryRequest,
        partitions: i32,
        mut progress: impl FnMut(Progress),
    ) -> Result<Answers, QueryError> {
        let key = ReplyKey::from_env()?;
        let expected: Vec<i32> = match &request.key {
            Some(key) => vec![partition_for(key.as_bytes(), partitions)],
            None => (0..partitions).collect(),
        };
        let consumer: BaseConsumer = self
            .kafka
            .client_config()
            .set("group.id", "herald-query-client")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(kafka("creating the reply consumer"))?;
        // Replies are keyed by request id: they all land in one partition, read from its end as
        // of before the request was sent.
        let reply_partitions = partition_count(&consumer, &self.replies)?;
        partition_count(&consumer, &self.queries)?;
        let partition = partition_for(request.request_id.as_bytes(), reply_partitions);
        let end = end_of(&consumer, &self.replies, partition)?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.replies, partition, Offset::Offset(end))
            .map_err(kafka("assigning the reply partition"))?;
        consumer.assign(&assignment).map_err(kafka("assigning the reply partition"))?;
        let bytes = SchemaRegistry::builtin().encode(request)?;
        let asked = Instant::now();
        self.publish(&request.request_id, Some(&bytes))?;
        let answers = self.gather(&consumer, request, key.as_ref(), &expected, &mut progress);
        let outcome = match &answers {
            Ok(answers) if answers.missing.is_empty() => "answered",
            Ok(_) => "partial",
            Err(_) => "failed",
        };
        let kind =
            if KINDS.contains(&request.kind.as_str()) { request.kind.as_str() } else { "other" };
        round_trips().with_label_values(&[kind, outcome]).observe(asked.elapsed().as_secs_f64());
        // The request is over either way: tasks still at it stop, and it leaves the table.
        let deleted = self.publish(&request.request_id, None);
        let answers = answers?;
        deleted?;
        Ok(answers)
    }

    fn gather(
        &self,
        consumer: &BaseConsumer,
        request: &QueryRequest,
        key: Option<&ReplyKey>,
        expected: &[i32],
        progress: &mut impl FnMut(Progress),
    ) -> Result<Answers, QueryError> {
        let deadline = Instant::now()
            + Duration::from_millis(
                (request.deadline_ms - chrono::Utc::now().timestamp_millis()).max(0) as u64,
            );
        let mut answers = Answers::default();
        let mut scanned: BTreeMap<i32, i64> = BTreeMap::new();
        while Instant::now() < deadline && answers.done.len() < expected.len() {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(message) = consumer.poll(wait.min(Duration::from_millis(200))) else {
                continue;
            };
            let message = message.map_err(kafka(format!("reading {}", self.replies)))?;
            if message.key() != Some(request.request_id.as_bytes()) {
                continue;
            }
            let Some(payload) = message.payload() else { continue };
            let reply: QueryReply = match SchemaRegistry::builtin().decode(payload) {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::warn!(%error, "a query reply does not decode; ignored");
                    continue;
                }
            };
            if reply.request_id != request.request_id || !expected.contains(&reply.partition) {
                continue;
            }
            if let Some(Err(rejection)) = key.map(|key| key.verify(&reply, request)) {
                rejected_replies().with_label_values(&[rejection.reason()]).inc();
                tracing::warn!(
                    request = %request.request_id,
                    partition = reply.partition,
                    "a query reply is dropped: {rejection}"
                );
                continue;
            }
            scanned.insert(reply.partition, reply.scanned);
            if reply.status != QueryStatus::Progress {
                answers.done.insert(reply.partition, reply);
            }
            progress(Progress {
                answered: answers.done.len(),
                expected: expected.len(),
                scanned: scanned.values().sum(),
            });
        }
        answers.missing =
            expected.iter().copied().filter(|p| !answers.done.contains_key(p)).collect();
        Ok(answers)
    }

    /// Writes `value` (`None`: a tombstone) under `key` to the queries topic and waits for the
    /// broker's acknowledgement.
    fn publish(&self, key: &str, value: Option<&[u8]>) -> Result<(), QueryError> {
        let producer: BaseProducer = self
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .create()
            .map_err(kafka("creating the request producer"))?;
        let mut record = BaseRecord::<str, [u8]>::to(&self.queries).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer.send(record).map_err(|(e, _)| kafka(format!("sending to {}", self.queries))(e))?;
        producer.flush(KAFKA_TIMEOUT).map_err(kafka(format!("sending to {}", self.queries)))
    }
}

/// Time from sending a request to its last reply or its deadline, by kind (another: `other`)
/// and outcome (`answered` by every expected partition, `partial` by the deadline, `failed`):
/// `herald_query_round_trip_seconds`, in the default Prometheus registry, of this process's
/// clients (`herald api` serves it).
pub fn round_trips() -> &'static HistogramVec {
    static ROUND_TRIPS: LazyLock<HistogramVec> = LazyLock::new(|| {
        let histogram = HistogramVec::new(
            HistogramOpts::new(
                "herald_query_round_trip_seconds",
                "Time from sending a query to its last reply or its deadline",
            )
            .buckets(prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
            &["kind", "outcome"],
        )
        .expect("a valid metric");
        // Registered once; a registry refusing it only loses the export, not the count.
        let _ = prometheus::default_registry().register(Box::new(histogram.clone()));
        histogram
    });
    &ROUND_TRIPS
}

/// Partitions of `topic`; an error when it does not exist.
/// The end of `partition` of `topic`, asked again while the broker says its leader is being
/// elected (a topic just created: an engine that started a moment ago), for up to
/// [`KAFKA_TIMEOUT`].
fn end_of(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, QueryError> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT) {
            Ok((_, end)) => return Ok(end),
            Err(e) if electing(&e) && started.elapsed() < KAFKA_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(kafka(format!("reading the end of {topic}"))(e)),
        }
    }
}

/// Whether `error` says a partition's leader is not known yet (it comes once elected).
fn electing(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::{LeaderNotAvailable, NotLeaderForPartition};
    matches!(error.rdkafka_error_code(), Some(NotLeaderForPartition | LeaderNotAvailable))
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<i32, QueryError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(kafka(format!("reading the metadata of {topic}")))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(QueryError::NoTopic(topic.to_string())),
    }
}
