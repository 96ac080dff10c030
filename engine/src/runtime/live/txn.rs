//! The instance's transaction: the transactional producer, the offsets and changelog writes of
//! the open transaction, and the consumer context that commits it before partitions are
//! revoked.
//!
//! Every commit sends the positions of all owned input partitions, even in a transaction of
//! timers and ticks only: the broker then checks this instance's group generation, so an
//! instance evicted from the group (or fenced by a newer member with its id) cannot commit
//! work for tasks it no longer owns. The offsets of the changelog records that committed
//! transactions hold are tracked from delivery reports, so a task's checkpoint names only what
//! this instance wrote or restored, never another owner's later writes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    message::DeliveryResult,
    producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer},
    ClientContext, Message, Offset, TopicPartitionList,
};

use super::KAFKA_TIMEOUT;
use crate::{
    kafka::{set_default, wait_delivered},
    runtime::{metrics::LabelledCounter, output::Output, KeyedMap, RuntimeError, RuntimeMetrics},
};

pub(super) type Producer_ = ThreadedProducer<DeliveryTracker>;

/// Latest value (or deletion) and timestamp per (partition, store key) of one changelog topic.
type ChangelogWrites = KeyedMap<(i32, Vec<u8>), (Option<Vec<u8>>, i64)>;

/// Next offset after a record, per topic and partition.
pub(super) type EndOffsets = HashMap<String, HashMap<i32, i64>>;

/// Delivery opaque of a record whose offset is not tracked (an output).
const UNTRACKED: usize = 0;
/// Delivery opaque of a changelog record: its offset is tracked.
const CHANGELOG: usize = 1;

/// Producer context noting where delivered changelog records landed (until their transaction
/// commits, when they join [`TxnState::changelog_ends`], or aborts).
pub(super) struct DeliveryTracker {
    delivered: Arc<Mutex<EndOffsets>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (Ok(message), CHANGELOG) = (result, opaque) else { return };
        let end = message.offset() + 1;
        let mut delivered = self.delivered.lock().expect("delivery lock");
        let partitions = match delivered.get_mut(message.topic()) {
            Some(partitions) => partitions,
            None => delivered.entry(message.topic().to_string()).or_default(),
        };
        let known = partitions.entry(message.partition()).or_insert(end);
        *known = (*known).max(end);
    }
}

/// Transaction state shared with the rebalance callback, which runs inside `poll`.
pub(super) struct TxnState {
    pub(super) producer: Producer_,
    pub(super) open: bool,
    /// Anything produced or consumed since the transaction began.
    pub(super) touched: bool,
    /// Next offset to consume of every owned input partition, as far as processed; every
    /// commit sends them all (see the module docs).
    pub(super) positions: HashMap<String, BTreeMap<i32, i64>>,
    /// The positions the last committed transaction sent: what may be purged (see `purge`).
    pub(super) committed: HashMap<String, BTreeMap<i32, i64>>,
    /// Latest store write per (changelog topic, partition, key) in the open transaction, sent
    /// when it commits: a key updated many times in one commit interval is logged once.
    pub(super) changelog: HashMap<String, ChangelogWrites>,
    /// A commit failed: the open tasks' stores are ahead of the committed state.
    pub(super) dirty: bool,
    /// The producer is fenced or in a fatal state and must be recreated before the next begin.
    pub(super) producer_broken: bool,
    pub(super) events: Vec<RebalanceEvent>,
    /// Changelog records of the open transaction delivered so far (filled by the producer).
    pub(super) delivered: Arc<Mutex<EndOffsets>>,
    /// Per changelog partition of the open tasks: the offset after the last record this
    /// instance committed there, or up to which it restored the task.
    pub(super) changelog_ends: EndOffsets,
    /// Largest record (key and value) the producer sends.
    pub(super) max_record_bytes: usize,
    pub(super) metrics: Arc<RuntimeMetrics>,
    pub(super) records_out: LabelledCounter,
    pub(super) transaction_timeout: Duration,
    pub(super) transactional_id: String,
    pub(super) kafka_config: rdkafka::ClientConfig,
}

pub(super) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

