//! Kafka connection settings and administration shared by every Herald process.

mod admin;

pub use admin::{apply_topology, AdminError, TopicDrift, TopicOutcome, TopologyReport};

use std::collections::BTreeMap;

use rdkafka::{
    error::KafkaError,
    producer::{BaseRecord, ProducerContext, ThreadedProducer},
    types::RDKafkaErrorCode,
    ClientConfig,
};

/// Default bootstrap servers: the local broker started by `make kafka-up`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";

/// How to reach the Kafka cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Further librdkafka properties (security, timeouts …), applied last.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { brokers: DEFAULT_BROKERS.to_string(), properties: BTreeMap::new() }
    }
}

impl KafkaConfig {
    /// A configuration for `brokers` with no extra properties.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), properties: BTreeMap::new() }
    }

    /// A librdkafka client configuration with the brokers and extra properties set.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

/// Hands `record` to `producer`, waiting while its local queue is full (the producer's
/// background thread drains it), so a burst never fails with `QueueFull`.
pub fn send_waiting<
    C: ProducerContext + 'static,
    K: ?Sized + rdkafka::message::ToBytes,
    V: ?Sized + rdkafka::message::ToBytes,
>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, V, C::DeliveryOpaque>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error),
        }
    }
}
