//! Global tables: every instance reads each compacted topic in full before processing, then
//! applies its changes as they arrive and tells the tasks.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

use super::{partition_count, ShutdownFlag, KAFKA_TIMEOUT};
use crate::runtime::{
    global::GlobalTables, task::Task, watermarks, RuntimeConfig, RuntimeError, StreamTopology,
};

/// Reads global tables: in full before processing starts, then as they change; one consumer
/// per table.
pub(super) struct GlobalReader {
    /// (table name, consumer of its topic).
    pub(super) tables: Vec<(String, BaseConsumer)>,
}

impl GlobalReader {
    /// Bootstraps every global table; `None` when shutdown was requested meanwhile.
    pub(super) fn start(
        topology: &StreamTopology,
        config: &RuntimeConfig,
        globals: &mut GlobalTables,
        shutdown: &ShutdownFlag,
    ) -> Result<Option<Self>, RuntimeError> {
        let mut tables = Vec::new();
        for spec in &topology.globals {
            let consumer: BaseConsumer = config
                .kafka
                .client_config()
                .set("group.id", format!("{}-global", topology.app_id))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create()
                .map_err(RuntimeError::kafka("creating the global table consumer"))?;
            // Bootstrap: read every partition to its end as of now before any task processes.
            // A partition is done when the consumer's position reaches that end (transaction
            // markers are not messages, so message offsets alone would never get there).
            let mut assignment = TopicPartitionList::new();
            let mut ends = BTreeMap::new();
            for partition in 0..partition_count(&consumer, &spec.topic)? {
                assignment
                    .add_partition_offset(&spec.topic, partition, Offset::Beginning)
                    .map_err(RuntimeError::kafka("assigning global table partitions"))?;
                let (low, high) =
                    watermarks::bounds(&consumer, &spec.topic, partition, KAFKA_TIMEOUT).map_err(
                        RuntimeError::kafka(format!("reading the end of {}", spec.topic)),
                    )?;
                if low < high {
                    ends.insert(partition, high);
                }
            }
            consumer
                .assign(&assignment)
                .map_err(RuntimeError::kafka("assigning global table partitions"))?;
            while !ends.is_empty() {
                if shutdown.requested() {
                    return Ok(None);
                }
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message.map_err(RuntimeError::kafka(format!(
                        "reading global table {}",
                        spec.topic
                    )))?;
                    apply_global(&spec.name, &message, globals, &mut []);
                }
                let positions = consumer
                    .position()
                    .map_err(RuntimeError::kafka("reading global table positions"))?;
                ends.retain(|partition, end| {
                    let position = positions
                        .find_partition(&spec.topic, *partition)
                        .and_then(|e| e.offset().to_raw())
                        .unwrap_or(-1);
                    position < *end
                });
            }
            tables.push((spec.name.clone(), consumer));
        }
        Ok(Some(Self { tables }))
    }

    /// Applies whatever arrived since the last call, without waiting. A consumer error ends
    /// that table's turn: librdkafka reports connection losses (`AllBrokersDown` and the like)
    /// as errors and recovers by itself, so they are no reason to abort the transaction (one
    /// broker restart queues several, and each would rebuild every task); only a fatal error
    /// of the table's consumer fails the step.
    pub(super) fn poll(
        &self,
        globals: &mut GlobalTables,
        tasks: &mut [&mut Task],
    ) -> Result<(), RuntimeError> {
        for (name, consumer) in &self.tables {
            while let Some(result) = consumer.poll(Duration::ZERO) {
                match result {
                    Ok(message) => apply_global(name, &message, globals, tasks),
                    Err(error) if consumer.client().fatal_error().is_none() => {
                        tracing::debug!(table = %name, %error, "global table consumer error");
                        break;
                    }
                    Err(error) => {
                        return Err(RuntimeError::Kafka {
                            context: format!("reading global table {name}"),
                            source: error,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

fn apply_global(
    name: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
    globals: &mut GlobalTables,
    tasks: &mut [&mut Task],
) {
    let key = message.key().unwrap_or_default();
    globals.table_mut(name).apply(key, message.payload());
    for task in tasks.iter_mut() {
        task.global_changed(name, key, message.payload());
    }
}
