//! The first and next offsets of many partitions at once. Asking partition by partition costs a
//! round trip each (a task with eight stores has eight changelogs, an instance dozens of
//! tasks); one offsets-by-time request per bound asks for all of them together.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{Consumer, ConsumerContext},
    error::KafkaError,
    types::RDKafkaErrorCode,
    Offset, TopicPartitionList,
};

use super::RuntimeError;

/// A topic partition.
pub(crate) type Partition = (String, i32);

/// The (low, high) watermarks of `partitions`, as the consumer's isolation level sees them
/// (the high one is the last stable offset for `read_committed`). A partition the batched
/// request does not answer is asked on its own.
pub(crate) fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[Partition],
    timeout: Duration,
) -> Result<HashMap<Partition, (i64, i64)>, RuntimeError> {
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    // A batched request that fails as a whole (e.g. one partition unknown to the client's
    // metadata) leaves every partition to be asked on its own, which names the one at fault.
    let lows = at_bound(consumer, partitions, Offset::Beginning, timeout).unwrap_or_else(|error| {
        tracing::debug!(%error, "batched offsets request failed; asking partition by partition");
        HashMap::new()
    });
    let highs = at_bound(consumer, partitions, Offset::End, timeout).unwrap_or_default();
    let mut found = HashMap::with_capacity(partitions.len());
    for partition in partitions {
        let bounds = match (lows.get(partition), highs.get(partition)) {
            (Some(&low), Some(&high)) => (low, high),
            _ => {
                let (topic, id) = partition;
                bounds(consumer, topic, *id, timeout)
                    .map_err(RuntimeError::kafka(format!("reading the bounds of {topic}/{id}")))?
            }
        };
        found.insert(partition.clone(), bounds);
    }
    Ok(found)
}

/// The (low, high) watermarks of one partition, asked again while the broker answers that the
/// partition has no leader yet, for up to `timeout`. A topic just created is listed with a
/// leader before that broker has taken the partition on, and a broker restart moves leaders:
/// both are a moment's wait, not a reason to stop.
pub(crate) fn bounds<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, timeout) {
            Err(error) if leader_moving(&error) && started.elapsed() < timeout => {
                tracing::debug!(%error, topic, partition, "no leader yet; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}

/// Whether `error` says a partition's leadership is being settled, which a retry outlives.
fn leader_moving(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotCoordinator
        )
    )
}

/// The ends of `partitions` (the last stable offsets for `read_committed`), from one request;
/// partitions answered with an error or no offset are left out.
pub(crate) fn ends<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[Partition],
    timeout: Duration,
) -> Result<HashMap<Partition, i64>, RuntimeError> {
    at_bound(consumer, partitions, Offset::End, timeout)
}

/// The offsets of `partitions` at `bound` (the start or the end), from one request; partitions
/// answered with an error or no offset are left out.
fn at_bound<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &[Partition],
    bound: Offset,
    timeout: Duration,
) -> Result<HashMap<Partition, i64>, RuntimeError> {
    let mut request = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        request
            .add_partition_offset(topic, *partition, bound)
            .map_err(RuntimeError::kafka(format!("asking the offsets of {topic}/{partition}")))?;
    }
    let answer = consumer.offsets_for_times(request, timeout).map_err(|source| {
        let mut topics: Vec<&str> = partitions.iter().map(|(topic, _)| topic.as_str()).collect();
        topics.dedup();
        RuntimeError::kafka(format!("asking the offsets of {}", topics.join(", ")))(source)
    })?;
    Ok(answer
        .elements()
        .iter()
        .filter(|element| element.error().is_ok())
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => {
                Some(((element.topic().to_string(), element.partition()), offset))
            }
            _ => None,
        })
        .collect())
}
