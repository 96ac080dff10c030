//! The replay driver: runs a topology over a bounded input (a JSON lines file or a range of
//! topics) on the event-time clock, in one process, and writes what it would have produced to
//! JSON lines files or shadow topics. It drives the same [`Task`] code as the live runtime.
//!
//! Input lines look like
//! `{"topic": "herald.events", "key": "u1", "timestamp_ms": 1764000000000, "schema": "AppEvent", "value": {...}}`:
//! with `schema`, `value` is encoded as that Avro record; without it a string value is taken as
//! its UTF-8 bytes and any other JSON value as its JSON text; `null` is a tombstone. An optional
//! `partition` pins the partition, otherwise Kafka's key partitioner picks it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    Message, Offset, TopicPartitionList,
};
use serde_json::json;

use super::{
    global::GlobalTables,
    output::Output,
    partitioner::partition_for,
    store::{StoreMemory, TaskState},
    task::{Budget, Task, TaskEnv},
    Clock, RuntimeError, RuntimeMetrics, SourceRecord, StreamTopology, TaskId,
};
use crate::{kafka::KafkaConfig, model::SchemaRegistry};

/// What to replay.
pub enum ReplayInput {
    /// A JSON lines file (format in the module documentation).
    Jsonl(PathBuf),
    /// Records already read by the caller (e.g. from a format of its own), in order.
    Records(Vec<ReplayRecord>),
    /// Records made by the caller as the replay takes them, in order: a large input is never
    /// held in memory as a whole.
    Stream(Box<dyn Iterator<Item = Result<ReplayRecord, RuntimeError>>>),
    /// Records in order, as [`Self::Records`], each a global table's record read by the tasks
    /// of one partition only (`Some(p)`: as an instance running them reads the table at its own
    /// pace, before or after the others) or by every task (`None`).
    Staggered(Vec<(Option<i32>, ReplayRecord)>),
    /// Records of `topics` between two bounds, merged in timestamp order.
    Topics {
        /// The cluster to read.
        kafka: KafkaConfig,
        /// Topics to read (sources of the topology, or global tables' topics).
        topics: Vec<String>,
        /// First record: at or after this time (epoch ms), or the beginning when `None`.
        from_ms: Option<i64>,
        /// Last record: before this time (epoch ms), or the end as of the start when `None`.
        until_ms: Option<i64>,
    },
}

/// Receives each replay output: (topic, key, value, timestamp).
pub type OutputCallback<'a> =
    Box<dyn FnMut(&str, &[u8], &[u8], i64) -> Result<(), RuntimeError> + 'a>;

/// Where the replay's outputs go.
pub enum ReplaySink<'a> {
    /// Each output is handed to this function.
    Callback(OutputCallback<'a>),
    /// One `<topic>.jsonl` file per output topic in this directory.
    JsonlDir(PathBuf),
    /// Topic `<prefix><topic>` per output topic (created when missing).
    ShadowTopics {
        /// The cluster to write to.
        kafka: KafkaConfig,
        /// Prefix of the shadow topics' names.
        prefix: String,
    },
}

/// Event time between two ticks of every task: the replay's analogue of the live runtime's
/// timer check on the wall clock (every 10 ms).
const REPLAY_TICK_MS: i64 = 10;

/// The replay's RocksDB block cache, shared by every task (taken only as blocks are read).
/// With 2,000,000 users the stores' index and filter blocks alone are about 50 MiB: in a
/// smaller cache every read evicts them and reads them again from the file (the audience
/// benchmark spent most of its time there with 32 MiB).
const REPLAY_BLOCK_CACHE_BYTES: usize = 256 << 20;

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Partitions per sub-topology (default 1: every key in one task).
    pub partitions: i32,
    /// After the input, fire timers due up to this time (epoch ms); timers due up to the
    /// latest input time fire in any case.
    pub fire_timers_until: Option<i64>,
    /// Where task stores live; a temporary directory when `None`.
    pub state_dir: Option<PathBuf>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self { partitions: 1, fire_timers_until: None, state_dir: None }
    }
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Input records processed.
    pub records_in: u64,
    /// Records written, per output topic (internal repartition topics included).
    pub outputs: BTreeMap<String, u64>,
    /// Timers fired.
    pub timers_fired: u64,
}

