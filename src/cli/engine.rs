//! `herald engine`: run the campaign engine live (this milestone: the user stage).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    model::{topics::TopicNames, IngestDecoder, IngestFormat},
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::{
        instance_id, GroupProtocol, LiveRuntime, RuntimeConfig, ShutdownFlag,
        DEFAULT_MAX_RECORD_BYTES,
    },
    topology::TopologyFile,
};

/// What the signals do, shown after the options.
const STOPPING: &str = "Stopping: SIGTERM or SIGINT commit, checkpoint the stores and stop, \
staying a static member of the group until the session timeout (10 s with the classic \
protocol), so that a restart with the same instance id (a rolling upgrade) takes its \
partitions back without a rebalance and restores nothing; meanwhile those partitions pause. \
For a scale-in send SIGUSR1 instead (or run with --leave-group-on-shutdown): the instance gives \
its partitions back to the others before it stops, so they pause only for the handover. \
See docs/operations.md.";

#[derive(Debug, Args)]
#[command(after_help = STOPPING)]
pub struct EngineArgs {
    /// App settings file (global caps, minimum gap, default timezone).
    #[arg(long)]
    app_config: Option<PathBuf>,
    /// Application id: consumer group and changelog prefix.
    #[arg(long, default_value = "herald-engine")]
    app_id: String,
    /// Prefix of every topic name (to share a cluster between deployments).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Unique, stable id of this instance; without it, the id generated on first start and
    /// kept in the state directory.
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Topology file: the replication factor and configs of the changelog topics, and the
    /// formats of the ingest topics (`[ingest]`, see docs/ingest.md).
    #[arg(long, default_value = "topologies/default.toml")]
    topology: PathBuf,
    /// Directory of the local state stores.
    #[arg(long, default_value = ".local/state")]
    state_dir: PathBuf,
    /// Format of both ingest topics, instead of the topology file's: avro, json (or
    /// avro-or-json), confluent, segment or mapping (the last three take their settings from
    /// the file's `[ingest]` table).
    #[arg(long)]
    ingest_format: Option<IngestFormat>,
    /// Longest a transaction stays open while input keeps coming, in milliseconds (caught up
    /// with its input, a worker commits after a tenth of it, and twice its last commit's time).
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// Broker-side transaction timeout in milliseconds: the longest a transaction may stay
    /// open, and how long one left open by a killed instance blocks readers when no other
    /// instance fences it on taking its partitions (KIP-848 groups); at most the broker's
    /// transaction.max.timeout.ms.
    #[arg(long, default_value_t = 10_000)]
    transaction_timeout_ms: u64,
    /// Largest record (key and value) produced (the producer's `message.max.bytes` is 64 bytes
    /// more, for its framing); keep it at least 128 bytes below the broker's. An input whose
    /// output or state would be larger is dead-lettered.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// RocksDB block cache shared by every task of the instance, in MiB: profiles, histories
    /// and dedup windows read from it instead of the page cache (decompressed once).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    block_cache_mb: u16,
    /// RocksDB memtable size of each store of each task, in MiB (two at most per store).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    write_buffer_mb: u16,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Consumer group protocol: classic (client-side range assignor, eager rebalances, 10 s
    /// session timeout) or consumer (KIP-848, brokers 4.0+: broker-side range assignor,
    /// incremental handover, the broker's session timeout of at least 45 s by default).
    #[arg(long, default_value = "classic")]
    group_protocol: GroupProtocol,
    /// Leave the group on every stop (SIGTERM too), handing the partitions over at once: for
    /// deployments whose stops are scale-ins. Without it only SIGUSR1 leaves.
    #[arg(long, env = "HERALD_LEAVE_GROUP_ON_SHUTDOWN")]
    leave_group_on_shutdown: bool,
    /// Warm copies of each task kept by other instances (from the task's changelogs), so that
    /// a failover restores only the tail: as Kafka Streams' num.standby.replicas.
    #[arg(long, default_value_t = 0)]
    standby_replicas: usize,
    /// Records a standby may trail its changelogs' ends by and still count as caught up (its
    /// `standbys … caught_up=` log line): as Kafka Streams' acceptable.recovery.lag.
    #[arg(long, default_value_t = 10_000)]
    standby_acceptable_lag: u64,
    /// How often at most the engine deletes what its committed transactions consumed from the
    /// internal topics (campaign-flow, send-gate, app-throttle, ingest-repartition), which keep
    /// records until then, in milliseconds: as Kafka Streams' repartition.purge.interval.ms. 0
    /// turns it off (those topics then keep every record).
    #[arg(long, default_value_t = 30_000)]
    purge_interval_ms: u64,
    /// A librdkafka property for the engine's clients (security, `session.timeout.ms`,
    /// `fetch.wait.max.ms`, `linger.ms`, `compression.type` …), over the engine's own defaults;
    /// repeatable. Those the engine needs for exactly-once and co-partitioning (group, offsets,
    /// isolation, transactions, partitioner) are refused.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = super::kafka_property)]
    kafka_properties: Vec<(String, String)>,
}

pub fn run(kafka: &KafkaConfig, args: EngineArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(args.app_config.as_deref())?;
    // Checked before any task is built (each signs its query replies with it).
    match herald_engine::query::sign::ReplyKey::from_env()? {
        Some(_) => tracing::info!("query replies are signed with the query key"),
        None => tracing::warn!(
            "no query key (HERALD_QUERY_KEY_FILE, HERALD_QUERY_KEY): query replies are not \
             authenticated; see docs/operations.md"
        ),
    }
    let file = TopologyFile::load(&args.topology)?;
    let decoder = IngestDecoder::from_config(&file.ingest.with_format(args.ingest_format))
        .with_context(|| format!("ingest settings of {}", args.topology.display()))?;
    let topology = engine_topology(
        &args.app_id,
        TopicNames::with_prefix(&args.topic_prefix),
        Arc::new(settings),
        decoder,
        LIVE_STATS_INTERVAL_MS,
    )?;
    let instance_id = instance_id(args.instance_id.as_deref(), &args.state_dir)?;
    let mut kafka = kafka.clone();
    kafka.properties.extend(args.kafka_properties);
    let mut config = RuntimeConfig::new(kafka, instance_id, args.state_dir);
    config.changelogs = file.changelogs;
    config.commit_interval = Duration::from_millis(args.commit_interval_ms);
    config.transaction_timeout = Duration::from_millis(args.transaction_timeout_ms);
    config.max_record_bytes = args.max_record_bytes;
    config.block_cache_bytes = usize::from(args.block_cache_mb) << 20;
    config.write_buffer_bytes = usize::from(args.write_buffer_mb) << 20;
    config.metrics_addr = args.metrics_addr;
    config.group_protocol = args.group_protocol;
    config.leave_group_on_shutdown = args.leave_group_on_shutdown;
    config.standby_replicas = args.standby_replicas;
    config.standby_acceptable_lag = args.standby_acceptable_lag;
    config.purge_interval = Duration::from_millis(args.purge_interval_ms);
    let shutdown = ShutdownFlag::on_signals()?;
    LiveRuntime::new(topology, config).run(&shutdown).context("running the engine")?;
    Ok(ExitCode::SUCCESS)
}
