//! `herald produce`: JSON lines → records on a topic, in one of the ingest formats (Avro
//! single-object by default; Confluent-framed Avro registered with a schema registry; Herald or
//! Segment JSON as they are).

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use apache_avro::types::Value as AvroValue;
use clap::{Args, ValueEnum};
use herald_engine::{
    kafka::{send_waiting, KafkaConfig},
    model::{
        confluent, RegistryClient, RegistryConfig, SchemaRegistry, MAX_TIMESTAMP_MS,
        MIN_TIMESTAMP_MS, REGISTRY_URL_ENV,
    },
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Avro single-object encoding of `--schema`.
    Avro,
    /// Confluent wire format: `--schema` registered as `<topic>-value` in the schema registry,
    /// its id, then the Avro datum.
    Confluent,
    /// The JSON line as it is (Herald's field names).
    Json,
    /// The JSON line as it is (a Segment-spec message); keyed by userId, else anonymousId.
    Segment,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    #[arg(long)]
    topic: String,
    /// Record type of avro and confluent lines: a schema's full or short name, e.g.
    /// io.herald.AppEvent or AppEvent.
    #[arg(long, required_if_eq_any([("format", "avro"), ("format", "confluent")]))]
    schema: Option<String>,
    /// JSON lines file, one record per line.
    #[arg(long)]
    file: PathBuf,
    /// Encoding written.
    #[arg(long, value_enum, default_value_t = Format::Avro)]
    format: Format,
    /// Fields whose value is the message key, the first present one: names of top-level
    /// fields, or JSON pointers such as /actor/id (default: user_id; for segment:
    /// userId,anonymousId).
    #[arg(long, value_delimiter = ',')]
    key_field: Vec<String>,
    /// Field whose value (RFC 3339 text or epoch milliseconds) is each message's timestamp: a
    /// top-level name or a JSON pointer (default: timestamp_ms, else a Segment timestamp).
    #[arg(long)]
    time_field: Option<String>,
    /// Base URL of the Confluent-compatible schema registry API (confluent format).
    #[arg(long, env = REGISTRY_URL_ENV)]
    registry_url: Option<String>,
}

/// Encodes lines in one format.
enum Encoder<'a> {
    Avro { registry: &'a SchemaRegistry, schema: &'a str },
    Confluent { registry: &'a SchemaRegistry, schema: &'a str, id: u32 },
    AsIs,
}

impl Encoder<'_> {
    fn encode(&self, json: Value, line: &str) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Self::Avro { registry, schema } => registry.encode_json(schema, json)?,
            Self::Confluent { registry, schema, id } => {
                confluent::frame(*id, &registry.encode_datum(schema, AvroValue::from(json))?)
            }
            Self::AsIs => line.as_bytes().to_vec(),
        })
    }
}

pub fn run(kafka: &KafkaConfig, args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let registry = SchemaRegistry::builtin();
    let schema = args.schema.as_deref().map(|name| registry.full_name(name)).transpose()?;
    let encoder = match (args.format, schema) {
        (Format::Avro, Some(schema)) => Encoder::Avro { registry, schema },
        (Format::Confluent, Some(schema)) => {
            let url = args.registry_url.clone().with_context(|| {
                format!("the confluent format needs --registry-url (or {REGISTRY_URL_ENV})")
            })?;
            let client = RegistryClient::new(&RegistryConfig::at(url).with_env())?;
            let text = registry.current_schema(schema)?.canonical_form();
            let subject = format!("{}-value", args.topic);
            let id = client
                .register(&subject, &text)
                .with_context(|| format!("registering {schema} as {subject}"))?;
            eprintln!("{schema} is schema id {id} ({subject})");
            Encoder::Confluent { registry, schema, id }
        }
        (Format::Avro | Format::Confluent, None) => anyhow::bail!("--schema is required"),
        (Format::Json | Format::Segment, _) => Encoder::AsIs,
    };
    let key_fields = match (args.key_field.is_empty(), args.format) {
        (false, _) => args.key_field.clone(),
        (true, Format::Segment) => vec!["userId".into(), "anonymousId".into()],
        (true, _) => vec!["user_id".into()],
    };
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
        let json: Value = serde_json::from_str(&line).with_context(at)?;
        let key = key_fields
            .iter()
            .find_map(|field| field_of(&json, field).and_then(Value::as_str))
            .with_context(|| format!("{}: no string field {key_fields:?} for the key", at()))?
            .to_string();
        let timestamp = record_time(&json, args.time_field.as_deref());
        let bytes = encoder.encode(json, &line).with_context(at)?;
        let mut record = BaseRecord::to(&args.topic).key(&key).payload(&bytes);
        if let Some(ms) = timestamp {
            record = record.timestamp(ms);
        }
        send_waiting(&producer, record).with_context(at)?;
        produced += 1;
    }
    producer.flush(Duration::from_secs(30)).context("flushing the producer")?;
    eprintln!("produced {produced} {:?} records to {}", args.format, args.topic);
    Ok(ExitCode::SUCCESS)
}

/// The value of `field` in `json`: a top-level field, or a JSON pointer when it starts with `/`.
fn field_of<'a>(json: &'a Value, field: &str) -> Option<&'a Value> {
    if field.starts_with('/') {
        json.pointer(field)
    } else {
        json.get(field)
    }
}

/// The record's own time, in epoch milliseconds, as the message timestamp (so a replay of the
/// topic runs on event time): `time_field`, else Herald's `timestamp_ms`, else a Segment
/// message's `timestamp`. Out-of-range times are left to the broker.
fn record_time(json: &Value, time_field: Option<&str>) -> Option<i64> {
    let value = match time_field {
        Some(field) => field_of(json, field),
        None => json
            .get("timestamp_ms")
            .or_else(|| json.get("timestamp"))
            .or_else(|| json.get("originalTimestamp")),
    }?;
    let ms = match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text).ok()?.timestamp_millis(),
        other => other.as_i64()?,
    };
    Some(ms).filter(|ms| (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(ms))
}