/// One input record of a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRecord {
    /// Topic it belongs to (a source or a global table's topic).
    pub topic: String,
    /// Partition, or `None` to partition by key.
    pub partition: Option<i32>,
    /// Offset or line number, reported in dead letters.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Event time, epoch milliseconds.
    pub timestamp_ms: i64,
}

/// Replays `input` through `topology` into `sink`.
pub fn run(
    topology: &StreamTopology,
    input: ReplayInput,
    sink: ReplaySink<'_>,
    options: &ReplayOptions,
) -> Result<ReplaySummary, RuntimeError> {
    let mut staggered = VecDeque::new(); // the readers of each record of `Staggered`
    let records: Box<dyn Iterator<Item = Result<ReplayRecord, RuntimeError>>> = match input {
        ReplayInput::Jsonl(path) => Box::new(read_jsonl(&path)?.into_iter().map(Ok)),
        ReplayInput::Records(records) => Box::new(records.into_iter().map(Ok)),
        ReplayInput::Stream(records) => records,
        ReplayInput::Topics { kafka, topics, from_ms, until_ms } => {
            Box::new(read_topics(&kafka, &topics, from_ms, until_ms)?.into_iter().map(Ok))
        }
        ReplayInput::Staggered(records) => {
            let (readers, records): (VecDeque<_>, Vec<_>) = records.into_iter().unzip();
            staggered = readers;
            Box::new(records.into_iter().map(Ok))
        }
    };
    let (_temporary, state_dir) = match &options.state_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let dir = tempfile::tempdir()
                .map_err(RuntimeError::io("creating a replay state directory"))?;
            let path = dir.path().to_path_buf();
            (Some(dir), path)
        }
    };
    let mut replay = Replay {
        topology,
        options,
        state_dir,
        memory: StoreMemory::new(REPLAY_BLOCK_CACHE_BYTES, 8 << 20),
        tasks: BTreeMap::new(),
        globals: GlobalTables::default(),
        views: BTreeMap::new(),
        metrics: RuntimeMetrics::new(),
        writer: SinkWriter::new(sink, topology)?,
        internal: VecDeque::new(),
        internal_offsets: HashMap::new(),
        summary: ReplaySummary::default(),
        clock: i64::MIN,
        ticked: i64::MIN,
    };
    // Every task exists from the start, so each one ticks and fires its timers even when no
    // input record lands in its partition.
    for sub_topology in 0..topology.sub_topologies.len() {
        for partition in 0..options.partitions {
            replay.ensure_task(TaskId { sub_topology, partition })?;
        }
    }
    for record in records {
        replay.summary.records_in += 1;
        replay.feed(record?, staggered.pop_front().flatten())?;
    }
    // The end of the input: timers due at the latest input time fire after its records.
    let until = options.fire_timers_until.map_or(replay.clock, |until| until.max(replay.clock));
    if until > i64::MIN {
        replay.fire_all(until)?;
    }
    replay.summary.timers_fired = replay.metrics.timers_fired.get();
    replay.writer.finish()?;
    Ok(replay.summary)
}

struct Replay<'a, 's> {
    topology: &'a StreamTopology,
    options: &'a ReplayOptions,
    state_dir: PathBuf,
    memory: StoreMemory,
    tasks: BTreeMap<TaskId, Task>,
    globals: GlobalTables,
    /// The global tables as the tasks of a partition read them, once a record of
    /// [`ReplayInput::Staggered`] was read by them alone (the others read `globals`).
    views: BTreeMap<i32, GlobalTables>,
    metrics: std::sync::Arc<RuntimeMetrics>,
    writer: SinkWriter<'s>,
    internal: VecDeque<ReplayRecord>,
    internal_offsets: HashMap<(String, i32), i64>,
    summary: ReplaySummary,
    /// The latest input time so far.
    clock: i64,
    /// The input time of the last tick of every task.
    ticked: i64,
}

