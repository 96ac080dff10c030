//! The live runtime: one consumer in the application's group, one transactional producer, and
//! the tasks of the assigned partitions, committed together every commit interval.
//!
//! Each commit atomically contains the outputs, the changelog writes and the input offsets
//! (`send_offsets_to_transaction` with the consumer's current group metadata). Before partitions
//! are revoked the open transaction is committed; if a commit fails, the transaction is aborted,
//! the tasks' stores are rebuilt from their changelogs and the inputs rewound to the committed
//! offsets, so nothing is lost or duplicated.
//!
//! Partitions are assigned with the `range` assignor: it gives the same partition number of
//! every co-partitioned source topic to the same instance, which a task needs (librdkafka's
//! `cooperative-sticky` does not guarantee that, and librdkafka has no pluggable assignor).

mod checks;
mod fence;
mod global_reader;
mod group;
mod heartbeat;
mod ordered;
mod progress;
mod purge;
mod stall;
mod txn;

use fence::Departures;
use global_reader::GlobalReader;
use heartbeat::LoopGuard;
use ordered::OrderedInputs;
use progress::ReadPositions;
use purge::Purger;
use stall::StallWatch;
use txn::{create_producer, RebalanceEvent, RebalanceHook, TxnOutput, TxnState};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    Message, Offset, TopicPartitionList,
};

use super::{
    checkpoint,
    clock::wall_now_ms,
    global::GlobalTables,
    metrics::{Labelled, LabelledCounter},
    restore::{restore, RestoreRequest},
    standby::{task_changelogs, Standbys},
    store::{StoreMemory, TaskState},
    task::{Budget, Task, TaskEnv},
    watermarks::{bounds, watermarks},
    Clock, GroupProtocol, RuntimeConfig, RuntimeError, RuntimeMetrics, SourceRecord,
    StreamTopology, TaskId,
};
use crate::{
    kafka::{apply_topology, TopicOutcome, TopologyReport},
    topology::{CleanupPolicy, TopicSpec, Topology},
};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
const TIMER_CHECK: Duration = Duration::from_millis(10);
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// A transaction caught up with its input commits once open this many times as long as the last
/// commit took. Measured (`herald bench scale --phase user-stage --latency-rate N`, 2026-11-29):
/// committing whenever caught up after a tenth of the interval spent 72% of the thread's time
/// committing at 1,000 events/s, and its commits took longer (their median in the 32-64 ms
/// bucket, against 16-32 ms; likely a transaction begun right after a commit waits for the
/// broker to finish that one); at 4,000 events/s, event to command p50/p99 of 358/945 and
/// 301/742 ms against 147/345 and 123/368 ms with this spacing (a third of the time committing).
const IDLE_COMMIT_SPACING: u32 = 2;

/// Records taken from the consumer per loop step at most.
const MAX_BATCH: usize = 1_000;

/// A consumer fenced more than [`MAX_REJOINS`] times within this long is taken to share its id
/// with another process.
const REJOIN_WINDOW: Duration = Duration::from_secs(300);
/// Fenced consumers replaced within [`REJOIN_WINDOW`] at most: each broker restart longer than
/// the session timeout fences a static member once, while two processes with one id fence
/// each other every few seconds.
const MAX_REJOINS: usize = 3;

/// Set to stop a running instance gracefully (finish the transaction, checkpoint), staying a
/// static member of the group until the session timeout (a restart) or leaving it (a
/// scale-in).
#[derive(Clone, Default)]
pub struct ShutdownFlag {
    stop: Arc<AtomicBool>,
    leave: Arc<AtomicBool>,
}

impl ShutdownFlag {
    /// A flag that SIGTERM and SIGINT set (stop), and SIGUSR1 (stop and leave the group).
    pub fn on_signals() -> Result<Self, RuntimeError> {
        let flag = Self::default();
        let signals = [
            (signal_hook::consts::SIGTERM, &flag.stop),
            (signal_hook::consts::SIGINT, &flag.stop),
            (signal_hook::consts::SIGUSR1, &flag.leave),
            (signal_hook::consts::SIGUSR1, &flag.stop),
        ];
        for (signal, set) in signals {
            signal_hook::flag::register(signal, Arc::clone(set))
                .map_err(RuntimeError::io("installing signal handlers"))?;
        }
        Ok(flag)
    }

    /// Asks the instance to stop.
    pub fn request(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Asks the instance to stop and leave the group, so its partitions move at once.
    pub fn request_leave(&self) {
        self.leave.store(true, Ordering::SeqCst);
        self.request();
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Whether leaving the group was asked for.
    fn leave_requested(&self) -> bool {
        self.leave.load(Ordering::SeqCst)
    }
}

fn partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<i32, RuntimeError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(RuntimeError::kafka(format!("reading metadata of {topic}")))?;
    match metadata.topics().first() {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(RuntimeError::Topology(format!(
            "topic {topic} does not exist; create it first (herald topics apply)"
        ))),
    }
}

/// A running instance of a topology.
pub struct LiveRuntime {
    topology: StreamTopology,
    config: RuntimeConfig,
    metrics: Arc<RuntimeMetrics>,
}

impl LiveRuntime {
    /// Prepares an instance; nothing connects until [`LiveRuntime::run`].
    pub fn new(topology: StreamTopology, config: RuntimeConfig) -> Self {
        Self { topology, config, metrics: RuntimeMetrics::new() }
    }

