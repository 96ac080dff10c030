//! `herald example count`: runs the runtime's example counting topology, live or as a replay.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    kafka::KafkaConfig,
    runtime::{
        example::counting_topology,
        instance_id,
        replay::{self, ReplayInput, ReplayOptions, ReplaySink},
        LiveRuntime, RuntimeConfig, ShutdownFlag, DEFAULT_MAX_RECORD_BYTES,
    },
    topology::TopologyFile,
};

#[derive(Debug, Subcommand)]
pub enum ExampleCommand {
    /// Per-key counts with timers (see engine/src/runtime/example.rs).
    Count(CountArgs),
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Input topic.
    #[arg(long)]
    input: String,
    /// Output topic.
    #[arg(long)]
    output: String,
    /// Application id: consumer group and changelog prefix.
    #[arg(long, default_value = "herald-example-count")]
    app_id: String,
    /// Dead-letter topic.
    #[arg(long, default_value = "herald.dead-letter")]
    dead_letter_topic: String,
    /// Unique, stable id of this instance; without it, the id generated on first start and
    /// kept in the state directory.
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Topology file: the replication factor and configs of the changelog topics.
    #[arg(long, default_value = "topologies/default.toml")]
    topology: PathBuf,
    /// Directory of the local state stores.
    #[arg(long, default_value = ".local/state")]
    state_dir: PathBuf,
    /// Longest a transaction stays open while input keeps coming, in milliseconds (caught up
    /// with its input, a worker commits after a tenth of it, and twice its last commit's time).
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    /// Transaction timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    transaction_timeout_ms: u64,
    /// Largest record (key and value) produced (the producer's `message.max.bytes` is 64 bytes
    /// more, for its framing); keep it at least 128 bytes below the broker's. An input whose
    /// output or state would be larger is dead-lettered.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Replay this JSON lines file on event time instead of running live.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Directory of the replay's output files.
    #[arg(long, default_value = "replay-out")]
    replay_out: PathBuf,
}

pub fn run(kafka: &KafkaConfig, command: ExampleCommand) -> anyhow::Result<ExitCode> {
    let ExampleCommand::Count(args) = command;
    let topology = counting_topology(&args.app_id, &args.input, &args.output)?
        .with_dead_letter_topic(&args.dead_letter_topic);
    if let Some(file) = args.replay {
        let summary = replay::run(
            &topology,
            ReplayInput::Jsonl(file),
            ReplaySink::JsonlDir(args.replay_out.clone()),
            &ReplayOptions::default(),
        )?;
        eprintln!(
            "replayed {} records; outputs {:?}; {} timers fired; files in {}",
            summary.records_in,
            summary.outputs,
            summary.timers_fired,
            args.replay_out.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let instance_id = instance_id(args.instance_id.as_deref(), &args.state_dir)?;
    let mut config = RuntimeConfig::new(kafka.clone(), instance_id, args.state_dir);
    config.changelogs = TopologyFile::load(&args.topology)?.changelogs;
    config.commit_interval = Duration::from_millis(args.commit_interval_ms);
    config.max_record_bytes = args.max_record_bytes;
    config.transaction_timeout = Duration::from_millis(args.transaction_timeout_ms);
    config.metrics_addr = args.metrics_addr;
    let shutdown = ShutdownFlag::on_signals()?;
    LiveRuntime::new(topology, config).run(&shutdown).context("running the counting topology")?;
    Ok(ExitCode::SUCCESS)
}