impl Replay<'_, '_> {
    /// Processes one record, then everything it sent to internal topics, in order.
    /// Then, when the input moved the replay's clock (the latest input time, the analogue of
    /// the wall clock) by a tick, every task fires the timers due before it and ticks: timers
    /// due at the latest input time wait for the records of that time, whichever task they
    /// land in (like a live engine's, which fire once the wall clock has passed them).
    /// A global table's record is read by the tasks of partition `only`, or by every task.
    fn feed(&mut self, record: ReplayRecord, only: Option<i32>) -> Result<(), RuntimeError> {
        let time = record.timestamp_ms;
        // A global table's change (e.g. a campaign paused) has no task to fire timers first:
        // timers due before it fire before it, as on a live engine running at the time.
        let global = self.topology.globals.iter().any(|g| g.topic == record.topic);
        if global && time > self.clock {
            self.ticked = time;
            self.fire_all(time.saturating_sub(1))?;
        }
        self.process(record, only)?;
        self.drain_internal()?;
        if time >= self.ticked.saturating_add(REPLAY_TICK_MS) {
            self.ticked = time;
            self.fire_all(time.saturating_sub(1))?;
        }
        self.clock = self.clock.max(time);
        Ok(())
    }

    /// Every task fires its timers due at or before `until` and ticks, in time order over all
    /// tasks, as a live engine's clock reaches each: the earliest due time first, then what its
    /// timers sent is processed before any later timer fires (e.g. a task's answer to another
    /// task's timer arrives before that task's next timer), round after round while timers
    /// fire: what one task's timers send may schedule due timers in another (e.g. a decision
    /// coming back to a task that already fired), which a live engine fires as well.
    fn fire_all(&mut self, until: i64) -> Result<(), RuntimeError> {
        loop {
            let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
            let mut next: Option<i64> = None;
            for id in &ids {
                if let Some(due) = self.next_due(*id)? {
                    next = Some(next.map_or(due, |next| next.min(due)));
                }
            }
            let step = next.map_or(until, |next| next.min(until));
            let fired = self.metrics.timers_fired.get();
            for id in ids {
                self.fire_timers(id, step)?;
            }
            if step == until && self.metrics.timers_fired.get() == fired {
                return Ok(());
            }
        }
    }

    /// When task `id`'s earliest pending timer is due.
    fn next_due(&mut self, id: TaskId) -> Result<Option<i64>, RuntimeError> {
        let mut out = ReplayOutput {
            topology: self.topology,
            writer: &mut self.writer,
            internal: &mut self.internal,
            internal_offsets: &mut self.internal_offsets,
            summary: &mut self.summary,
        };
        let task = self.tasks.get_mut(&id).expect("existing task");
        task.next_due(&mut out)
    }

    fn drain_internal(&mut self) -> Result<(), RuntimeError> {
        while let Some(next) = self.internal.pop_front() {
            self.process(next, None)?;
        }
        Ok(())
    }

    fn process(&mut self, record: ReplayRecord, only: Option<i32>) -> Result<(), RuntimeError> {
        if let Some(global) = self.topology.globals.iter().find(|g| g.topic == record.topic) {
            let key = record.key.as_deref().unwrap_or_default();
            let value = record.value.as_deref();
            let only = only.map(|p| p.rem_euclid(self.options.partitions));
            if let Some(partition) = only {
                let view = self.views.entry(partition).or_insert_with(|| self.globals.clone());
                view.table_mut(&global.name).apply(key, value);
            } else {
                self.globals.table_mut(&global.name).apply(key, value);
                for view in self.views.values_mut() {
                    view.table_mut(&global.name).apply(key, value);
                }
            }
            let readers =
                self.tasks.iter_mut().filter(|(id, _)| only.is_none_or(|p| p == id.partition));
            for (_, task) in readers {
                task.global_changed(&global.name, key, value);
            }
            return Ok(());
        }
        let Some(sub) = self.topology.sub_topology_of(&record.topic) else {
            return Err(RuntimeError::ReplayInput {
                location: format!("{} offset {}", record.topic, record.offset),
                reason: format!(
                    "topic {} is not a source or global table of the topology",
                    record.topic
                ),
            });
        };
        let partitions = self.options.partitions;
        let partition = match (record.partition, &record.key) {
            (Some(p), _) => p.rem_euclid(partitions),
            (None, Some(key)) => partition_for(key, partitions),
            (None, None) => 0,
        };
        let id = TaskId { sub_topology: sub, partition };
        self.ensure_task(id)?;
        let source = SourceRecord {
            topic: &record.topic,
            partition,
            offset: record.offset,
            key: record.key.as_deref(),
            value: record.value.as_deref(),
            timestamp_ms: record.timestamp_ms,
        };
        let env = TaskEnv {
            clock: Clock::EventTime,
            wall_now_ms: 0,
            globals: self.views.get(&partition).unwrap_or(&self.globals),
            dead_letter_topic: &self.topology.dead_letter_topic,
            metrics: &self.metrics,
        };
        let mut out = ReplayOutput {
            topology: self.topology,
            writer: &mut self.writer,
            internal: &mut self.internal,
            internal_offsets: &mut self.internal_offsets,
            summary: &mut self.summary,
        };
        let task = self.tasks.get_mut(&id).expect("task ensured above");
        task.process(&source, &env, &mut out, &mut Budget::unlimited())?;
        Ok(())
    }

