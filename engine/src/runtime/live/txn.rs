//! The instance's transaction: the transactional producer, the offsets and changelog writes of
//! the open transaction, and the consumer context that commits it before partitions are
//! revoked.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    ClientContext, Offset, TopicPartitionList,
};

use super::KAFKA_TIMEOUT;
use crate::{
    kafka::wait_delivered,
    runtime::{metrics::LabelledCounter, output::Output, RuntimeError, RuntimeMetrics},
};

pub(super) type Producer_ = ThreadedProducer<DefaultProducerContext>;

/// Latest value (or deletion) and timestamp per (partition, store key) of one changelog topic.
type ChangelogWrites = HashMap<(i32, Vec<u8>), (Option<Vec<u8>>, i64)>;

/// Transaction state shared with the rebalance callback, which runs inside `poll`.
pub(super) struct TxnState {
    pub(super) producer: Producer_,
    pub(super) open: bool,
    /// Anything produced or consumed since the transaction began.
    pub(super) touched: bool,
    /// Next offset to consume, per input partition, for the open transaction.
    pub(super) offsets: HashMap<String, BTreeMap<i32, i64>>,
    /// Latest store write per (changelog topic, partition, key) in the open transaction, sent
    /// when it commits: a key updated many times in one commit interval is logged once.
    pub(super) changelog: HashMap<String, ChangelogWrites>,
    /// A commit failed: the open tasks' stores are ahead of the committed state.
    pub(super) dirty: bool,
    /// The producer is fenced or in a fatal state and must be recreated before the next begin.
    pub(super) producer_broken: bool,
    pub(super) events: Vec<RebalanceEvent>,
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
        match self.offsets.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, offset + 1);
            }
            None => {
                self.offsets.insert(topic.to_string(), BTreeMap::from([(partition, offset + 1)]));
            }
        }
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
                self.offsets.clear();
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
                let mut record = BaseRecord::to(&topic)
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
            self.offsets.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t, p, o)))
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
        self.offsets.clear();
        self.changelog.clear();
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
            )?;
            self.producer_broken = false;
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
    /// Publishes the consumer lag librdkafka reports (every `statistics.interval.ms`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                if *partition >= 0 && partition_stats.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(partition_stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceHook {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut txn = self.txn.lock().expect("txn lock");
            if let Err(error) = txn.commit(consumer) {
                tracing::warn!(%error, "commit before revocation failed; tasks will be rebuilt");
            }
            txn.events.push(RebalanceEvent::Revoked(list(partitions)));
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

pub(super) fn create_producer(
    config: &rdkafka::ClientConfig,
    transactional_id: &str,
    transaction_timeout: Duration,
) -> Result<Producer_, RuntimeError> {
    let producer: Producer_ = config
        .clone()
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", transaction_timeout.as_millis().to_string())
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
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
    record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), RuntimeError> {
    let topic = record.topic.to_string();
    crate::kafka::send_waiting(producer, record)
        .map_err(|source| RuntimeError::Kafka { context: format!("producing to {topic}"), source })
}

impl Output for TxnOutput<'_> {
    fn emit(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.txn.touched = true;
        self.txn.records_out.inc(topic);
        send_record(
            &self.txn.producer,
            BaseRecord::to(topic).key(key).payload(value).timestamp(timestamp_ms),
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
        self.txn.touched = true;
        let write = (value.map(<[u8]>::to_vec), timestamp_ms);
        match self.txn.changelog.get_mut(topic) {
            Some(writes) => {
                writes.insert((partition, key.to_vec()), write);
            }
            None => {
                let writes = HashMap::from([((partition, key.to_vec()), write)]);
                self.txn.changelog.insert(topic.to_string(), writes);
            }
        }
        Ok(())
    }
}
