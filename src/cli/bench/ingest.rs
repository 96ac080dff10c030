//! `herald bench ingest`: user-stage throughput on the same app events in each ingest shape,
//! each as a ratio to a raw consumer reading the same records in the same run:
//! Avro correctly partitioned (murmur2 of the user id, the engine's partitioner), Avro
//! mis-partitioned (librdkafka's default CRC32 partitioner: most records are forwarded through
//! `herald.ingest-repartition`), Confluent wire format (writer schema from a schema registry),
//! and Segment-spec JSON. No campaign is defined, so what is measured is the ingest path: the
//! partition check, decoding, validation at the door, de-duplication by event id and forwarding.
//! Prints a table and one JSON line; its `ratio` is the correctly partitioned Avro case.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use apache_avro::types::Value as AvroValue;
use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    model::{
        confluent, topics::TopicNames, AppEvent, IngestConfig, IngestDecoder, IngestFormat,
        PropertyValue, Record, RegistryClient, RegistryConfig, SchemaRegistry, TopicIngest,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::{LiveRuntime, RuntimeConfig, RuntimeMetrics, ShutdownFlag},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::Producer,
};
use serde_json::json;

use super::{
    sender::cpu_ms,
    support::{create_topics, now_ms, send},
};

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// App events per case.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Distinct users the events belong to.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Partitions of the ingest topics.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Base URL of the Confluent-compatible schema registry for the confluent case (skipped
    /// when it cannot be reached).
    #[arg(
        long,
        env = "HERALD_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7"
    )]
    registry_url: String,
    /// Run only these cases (default: all): partitioned, mispartitioned, confluent, segment.
    #[arg(long = "case", value_delimiter = ',')]
    cases: Vec<String>,
}

/// One shape of the same events.
struct Case {
    id: &'static str,
    name: &'static str,
    format: IngestFormat,
    /// librdkafka partitioner of the producer.
    partitioner: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        id: "partitioned",
        name: "avro, partitioned by user",
        format: IngestFormat::Avro,
        partitioner: "murmur2_random",
    },
    Case {
        id: "mispartitioned",
        name: "avro, mis-partitioned",
        format: IngestFormat::Avro,
        partitioner: "consistent_random",
    },
    Case {
        id: "confluent",
        name: "confluent avro",
        format: IngestFormat::Confluent,
        partitioner: "murmur2_random",
    },
    Case {
        id: "segment",
        name: "segment json",
        format: IngestFormat::Segment,
        partitioner: "murmur2_random",
    },
];

/// What one case measured.
struct Measured {
    raw_rate: f64,
    engine_rate: f64,
    forwarded: u64,
    /// Seconds the engine spent committing transactions, and how many it committed.
    commit_seconds: f64,
    commits: u64,
    /// Changelog records written per event.
    changelog_per_event: f64,
    /// CPU time of this process (engine and its Kafka clients) per event while the engine ran.
    cpu_us_per_event: f64,
}