    /// The instance's metrics.
    pub fn metrics(&self) -> &Arc<RuntimeMetrics> {
        &self.metrics
    }

    /// Runs until `shutdown` is requested, then commits, checkpoints and leaves the group.
    /// Blocking: call it from a dedicated thread, not from an async executor.
    pub fn run(&self, shutdown: &ShutdownFlag) -> Result<(), RuntimeError> {
        self.config.check()?;
        if let Some(addr) = self.config.metrics_addr {
            let bound = self.metrics.serve(addr)?;
            tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
        }
        let probe: BaseConsumer = self
            .config
            .kafka
            .client_config()
            .create()
            .map_err(RuntimeError::kafka("connecting to Kafka"))?;
        let internal = checks::missing_internal_topics(&self.topology, &probe)?;
        if !internal.is_empty() {
            let names: Vec<String> = internal.iter().map(|t| t.name.clone()).collect();
            tracing::info!(topics = ?names, "creating internal repartition topics");
            let topics = Topology {
                replication_factor: self.config.changelogs.replication_factor,
                topics: internal,
            };
            self.apply(&topics, "creating internal repartition topics")?;
            checks::wait_for_topics(&probe, &names)?;
        }
        let partitions = checks::check_topics(&self.topology, &probe)?;
        self.ensure_changelogs(&partitions)?;
        self.warn_timed_internal_topics(&partitions);

        let mut globals = GlobalTables::default();
        let Some(global_reader) =
            GlobalReader::start(&self.topology, &self.config, &mut globals, shutdown)?
        else {
            return Ok(());
        };

        // The member id: an instance that takes a dead one's partitions over fences it by it.
        let transactional_id = self.member_id();
        let kafka_config = self.config.kafka.producer_config();
        let delivered = Arc::new(Mutex::new(HashMap::new()));
        let producer = create_producer(
            &kafka_config,
            &transactional_id,
            self.config.transaction_timeout,
            self.config.max_record_bytes,
            Arc::clone(&delivered),
        )?;
        let txn = Arc::new(Mutex::new(TxnState {
            producer,
            open: false,
            touched: false,
            positions: HashMap::new(),
            committed: HashMap::new(),
            changelog: HashMap::new(),
            dirty: false,
            producer_broken: false,
            events: Vec::new(),
            delivered,
            changelog_ends: HashMap::new(),
            max_record_bytes: self.config.max_record_bytes,
            metrics: Arc::clone(&self.metrics),
            records_out: LabelledCounter::new(self.metrics.records_out.clone()),
            transaction_timeout: self.config.transaction_timeout,
            transactional_id,
            kafka_config,
        }));
        let member = self.member_id();
        let consumer = self.join_group(&txn)?;

        let memory =
            StoreMemory::new(self.config.block_cache_bytes, self.config.write_buffer_bytes);
        let standbys = Standbys::new(&self.config, &self.topology, &member, memory.clone())?;
        let mut worker = Worker {
            runtime: self,
            partition_counts: partitions,
            records_in: LabelledCounter::new(self.metrics.records_in.clone()),
            record_age: Labelled::new(self.metrics.record_age_seconds.clone()),
            memory,
            standbys,
            tasks: BTreeMap::new(),
            ordered: OrderedInputs::default(),
            globals,
            global_reader,
            consumer: Arc::new(consumer),
            txn,
            rejoins: Vec::new(),
            stall: StallWatch::new(self.config.stall_after),
            stalls: Vec::new(),
            departures: (self.config.group_protocol == GroupProtocol::Classic)
                .then(|| Departures::new(&self.topology.app_id, &member)),
            purger: Purger::start(&self.topology, &self.config)?,
        };
        let guard = LoopGuard::start(Arc::clone(&self.metrics), self.config.stall_after);
        let result = worker.run_loop(shutdown);
        drop(guard);
        let leave = self.config.leave_group_on_shutdown || shutdown.leave_requested();
        worker.shutdown(result.is_ok(), leave);
        result
    }

    /// This instance's static member id in the group.
    fn member_id(&self) -> String {
        format!("{}-{}", self.topology.app_id, self.config.instance_id)
    }

    /// A consumer of the application's group, subscribed to the sources, committing `txn`
    /// before its partitions are revoked.
    fn join_group(
        &self,
        txn: &Arc<Mutex<TxnState>>,
    ) -> Result<BaseConsumer<RebalanceHook>, RuntimeError> {
        let consumer: BaseConsumer<RebalanceHook> = group::consumer_config(
            self.config.kafka.client_config(),
            &self.topology.app_id,
            &self.member_id(),
            self.config.group_protocol,
        )
        .create_with_context(RebalanceHook {
            txn: Arc::clone(txn),
            metrics: Arc::clone(&self.metrics),
        })
        .map_err(RuntimeError::kafka("creating the consumer"))?;
        tracing::info!(
            app = %self.topology.app_id,
            instance = %self.config.instance_id,
            protocol = self.config.group_protocol.name(),
            "joining the consumer group"
        );
        consumer
            .subscribe(&self.topology.source_topics())
            .map_err(RuntimeError::kafka("subscribing"))?;
        Ok(consumer)
    }

