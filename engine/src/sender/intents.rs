//! The intents log (`herald.send-intents`): before a command's first provider call, the sender
//! writes `sending` under its message id and waits for Kafka to confirm it; a command parked on
//! a refused credential (never delivered) gets `parked`. A partition's next owner reads these
//! with the receipts ([`super::takeover`]): an id whose last intent is `sending` and that has no
//! receipt may have reached the provider, so it is receipted `FAILED` (`interrupted`) and never
//! sent again. That is the at-most-once window: the commands between their intent and their
//! receipt when their sender died, at most the apps' `max_in_flight`.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
};

use crate::kafka::KafkaConfig;

/// Name of the intents topic (after the deployment's prefix).
pub const INTENTS: &str = "herald.send-intents";

/// How long a metadata or admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The state an intent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// The provider call may start.
    Sending,
    /// Not delivered; waiting for its app's credential.
    Parked,
}

impl Intent {
    /// The record value.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::Sending => b"sending",
            Self::Parked => b"parked",
        }
    }

    /// The intent a record value names.
    pub fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"sending" => Some(Self::Sending),
            b"parked" => Some(Self::Parked),
            _ => None,
        }
    }
}

/// Creating the intents topic failed.
#[derive(Debug, thiserror::Error)]
#[error("creating the intents topic {topic}: {reason}")]
pub struct IntentsTopicError {
    /// The topic.
    pub topic: String,
    /// What failed.
    pub reason: String,
}

/// Creates `intents` when missing, with the partitions and replication of `receipts` and a
/// retention of `window` (the dedup window: older intents are never needed).
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    receipts: &str,
    intents: &str,
    window: Duration,
) -> Result<(), IntentsTopicError> {
    let fail = |reason: String| IntentsTopicError { topic: intents.to_string(), reason };
    let consumer: BaseConsumer = kafka.client_config().create().map_err(|e| fail(e.to_string()))?;
    let metadata = consumer.fetch_metadata(None, ADMIN_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    let find =
        |name: &str| metadata.topics().iter().find(|t| t.name() == name && t.error().is_none());
    if find(intents).is_some() {
        return Ok(());
    }
    let model = find(receipts)
        .ok_or_else(|| fail(format!("the receipts topic {receipts} does not exist")))?;
    let partitions = model.partitions().len() as i32;
    let replication = model.partitions().first().map_or(1, |p| p.replicas().len() as i32);
    let retention = window.as_millis().to_string();
    let topic = NewTopic::new(intents, partitions, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "delete")
        .set("retention.ms", &retention);
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(|e| fail(e.to_string()))?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&topic], &options).await.map_err(|e| fail(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(fail(code.to_string())),
        }
    }
    tracing::info!(topic = intents, partitions, "created the intents topic");
    Ok(())
}

/// Writes intents, each confirmed by Kafka before it returns.
pub struct IntentLog {
    producer: FutureProducer,
    topic: String,
}

impl IntentLog {
    /// A log on `topic` written through `producer`.
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        Self { producer, topic }
    }

    /// Writes `intent` for `message_id`, retrying with backoff until Kafka confirms it.
    pub async fn write(&self, message_id: &str, intent: Intent) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = FutureRecord::to(&self.topic).key(message_id).payload(intent.as_bytes());
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((error, _)) => {
                    tracing::warn!(%error, message = message_id, "writing an intent failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
