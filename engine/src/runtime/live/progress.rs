//! How far this instance has read its input partitions: whether a partition is read to its end,
//! so that a task's wall-clock timers fire only after the records written before them.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
};

use rdkafka::{
    bindings,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    types::RDKafkaErrorCode,
    TopicPartitionList,
};

/// The consumer's read positions, taken once for a round of timer checks.
pub(super) struct ReadPositions {
    positions: TopicPartitionList,
}

impl ReadPositions {
    /// The positions of every assigned partition (empty when the consumer cannot tell).
    pub(super) fn of<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        Self { positions: consumer.position().unwrap_or_default() }
    }

    /// Whether `partition` of `topic` is read to the end the consumer last learned from its
    /// fetches. The position is the consumer's (which steps over transaction markers), or else
    /// `processed`: the next offset this instance processed or started from. Records of an open
    /// transaction lie beyond the end a `read_committed` consumer can reach, so a partition with
    /// one stays "not read to its end" until that transaction ends. Unknown ends count as not
    /// reached.
    pub(super) fn at_end<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        processed: &HashMap<String, BTreeMap<i32, i64>>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Some(end) = cached_end(consumer, topic, partition) else { return false };
        let processed = processed.get(topic).and_then(|p| p.get(&partition)).copied();
        self.consumed(topic, partition).max(processed.unwrap_or(-1)) >= end
    }

    /// The consumer's position in `partition` of `topic` (-1 when unknown).
    pub(super) fn consumed(&self, topic: &str, partition: i32) -> i64 {
        self.positions
            .find_partition(topic, partition)
            .and_then(|element| element.offset().to_raw())
            .unwrap_or(-1)
    }
}

/// The end of `partition` of `topic` as of the consumer's last fetch from it (no request to the
/// broker; rust-rdkafka exposes only the fetching variant), `None` before the first fetch.
fn cached_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid while `consumer` is borrowed; librdkafka only reads
    // the NUL-terminated topic name and writes the two offsets, under its own partition lock.
    let error = unsafe {
        bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (RDKafkaErrorCode::from(error) == RDKafkaErrorCode::NoError && high >= 0).then_some(high)
}