    /// Creates the missing topics of `topics` (`doing` names the step in errors).
    fn apply(&self, topics: &Topology, doing: &str) -> Result<TopologyReport, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RuntimeError::io("starting an admin runtime"))?;
        runtime
            .block_on(apply_topology(&self.config.kafka, topics))
            .map_err(|e| RuntimeError::Topology(format!("{doing}: {e}")))
    }

    /// Warns about each internal topic ([`StreamTopology::purged_sources`]) that deletes
    /// records by time: its records carry their input's timestamp, so one stamped longer ago
    /// than its retention may be deleted before a task reads it. Such topics are left as they
    /// are (`herald topics apply` does not alter them either); the warning says how to fix one.
    fn warn_timed_internal_topics(&self, partitions: &[i32]) {
        let topics = self
            .topology
            .purged_sources()
            .into_iter()
            .filter_map(|topic| {
                let sub = self.topology.sub_topology_of(topic)?;
                Some(TopicSpec {
                    name: topic.to_string(),
                    partitions: partitions[sub],
                    cleanup_policy: CleanupPolicy::Delete,
                    retention_ms: Some(-1),
                    description: "internal topic".into(),
                    configs: Default::default(),
                })
            })
            .collect();
        let internal = Topology { replication_factor: 1, topics };
        let report = match self.apply(&internal, "describing the internal topics") {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "could not check the retention of the internal topics");
                return;
            }
        };
        for (topic, outcome) in report.topics {
            let TopicOutcome::Differs(drift) = outcome else { continue };
            for d in drift.iter().filter(|d| d.setting == "retention.ms") {
                tracing::warn!(
                    %topic, retention_ms = %d.actual,
                    "internal topic deletes records by time: a record stamped (with its input's \
                     time) longer ago than its retention may be deleted before it is read; keep \
                     its records until the engine purges them (docs/operations.md, \"Internal topics\"): \
                     kafka-configs.sh --bootstrap-server <brokers> --alter --entity-type topics \
                     --entity-name {topic} --add-config retention.ms=-1"
                );
            }
        }
    }

    /// Creates missing changelog topics (compacted, one partition per task, with the configured
    /// replication factor and configs); an existing one with another partition count is an
    /// error, other differences are logged.
    fn ensure_changelogs(&self, partitions: &[i32]) -> Result<(), RuntimeError> {
        let topics = self
            .topology
            .sub_topologies
            .iter()
            .zip(partitions)
            .flat_map(|(sub, n)| {
                sub.all_stores().into_iter().map(move |store| TopicSpec {
                    name: self.topology.changelog_topic(&store),
                    partitions: *n,
                    cleanup_policy: CleanupPolicy::Compact,
                    retention_ms: None,
                    description: format!("changelog of store {store}"),
                    configs: self.config.changelogs.configs.clone(),
                })
            })
            .collect();
        let changelogs =
            Topology { replication_factor: self.config.changelogs.replication_factor, topics };
        let report = self.apply(&changelogs, "creating changelog topics")?;
        for (topic, outcome) in report.topics {
            let TopicOutcome::Differs(drift) = outcome else { continue };
            for d in drift {
                if d.setting == "partitions" {
                    return Err(RuntimeError::Topology(format!(
                        "changelog {topic} has {} partitions, its sources {}",
                        d.actual, d.expected
                    )));
                }
                tracing::warn!(
                    %topic, setting = %d.setting, actual = %d.actual, expected = %d.expected,
                    "changelog differs from the configured settings (left unchanged)"
                );
            }
        }
        Ok(())
    }
}

/// The processing loop's bookkeeping: when it last began a transaction, checked wall-clock
/// timers and refreshed gauges, and the work the open transaction may still do.
struct LoopState {
    transaction: Instant,
    timers: Instant,
    gauges: Instant,
    /// Work units a transaction may do (`RuntimeConfig::max_work_per_transaction`).
    work_cap: u64,
    budget: Budget,
    /// Due timers or ticks were left for the next transaction: poll without waiting and fire
    /// again at once.
    backlog: bool,
    /// Position of the task whose timers fire first at the next check (round robin, so one
    /// task's backlog does not hold back the others' timers).
    timer_turn: usize,
    /// Consecutive retries of input that needed something unreachable (reset by a commit).
    unavailable_retries: u32,
    /// How long the last commit took: a transaction caught up with its input stays open at
    /// least [`IDLE_COMMIT_SPACING`] times as long before it commits (see `Worker::step`).
    last_commit: Duration,
}

impl LoopState {
    fn new(work_cap: u64) -> Self {
        let now = Instant::now();
        Self {
            transaction: now,
            timers: now,
            gauges: now,
            work_cap,
            budget: Budget::new(work_cap),
            backlog: false,
            timer_turn: 0,
            unavailable_retries: 0,
            last_commit: Duration::ZERO,
        }
    }

    /// How long to wait before retrying input that needed something unreachable: doubling
    /// from 200 ms up to 30 s.
    fn unavailable_backoff(&mut self) -> Duration {
        let pause = Duration::from_millis(200) * 2u32.saturating_pow(self.unavailable_retries);
        self.unavailable_retries = self.unavailable_retries.saturating_add(1);
        pause.min(Duration::from_secs(30))
    }

    /// Begins a transaction, with a full work budget, unless one is open.
    fn begin(&mut self, txn: &mut TxnState) -> Result<(), RuntimeError> {
        if !txn.open {
            txn.begin()?;
            self.transaction = Instant::now();
            self.budget = Budget::new(self.work_cap);
        }
        Ok(())
    }

