//! `herald segment validate|apply|list|delete`: check saved segment files, publish them to the
//! segments topic (key: id, value: the file's text), list them, delete one no campaign uses.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    campaign::{admin, parse_segment, Segment},
    kafka::KafkaConfig,
    model::{CampaignEnvelope, SchemaRegistry},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};

#[derive(Debug, Subcommand)]
pub enum SegmentCommandArgs {
    /// Check segment files; print every error with its field path.
    Validate(FilesArgs),
    /// Check segment files and publish them; nothing is published if any file is invalid.
    /// Every campaign using a segment sees the new version from then on.
    Apply(ApplyArgs),
    /// List the published segments.
    List(TopicArgs),
    /// Delete a segment; refused, with the campaigns named, while a campaign that is not
    /// stopped references it.
    Delete(DeleteArgs),
    /// Ask the running engine how many users are in a published segment now, and how many of
    /// them push reaches (per platform); counted by every user-stage task from its own stores.
    /// Shows progress; exits 3 when some partitions did not answer within --timeout.
    Estimate(EstimateSegmentArgs),
}

#[derive(Debug, Args)]
pub struct EstimateSegmentArgs {
    /// Segment id.
    id: String,
    #[command(flatten)]
    estimate: super::estimate::EstimateArgs,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Segment definition files (YAML or JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TopicArgs {
    /// Topic of saved segments.
    #[arg(long, default_value = "herald.segments")]
    topic: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FilesArgs,
    #[command(flatten)]
    topic: TopicArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Segment id.
    id: String,
    #[command(flatten)]
    topic: TopicArgs,
    /// Topic of campaign definitions, checked for campaigns using the segment.
    #[arg(long, default_value = "herald.campaigns")]
    campaigns_topic: String,
}

pub fn run(kafka: &KafkaConfig, command: SegmentCommandArgs) -> anyhow::Result<ExitCode> {
    match command {
        SegmentCommandArgs::Validate(args) => {
            Ok(if load(&args.files)?.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        SegmentCommandArgs::Apply(args) => {
            let Some(segments) = load(&args.files.files)? else {
                eprintln!("nothing published: fix the errors above first");
                return Ok(ExitCode::from(2));
            };
            for (segment, text) in segments {
                publish(kafka, &args.topic.topic, &segment.id, Some(text.as_bytes()))?;
                println!("published {} to {}", segment.id, args.topic.topic);
            }
            Ok(ExitCode::SUCCESS)
        }
        SegmentCommandArgs::List(args) => {
            for (id, value) in read_table(kafka, &args.topic)? {
                let text = String::from_utf8_lossy(&value);
                match parse_segment(&text, &id) {
                    Ok(segment) => println!("{id}\t{}", segment.name),
                    Err(errors) => println!("{id}\tINVALID {errors}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SegmentCommandArgs::Delete(args) => delete(kafka, &args),
        SegmentCommandArgs::Estimate(args) => {
            let question = herald_engine::query::estimate::Question::Segment {
                id: args.id.clone(),
                at_ms: chrono::Utc::now().timestamp_millis(),
            };
            let what = format!("segment {}", args.id);
            super::estimate::run(kafka, &args.estimate, &what, &question, None)
        }
    }
}

/// Reads and validates every file: each segment with its text, or all errors printed (two
/// files with one id is one).
fn load(files: &[PathBuf]) -> anyhow::Result<Option<Vec<(Segment, String)>>> {
    let mut valid: Vec<(Segment, String)> = Vec::new();
    let mut failed = false;
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        match parse_segment(&text, &path.display().to_string()) {
            Ok(segment) if valid.iter().any(|(s, _)| s.id == segment.id) => {
                failed = true;
                println!(
                    "INVALID  {}: id: segment {} is defined twice",
                    path.display(),
                    segment.id
                );
            }
            Ok(segment) => {
                println!("ok       {} ({}: {})", path.display(), segment.id, segment.name);
                valid.push((segment, text));
            }
            Err(errors) => {
                failed = true;
                println!("INVALID  {errors}");
            }
        }
    }
    Ok((!failed).then_some(valid))
}

fn delete(kafka: &KafkaConfig, args: &DeleteArgs) -> anyhow::Result<ExitCode> {
    if !read_table(kafka, &args.topic.topic)?.contains_key(&args.id) {
        eprintln!("segment {} not found in {}", args.id, args.topic.topic);
        return Ok(ExitCode::from(2));
    }
    let mut envelopes = Vec::new();
    for (id, value) in read_table(kafka, &args.campaigns_topic)? {
        match SchemaRegistry::builtin().decode::<CampaignEnvelope>(&value) {
            Ok(envelope) => envelopes.push(envelope),
            Err(reason) => eprintln!("warning: campaign {id} not readable ({reason})"),
        }
    }
    let users = admin::segment_users(&args.id, &envelopes);
    for (id, reason) in &users.unreadable {
        eprintln!("warning: campaign {id} not readable ({reason})");
    }
    let users = users.campaigns;
    if !users.is_empty() {
        eprintln!(
            "segment {} is in use by campaign(s) {}: stop them or change their who first",
            args.id,
            users.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    publish(kafka, &args.topic.topic, &args.id, None)?;
    println!("deleted {} from {}", args.id, args.topic.topic);
    Ok(ExitCode::SUCCESS)
}

/// Publishes `value` (`None`: a tombstone) keyed `key` and waits for the broker's ack.
fn publish(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
    value: Option<&[u8]>,
) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .context("creating the Kafka producer")?;
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
    if let Some(value) = value {
        record = record.payload(value);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime
        .block_on(producer.send(record, Duration::from_secs(30)))
        .map_err(|(error, _)| error)
        .with_context(|| format!("publishing {key} to {topic}"))?;
    Ok(())
}

/// The latest value per key of a compacted `topic`, read to its end (tombstones remove keys).
pub(crate) fn read_table(
    kafka: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-cli")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating the Kafka consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} not found");
    let mut table = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        if low >= high {
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // A transactional writer's last record is followed by a commit marker the consumer never
        // returns: 2 s without a record after it also ends the partition.
        let mut idle = 0;
        while idle < 20 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "reading {topic}/{partition} to offset {high} took over 30 s"
            );
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                idle += 1;
                continue;
            };
            idle = 0;
            let message = message?;
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            match message.payload() {
                Some(value) => table.insert(key, value.to_vec()),
                None => table.remove(&key),
            };
            if message.offset() + 1 >= high {
                break;
            }
        }
    }
    Ok(table)
}