    fn fire_timers(&mut self, id: TaskId, until: i64) -> Result<(), RuntimeError> {
        let env = TaskEnv {
            clock: Clock::EventTime,
            wall_now_ms: 0,
            globals: self.views.get(&id.partition).unwrap_or(&self.globals),
            dead_letter_topic: &self.topology.dead_letter_topic,
            metrics: &self.metrics,
        };
        let mut out = ReplayOutput {
            topology: self.topology,
            writer: &mut self.writer,
            internal: &mut self.internal,
            internal_offsets: &mut self.internal_offsets,
            summary: &mut self.summary,
        };
        let task = self.tasks.get_mut(&id).expect("existing task");
        task.fire_due(until, until, &env, &mut out, &mut Budget::unlimited())?;
        self.drain_internal()
    }

    fn ensure_task(&mut self, id: TaskId) -> Result<(), RuntimeError> {
        if self.tasks.contains_key(&id) {
            return Ok(());
        }
        let sub = &self.topology.sub_topologies[id.sub_topology];
        let changelogs = sub
            .all_stores()
            .into_iter()
            .map(|store| {
                let topic = self.topology.changelog_topic(&store);
                (store, topic)
            })
            .collect();
        let dir = self.state_dir.join(id.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let state = TaskState::open(&dir, id.partition, changelogs, &self.memory)?;
        self.tasks.insert(id, Task::new(id, self.options.partitions, sub, state)?);
        Ok(())
    }
}

/// Output of a replay: to the sink, and back into the replay for internal topics.
struct ReplayOutput<'a, 's> {
    topology: &'a StreamTopology,
    writer: &'a mut SinkWriter<'s>,
    internal: &'a mut VecDeque<ReplayRecord>,
    internal_offsets: &'a mut HashMap<(String, i32), i64>,
    summary: &'a mut ReplaySummary,
}

impl Output for ReplayOutput<'_, '_> {
    fn emit(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        *self.summary.outputs.entry(topic.to_string()).or_default() += 1;
        self.writer.write(topic, key, value, timestamp_ms)?;
        if self.topology.sub_topology_of(topic).is_some() {
            let offset = self.internal_offsets.entry((topic.to_string(), 0)).or_default();
            self.internal.push_back(ReplayRecord {
                topic: topic.to_string(),
                partition: None,
                offset: *offset,
                key: Some(key.to_vec()),
                value: Some(value.to_vec()),
                timestamp_ms,
            });
            *offset += 1;
        }
        Ok(())
    }