    /// Commits the open transaction; the next one gets a full work budget.
    fn commit(
        &mut self,
        txn: &mut TxnState,
        consumer: &BaseConsumer<RebalanceHook>,
    ) -> Result<(), RuntimeError> {
        self.budget = Budget::new(self.work_cap);
        self.unavailable_retries = 0;
        let (started, committing) = (Instant::now(), txn.open && txn.touched);
        let committed = txn.commit(consumer);
        if committing && committed.is_ok() {
            // A failed commit's time (up to the Kafka timeout) says nothing of the next one.
            self.last_commit = started.elapsed();
        }
        committed
    }
}

/// The state of a running instance's processing thread.
struct Worker<'a> {
    runtime: &'a LiveRuntime,
    /// Partitions of each sub-topology.
    partition_counts: Vec<i32>,
    records_in: LabelledCounter,
    /// Age of each record read, by topic.
    record_age: Labelled<prometheus::HistogramVec>,
    memory: StoreMemory,
    /// Warm copies of other instances' tasks, if this instance keeps any.
    standbys: Option<Standbys>,
    tasks: BTreeMap<TaskId, Task>,
    /// Records of time-ordered sources polled and not yet processed.
    ordered: OrderedInputs,
    globals: GlobalTables,
    global_reader: GlobalReader,
    consumer: Arc<BaseConsumer<RebalanceHook>>,
    txn: Arc<Mutex<TxnState>>,
    /// When the consumer was replaced after a fatal error, within [`REJOIN_WINDOW`].
    rejoins: Vec<Instant>,
    /// The progress on the input partitions.
    stall: StallWatch,
    /// When a stall was recovered from, within [`REJOIN_WINDOW`].
    stalls: Vec<Instant>,
    /// Members gone from the group, to fence (classic protocol only).
    departures: Option<Departures>,
    /// Deletes what the tasks consumed from the internal topics, if the topology has any.
    purger: Option<Purger>,
}

