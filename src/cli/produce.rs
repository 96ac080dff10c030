//! `herald produce`: JSON lines → Avro single-object records on a topic.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    kafka::{send_waiting, KafkaConfig},
    model::SchemaRegistry,
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    #[arg(long)]
    topic: String,
    /// Record type: a schema's full or short name, e.g. io.herald.AppEvent or AppEvent.
    #[arg(long)]
    schema: String,
    /// JSON lines file, one record per line with the schema's field names.
    #[arg(long)]
    file: PathBuf,
    /// Field whose value is the message key.
    #[arg(long, default_value = "user_id")]
    key_field: String,
}

pub fn run(kafka: &KafkaConfig, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let registry = SchemaRegistry::builtin();
    let schema = registry.full_name(&args.schema)?;
    let file =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        // Kafka's Java-compatible key partitioner, as the engine uses.
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the Kafka producer")?;

    let mut produced = 0usize;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", args.file.display(), index + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(&line).with_context(at)?;
        let key = json
            .get(&args.key_field)
            .and_then(serde_json::Value::as_str)
            .with_context(|| format!("{}: no string field {:?} for the key", at(), args.key_field))?
            .to_string();
        let bytes = registry.encode_json(schema, json).with_context(at)?;
        let record = BaseRecord::to(&args.topic).key(&key).payload(&bytes);
        send_waiting(&producer, record).with_context(at)?;
        produced += 1;
    }
    producer.flush(Duration::from_secs(30)).context("flushing the producer")?;
    eprintln!("produced {produced} {schema} records to {}", args.topic);
    Ok(ExitCode::SUCCESS)
}