    fn changelog(
        &mut self,
        _: &str,
        _: i32,
        _: &[u8],
        _: Option<&[u8]>,
        _: i64,
    ) -> Result<(), RuntimeError> {
        // A replay's stores are scratch state: nothing to make durable.
        Ok(())
    }
}

/// Writes replay outputs.
enum SinkWriter<'s> {
    Callback(OutputCallback<'s>),
    Files { dir: PathBuf, files: HashMap<String, BufWriter<File>> },
    Topics { producer: ThreadedProducer<DefaultProducerContext>, prefix: String },
}

impl<'s> SinkWriter<'s> {
    fn new(sink: ReplaySink<'s>, topology: &StreamTopology) -> Result<Self, RuntimeError> {
        match sink {
            ReplaySink::Callback(callback) => Ok(Self::Callback(callback)),
            ReplaySink::JsonlDir(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
                Ok(Self::Files { dir, files: HashMap::new() })
            }
            ReplaySink::ShadowTopics { kafka, prefix } => {
                create_shadow_topics(&kafka, &prefix, topology)?;
                let producer = kafka
                    .client_config()
                    .set("enable.idempotence", "true")
                    .set("partitioner", "murmur2_random")
                    .create()
                    .map_err(RuntimeError::kafka("creating the shadow topic producer"))?;
                Ok(Self::Topics { producer, prefix })
            }
        }
    }

    fn write(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        match self {
            Self::Callback(callback) => callback(topic, key, value, timestamp_ms),
            Self::Files { dir, files } => {
                let file = match files.get_mut(topic) {
                    Some(file) => file,
                    None => {
                        let path = dir.join(format!("{topic}.jsonl"));
                        let file = File::create(&path)
                            .map_err(RuntimeError::io(format!("creating {}", path.display())))?;
                        files.entry(topic.to_string()).or_insert(BufWriter::new(file))
                    }
                };
                let line = json!({
                    "key": String::from_utf8_lossy(key),
                    "timestamp_ms": timestamp_ms,
                    "value": describe_value(value),
                });
                writeln!(file, "{line}").map_err(RuntimeError::io(format!("writing {topic}.jsonl")))
            }
            Self::Topics { producer, prefix } => {
                let shadow = format!("{prefix}{topic}");
                let record =
                    BaseRecord::to(&shadow).key(key).payload(value).timestamp(timestamp_ms);
                crate::kafka::send_waiting(producer, record).map_err(|source| RuntimeError::Kafka {
                    context: format!("producing to {shadow}"),
                    source,
                })
            }
        }
    }

