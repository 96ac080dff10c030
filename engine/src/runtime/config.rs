//! Settings of a live runtime instance, and the instance's id.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Clock, RuntimeError};
use crate::{kafka::KafkaConfig, topology::ChangelogSpec};

/// File under the state directory holding a generated instance id.
const INSTANCE_ID_FILE: &str = "instance-id";

/// librdkafka's default `message.max.bytes`, below the broker's default limit (1 MiB + 12 B).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// librdkafka properties the runtime sets itself, with why: exactly-once, group membership and
/// co-partitioning depend on them, so the configuration's extra properties may not change them
/// (see [`RuntimeConfig::check`]).
const RESERVED_PROPERTIES: [(&str, &str); 17] = [
    ("bootstrap.servers", "the brokers are given on their own (--brokers)"),
    ("group.id", "the consumer group is the application id"),
    ("group.instance.id", "static membership uses the instance id"),
    ("client.id", "the other instances recognise this one by it (standbys, fencing)"),
    ("group.protocol", "the group protocol is a setting of its own (--group-protocol)"),
    ("partition.assignment.strategy", "co-partitioned tasks need the range assignor"),
    ("group.remote.assignor", "co-partitioned tasks need the range assignor"),
    ("enable.auto.commit", "offsets are committed in each transaction"),
    ("enable.auto.offset.store", "offsets are committed in each transaction"),
    ("auto.offset.reset", "a partition without a committed offset is read from its start"),
    ("isolation.level", "only committed records may be read"),
    ("statistics.interval.ms", "the runtime reads the consumer's statistics (lag)"),
    ("transactional.id", "the transactional id is the instance's member id"),
    ("transaction.timeout.ms", "it is a setting of its own (--transaction-timeout-ms)"),
    ("enable.idempotence", "transactions need it"),
    ("partitioner", "records are partitioned as Kafka's Java clients do (murmur2)"),
    ("message.max.bytes", "it follows the largest record (--max-record-bytes)"),
];

