//! Shared helpers of the integration tests: they talk to the real broker that `make test`
//! starts (`HERALD_BROKERS`, default 127.0.0.1:9092).

use std::time::{SystemTime, UNIX_EPOCH};

use herald_engine::kafka::{KafkaConfig, DEFAULT_BROKERS};

/// Connection settings for the test broker.
pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(std::env::var("HERALD_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.into()))
}

/// A name no other test run has used, so runs never see each other's topics.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("it-{prefix}-{}-{nanos}", std::process::id())
}