    fn finish(self) -> Result<(), RuntimeError> {
        match self {
            Self::Callback(_) => Ok(()),
            Self::Files { files, .. } => {
                for (topic, mut file) in files {
                    file.flush().map_err(RuntimeError::io(format!("writing {topic}.jsonl")))?;
                }
                Ok(())
            }
            Self::Topics { producer, .. } => producer
                .flush(Duration::from_secs(30))
                .map_err(RuntimeError::kafka("flushing shadow topics")),
        }
    }
}

/// A readable form of an output value: the decoded Avro record when it is one, else the text.
fn describe_value(value: &[u8]) -> serde_json::Value {
    if let Ok((schema, decoded)) = SchemaRegistry::builtin().decode_value(value) {
        if let Ok(decoded) = serde_json::Value::try_from(decoded) {
            return json!({"schema": schema, "record": decoded});
        }
    }
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::Value::String(text.to_string()),
        Err(_) => json!({"hex": value.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
    }
}

fn create_shadow_topics(
    kafka: &KafkaConfig,
    prefix: &str,
    topology: &StreamTopology,
) -> Result<(), RuntimeError> {
    use crate::topology::{CleanupPolicy, TopicSpec, Topology};
    let mut names: Vec<String> =
        topology.sub_topologies.iter().flat_map(|s| s.sinks.iter().cloned()).collect();
    names.push(topology.dead_letter_topic.clone());
    names.sort();
    names.dedup();
    let topics = names
        .into_iter()
        .map(|name| TopicSpec {
            name: format!("{prefix}{name}"),
            partitions: 1,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: None,
            description: format!("replay output for {name}"),
            configs: Default::default(),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RuntimeError::io("starting an admin runtime"))?;
    runtime
        .block_on(crate::kafka::apply_topology(kafka, &Topology { replication_factor: 1, topics }))
        .map_err(|e| RuntimeError::Topology(format!("creating shadow topics: {e}")))?;
    Ok(())
}

fn read_jsonl(path: &Path) -> Result<Vec<ReplayRecord>, RuntimeError> {
    let file = File::open(path).map_err(RuntimeError::io(format!("opening {}", path.display())))?;
    let registry = SchemaRegistry::builtin();
    let mut records = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let location = format!("{}:{}", path.display(), index + 1);
        let bad = |reason: String| RuntimeError::ReplayInput { location: location.clone(), reason };
        let line = line.map_err(|e| bad(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let topic = match object.remove("topic") {
            Some(serde_json::Value::String(topic)) => topic,
            _ => return Err(bad("missing string field \"topic\"".into())),
        };
        let timestamp_ms = object
            .get("timestamp_ms")
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| bad("missing integer field \"timestamp_ms\"".into()))?;
        let partition = match object.get("partition") {
            None | Some(serde_json::Value::Null) => None,
            Some(p) => Some(
                p.as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or_else(|| bad("\"partition\" must be an integer".into()))?,
            ),
        };
        let key = match object.remove("key") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(key)) => Some(key.into_bytes()),
            Some(other) => Some(other.to_string().into_bytes()),
        };
        let schema = object.get("schema").and_then(serde_json::Value::as_str).map(str::to_string);
        let value = match (object.remove("value"), schema) {
            (None | Some(serde_json::Value::Null), _) => None,
            (Some(value), Some(schema)) => {
                Some(registry.encode_json(&schema, value).map_err(|e| bad(e.to_string()))?)
            }
            (Some(serde_json::Value::String(text)), None) => Some(text.into_bytes()),
            (Some(other), None) => Some(other.to_string().into_bytes()),
        };
        records.push(ReplayRecord {
            topic,
            partition,
            offset: index as i64,
            key,
            value,
            timestamp_ms,
        });
    }
    Ok(records)
}

/// The records of `topics` between two bounds (see [`ReplayInput::Topics`]), in one
/// deterministic order: time, then topic, partition, offset.
pub fn read_topics(
    kafka: &KafkaConfig,
    topics: &[String],
    from_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<Vec<ReplayRecord>, RuntimeError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-replay")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(RuntimeError::kafka("creating the replay consumer"))?;
    let timeout = Duration::from_secs(30);
    let mut records = Vec::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(RuntimeError::kafka(format!("reading metadata of {topic}")))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .first()
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(RuntimeError::ReplayInput {
                location: topic.clone(),
                reason: "topic does not exist".into(),
            });
        }
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(RuntimeError::kafka(format!("reading the end of {topic}/{partition}")))?;
            let start = match from_ms {
                Some(ms) => {
                    offset_for_time(&consumer, topic, partition, ms, timeout)?.unwrap_or(high)
                }
                None => low,
            };
            if start >= high {
                continue;
            }
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(RuntimeError::kafka("assigning"))?;
            consumer.assign(&assignment).map_err(RuntimeError::kafka("assigning"))?;
            // Stop at the end as of now; control records may end the partition without a message.
            loop {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|p| {
                        p.find_partition(topic, partition).and_then(|e| e.offset().to_raw())
                    })
                    .unwrap_or(start);
                if position >= high {
                    break;
                }
                let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
                let message =
                    message.map_err(RuntimeError::kafka(format!("reading {topic}/{partition}")))?;
                let timestamp_ms = message.timestamp().to_millis().unwrap_or_default();
                if message.offset() >= high {
                    break;
                }
                if until_ms.is_some_and(|until| timestamp_ms >= until) {
                    continue;
                }
                records.push(ReplayRecord {
                    topic: topic.clone(),
                    partition: Some(partition),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    timestamp_ms,
                });
            }
        }
    }
    // One deterministic order over all partitions: time, then topic, partition, offset.
    records.sort_by(|a, b| {
        (a.timestamp_ms, &a.topic, a.partition, a.offset).cmp(&(
            b.timestamp_ms,
            &b.topic,
            b.partition,
            b.offset,
        ))
    });
    Ok(records)
}

fn offset_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    ms: i64,
    timeout: Duration,
) -> Result<Option<i64>, RuntimeError> {
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset(topic, partition, Offset::Offset(ms))
        .map_err(RuntimeError::kafka("listing offsets"))?;
    let answer = consumer
        .offsets_for_times(query, timeout)
        .map_err(RuntimeError::kafka(format!("finding offsets by time in {topic}")))?;
    Ok(answer
        .find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw())
        .filter(|o| *o >= 0))
}
