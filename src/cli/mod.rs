//! Command-line arguments and dispatch to one module per command.

mod api;
mod bench;
mod campaign;
mod consume;
mod engine;
mod estimate;
mod example;
mod preview;
mod produce;
mod replay;
mod segment;
mod send;
mod sim;
mod topics;
mod traffic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_engine::kafka::{KafkaConfig, DEFAULT_BROKERS};

/// Herald: Kafka-native push-notification campaigns.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, global = true, env = "HERALD_BROKERS", default_value = DEFAULT_BROKERS)]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the topics of a topology file.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Produce JSON lines from a file to a topic: Avro single-object, Confluent-framed Avro, or
    /// JSON (Herald's or Segment's) as it is.
    Produce(produce::ProduceArgs),
    /// Read a topic and print its records decoded, one JSON object per line.
    Consume(consume::ConsumeArgs),
    /// Serve the admin HTTP API.
    Api(api::ApiArgs),
    /// Validate and publish campaign definitions.
    #[command(subcommand)]
    Campaign(campaign::CampaignCommandArgs),
    /// Validate, publish, list and delete saved segments.
    #[command(subcommand)]
    Segment(segment::SegmentCommandArgs),
    /// Benchmarks; each prints a table and one JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run the campaign engine live (the user stage).
    Engine(engine::EngineArgs),
    /// Backtest campaigns over a JSON lines file of profiles and events, on event time.
    Replay(replay::ReplayArgs),
    /// Deliver send commands to APNs and FCM and produce receipts (a sender instance).
    Send(send::SendArgs),
    /// Run the APNs/FCM provider simulator.
    Sim(sim::SimArgs),
    /// Produce synthetic app events for the simulator's population (the demo).
    Traffic(traffic::TrafficArgs),
    /// Run an example topology of the streaming runtime.
    #[command(subcommand)]
    Example(example::ExampleCommand),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let kafka = KafkaConfig::new(cli.brokers);
    match cli.command {
        Command::Topics(command) => topics::run(&kafka, command),
        Command::Produce(args) => produce::run(&kafka, args),
        Command::Consume(args) => consume::run(&kafka, args),
        Command::Example(command) => example::run(&kafka, command),
        Command::Bench(command) => bench::run(&kafka, command),
        Command::Campaign(command) => campaign::run(&kafka, command),
        Command::Segment(command) => segment::run(&kafka, command),
        Command::Api(args) => api::run(&kafka, args),
        Command::Replay(args) => replay::run(&kafka, args),
        Command::Engine(args) => engine::run(&kafka, args),
        Command::Send(args) => send::run(&kafka, args),
        Command::Sim(args) => sim::run(&kafka, args),
        Command::Traffic(args) => traffic::run(&kafka, args),
    }
}

/// A `--kafka-property` argument: `KEY=VALUE`.
fn kafka_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// App settings from `path`, or the defaults (no caps, UTC) without one.
fn load_settings(
    path: Option<&std::path::Path>,
) -> anyhow::Result<herald_engine::settings::Settings> {
    use anyhow::Context;
    let Some(path) = path else { return Ok(Default::default()) };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(herald_engine::settings::Settings::parse(&text, &path.display().to_string())?)
}
