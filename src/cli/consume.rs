//! `herald consume`: print a topic's records decoded, one JSON object per line.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use herald_engine::{kafka::KafkaConfig, model::SchemaRegistry};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};
use serde_json::json;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Start at the first record at or after this time (epoch milliseconds) instead of the
    /// beginning of each partition.
    #[arg(long)]
    since_ms: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<usize>,
    /// Stop when no record arrives for this many seconds.
    #[arg(long, default_value_t = 5)]
    idle_secs: u64,
}

pub fn run(kafka: &KafkaConfig, args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let registry = SchemaRegistry::builtin();
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-cli-consume")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .context("fetching topic metadata")?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == args.topic) else {
        bail!("topic {} not found", args.topic);
    };
    if let Some(error) = topic.error() {
        bail!("topic {}: {}", args.topic, rdkafka::types::RDKafkaErrorCode::from(error));
    }
    let start = args.since_ms.map_or(Offset::Beginning, Offset::Offset);
    let mut assignment = TopicPartitionList::new();
    for partition in topic.partitions() {
        assignment.add_partition_offset(&args.topic, partition.id(), start)?;
    }
    if args.since_ms.is_some() {
        // With a time in place of an offset, Kafka answers the first offset at or after it.
        assignment = consumer
            .offsets_for_times(assignment, Duration::from_secs(10))
            .context("looking up offsets for --since-ms")?;
    }
    consumer.assign(&assignment)?;

    let idle = Duration::from_secs(args.idle_secs);
    let mut last = Instant::now();
    let mut printed = 0usize;
    while args.max.is_none_or(|max| printed < max) && last.elapsed() < idle {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.context("reading from Kafka")?;
        last = Instant::now();
        let key = message.key().map(String::from_utf8_lossy);
        let decoded = match message.payload().map(|bytes| registry.decode_value(bytes)) {
            None => json!({"tombstone": true}),
            Some(Ok((schema, value))) => match serde_json::Value::try_from(value) {
                Ok(value) => json!({"schema": schema, "value": value}),
                Err(e) => json!({"schema": schema, "error": e.to_string()}),
            },
            Some(Err(e)) => json!({"error": e.to_string()}),
        };
        let line = json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": key,
            "record": decoded,
        });
        println!("{line}");
        printed += 1;
    }
    eprintln!("read {printed} records from {}", args.topic);
    Ok(ExitCode::SUCCESS)
}