impl TxnState {
    /// Notes that `offset` of `topic`/`partition` was consumed in the open transaction.
    pub(super) fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        match self.positions.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, offset + 1);
            }
            None => {
                self.positions.insert(topic.to_string(), BTreeMap::from([(partition, offset + 1)]));
            }
        }
    }

    /// Refuses a record whose key and value exceed `max_record_bytes`: the producer would
    /// refuse it ([`RECORD_FRAMING`]) and fail the transaction, and every retry of it.
    fn check_size(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        let bytes = key.len() + value.len();
        if bytes > self.max_record_bytes {
            return Err(RuntimeError::RecordTooLarge {
                topic: topic.to_string(),
                bytes,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn begin(&mut self) -> Result<(), RuntimeError> {
        self.repair_producer()?;
        if !self.open {
            self.producer
                .begin_transaction()
                .map_err(RuntimeError::kafka("beginning a transaction"))?;
            self.open = true;
        }
        Ok(())
    }

    /// Commits outputs and offsets. On failure the transaction is aborted, the state marked
    /// dirty, and the error returned for the caller to rewind.
    pub(super) fn commit(
        &mut self,
        consumer: &BaseConsumer<RebalanceHook>,
    ) -> Result<(), RuntimeError> {
        if !self.open {
            return Ok(());
        }
        if !self.touched {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.try_commit(consumer);
        match result {
            Ok(()) => {
                self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                self.open = false;
                self.touched = false;
                self.committed.clone_from(&self.positions);
                let delivered = std::mem::take(&mut *self.delivered.lock().expect("delivery lock"));
                for (topic, partitions) in delivered {
                    let ends = self.changelog_ends.entry(topic).or_default();
                    for (partition, end) in partitions {
                        let known = ends.entry(partition).or_insert(end);
                        *known = (*known).max(end);
                    }
                }
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "commit failed; aborting the transaction");
                self.abort();
                Err(error)
            }
        }
    }

    fn try_commit(&mut self, consumer: &BaseConsumer<RebalanceHook>) -> Result<(), RuntimeError> {
        for (topic, writes) in std::mem::take(&mut self.changelog) {
            self.metrics.changelog_out.with_label_values(&[&topic]).inc_by(writes.len() as u64);
            for ((partition, key), (value, timestamp_ms)) in writes {
                let mut record = BaseRecord::with_opaque_to(&topic, CHANGELOG)
                    .key(key.as_slice())
                    .partition(partition)
                    .timestamp(timestamp_ms);
                if let Some(value) = &value {
                    record = record.payload(value.as_slice());
                }
                send_record(&self.producer, record)?;
            }
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, offset) in
            self.positions.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t, p, o)))
        {
            offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(RuntimeError::kafka("listing offsets"))?;
        }
        if offsets.count() > 0 {
            let metadata = consumer.group_metadata().ok_or(RuntimeError::NoGroupMetadata)?;
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, KAFKA_TIMEOUT)
                .map_err(RuntimeError::kafka("adding offsets to the transaction"))?;
        }
        wait_delivered(&self.producer, KAFKA_TIMEOUT)
            .map_err(RuntimeError::kafka("waiting for the transaction's records"))?;
        self.producer.commit_transaction(KAFKA_TIMEOUT).map_err(RuntimeError::kafka("committing"))
    }

    /// Aborts the open transaction; if the producer is fenced or broken, replaces it.
    pub(super) fn abort(&mut self) {
        self.dirty = true;
        if !self.open {
            return;
        }
        self.metrics.transaction_aborts.inc();
        self.open = false;
        self.touched = false;
        self.changelog.clear();
        self.delivered.lock().expect("delivery lock").clear();
        if let Err(error) = self.producer.abort_transaction(KAFKA_TIMEOUT) {
            tracing::warn!(%error, "abort failed (fenced or fatal); recreating the producer");
            self.producer_broken = true;
        }
    }

    /// Replaces a fenced or broken producer; `init_transactions` fences older incarnations.
    pub(super) fn repair_producer(&mut self) -> Result<(), RuntimeError> {
        if self.producer_broken {
            self.producer = create_producer(
                &self.kafka_config,
                &self.transactional_id,
                self.transaction_timeout,
                self.max_record_bytes,
                Arc::clone(&self.delivered),
            )?;
            self.producer_broken = false;
            self.metrics.recoveries.with_label_values(&["producer"]).inc();
            tracing::info!("recovered: the transactional producer re-created");
        }
        Ok(())
    }
}

/// Consumer context committing the open transaction before partitions are revoked.
pub(super) struct RebalanceHook {
    pub(super) txn: Arc<Mutex<TxnState>>,
    pub(super) metrics: Arc<RuntimeMetrics>,
}

