//! Restoring tasks' stores from their changelog partitions before they process. All changelog
//! partitions of the tasks being opened are read at once by one consumer.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    Message, Offset, TopicPartitionList,
};

use super::{
    checkpoint::Checkpoint,
    store::{Restored, TaskState},
    watermarks::watermarks,
    RuntimeError, RuntimeMetrics,
};
use crate::kafka::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A task to restore: its stores, its partition, and where its checkpoint says to start.
pub(crate) struct RestoreRequest<'a> {
    pub(crate) state: &'a TaskState,
    pub(crate) partition: i32,
    pub(crate) from: Checkpoint,
}

/// Records applied to a store per write batch.
const BATCH: usize = 4_096;

/// Where one changelog partition's records go, and how far to read; records read but not yet
/// applied wait in `pending`, written as one batch.
struct Target<'a> {
    state: &'a TaskState,
    store: String,
    end: i64,
    pending: Vec<Restored>,
}

impl Target<'_> {
    /// Writes the pending records to the store.
    fn flush(&mut self) -> Result<(), RuntimeError> {
        if !self.pending.is_empty() {
            self.state.restore(&self.store, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Reads each changelog partition of the requested tasks from its checkpointed offset (or the
/// beginning) to its end as of now, with `read_committed`, applying every record. Returns the
/// number of records applied.
pub(crate) fn restore(
    kafka: &KafkaConfig,
    requests: &[RestoreRequest<'_>],
    metrics: &RuntimeMetrics,
) -> Result<u64, RuntimeError> {
    let started = Instant::now();
    metrics.restoring_tasks.add(requests.len() as i64);
    let result = restore_all(kafka, requests, metrics);
    metrics.restoring_tasks.sub(requests.len() as i64);
    metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
    result
}

fn restore_all(
    kafka: &KafkaConfig,
    requests: &[RestoreRequest<'_>],
    metrics: &RuntimeMetrics,
) -> Result<u64, RuntimeError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-restore")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "20")
        .create()
        .map_err(RuntimeError::kafka("creating the restore consumer"))?;
    let mut targets: HashMap<(String, i32), Target<'_>> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    let partitions: Vec<(String, i32)> = requests
        .iter()
        .flat_map(|r| r.state.changelog_topics().map(|topic| (topic.to_string(), r.partition)))
        .collect();
    let bounds = watermarks(&consumer, &partitions, TIMEOUT)?;
    for request in requests {
        for topic in request.state.changelog_topics() {
            let (low, high) = bounds[&(topic.to_string(), request.partition)];
            let start = request.from.get(topic).copied().unwrap_or(low).max(low);
            if start >= high {
                continue;
            }
            assignment
                .add_partition_offset(topic, request.partition, Offset::Offset(start))
                .map_err(RuntimeError::kafka(format!("assigning {topic}/{}", request.partition)))?;
            let store = request.state.store_of_changelog(topic).expect("own topic").to_string();
            targets.insert(
                (topic.to_string(), request.partition),
                Target { state: request.state, store, end: high, pending: Vec::new() },
            );
        }
    }
    if targets.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment).map_err(RuntimeError::kafka("assigning changelog partitions"))?;
    let mut applied = 0u64;
    let mut last_report = Instant::now();
    while !targets.is_empty() {
        // A long restore is no blocked loop (see `live::heartbeat`).
        metrics.loop_turned();
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = (message.topic().to_string(), message.partition());
                if let Some(target) = targets.get_mut(&key) {
                    if message.offset() < target.end {
                        let key = message.key().unwrap_or_default().to_vec();
                        target.pending.push((key, message.payload().map(<[u8]>::to_vec)));
                        if target.pending.len() >= BATCH {
                            target.flush()?;
                        }
                        metrics.restored_records.with_label_values(&[&target.store]).inc();
                        applied += 1;
                    }
                }
                if applied % 10_000 != 0 {
                    continue;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(error)) => {
                return Err(RuntimeError::Kafka {
                    context: "restoring changelogs".into(),
                    source: error,
                })
            }
        }
        // A partition is done once its position passed the end seen at the start; trailing
        // transaction markers are not messages, so the position is the reliable test.
        let positions =
            consumer.position().map_err(RuntimeError::kafka("reading restore positions"))?;
        let mut done = Vec::new();
        for ((topic, partition), target) in &targets {
            let position = positions
                .find_partition(topic, *partition)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1);
            if position >= target.end {
                done.push((topic.clone(), *partition));
            }
        }
        for key in done {
            if let Some(mut target) = targets.remove(&key) {
                target.flush()?;
            }
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(applied, partitions_left = targets.len(), "restoring state stores");
        }
    }
    Ok(applied)
}