/// How a live instance runs. [`RuntimeConfig::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Unique, stable id of this instance (see [`instance_id`]); with the app id it forms the
    /// transactional id and the static group member id, so a restarted instance fences its
    /// previous incarnation and two live instances must never share it.
    pub instance_id: String,
    /// Where task stores live (`<state_dir>/<app>/<task>/`).
    pub state_dir: PathBuf,
    /// How long a transaction stays open at most while input keeps coming (default 100 ms);
    /// a worker that has caught up with its input commits after a tenth of it, and twice as
    /// long as its last commit took.
    pub commit_interval: Duration,
    /// Clock driving timers (default wall clock).
    pub clock: Clock,
    /// Broker-side transaction timeout (default 10 s): how long a crashed instance's open
    /// transaction blocks readers of its partitions, unless the instance taking them over
    /// fences it first (classic protocol: `live::fence`).
    pub transaction_timeout: Duration,
    /// Work one transaction does at most before it commits and the rest continues in the next
    /// (default 20,000): each input record processed, timer fired and processor step counts
    /// one, and so does each record they write (outputs and changelog entries). It keeps timer
    /// bursts, scheduled-run releases and backlogs from holding a transaction past
    /// `transaction_timeout`: the default is about 7,000 released users (three records each),
    /// a fraction of a second of work. Lower it when the machine is slow or the timeout short.
    pub max_work_per_transaction: u64,
    /// RocksDB block cache shared by all tasks (default 64 MiB).
    pub block_cache_bytes: usize,
    /// RocksDB memtable size per store (default 8 MiB, two at most).
    pub write_buffer_bytes: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz`, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Largest record (key and value) the producer sends (default [`DEFAULT_MAX_RECORD_BYTES`];
    /// its `message.max.bytes` is 64 bytes more, for librdkafka's framing: keep this at least
    /// 128 bytes below the broker's `message.max.bytes`). A larger output or store value is
    /// refused: the input that caused it is dead-lettered.
    pub max_record_bytes: usize,
    /// How changelog topics are created (default: replication factor 1, no further configs;
    /// the engine takes them from its topology file).
    pub changelogs: ChangelogSpec,
    /// The consumer group protocol (default [`GroupProtocol::Classic`]).
    pub group_protocol: GroupProtocol,
    /// Leave the consumer group on a graceful stop (default false), so the partitions move to
    /// the other instances at once: for a scale-in. Without it the instance stays a static
    /// member until the session timeout, so a restart (a rolling upgrade) takes its partitions
    /// back without a rebalance. A stop asked with [`super::ShutdownFlag::request_leave`]
    /// (SIGUSR1) leaves either way.
    pub leave_group_on_shutdown: bool,
    /// Warm copies this instance keeps of each task other instances own, among all the
    /// instances (default 0, as Kafka Streams' `num.standby.replicas`): see the `standby`
    /// module.
    pub standby_replicas: usize,
    /// Records a standby may trail its changelogs' ends by and still count as caught up
    /// (default 10,000, as Kafka Streams' `acceptable.recovery.lag`): under steady traffic a
    /// standby is always a few transactions behind, so "none" is seldom seen.
    pub standby_acceptable_lag: u64,
    /// How long an input partition with records to read (behind its last stable offset) may
    /// go without progress before the instance joins its group again with a new consumer and
    /// producer (default 60 s; stalled 3 times within 5 minutes, it stops with
    /// [`super::RuntimeError::Stalled`]). Keep it well above the longest a broker may take to
    /// come back, and above the session timeout (10 s).
    pub stall_after: Duration,
    /// How often at most the instance deletes the records its committed transactions consumed
    /// from the internal topics ([`super::StreamTopology::purged_sources`], which keep records
    /// until then), as Kafka Streams' `repartition.purge.interval.ms` (default 30 s; zero
    /// turns purging off, and those topics then grow without limit).
    pub purge_interval: Duration,
}

/// How the instances of an application share partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// The classic protocol with the client-side `range` assignor and eager rebalances: every
    /// member stops while the group rebalances; a static member restarted after a crash takes
    /// its partitions back at once.
    #[default]
    Classic,
    /// KIP-848 (`group.protocol=consumer`, brokers 4.0+): the broker assigns (`range` remote
    /// assignor) and hands partitions over incrementally; the session timeout is the broker's
    /// (`group.consumer.session.timeout.ms`, at least 45 s by default), and a static member
    /// restarted after a crash is refused (UNRELEASED_INSTANCE_ID) until it expires.
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

impl std::str::FromStr for GroupProtocol {
    type Err = RuntimeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "classic" => Ok(Self::Classic),
            "consumer" => Ok(Self::Consumer),
            other => Err(RuntimeError::Config(format!(
                "unknown group protocol {other:?}: classic or consumer"
            ))),
        }
    }
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
            max_work_per_transaction: 20_000,
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 8 << 20,
            metrics_addr: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            changelogs: ChangelogSpec::default(),
            group_protocol: GroupProtocol::Classic,
            leave_group_on_shutdown: false,
            standby_replicas: 0,
            standby_acceptable_lag: 10_000,
            stall_after: Duration::from_secs(60),
            purge_interval: Duration::from_secs(30),
        }
    }
}

impl RuntimeConfig {
    /// Refuses extra Kafka properties the runtime sets itself ([`RESERVED_PROPERTIES`]), naming
    /// the property and why.
    pub fn check(&self) -> Result<(), RuntimeError> {
        for key in self.kafka.properties.keys() {
            if let Some((_, why)) = RESERVED_PROPERTIES.iter().find(|(name, _)| name == key) {
                return Err(RuntimeError::Config(format!(
                    "Kafka property {key:?} cannot be set: {why}"
                )));
            }
        }
        Ok(())
    }
}

/// This process's instance id: `given` (a flag or the environment) when set, otherwise the id
/// kept in `<state_dir>/instance-id`, generated and saved there on first use, so a restart
/// with the same state directory keeps it and instances with their own state directories never
/// share one.
pub fn instance_id(given: Option<&str>, state_dir: &Path) -> Result<String, RuntimeError> {
    if let Some(id) = given {
        return valid_instance_id(id, "the given instance id").map(str::to_string);
    }
    let path = state_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => valid_instance_id(text.trim(), &path.display().to_string()).map(str::to_string),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("i-{:016x}", fastrand::u64(..));
            std::fs::create_dir_all(state_dir)
                .map_err(RuntimeError::io(format!("creating {}", state_dir.display())))?;
            std::fs::write(&path, format!("{id}\n"))
                .map_err(RuntimeError::io(format!("writing {}", path.display())))?;
            tracing::info!(instance = %id, file = %path.display(), "generated this instance's id");
            Ok(id)
        }
        Err(error) => Err(RuntimeError::io(format!("reading {}", path.display()))(error)),
    }
}

/// `id` when it is 1 to 100 ASCII letters, digits, '.', '_' or '-'; `origin` names its source.
fn valid_instance_id<'a>(id: &'a str, origin: &str) -> Result<&'a str, RuntimeError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if id.is_empty() || id.len() > 100 || !id.chars().all(allowed) {
        return Err(RuntimeError::Config(format!(
            "instance id {id:?} from {origin} must be 1 to 100 ASCII letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_the_runtime_sets_itself_is_refused_with_its_reason() {
        let mut kafka = KafkaConfig::default();
        kafka.properties.insert("session.timeout.ms".into(), "6000".into());
        kafka.properties.insert("linger.ms".into(), "0".into());
        let tuned = RuntimeConfig::new(kafka.clone(), "a", "/tmp/x");
        assert!(tuned.check().is_ok(), "tunables are the operator's");
        kafka.properties.insert("isolation.level".into(), "read_uncommitted".into());
        let err = RuntimeConfig::new(kafka, "a", "/tmp/x").check().unwrap_err().to_string();
        assert!(err.contains("\"isolation.level\"") && err.contains("committed"), "{err}");
    }

    #[test]
    fn a_generated_instance_id_is_kept_in_the_state_dir() {
        let one = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let first = instance_id(None, one.path()).unwrap();
        assert_eq!(instance_id(None, one.path()).unwrap(), first, "a restart keeps its id");
        assert_ne!(instance_id(None, other.path()).unwrap(), first, "another state dir differs");
        assert_eq!(instance_id(Some("a-1"), one.path()).unwrap(), "a-1", "a given id wins");
        let err = instance_id(Some("a b"), one.path()).unwrap_err().to_string();
        assert!(err.contains("\"a b\""), "{err}");
    }
}