pub fn run(kafka: &KafkaConfig, args: IngestArgs) -> anyhow::Result<std::process::ExitCode> {
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let base_ms = now_ms();
    let events: Vec<AppEvent> = (0..args.events)
        .map(|i| AppEvent {
            event_id: format!("e-{run_id}-{i}"),
            app_id: "shop".into(),
            user_id: format!("u{}", i % args.users),
            name: "Ping".into(),
            timestamp_ms: base_ms + (i / 1_000) as i64,
            properties: [("item".to_string(), PropertyValue::String("tea".into()))].into(),
            sdk_version: None,
        })
        .collect();
    let registry = RegistryConfig::at(&args.registry_url).with_env();
    let mut rows = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        if !args.cases.is_empty() && !args.cases.iter().any(|id| id == case.id) {
            continue;
        }
        let prefix = format!("bench-{run_id}-ingest{index}-");
        let topics = TopicNames::with_prefix(&prefix);
        let values = match encode(case, &events, &topics, &registry) {
            Ok(values) => values,
            Err(error) if case.format == IngestFormat::Confluent => {
                eprintln!("{}: skipped ({error:#})", case.name);
                continue;
            }
            Err(error) => return Err(error),
        };
        eprintln!("{}: producing {} events", case.name, values.len());
        let names = topics.all().map(str::to_string);
        create_topics(kafka, &names, args.partitions, |_| false)?;
        let producer = kafka
            .client_config()
            .set("partitioner", case.partitioner)
            .set("linger.ms", "5")
            .create::<rdkafka::producer::ThreadedProducer<_>>()
            .context("creating a producer")?;
        for (event, value) in events.iter().zip(&values) {
            send(&producer, &topics.events, event.user_id.as_bytes(), value, None)?;
        }
        producer.flush(Duration::from_secs(120))?;
        drop(values);
        let decoder = decoder(case, &registry)?;
        let measured = measure(kafka, &prefix, &topics, decoder, args.events)?;
        rows.push((case.name, measured));
    }

    println!(
        "{:<28} {:>10} {:>13} {:>13} {:>6} {:>8} {:>9} {:>11} {:>9}",
        "case",
        "forwarded",
        "raw events/s",
        "engine evt/s",
        "ratio",
        "commits",
        "commit s",
        "changelog/e",
        "cpu µs/e"
    );
    for (name, m) in &rows {
        println!(
            "{:<28} {:>10} {:>13.0} {:>13.0} {:>6.3} {:>8} {:>9.2} {:>11.2} {:>9.1}",
            name,
            m.forwarded,
            m.raw_rate,
            m.engine_rate,
            m.engine_rate / m.raw_rate,
            m.commits,
            m.commit_seconds,
            m.changelog_per_event,
            m.cpu_us_per_event
        );
    }
    let ratio_of =
        |name: &str| rows.iter().find(|(n, _)| *n == name).map(|(_, m)| m.engine_rate / m.raw_rate);
    let ratio = ratio_of(CASES[0].name).unwrap_or_default();
    let summary = json!({
        "bench": "ingest",
        "events": args.events,
        "users": args.users,
        "partitions": args.partitions,
        "ratio": ratio,
        "ratio_mispartitioned": ratio_of(CASES[1].name),
        "ratio_confluent": ratio_of(CASES[2].name),
        "ratio_segment_json": ratio_of(CASES[3].name),
        "cases": rows.iter().map(|(name, m)| json!({
            "case": name,
            "raw_per_s": m.raw_rate.round(),
            "engine_per_s": m.engine_rate.round(),
            "forwarded": m.forwarded,
            "commits": m.commits,
            "commit_s": (m.commit_seconds * 1000.0).round() / 1000.0,
            "changelog_per_event": (m.changelog_per_event * 100.0).round() / 100.0,
            "cpu_us_per_event": (m.cpu_us_per_event * 10.0).round() / 10.0,
        })).collect::<Vec<_>>(),
    });
    println!("{summary}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// The events in the case's wire format.
fn encode(
    case: &Case,
    events: &[AppEvent],
    topics: &TopicNames,
    registry: &RegistryConfig,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let schemas = SchemaRegistry::builtin();
    match case.format {
        IngestFormat::Confluent => {
            let client = RegistryClient::new(registry)?;
            let text = schemas.current_schema(AppEvent::FULL_NAME)?.canonical_form();
            let id = client.register(&format!("{}-value", topics.events), &text)?;
            events
                .iter()
                .map(|event| {
                    let value = AvroValue::from(serde_json::to_value(event)?);
                    Ok(confluent::frame(id, &schemas.encode_datum(AppEvent::FULL_NAME, value)?))
                })
                .collect()
        }
        IngestFormat::Segment => events
            .iter()
            .map(|event| {
                let at = chrono::DateTime::from_timestamp_millis(event.timestamp_ms)
                    .context("event time")?;
                let message = json!({
                    "type": "track",
                    "event": event.name,
                    "userId": event.user_id,
                    "messageId": event.event_id,
                    "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "properties": { "item": "tea" },
                });
                Ok(serde_json::to_vec(&message)?)
            })
            .collect(),
        _ => Ok(events.iter().map(|event| schemas.encode(event)).collect::<Result<_, _>>()?),
    }
}

/// The user stage's decoder for the case's format.
fn decoder(case: &Case, registry: &RegistryConfig) -> anyhow::Result<IngestDecoder> {
    let events = TopicIngest {
        format: case.format,
        app: (case.format == IngestFormat::Segment).then(|| "shop".to_string()),
        ..TopicIngest::default()
    };
    let config = IngestConfig { events, registry: registry.clone(), ..IngestConfig::default() };
    Ok(IngestDecoder::from_config(&config)?)
}

/// Reads the case's events raw, then runs the engine over them: records per second of each,
/// from the first record to the last.
fn measure(
    kafka: &KafkaConfig,
    prefix: &str,
    topics: &TopicNames,
    decoder: IngestDecoder,
    expected: usize,
) -> anyhow::Result<Measured> {
    let raw_rate = raw_consume_rate(kafka, &topics.events, expected)?;
    let topology = engine_topology(
        &format!("{prefix}engine"),
        topics.clone(),
        Arc::default(),
        decoder,
        LIVE_STATS_INTERVAL_MS,
    )?;
    let state = tempfile::tempdir()?;
    let shutdown = ShutdownFlag::default();
    let runtime = LiveRuntime::new(
        topology,
        RuntimeConfig::new(kafka.clone(), "bench", state.path().to_path_buf()),
    );
    let metrics = Arc::clone(runtime.metrics());
    let worker = {
        let shutdown = shutdown.clone();
        thread::spawn(move || runtime.run(&shutdown))
    };
    let measured = watch_engine(&metrics, topics, expected);
    shutdown.request();
    worker.join().expect("runtime thread")?;
    let (engine_rate, forwarded, cpu_ms) = measured?;
    let changelog: f64 = metrics
        .registry
        .gather()
        .iter()
        .filter(|family| family.name() == "herald_runtime_changelog_records_total")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value())
        .sum();
    Ok(Measured {
        raw_rate,
        engine_rate,
        forwarded,
        commit_seconds: metrics.commit_seconds.get_sample_sum(),
        commits: metrics.commit_seconds.get_sample_count(),
        changelog_per_event: changelog / expected as f64,
        cpu_us_per_event: cpu_ms * 1e3 / expected as f64,
    })
}

