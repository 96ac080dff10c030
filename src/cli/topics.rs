//! `herald topics apply` and `herald topics delete`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    kafka::{apply_topology, delete_topics_with_prefix, KafkaConfig, TopicOutcome},
    topology::Topology,
};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics; report (never change) differences in existing ones.
    Apply(ApplyArgs),
    /// Delete every topic whose name starts with a prefix (e.g. the leftovers of test runs).
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Name prefix of the topics to delete; repeatable. Required: nothing is deleted without.
    #[arg(long = "prefix", required = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    prefixes: Vec<String>,
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
    match command {
        TopicsCommand::Apply(args) => apply(kafka, args),
        TopicsCommand::Delete(args) => delete(kafka, args),
    }
}

fn delete(kafka: &KafkaConfig, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let deleted = runtime.block_on(delete_topics_with_prefix(kafka, &args.prefixes))?;
    println!("deleted {} topics starting with {}", deleted.len(), args.prefixes.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn apply(kafka: &KafkaConfig, args: ApplyArgs) -> anyhow::Result<ExitCode> {
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
