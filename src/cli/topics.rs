//! `herald topics apply`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    kafka::{apply_topology, KafkaConfig, TopicOutcome},
    topology::Topology,
};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics; report (never change) differences in existing ones.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Topology file.
    #[arg(long, default_value = "topologies/default.toml")]
    topology: PathBuf,
    /// Exit with status 2 when an existing topic differs from the topology.
    #[arg(long)]
    fail_on_drift: bool,
    /// Prefix every topic name (a deployment sharing the cluster, like `--topic-prefix`).
    #[arg(long, default_value = "")]
    prefix: String,
}

pub fn run(kafka: &KafkaConfig, command: TopicsCommand) -> anyhow::Result<ExitCode> {
    let TopicsCommand::Apply(args) = command;
    let mut topology = Topology::load(&args.topology)?;
    for topic in &mut topology.topics {
        topic.name = format!("{}{}", args.prefix, topic.name);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(apply_topology(kafka, &topology))?;
    for (topic, outcome) in &report.topics {
        match outcome {
            TopicOutcome::Created => println!("created  {topic}"),
            TopicOutcome::Matches => println!("ok       {topic}"),
            TopicOutcome::Differs(drift) => {
                for d in drift {
                    println!(
                        "DIFFERS  {topic}: {} is {} on the broker, {} in {} (left unchanged)",
                        d.setting,
                        d.actual,
                        d.expected,
                        args.topology.display()
                    );
                }
            }
        }
    }
    Ok(if args.fail_on_drift && report.has_drift() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}