/// Events per second the engine processed, from its first event to the moment every event
/// (and every forwarded copy) was processed; how many were forwarded; and the CPU time (ms) this
/// process spent meanwhile.
fn watch_engine(
    metrics: &RuntimeMetrics,
    topics: &TopicNames,
    expected: usize,
) -> anyhow::Result<(f64, u64, f64)> {
    let read = |topic: &str| metrics.records_in.with_label_values(&[topic]).get();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the engine did not process every event");
        let events = read(&topics.events);
        if events > 0 && first.is_none() {
            first = Some((Instant::now(), cpu_ms(None)?));
        }
        let forwarded = metrics.processor_count("ingest_forwarded_total", "event");
        if events >= expected as u64 && read(&topics.ingest_repartition) >= forwarded {
            let (started, cpu) = first.unwrap_or((Instant::now(), cpu_ms(None)?));
            let span = started.elapsed().as_secs_f64().max(1e-3);
            return Ok((expected as f64 / span, forwarded, cpu_ms(None)? - cpu));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Records per second a plain consumer reads `expected` records of `topic` at, from the first
/// record to the last.
fn raw_consume_rate(kafka: &KafkaConfig, topic: &str, expected: usize) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{topic}-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut first, mut seen) = (None, 0usize);
    while seen < expected {
        anyhow::ensure!(Instant::now() < deadline, "read {seen} of {expected} records of {topic}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            message?;
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let span = first.map_or(0.0, |t| t.elapsed().as_secs_f64()).max(1e-3);
    Ok(expected as f64 / span)
}
