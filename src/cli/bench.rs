//! `herald bench runtime`: throughput of the streaming runtime against a raw passthrough on the
//! same broker, and the event → output latency of the stateful topology at half its maximum.
//! Prints a table and one JSON line.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use herald_engine::{
    kafka::{apply_topology, KafkaConfig},
    runtime::{
        example::counting_topology, LiveRuntime, ProcessError, Processor, ProcessorContext,
        RuntimeConfig, ShutdownFlag, SourceRecord, StreamTopology,
    },
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    types::RDKafkaErrorCode,
    Message,
};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Runtime throughput (raw vs exactly-once vs stateful) and latency.
    Runtime(RuntimeArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Input records per throughput run.
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Distinct keys in the input.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Seconds of paced input for the latency run.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
}

pub fn run(kafka: &KafkaConfig, command: BenchCommand) -> anyhow::Result<ExitCode> {
    let BenchCommand::Runtime(args) = command;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = |name: &str| format!("bench-{run_id}-{name}");
    let topics = ["in", "t-out-raw", "t-out-eos", "t-out-count", "lat-in", "lat-out", "dlq"];
    create_topics(kafka, &topics.map(topic), args.partitions)?;
    let state = tempfile::tempdir()?;

    eprintln!("producing {} input records to {}", args.records, topic("in"));
    let producer = producer(kafka)?;
    let payload = [b'x'; 32];
    for i in 0..args.records {
        send(&producer, &topic("in"), format!("k{}", i % args.keys).as_bytes(), &payload, None)?;
    }
    producer.flush(Duration::from_secs(60))?;

    eprintln!("(a) raw passthrough");
    let raw = {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (kafka, stop, input, output) =
                (kafka.clone(), Arc::clone(&stop), topic("in"), topic("t-out-raw"));
            thread::spawn(move || raw_passthrough(&kafka, &input, &output, &stop))
        };
        let rate = measure_rate(kafka, &topic("t-out-raw"), args.records)?;
        stop.store(true, Ordering::SeqCst);
        worker.join().expect("raw passthrough thread")?;
        rate
    };

    eprintln!("(b) exactly-once passthrough");
    let passthrough = StreamTopology::builder(topic("eos"))
        .dead_letter_topic(topic("dlq"))
        .sub_topology(
            "pass",
            {
                let output = topic("t-out-eos");
                move |_| Passthrough { output: output.clone() }
            },
            |s| s.source(topic("in")).sink(topic("t-out-eos")),
        )
        .build()?;
    let eos = with_runtime(kafka, passthrough, state.path().join("b"), || {
        measure_rate(kafka, &topic("t-out-eos"), args.records)
    })?;

    eprintln!("(c) stateful counting, exactly-once");
    let counting = counting_topology(&topic("count"), &topic("in"), &topic("t-out-count"))?
        .with_dead_letter_topic(topic("dlq"));
    let stateful = with_runtime(kafka, counting, state.path().join("c"), || {
        measure_rate(kafka, &topic("t-out-count"), args.records)
    })?;

    let latency_rate = stateful / 2.0;
    eprintln!("(c) latency at {latency_rate:.0} records/s for {} s", args.latency_seconds);
    let counting = counting_topology(&topic("lat"), &topic("lat-in"), &topic("lat-out"))?
        .with_dead_letter_topic(topic("dlq"));
    let latencies = with_runtime(kafka, counting, state.path().join("l"), || {
        measure_latency(kafka, &topic("lat-in"), &topic("lat-out"), latency_rate, &args)
    })?;
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));

    let ratio = stateful / raw;
    println!("{:<38} {:>12}", "run", "records/s");
    println!("{:<38} {:>12.0}", "(a) raw passthrough, no transactions", raw);
    println!("{:<38} {:>12.0}", "(b) passthrough, exactly-once", eos);
    println!("{:<38} {:>12.0}", "(c) stateful count, exactly-once", stateful);
    println!("{:<38} {:>12.2}   (target >= 0.5)", "ratio (c)/(a)", ratio);
    println!(
        "{:<38} {:>12}",
        format!("(c) latency at {latency_rate:.0}/s"),
        format!("p50 {p50} ms, p99 {p99} ms")
    );
    println!(
        "{}",
        json!({
            "bench": "runtime",
            "records": args.records,
            "partitions": args.partitions,
            "raw_passthrough_rps": raw.round(),
            "eos_passthrough_rps": eos.round(),
            "stateful_eos_rps": stateful.round(),
            "ratio": (ratio * 100.0).round() / 100.0,
            "latency_rate_rps": latency_rate.round(),
            "latency_samples": latencies.len(),
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Forwards every record unchanged.
struct Passthrough {
    output: String,
}

impl Processor for Passthrough {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        ctx.send(&self.output, record.key.unwrap_or_default(), record.value.unwrap_or_default())?;
        Ok(())
    }
}

/// Creates the benchmark's topics; output topics of throughput runs stamp records with the
/// broker's append time, so rates are measured where records land, not where they are read.
fn create_topics(kafka: &KafkaConfig, names: &[String], partitions: i32) -> anyhow::Result<()> {
    let topics = names
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(3_600_000),
            description: "benchmark".into(),
            configs: if name.contains("-out-") {
                [("message.timestamp.type".to_string(), "LogAppendTime".to_string())].into()
            } else {
                Default::default()
            },
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(apply_topology(kafka, &Topology { replication_factor: 1, topics }))?;
    Ok(())
}

fn producer(kafka: &KafkaConfig) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    kafka
        .client_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("creating a producer")
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
    timestamp_ms: Option<i64>,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    if let Some(ms) = timestamp_ms {
        record = record.timestamp(ms);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Consume → produce each record unchanged, no state, no transactions.
fn raw_passthrough(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{output}-group"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[input])?;
    let producer = producer(kafka)?;
    while !stop.load(Ordering::SeqCst) {
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            let message = message?;
            send(
                &producer,
                output,
                message.key().unwrap_or_default(),
                message.payload().unwrap_or_default(),
                None,
            )?;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Runs `topology` live in a thread while `measure` runs, then shuts it down.
fn with_runtime<T>(
    kafka: &KafkaConfig,
    topology: StreamTopology,
    state_dir: std::path::PathBuf,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let shutdown = ShutdownFlag::default();
    let config = RuntimeConfig::new(kafka.clone(), "bench", state_dir);
    let worker = {
        let shutdown = shutdown.clone();
        thread::spawn(move || LiveRuntime::new(topology, config).run(&shutdown))
    };
    let result = measure();
    shutdown.request();
    worker.join().expect("runtime thread")?;
    result
}

fn output_consumer(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Records per second written to `topic`: `expected` committed records over the span of their
/// broker append times.
fn measure_rate(kafka: &KafkaConfig, topic: &str, expected: usize) -> anyhow::Result<f64> {
    let consumer = output_consumer(kafka, topic)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let mut seen = 0usize;
    while seen < expected {
        if Instant::now() > deadline {
            bail!("only {seen} of {expected} records reached {topic} in 10 minutes");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let appended = message?.timestamp().to_millis().unwrap_or_default();
            first = first.min(appended);
            last = last.max(appended);
            seen += 1;
        }
    }
    let span_seconds = ((last - first) as f64 / 1000.0).max(1e-3);
    Ok(expected as f64 / span_seconds)
}

/// Produces at `rate` for the configured time and returns input timestamp → committed output
/// latencies in milliseconds.
fn measure_latency(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    rate: f64,
    args: &RuntimeArgs,
) -> anyhow::Result<Vec<i64>> {
    let total = (rate * args.latency_seconds as f64) as usize;
    let reader = {
        let (kafka, output) = (kafka.clone(), output.to_string());
        thread::spawn(move || -> anyhow::Result<Vec<i64>> {
            let consumer = output_consumer(&kafka, &output)?;
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < total && Instant::now() < deadline {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    let sent = message.timestamp().to_millis().unwrap_or_default();
                    latencies.push(now_ms() - sent);
                }
            }
            Ok(latencies)
        })
    };
    // Let the runtime join its group before the clock starts.
    thread::sleep(Duration::from_secs(3));
    let producer = producer(kafka)?;
    let started = Instant::now();
    let payload = [b'x'; 32];
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        send(&producer, input, format!("k{}", i % args.keys).as_bytes(), &payload, Some(now_ms()))?;
    }
    producer.flush(Duration::from_secs(30))?;
    let mut latencies = reader.join().expect("latency reader")?;
    latencies.sort_unstable();
    Ok(latencies)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