impl Worker<'_> {
    /// Processes until shutdown. Kafka errors (fencing, a failed commit, a lost group
    /// generation) abort the transaction and rewind to the last commit; other errors end the run.
    fn run_loop(&mut self, shutdown: &ShutdownFlag) -> Result<(), RuntimeError> {
        let mut state = LoopState::new(self.runtime.config.max_work_per_transaction);
        self.runtime.metrics.set_ready(true);
        while !shutdown.requested() {
            self.runtime.metrics.loop_turned();
            self.recover_if_fenced()?;
            match self.step(&mut state) {
                Ok(()) => {
                    self.tend_standbys();
                    self.recover_if_stalled()?;
                    if let Some(purger) = &mut self.purger {
                        purger.tick(&self.txn);
                    }
                }
                Err(error @ (RuntimeError::Kafka { .. } | RuntimeError::NoGroupMetadata)) => {
                    tracing::warn!(%error, "aborting the transaction and rewinding to the last commit");
                    self.txn.lock().expect("txn lock").abort();
                    // Fenced for good: stop rather than rebuild tasks another process now runs.
                    self.recover_if_fenced()?;
                    self.rewind_until_done(shutdown)?;
                }
                Err(RuntimeError::Unavailable(reason)) => {
                    let pause = state.unavailable_backoff();
                    tracing::warn!(%reason, ?pause, "input needs something unreachable: aborting the transaction, retrying after a pause");
                    self.runtime.metrics.input_unavailable.inc();
                    self.txn.lock().expect("txn lock").abort();
                    self.recover_if_fenced()?;
                    self.rewind_until_done(shutdown)?;
                    std::thread::sleep(pause);
                }
                Err(error) => return Err(error),
            }
        }
        let mut txn = self.txn.lock().expect("txn lock");
        txn.commit(&self.consumer)
    }

    /// Polls a batch (waiting up to 20 ms for the first record unless work is left over, then
    /// taking what is already fetched); processes it and the due wall-clock timers, committing
    /// whenever the transaction's work budget is spent, and when the commit interval is due.
    /// The transaction lock is never held while polling, because rebalance callbacks run inside
    /// `poll`.
    fn step(&mut self, state: &mut LoopState) -> Result<(), RuntimeError> {
        let config = &self.runtime.config;
        let metrics = Arc::clone(&self.runtime.metrics);
        // Messages borrow this handle, not `self`, so tasks can be opened and closed meanwhile.
        let consumer = Arc::clone(&self.consumer);
        let mut batch = Vec::new();
        let mut wait = if state.backlog { Duration::ZERO } else { Duration::from_millis(20) };
        let mut caught_up = false;
        while batch.len() < MAX_BATCH {
            match consumer.poll(wait) {
                None => {
                    caught_up = true;
                    break;
                }
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => {
                    if let Some(refused) = group::refused(&error, &self.runtime.topology.app_id) {
                        return Err(refused);
                    }
                    tracing::warn!(%error, "consumer error");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        self.handle_rebalance_events()?;
        if !self.global_reader.tables.is_empty() {
            let mut tasks: Vec<&mut Task> = self.tasks.values_mut().collect();
            self.global_reader.poll(&mut self.globals, &mut tasks)?;
        }
        let now = wall_now_ms();
        let env = TaskEnv {
            clock: config.clock,
            wall_now_ms: now,
            globals: &self.globals,
            dead_letter_topic: &self.runtime.topology.dead_letter_topic,
            metrics: &metrics,
        };
        let mut txn = self.txn.lock().expect("txn lock");
        let topology = &self.runtime.topology;
        for message in &batch {
            let Some(id) = topology
                .sub_topology_of(message.topic())
                .map(|sub| TaskId { sub_topology: sub, partition: message.partition() })
            else {
                continue;
            };
            // No task: the partition is not (or no longer) ours, a message fetched before a
            // revocation; its new owner reads it from the committed offset.
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            self.records_in.inc(message.topic());
            if let Some(timestamp_ms) = message.timestamp().to_millis() {
                let age_ms = (now - timestamp_ms).max(0);
                self.record_age.get(message.topic()).observe(age_ms as f64 / 1000.0);
            }
            let ordered = &topology.sub_topologies[id.sub_topology].ordered;
            if ordered.len() > 1 && ordered.iter().any(|topic| topic == message.topic()) {
                self.ordered.hold(id, ordered, message, now);
                continue;
            }
            let record = SourceRecord {
                topic: message.topic(),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key(),
                value: message.payload(),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(now),
            };
            process_record(task, &record, &env, state, &mut txn, &self.consumer)?;
        }
        let held = self.ordered.tasks();
        if !held.is_empty() {
            let read = ReadPositions::of(&self.consumer);
            for id in held {
                let Some(task) = self.tasks.get_mut(&id) else { continue };
                // Whether each source is read to its end, asked once per step.
                let mut ends: Vec<(String, bool)> = Vec::new();
                loop {
                    let turn = self.ordered.next(id, Instant::now(), |topic| {
                        if let Some((_, end)) = ends.iter().find(|(t, _)| t == topic) {
                            return *end;
                        }
                        let end = read.at_end(&self.consumer, &txn.positions, topic, id.partition);
                        ends.push((topic.to_string(), end));
                        end
                    });
                    let Some(turn) = turn else { break };
                    if turn.gave_up {
                        metrics.input_order_waits_expired.inc();
                        tracing::warn!(task = %id, "a time-ordered source stayed behind: going on without it");
                    }
                    let record = SourceRecord {
                        topic: &turn.topic,
                        partition: id.partition,
                        offset: turn.record.offset,
                        key: turn.record.key.as_deref(),
                        value: turn.record.value.as_deref(),
                        timestamp_ms: turn.record.timestamp_ms,
                    };
                    process_record(task, &record, &env, state, &mut txn, &self.consumer)?;
                }
            }
        }
        let tick = Instant::now();
        let timers_due = state.backlog || tick.duration_since(state.timers) >= TIMER_CHECK;
        if config.clock == Clock::Wall && timers_due {
            state.timers = tick;
            state.backlog = false;
            let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
            let read = ReadPositions::of(&self.consumer);
            for turn in 0..ids.len() {
                let position = (state.timer_turn + turn) % ids.len();
                let task = self.tasks.get_mut(&ids[position]).expect("listed task");
                let ordered = &self.ordered;
                let horizon = task.timer_horizon(now, |topic, partition| {
                    !ordered.holds(task.id, topic)
                        && read.at_end(&self.consumer, &txn.positions, topic, partition)
                });
                state.begin(&mut txn)?;
                // A timer due at T fires once the clock has passed T, after the records of T
                // and of every earlier time still to be read; it runs on the wall clock.
                let out = &mut TxnOutput { txn: &mut txn };
                let (due_until, now) = (horizon.saturating_sub(1), now.saturating_sub(1));
                if !task.fire_due(due_until, now, &env, out, &mut state.budget)? {
                    // This transaction did its share: commit, and go on with the next task.
                    state.backlog = true;
                    state.timer_turn = position + 1;
                    state.commit(&mut txn, &self.consumer)?;
                    break;
                }
            }
        }
        // Input keeps coming: the transaction batches it for the commit interval. Caught up
        // with the input (nothing more fetched, no timer work left), it commits at once, so a
        // record waits for no later input before the next stage can read what it caused; once
        // open a tenth of the interval, and twice as long as the last commit took, so that under
        // a steady trickle this thread, which processes nothing while it commits, spends at most
        // a third of its time committing.
        let open_for = tick.duration_since(state.transaction);
        let floor = (config.commit_interval / 10).max(state.last_commit * IDLE_COMMIT_SPACING);
        let idle = caught_up && !state.backlog && open_for >= floor;
        if txn.open && txn.touched && (open_for >= config.commit_interval || idle) {
            state.commit(&mut txn, &self.consumer)?;
        }
        drop(txn);
        if tick.duration_since(state.gauges) >= GAUGE_REFRESH {
            state.gauges = tick;
            self.refresh_gauges();
        }
        Ok(())
    }

    /// Keeps the standbys following the group and their changelogs; a failure there only
    /// delays them.
    fn tend_standbys(&mut self) {
        let Some(standbys) = &mut self.standbys else { return };
        let active: BTreeSet<TaskId> = self.tasks.keys().copied().collect();
        if let Err(error) = standbys.tend(&self.runtime.topology, &active) {
            tracing::warn!(%error, "standbys could not follow their changelogs; retrying");
        }
    }

    /// Opens tasks for assigned partitions (from their standbys' checkpoints when this
    /// instance kept standbys of them) and closes tasks of revoked ones.
    fn handle_rebalance_events(&mut self) -> Result<(), RuntimeError> {
        let (events, dirty) = {
            let mut txn = self.txn.lock().expect("txn lock");
            (std::mem::take(&mut txn.events), txn.dirty)
        };
        let changed = !events.is_empty();
        for event in events {
            match event {
                RebalanceEvent::Revoked(partitions) => {
                    for id in self.task_ids(&partitions) {
                        self.ordered.forget(id);
                        if let Some(task) = self.tasks.remove(&id) {
                            self.close_task(task, !dirty);
                        }
                    }
                    if self.tasks.is_empty() {
                        self.txn.lock().expect("txn lock").dirty = false;
                    }
                }
                RebalanceEvent::Assigned(partitions) => {
                    self.runtime.metrics.set_ready(false);
                    let new: Vec<TaskId> = self
                        .task_ids(&partitions)
                        .into_iter()
                        .filter(|id| !self.tasks.contains_key(id))
                        .collect();
                    // Before the restores: they read up to what a dead owner left open.
                    self.fence_departed();
                    if let Some(standbys) = &mut self.standbys {
                        standbys.promote(&new)?;
                        standbys.refresh_soon();
                    }
                    for task in self.open_tasks(&new)? {
                        self.tasks.insert(task.id, task);
                    }
                    self.seed_positions(&partitions, false)?;
                    self.runtime.metrics.set_ready(true);
                }
            }
        }
        if !changed {
            // The assignment changes only with such an event: asking the consumer for it is a
            // round trip to librdkafka's main thread, which this thread waited on every step.
            return Ok(());
        }
        let topology = &self.runtime.topology;
        for (task, missing) in group::split_tasks(&self.consumer, topology, self.tasks.keys())? {
            tracing::warn!(%task, ?missing, "the assignment is not co-partitioned: this task's other sources are read elsewhere");
        }
        Ok(())
    }

    /// Ends the transactions that members gone from the group left open ([`fence`]); a
    /// failure leaves them to the broker's transaction timeout.
    fn fence_departed(&mut self) {
        let Some(departures) = &mut self.departures else { return };
        let departed = match departures.departed(&self.consumer) {
            Ok(departed) => departed,
            Err(error) => {
                tracing::warn!(%error, "the group's members are unknown: no departed instance fenced");
                return;
            }
        };
        let config = self.txn.lock().expect("txn lock").kafka_config.clone();
        for member in departed {
            match fence::fence(&config, &member, self.runtime.config.transaction_timeout) {
                Ok(()) => {
                    self.runtime.metrics.departed_fenced.inc();
                    tracing::info!(%member, "fenced an instance gone from the group: the transaction it left open is aborted");
                }
                Err(error) => {
                    tracing::warn!(%member, %error, "could not fence an instance gone from the group; its open transaction ends at its timeout");
                }
            }
        }
    }

    fn task_ids(&self, partitions: &[(String, i32)]) -> BTreeSet<TaskId> {
        partitions
            .iter()
            .filter_map(|(topic, partition)| {
                self.runtime
                    .topology
                    .sub_topology_of(topic)
                    .map(|sub| TaskId { sub_topology: sub, partition: *partition })
            })
            .collect()
    }

    fn task_dir(&self, id: TaskId) -> PathBuf {
        self.runtime.config.state_dir.join(&self.runtime.topology.app_id).join(id.to_string())
    }

    /// Opens tasks' stores and restores them from their changelogs: from the checkpoint after a
    /// clean close, from scratch otherwise.
    fn open_tasks(&self, ids: &[TaskId]) -> Result<Vec<Task>, RuntimeError> {
        let topology = &self.runtime.topology;
        let started = Instant::now();
        let mut opened = Vec::with_capacity(ids.len());
        for id in ids {
            let dir = self.task_dir(*id);
            let checkpoint = checkpoint::take(&dir);
            if checkpoint.is_none() && dir.exists() {
                tracing::info!(task = %id, "no checkpoint (unclean stop): wiping the local store");
                std::fs::remove_dir_all(&dir)
                    .map_err(RuntimeError::io(format!("wiping {}", dir.display())))?;
            }
            let changelogs = task_changelogs(topology, id.sub_topology);
            let state = TaskState::open(&dir, id.partition, changelogs, &self.memory)?;
            opened.push((*id, state, checkpoint.unwrap_or_default()));
        }
        // The restore reads at least up to the ends seen now: until this instance commits
        // changelog records of its own, they are what the tasks' checkpoints may claim.
        let partitions: Vec<(String, i32)> = opened
            .iter()
            .flat_map(|(id, state, _)| {
                state.changelog_topics().map(|topic| (topic.to_string(), id.partition))
            })
            .collect();
        let ends = watermarks(self.consumer.as_ref(), &partitions, KAFKA_TIMEOUT)?;
        let mut txn = self.txn.lock().expect("txn lock");
        for ((topic, partition), (_, high)) in ends {
            txn.changelog_ends.entry(topic).or_default().insert(partition, high);
        }
        drop(txn);
        let requests: Vec<RestoreRequest<'_>> = opened
            .iter()
            .map(|(id, state, from)| RestoreRequest {
                state,
                partition: id.partition,
                from: from.clone(),
            })
            .collect();
        let restored = restore(&self.runtime.config.kafka, &requests, &self.runtime.metrics)?;
        drop(requests);
        tracing::info!(
            tasks = ids.len(),
            restored,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tasks restored"
        );
        opened
            .into_iter()
            .map(|(id, state, _)| {
                let partitions = self.partition_counts[id.sub_topology];
                Task::new(id, partitions, &topology.sub_topologies[id.sub_topology], state)
            })
            .collect()
    }

    /// Closes a task; a clean close flushes and checkpoints, a dirty one wipes the store.
    /// The checkpoint is what this instance committed or restored, never the changelogs' current
    /// ends: another owner may have written there since (after an eviction from the group).
    fn close_task(&self, task: Task, clean: bool) {
        let dir = task.state.dir().to_path_buf();
        let mut checkpoint = checkpoint::Checkpoint::new();
        let mut txn = self.txn.lock().expect("txn lock");
        for topic in task.state.changelog_topics() {
            let ends = txn.changelog_ends.get_mut(topic);
            if let Some(end) = ends.and_then(|ends| ends.remove(&task.id.partition)) {
                checkpoint.insert(topic.to_string(), end);
            }
        }
        drop(txn);
        if !clean {
            drop(task);
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let result = task.state.flush().and_then(|()| checkpoint::write(&dir, &checkpoint));
        if let Err(error) = result {
            tracing::warn!(task = %task.id, %error, "could not checkpoint; the store will be rebuilt");
        }
    }

    /// [`Self::rewind`] until it succeeds: after a broker restart, the offsets and watermarks it
    /// reads fail for a while (no leader yet, a fenced leader epoch), which is no reason to
    /// stop. Kafka errors are retried after a pause doubling from 200 ms to 5 s; it returns
    /// early when fenced, or when a shutdown is asked for (the tasks then stay closed, and
    /// restore at the next start).
    fn rewind_until_done(&mut self, shutdown: &ShutdownFlag) -> Result<(), RuntimeError> {
        let mut pause = Duration::from_millis(200);
        loop {
            self.runtime.metrics.loop_turned();
            match self.rewind() {
                Err(error @ (RuntimeError::Kafka { .. } | RuntimeError::NoGroupMetadata)) => {
                    tracing::warn!(%error, ?pause, "rebuilding the tasks failed; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                    self.recover_if_fenced()?;
                    if shutdown.requested() {
                        return Ok(());
                    }
                }
                done => return done,
            }
        }
    }

    /// After an aborted transaction: rebuild the tasks of the partitions still assigned from
    /// their changelogs and rewind their inputs to the committed offsets. Tasks the group gave
    /// away meanwhile (an eviction) stay closed, their timers unfired, until assigned again.
    fn rewind(&mut self) -> Result<(), RuntimeError> {
        // Held records come again from the committed offsets.
        self.ordered.clear();
        for task in std::mem::take(&mut self.tasks).into_values() {
            self.close_task(task, false);
        }
        let assignment =
            self.consumer.assignment().map_err(RuntimeError::kafka("reading the assignment"))?;
        let partitions: Vec<(String, i32)> =
            assignment.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        let ids: Vec<TaskId> = self.task_ids(&partitions).into_iter().collect();
        for task in self.open_tasks(&ids)? {
            self.tasks.insert(task.id, task);
        }
        {
            let mut txn = self.txn.lock().expect("txn lock");
            txn.dirty = false;
            txn.positions.clear();
        }
        self.seed_positions(&partitions, true)?;
        self.runtime.metrics.recoveries.with_label_values(&["rewind"]).inc();
        tracing::info!(tasks = self.tasks.len(), "recovered: inputs rewound to the last commit");
        Ok(())
    }

    /// Sets the positions of `partitions` that are not known yet (all of them when `rewind`,
    /// which also seeks the consumer there) to their committed offsets, or to their start when
    /// nothing is committed, so that the next commit names them.
    fn seed_positions(
        &self,
        partitions: &[(String, i32)],
        rewind: bool,
    ) -> Result<(), RuntimeError> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, KAFKA_TIMEOUT)
            .map_err(RuntimeError::kafka("reading committed offsets"))?;
        let mut seeded = Vec::new();
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => {
                    bounds(self.consumer.as_ref(), topic, partition, KAFKA_TIMEOUT)
                        .map_err(RuntimeError::kafka(format!("reading the start of {topic}")))?
                        .0
                }
            };
            if rewind {
                if let Err(error) =
                    self.consumer.seek(topic, partition, Offset::Offset(offset), KAFKA_TIMEOUT)
                {
                    tracing::warn!(%error, topic, partition, "seek failed");
                }
            }
            seeded.push((topic.to_string(), partition, offset));
        }
        let mut txn = self.txn.lock().expect("txn lock");
        for (topic, partition, offset) in seeded {
            txn.positions.entry(topic).or_default().entry(partition).or_insert(offset);
        }
        Ok(())
    }

    /// Fails once the consumer is fenced for good: a newer member with this instance id joined
    /// the group (librdkafka's only fatal consumer error), so this process must stop working.
    /// [`Self::check_not_fenced`], recovering up to [`MAX_REJOINS`] times in
    /// [`REJOIN_WINDOW`]: a static member is also fenced after a broker restart longer than the
    /// session timeout, with no other process involved (librdkafka rejoins under a new member
    /// id and its own older one is fenced). Each time, the open transaction is aborted, the
    /// tasks closed (their stores rebuilt when assigned again) and the group joined with a new
    /// consumer; fenced more often, another process does have this id, and the error stands.
    fn recover_if_fenced(&mut self) -> Result<(), RuntimeError> {
        let Err(fenced) = self.check_not_fenced() else { return Ok(()) };
        self.rejoins.retain(|at| at.elapsed() < REJOIN_WINDOW);
        if self.rejoins.len() >= MAX_REJOINS {
            let RuntimeError::Fenced(reason) = fenced else { return Err(fenced) };
            return Err(RuntimeError::Fenced(format!(
                "{reason}; fenced {} times within {} s",
                MAX_REJOINS + 1,
                REJOIN_WINDOW.as_secs()
            )));
        }
        self.rejoins.push(Instant::now());
        self.runtime.metrics.recoveries.with_label_values(&["rejoin"]).inc();
        tracing::warn!(
            error = %fenced,
            rejoins = self.rejoins.len(),
            "the consumer failed for good: joining the group again with a new one"
        );
        self.rejoin()
    }

    /// Checks the progress on the input partitions ([`stall`]); when one with records to read
    /// has not moved for [`RuntimeConfig::stall_after`], joins the group again with a new consumer and
    /// a new producer (whose `init_transactions` also ends any transaction this instance left
    /// open), up to [`MAX_REJOINS`] times in [`REJOIN_WINDOW`]; stalled more often, fails.
    fn recover_if_stalled(&mut self) -> Result<(), RuntimeError> {
        let stalled = {
            let txn = self.txn.lock().expect("txn lock");
            self.stall.check(&self.consumer, &txn.positions)
        };
        if stalled.is_empty() {
            return Ok(());
        }
        let partitions = stalled.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        self.stalls.retain(|at| at.elapsed() < REJOIN_WINDOW);
        if self.stalls.len() >= MAX_REJOINS {
            return Err(RuntimeError::Stalled(format!(
                "no progress on input partitions with records to read ({partitions}), after \
                 joining the group again {MAX_REJOINS} times within {} s",
                REJOIN_WINDOW.as_secs()
            )));
        }
        self.stalls.push(Instant::now());
        self.runtime.metrics.recoveries.with_label_values(&["stall"]).inc();
        tracing::warn!(
            %partitions,
            "no progress on input partitions with records to read: joining the group again \
             with a new consumer and producer"
        );
        self.rejoin()?;
        self.txn.lock().expect("txn lock").producer_broken = true;
        Ok(())
    }

    /// Aborts the open transaction, closes every task (their stores are rebuilt when assigned
    /// again) and joins the group with a new consumer.
    fn rejoin(&mut self) -> Result<(), RuntimeError> {
        self.txn.lock().expect("txn lock").abort();
        for task in std::mem::take(&mut self.tasks).into_values() {
            self.close_task(task, false);
        }
        self.ordered.clear();
        {
            let mut txn = self.txn.lock().expect("txn lock");
            txn.positions.clear();
            txn.events.clear();
            txn.dirty = false;
        }
        self.stall.reset();
        self.consumer = Arc::new(self.runtime.join_group(&self.txn)?);
        Ok(())
    }

    fn check_not_fenced(&self) -> Result<(), RuntimeError> {
        match self.consumer.client().fatal_error() {
            None => Ok(()),
            Some((code, reason)) => Err(RuntimeError::Fenced(format!(
                "another process joined {} with this instance's id {:?}; every instance needs \
                 its own id (--instance-id, or a state directory of its own): {reason} ({code:?})",
                self.runtime.topology.app_id, self.runtime.config.instance_id
            ))),
        }
    }

    fn refresh_gauges(&self) {
        let metrics = &self.runtime.metrics;
        metrics.timers_pending.set(self.tasks.values().map(Task::timers_pending).sum());
        for task in self.tasks.values() {
            let partition = task.id.partition.to_string();
            for store in &self.runtime.topology.sub_topologies[task.id.sub_topology].stores {
                metrics
                    .store_keys
                    .with_label_values(&[store, &partition])
                    .set(task.state.estimated_keys(store) as i64);
            }
        }
        // Consumer lag comes from librdkafka's statistics (see `RebalanceHook::stats`): asking
        // the broker for watermarks here would block the processing loop.
    }

    /// Stops consuming (giving the partitions back to the group first when `leave`) and closes
    /// every task: cleanly (checkpointed) after a successful final commit, dirty otherwise.
    fn shutdown(&mut self, committed: bool, leave: bool) {
        self.runtime.metrics.set_ready(false);
        let protocol = self.runtime.config.group_protocol;
        let parking = format!("{}-leaving", self.runtime.topology.app_id);
        match leave {
            true => {
                if let Err(error) = group::give_back(&self.consumer, protocol, &parking) {
                    tracing::warn!(%error, "could not give the partitions back; they move after the session timeout");
                }
            }
            false => self.consumer.unsubscribe(),
        }
        let tasks = std::mem::take(&mut self.tasks);
        let dirty = self.txn.lock().expect("txn lock").dirty;
        for task in tasks.into_values() {
            self.close_task(task, committed && !dirty);
        }
    }
}

/// Processes `record` on `task` in the open transaction (beginning one if needed), committing
/// first when event-time timers due before it spent the budget, and after it when it did.
fn process_record(
    task: &mut Task,
    record: &SourceRecord<'_>,
    env: &TaskEnv<'_>,
    state: &mut LoopState,
    txn: &mut TxnState,
    consumer: &BaseConsumer<RebalanceHook>,
) -> Result<(), RuntimeError> {
    loop {
        state.begin(txn)?;
        let out = &mut TxnOutput { txn: &mut *txn };
        if task.process(record, env, out, &mut state.budget)? {
            break;
        }
        // Event-time timers due before the record spent the budget: commit them first.
        state.commit(txn, consumer)?;
    }
    txn.touched = true;
    txn.consumed(record.topic, record.partition, record.offset);
    if state.budget.spent() {
        state.commit(txn, consumer)?;
    }
    Ok(())
}
