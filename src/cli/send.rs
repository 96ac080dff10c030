//! `herald send`: a sender instance in the consumer group on `herald.push`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    model::topics::TopicNames,
    runtime::{instance_id, ShutdownFlag},
    sender::{self, config::SenderConfig, intents::INTENTS, status::Status, SenderOptions},
};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Sender configuration (apps, credentials, endpoints, limits).
    #[arg(long, required_unless_present = "status")]
    config: Option<PathBuf>,
    /// Print the status of the instances under --state-dir (in flight, backlog, commands
    /// parked on a refused credential) and exit.
    #[arg(long)]
    status: bool,
    /// Prefix of the topic names.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Consumer group of the senders.
    #[arg(long, default_value = "herald-senders")]
    group: String,
    /// This instance's unique id (stable across restarts: it keeps its shards and dedup
    /// memory); without it, the id generated on first start and kept in the state directory.
    #[arg(long, env = "HERALD_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Local state (dedup store).
    #[arg(long, default_value = ".local/sender")]
    state_dir: PathBuf,
    /// Serve /metrics on this address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// A librdkafka property for the sender's clients (security, timeouts …), over the
    /// sender's own defaults (e.g. `max.poll.interval.ms=60000`); repeatable.
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = super::kafka_property)]
    kafka_properties: Vec<(String, String)>,
}

pub fn run(kafka: &KafkaConfig, args: SendArgs) -> anyhow::Result<ExitCode> {
    if args.status {
        let statuses = Status::read_all(&args.state_dir)?;
        if statuses.is_empty() {
            println!("no sender instance under {}", args.state_dir.display());
        }
        let now = chrono::Utc::now().timestamp_millis();
        for status in statuses {
            print!("{}", status.render(now));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.config.context("--config is required")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = SenderConfig::parse(&text, &path.display().to_string())?;
    let topics = TopicNames::with_prefix(&args.topic_prefix);
    let instance_id = instance_id(args.instance_id.as_deref(), &args.state_dir)?;
    let options = SenderOptions {
        kafka: KafkaConfig {
            brokers: kafka.brokers.clone(),
            properties: kafka.properties.clone().into_iter().chain(args.kafka_properties).collect(),
        },
        push_topic: topics.push,
        receipts_topic: topics.receipts,
        intents_topic: format!("{}{INTENTS}", args.topic_prefix),
        dead_letter_topic: topics.dead_letter,
        group: args.group,
        state_dir: args.state_dir.join(&instance_id),
        instance_id,
        metrics_addr: args.metrics_addr,
    };
    let shutdown = ShutdownFlag::on_signals()?;
    sender::run(config, options, shutdown)?;
    Ok(ExitCode::SUCCESS)
}