impl ClientContext for RebalanceHook {
    /// Publishes the lag of each input partition this consumer is fetching (assigned to it)
    /// from librdkafka's statistics (every `statistics.interval.ms`), and drops the series of
    /// the others. Not by the `desired` flag: reading a partition's position or cached
    /// watermarks marks it desired, assigned or not.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                if *partition < 0 {
                    continue;
                }
                let labels = [topic.as_str(), &partition.to_string()];
                match position_lag(partition_stats) {
                    Some(lag) if partition_stats.fetch_state == "active" => {
                        self.metrics.consumer_lag.with_label_values(&labels).set(lag);
                    }
                    _ => {
                        let _ = self.metrics.consumer_lag.remove_label_values(&labels);
                    }
                }
            }
        }
    }
}

/// Records between an assigned partition's position (past the last record polled, or the
/// fetch position before the first) and its last stable offset (the group consumer reads
/// `read_committed`); `None` while either is unknown. Not librdkafka's `consumer_lag`: that
/// counts from the consumer's committed offset, which a transactional producer commits
/// without the consumer knowing, so it stays at what was committed when the partition was
/// assigned (none at all on a new group: no lag then, ever).
fn position_lag(stats: &rdkafka::statistics::Partition) -> Option<i64> {
    let position = if stats.app_offset >= 0 { stats.app_offset } else { stats.next_offset };
    (position >= 0 && stats.ls_offset >= 0).then(|| (stats.ls_offset - position).max(0))
}

impl ConsumerContext for RebalanceHook {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut txn = self.txn.lock().expect("txn lock");
            if let Err(error) = txn.commit(consumer) {
                tracing::warn!(%error, "commit before revocation failed; tasks will be rebuilt");
            }
            let revoked = list(partitions);
            for (topic, partition) in &revoked {
                if let Some(positions) = txn.positions.get_mut(topic) {
                    positions.remove(partition);
                }
            }
            txn.events.push(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            self.txn
                .lock()
                .expect("txn lock")
                .events
                .push(RebalanceEvent::Assigned(list(partitions)));
        }
    }
}

fn list(partitions: &TopicPartitionList) -> Vec<(String, i32)> {
    partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

/// Bytes librdkafka counts beyond a record's key and value against `message.max.bytes`
/// (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`, 36, with room to spare; the engine sets no headers):
/// the producer's limit is `max_record_bytes` plus this, so that a record the size check lets
/// through is never refused by the producer.
const RECORD_FRAMING: usize = 64;

/// A transactional producer whose delivered changelog records are noted in `delivered`.
pub(super) fn create_producer(
    config: &rdkafka::ClientConfig,
    transactional_id: &str,
    transaction_timeout: Duration,
    max_record_bytes: usize,
    delivered: Arc<Mutex<EndOffsets>>,
) -> Result<Producer_, RuntimeError> {
    let mut config = config.clone();
    set_default(&mut config, "linger.ms", "5");
    let producer: Producer_ = config
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", transaction_timeout.as_millis().to_string())
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", (max_record_bytes + RECORD_FRAMING).to_string())
        .create_with_context(DeliveryTracker { delivered })
        .map_err(RuntimeError::kafka("creating the transactional producer"))?;
    producer
        .init_transactions(KAFKA_TIMEOUT)
        .map_err(RuntimeError::kafka("initialising transactions"))?;
    Ok(producer)
}

/// Output into the open transaction.
pub(super) struct TxnOutput<'a> {
    pub(super) txn: &'a mut TxnState,
}

/// Sends one record into the transaction, waiting while the producer's queue is full.
fn send_record(
    producer: &Producer_,
    record: BaseRecord<'_, [u8], [u8], usize>,
) -> Result<(), RuntimeError> {
    let topic = record.topic.to_string();
    crate::kafka::send_waiting(producer, record)
        .map_err(|source| RuntimeError::Kafka { context: format!("producing to {topic}"), source })
}

impl Output for TxnOutput<'_> {
    fn check(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        self.txn.check_size(topic, key, value)
    }

    fn emit(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.txn.check_size(topic, key, value)?;
        self.txn.touched = true;
        self.txn.records_out.inc(topic);
        send_record(
            &self.txn.producer,
            BaseRecord::with_opaque_to(topic, UNTRACKED)
                .key(key)
                .payload(value)
                .timestamp(timestamp_ms),
        )
    }

    fn changelog(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.txn.check_size(topic, key, value.unwrap_or_default())?;
        self.txn.touched = true;
        let write = (value.map(<[u8]>::to_vec), timestamp_ms);
        match self.txn.changelog.get_mut(topic) {
            Some(writes) => {
                writes.insert((partition, key.to_vec()), write);
            }
            None => {
                let mut writes = ChangelogWrites::default();
                writes.insert((partition, key.to_vec()), write);
                self.txn.changelog.insert(topic.to_string(), writes);
            }
        }
        Ok(())
    }
}
