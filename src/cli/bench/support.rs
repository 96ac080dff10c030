//! Helpers shared by the benchmarks: topics, producing, running a topology in a thread,
//! measuring output rates from broker append times.

use std::{
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use herald_engine::{
    kafka::{apply_topology, send_waiting, KafkaConfig},
    runtime::{LiveRuntime, RuntimeConfig, ShutdownFlag, StreamTopology},
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, ThreadedProducer},
    Message,
};

/// Creates the benchmark's topics. Topics for which `append_time` holds stamp records with the
/// broker's append time, so output rates are measured where records land, not where they are
/// read.
pub(super) fn create_topics(
    kafka: &KafkaConfig,
    names: &[String],
    partitions: i32,
    append_time: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let topics = names
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(3_600_000),
            description: "benchmark".into(),
            configs: if append_time(name) {
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

pub(super) fn producer(
    kafka: &KafkaConfig,
) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    kafka
        .producer_config()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("creating a producer")
}

pub(super) fn send(
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
    Ok(send_waiting(producer, record)?)
}

/// Runs `topology` live in a thread while `measure` runs, then shuts it down.
pub(super) fn with_runtime<T>(
    kafka: &KafkaConfig,
    topology: StreamTopology,
    state_dir: std::path::PathBuf,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let shutdown = ShutdownFlag::default();
    let config = RuntimeConfig::new(kafka.clone(), "bench", state_dir);
    let runtime = LiveRuntime::new(topology, config);
    let metrics = std::sync::Arc::clone(runtime.metrics());
    let worker = {
        let shutdown = shutdown.clone();
        thread::spawn(move || runtime.run(&shutdown))
    };
    let result = measure();
    shutdown.request();
    worker.join().expect("runtime thread")?;
    let commits = metrics.commit_seconds.get_sample_count();
    let mean_ms = metrics.commit_seconds.get_sample_sum() * 1000.0 / commits.max(1) as f64;
    eprintln!("  {commits} transactions, mean commit {mean_ms:.1} ms");
    result
}

pub(super) fn output_consumer(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
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
pub(super) fn measure_rate(
    kafka: &KafkaConfig,
    topic: &str,
    expected: usize,
) -> anyhow::Result<f64> {
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

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}
