//! `herald replay`: backtest campaigns over a JSON lines file on event time.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    backtest::{Backtest, TopicSource},
    kafka::KafkaConfig,
    model::{topics::TopicNames, IngestDecoder, IngestFormat},
    topology::TopologyFile,
};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Campaign files or directories of them.
    #[arg(long, required = true, num_args = 1..)]
    campaigns: Vec<PathBuf>,
    /// Input JSON lines (see docs/replay.md).
    #[arg(long, required_unless_present = "from_topics")]
    input: Option<PathBuf>,
    /// Replay the records of the cluster's ingest topics (events and profiles, under
    /// `--topic-prefix`) instead of an input file, decoded in the formats of `--topology`.
    #[arg(long, conflicts_with = "input")]
    from_topics: bool,
    /// Prefix of the ingest topics' names, with --from-topics.
    #[arg(long, default_value = "", requires = "from_topics")]
    topic_prefix: String,
    /// Topology file whose `[ingest]` table gives the topics' formats, with --from-topics.
    #[arg(long, default_value = "topologies/default.toml", requires = "from_topics")]
    topology: PathBuf,
    /// Format of both ingest topics, instead of the topology file's, with --from-topics.
    #[arg(long, requires = "from_topics")]
    ingest_format: Option<IngestFormat>,
    /// Output directory: candidates.jsonl, skips.jsonl, engagements.jsonl, dead-letters.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// App settings file (global caps, minimum gap, default timezone).
    #[arg(long)]
    app_config: Option<PathBuf>,
    /// App of input lines without one (default: the first campaign's app).
    #[arg(long)]
    app: Option<String>,
    /// Fire timers due up to this RFC 3339 time (default: the last input time).
    #[arg(long)]
    until: Option<String>,
    /// Tasks per stage, as partitions of the live topics (the outcome does not depend on it).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Stop at the first malformed input line instead of reporting it in dead-letters.jsonl.
    #[arg(long)]
    strict: bool,
}

pub fn run(kafka: &KafkaConfig, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(args.app_config.as_deref())?;
    let until_ms = args
        .until
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_millis()))
        .transpose()
        .context("--until must be an RFC 3339 time")?;
    let backtest = Backtest {
        campaigns: args.campaigns,
        input: args.input.unwrap_or_default(),
        out: args.out.clone(),
        settings,
        app: args.app,
        until_ms,
        partitions: args.partitions,
    };
    let summary = if args.from_topics {
        let ingest = TopologyFile::load(&args.topology)?.ingest.with_format(args.ingest_format);
        let source = TopicSource {
            kafka: kafka.clone(),
            topics: TopicNames::with_prefix(&args.topic_prefix),
            decoder: IngestDecoder::from_config(&ingest)
                .with_context(|| format!("ingest settings of {}", args.topology.display()))?,
        };
        backtest.run_topics(&source)?
    } else if args.strict {
        backtest.run_strict()?
    } else {
        backtest.run()?
    };
    println!(
        "replayed {} records: {} candidates, {} sends, {} skips, {} engagements, {} campaign events, \
         {} dead letters; files in {}",
        summary.records,
        summary.candidates,
        summary.sends,
        summary.skips,
        summary.engagements,
        summary.campaign_events,
        summary.dead_letters,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
