//! Deleting what the tasks consumed from the internal topics ([`StreamTopology::purged_sources`]),
//! as Kafka Streams purges its repartition topics: they keep records without a time limit
//! (their records carry their input's timestamp, which may be older than any retention), so
//! the instance deletes, at most every [`RuntimeConfig::purge_interval`], the records before
//! the offsets its committed transactions hold. A thread of its own sends the requests, so the
//! processing loop never waits on them; a failed one is logged and tried again at the next
//! interval.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        mpsc::{self, Receiver, SyncSender},
        Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    Offset, TopicPartitionList,
};

use super::{txn::TxnState, KAFKA_TIMEOUT};
use crate::runtime::{RuntimeConfig, RuntimeError, StreamTopology};

/// (topic, partition, offset): delete the partition's records before the offset.
type Purge = Vec<(String, i32, i64)>;

/// Hands the committed offsets of the internal sources to the purging thread, at most every
/// interval.
pub(super) struct Purger {
    topics: HashSet<String>,
    interval: Duration,
    last: Instant,
    requests: SyncSender<Purge>,
}

impl Purger {
    /// A purger of `topology`'s internal sources, its thread started; `None` when the
    /// topology has none or `config` turns purging off (an interval of zero).
    pub(super) fn start(
        topology: &StreamTopology,
        config: &RuntimeConfig,
    ) -> Result<Option<Self>, RuntimeError> {
        let topics: HashSet<String> =
            topology.purged_sources().into_iter().map(str::to_string).collect();
        if topics.is_empty() || config.purge_interval.is_zero() {
            return Ok(None);
        }
        let admin: AdminClient<DefaultClientContext> = config
            .kafka
            .client_config()
            .create()
            .map_err(RuntimeError::kafka("creating the admin client that purges"))?;
        // Waits for the admin client's answers, which come from a thread of librdkafka's.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(RuntimeError::io("starting the purging runtime"))?;
        // One request waits at most: the thread takes the latest positions when it is free.
        let (requests, received) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("herald-purge".into())
            .spawn(move || purge_loop(&admin, &waiter, &received))
            .map_err(RuntimeError::io("starting the purging thread"))?;
        Ok(Some(Self { topics, interval: config.purge_interval, last: Instant::now(), requests }))
    }

    /// Once per interval, asks for the internal sources' records before the positions that
    /// `txn`'s last committed transaction holds to be deleted; never waits for the deletion.
    pub(super) fn tick(&mut self, txn: &Mutex<TxnState>) {
        if self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let txn = txn.lock().expect("txn lock");
        let purge: Purge = txn
            .committed
            .iter()
            .filter(|(topic, _)| self.topics.contains(*topic))
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(partition, offset)| (topic.clone(), *partition, *offset))
            })
            .collect();
        drop(txn);
        if !purge.is_empty() {
            // Full: the thread is still at the previous one; these come again next time.
            let _ = self.requests.try_send(purge);
        }
    }
}

/// Sends each purge request not done yet until the processing loop drops its sender.
fn purge_loop(
    admin: &AdminClient<DefaultClientContext>,
    waiter: &tokio::runtime::Runtime,
    requests: &Receiver<Purge>,
) {
    let options = AdminOptions::new().request_timeout(Some(KAFKA_TIMEOUT));
    // The offset each partition is known to be purged up to.
    let mut done: HashMap<(String, i32), i64> = HashMap::new();
    while let Ok(purge) = requests.recv() {
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in purge {
            let key = (topic, partition);
            if offset > 0 && done.get(&key).is_none_or(|purged| *purged < offset) {
                // Valid offsets only: the list refuses none of them.
                let _ = list.add_partition_offset(&key.0, key.1, Offset::Offset(offset));
            }
        }
        if list.count() == 0 {
            continue;
        }
        let result = waiter.block_on(admin.delete_records(&list, &options));
        let deleted = match result {
            Ok(deleted) => deleted,
            Err(error) => {
                tracing::warn!(%error, "purging consumed records of internal topics failed; retrying later");
                continue;
            }
        };
        for element in deleted.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            match element.error() {
                Ok(()) => {
                    let asked =
                        list.find_partition(topic, partition).and_then(|e| e.offset().to_raw());
                    if let Some(offset) = asked {
                        done.insert((topic.to_string(), partition), offset);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, topic, partition, "purging consumed records failed; retrying later");
                }
            }
        }
    }
}
