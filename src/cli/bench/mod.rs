//! `herald bench …`: benchmarks that print a table and one JSON line.

mod audience;
mod campaign;
mod engines;
mod ingest;
mod runtime;
mod scale;
mod sender;
mod support;
mod user_stage;

use std::process::ExitCode;

use clap::Subcommand;
use herald_engine::kafka::KafkaConfig;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Runtime throughput (raw vs exactly-once vs stateful) and latency.
    Runtime(runtime::RuntimeArgs),
    /// One campaign to many users through the campaign stage, replayed and live.
    Campaign(campaign::CampaignArgs),
    /// User-stage throughput per ingest format and partitioning, against a raw consumer.
    Ingest(ingest::IngestArgs),
    /// The sender's HTTP/2 delivery path against the simulator, beside h2load on the same
    /// endpoint.
    Sender(sender::SenderArgs),
    /// The engine at scale as processes: restore from the changelog, a broadcast on 1 and 2
    /// instances beside a raw producer, failover after a SIGKILL with and without a standby,
    /// the user stage with 20 campaigns beside a raw passthrough.
    Scale(scale::ScaleArgs),
    /// A scheduled run with timezone: user over many generated profiles with history, on the
    /// replay driver: scan rate beside a raw scan of the same store, store size per user, peak
    /// memory.
    Audience(audience::AudienceArgs),
}

pub fn run(kafka: &KafkaConfig, command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Runtime(args) => runtime::run(kafka, args),
        BenchCommand::Campaign(args) => campaign::run(kafka, args),
        BenchCommand::Ingest(args) => ingest::run(kafka, args),
        BenchCommand::Sender(args) => sender::run(args),
        BenchCommand::Scale(args) => scale::run(kafka, args),
        BenchCommand::Audience(args) => audience::run(args),
    }
}
