//! Settings of a live runtime instance.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::Clock;
use crate::kafka::KafkaConfig;

/// How a live instance runs. [`RuntimeConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Stable id of this instance; with the app id it forms the transactional id, so a
    /// restarted instance fences its previous incarnation.
    pub instance_id: String,
    /// Where task stores live (`<state_dir>/<app>/<task>/`).
    pub state_dir: PathBuf,
    /// How often the transaction commits (default 100 ms).
    pub commit_interval: Duration,
    /// Clock driving timers (default wall clock).
    pub clock: Clock,
    /// Broker-side transaction timeout: how long a crashed instance's open transaction blocks
    /// readers of its partitions (default 10 s).
    pub transaction_timeout: Duration,
    /// RocksDB block cache shared by all tasks (default 64 MiB).
    pub block_cache_bytes: usize,
    /// RocksDB memtable size per store (default 8 MiB, two at most).
    pub write_buffer_bytes: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz`, if any.
    pub metrics_addr: Option<SocketAddr>,
}

impl RuntimeConfig {
    /// Defaults for `instance_id` keeping state under `state_dir`.
    pub fn new(
        kafka: KafkaConfig,
        instance_id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            kafka,
            instance_id: instance_id.into(),
            state_dir: state_dir.into(),
            commit_interval: Duration::from_millis(100),
            clock: Clock::Wall,
            transaction_timeout: Duration::from_secs(10),
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 8 << 20,
            metrics_addr: None,
        }
    }
}
