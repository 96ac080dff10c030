//! Restoring a task's stores from their changelog partitions before it processes.

use std::time::{Duration, Instant};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    Message, Offset, TopicPartitionList,
};

use super::{checkpoint::Checkpoint, store::TaskState, RuntimeError, RuntimeMetrics};
use crate::kafka::KafkaConfig;

/// Reads each changelog partition of `state` from its checkpointed offset (or the beginning)
/// to its end, with `read_committed`, applying every record. Returns the records applied.
pub(crate) fn restore(
    kafka: &KafkaConfig,
    state: &TaskState,
    partition: i32,
    from: &Checkpoint,
    metrics: &RuntimeMetrics,
) -> Result<u64, RuntimeError> {
    let started = Instant::now();
    metrics.restoring_tasks.inc();
    let result = restore_all(kafka, state, partition, from, metrics);
    metrics.restoring_tasks.dec();
    metrics.restore_seconds.observe(started.elapsed().as_secs_f64());
    result
}

fn restore_all(
    kafka: &KafkaConfig,
    state: &TaskState,
    partition: i32,
    from: &Checkpoint,
    metrics: &RuntimeMetrics,
) -> Result<u64, RuntimeError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(RuntimeError::kafka("creating the restore consumer"))?;
    let mut total = 0;
    let topics: Vec<String> = state.changelog_topics().map(str::to_string).collect();
    for topic in topics {
        let store =
            state.store_of_changelog(&topic).expect("topic listed by the state").to_string();
        let start = from.get(&topic).map_or(Offset::Beginning, |o| Offset::Offset(*o));
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, partition, start)
            .map_err(RuntimeError::kafka(format!("assigning {topic}/{partition}")))?;
        consumer
            .assign(&assignment)
            .map_err(RuntimeError::kafka(format!("assigning {topic}/{partition}")))?;
        let restored = metrics.restored_records.with_label_values(&[&store]);
        loop {
            match consumer.poll(Duration::from_millis(500)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(error)) => {
                    return Err(RuntimeError::Kafka {
                        context: format!("restoring {topic}/{partition}"),
                        source: error,
                    })
                }
                Some(Ok(message)) => {
                    state.restore(&store, message.key().unwrap_or_default(), message.payload())?;
                    restored.inc();
                    total += 1;
                }
            }
        }
    }
    Ok(total)
}
