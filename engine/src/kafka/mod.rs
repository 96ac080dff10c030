//! Kafka connection settings and administration shared by every Herald process.

mod admin;

pub use admin::{apply_topology, AdminError, TopicDrift, TopicOutcome, TopologyReport};

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

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
