//! `herald send`: a sender process in a consumer group on `herald.push`, whose partitions are
//! its shards. It delivers each command to APNs or FCM over HTTP/2 at most once (an intent is
//! written to Kafka before the first provider call, and a partition's new owner learns the
//! intents and receipts of the old one), retries transient errors with backoff and
//! `Retry-After` within the command's deadline and expiry, parks a provider's commands while
//! its credential is refused, and produces one final receipt per command to `herald.receipts`.
//! A partition's offset is committed only up to the first command whose receipt is not yet
//! produced.

pub mod apns;
pub mod app;
mod backlog;
pub mod config;
pub mod dedup;
mod delivery;
pub mod fcm;
pub mod h2;
pub mod intents;
pub mod metrics;
pub mod outcome;
pub mod park;
mod progress;
pub mod reason;
mod rebalance;
pub mod status;
mod takeover;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};

use self::{
    app::AppSender,
    backlog::{Backlog, Waiting},
    config::{ConfigError, SenderConfig},
    dedup::DedupStore,
    intents::{IntentLog, IntentsTopicError},
    metrics::SenderMetrics,
    progress::Progress,
    rebalance::{SenderContext, DRAIN_TIMEOUT},
    takeover::Takeover,
};
use crate::{
    kafka::KafkaConfig,
    model::{DeadLetter, SchemaRegistry, SendCommand},
    runtime::{Readiness, ShutdownFlag},
};

/// How often consumed positions are committed (and the status file written).
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// A consumer rebuilt after a fatal error that hits another within this time stops the sender:
/// another live instance has its `--instance-id`, and the two would fence each other forever.
const FATAL_AGAIN: Duration = Duration::from_secs(300);

/// A sender failure that stops the process.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The configuration or a credential is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka refused something.
    #[error("{context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client error.
        source: rdkafka::error::KafkaError,
    },
    /// A local resource (async runtime, metrics endpoint, dedup store) could not be set up.
    #[error("{0}")]
    Setup(String),
    /// The intents topic is missing and could not be created.
    #[error(transparent)]
    Intents(#[from] IntentsTopicError),
    /// The consumer hit a fatal error within [`FATAL_AGAIN`] of being rebuilt after another.
    #[error("the consumer hit a second fatal error within {FATAL_AGAIN:?}: {0} (is another sender running with the same --instance-id?)")]
    Fatal(Fatal),
}

/// A fatal error of a Kafka client (librdkafka's fatal state: the client is unusable), e.g. a
/// static member fenced by another with its `group.instance.id`.
#[derive(Debug)]
pub struct Fatal {
    /// librdkafka's error code.
    pub code: rdkafka::types::RDKafkaErrorCode,
    /// librdkafka's description.
    pub reason: String,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.reason)
    }
}

fn kafka(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> SenderError + '_ {
    move |source| SenderError::Kafka { context: context.to_string(), source }
}

/// Where a sender reads, writes and keeps its state.
#[derive(Debug, Clone)]
pub struct SenderOptions {
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Send commands topic.
    pub push_topic: String,
    /// Receipts topic.
    pub receipts_topic: String,
    /// Intents topic (created like the receipts topic when missing).
    pub intents_topic: String,
    /// Dead-letter topic (undecodable commands).
    pub dead_letter_topic: String,
    /// Consumer group of all senders.
    pub group: String,
    /// This instance's id (static membership: a restarted instance keeps its shards).
    pub instance_id: String,
    /// Local state (the dedup store, the status file).
    pub state_dir: PathBuf,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// What every command's task shares.
struct Shared {
    apps: BTreeMap<String, AppSender>,
    config: SenderConfig,
    dedup: Arc<DedupStore>,
    intents: IntentLog,
    producer: FutureProducer,
    receipts_topic: String,
    progress: Arc<Mutex<Progress>>,
    metrics: Arc<SenderMetrics>,
    /// Message ids being delivered, with the other (partition, offset) places of the same id
    /// read meanwhile (a partition back on this instance, a repeated command): they finish
    /// with the delivery instead of starting a second one.
    delivering: Mutex<HashMap<String, Vec<(i32, i64)>>>,
    /// The delivery tasks by place, aborted when their partition is revoked before they end.
    tasks: Arc<Mutex<Tasks>>,
}

/// Runs a sender until `shutdown` is requested. The consumer is polled on the calling thread,
/// which never waits for a permit (see [`backlog`]); its rebalance callbacks drain and learn
/// there. Deliveries run on a Tokio runtime.
pub fn run(
    config: SenderConfig,
    options: SenderOptions,
    shutdown: ShutdownFlag,
) -> Result<(), SenderError> {
    let mut apps = BTreeMap::new();
    for (name, app) in &config.apps {
        apps.insert(name.clone(), AppSender::build(name, app, config.request_timeout)?);
    }
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| SenderError::Setup(format!("starting the async runtime: {e}")))?;
    let metrics = Arc::new(SenderMetrics::new());
    // Not ready (`/readyz` says why) until the group has given its consumer its partitions,
    // nor while a new one replaces a dead one.
    let readiness = Arc::new(Mutex::new(Readiness::NotReady(
        "starting: creating the intents topic, opening the dedup store".to_string(),
    )));
    let set_readiness = |verdict| *readiness.lock().expect("readiness lock") = verdict;
    if let Some(addr) = options.metrics_addr {
        let (render, ready) = (Arc::clone(&metrics), Arc::clone(&readiness));
        let bound = crate::runtime::serve_http(
            addr,
            move || render.render(),
            move || ready.lock().expect("readiness lock").clone(),
        )
        .map_err(|e| SenderError::Setup(format!("serving metrics: {e}")))?;
        tracing::info!(%bound, "serving /metrics");
    }
    runtime.block_on(intents::ensure_topic(
        &options.kafka,
        &options.receipts_topic,
        &options.intents_topic,
        config.dedup_window,
    ))?;
    let dedup = Arc::new(
        DedupStore::open(&options.state_dir.join("dedup"), config.dedup_window)
            .map_err(SenderError::Setup)?,
    );
    let progress = Arc::new(Mutex::new(Progress::default()));
    let backlog = Arc::new(Mutex::new(Backlog::default()));
    let tasks = Arc::new(Mutex::new(Tasks::default()));
    let window = config.dedup_window;
    let context = || SenderContext {
        tasks: Arc::clone(&tasks),
        progress: Arc::clone(&progress),
        backlog: Arc::clone(&backlog),
        dedup: Arc::clone(&dedup),
        takeover: Takeover {
            kafka: options.kafka.clone(),
            push_topic: options.push_topic.clone(),
            intents_topic: options.intents_topic.clone(),
            receipts_topic: options.receipts_topic.clone(),
            window,
        },
        metrics: Arc::clone(&metrics),
        readiness: Arc::clone(&readiness),
    };
    let producer: FutureProducer = options
        .kafka
        .producer_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(kafka("creating the receipts producer"))?;
    let shared = Arc::new(Shared {
        apps,
        config,
        dedup: Arc::clone(&dedup),
        intents: IntentLog::new(producer.clone(), options.intents_topic.clone()),
        producer,
        receipts_topic: options.receipts_topic.clone(),
        progress: Arc::clone(&progress),
        metrics: Arc::clone(&metrics),
        delivering: Mutex::new(HashMap::new()),
        tasks: Arc::clone(&tasks),
    });
    let mut rebuilt: Option<std::time::Instant> = None;
    loop {
        let consumer = subscribe(&options, context())?;
        set_readiness(Readiness::NotReady(format!(
            "joining the group {} on {}: waiting for its partitions",
            options.group, options.push_topic
        )));
        tracing::info!(group = %options.group, instance = %options.instance_id, topic = %options.push_topic, "sender started");
        let Err(fatal) = serve(&runtime, &shared, &consumer, &backlog, &options, &shutdown) else {
            tracing::info!("stopping on a signal (SIGTERM, SIGINT or SIGUSR1): waiting for requests in flight (not for parked commands)");
            let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
            let parked = || shared.tasks.lock().expect("tasks lock").parked(None) as i64;
            while shared.metrics.in_flight.get() > parked() && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            commit(&consumer, &shared, &options.push_topic);
            return Ok(());
        };
        // The consumer is dead (it can neither read nor commit) and its partitions are, or soon
        // will be, another member's: abandon them as a revocation would, then join again.
        set_readiness(Readiness::NotReady(format!(
            "the consumer hit a fatal error ({fatal}): a new one joins the group"
        )));
        abandon(&shared, &backlog);
        drop(consumer);
        if rebuilt.is_some_and(|at| at.elapsed() < FATAL_AGAIN) {
            return Err(SenderError::Fatal(fatal));
        }
        rebuilt = Some(std::time::Instant::now());
        tracing::error!(error = %fatal, "the consumer hit a fatal error: its partitions are abandoned to their next owner and a new consumer joins the group");
    }
}

/// The sender's group member on `options.push_topic`, with `context`.
fn subscribe(
    options: &SenderOptions,
    context: SenderContext,
) -> Result<BaseConsumer<SenderContext>, SenderError> {
    let mut consumer_config = options.kafka.client_config();
    consumer_config
        .set("group.id", &options.group)
        .set("group.instance.id", format!("{}-{}", options.group, options.instance_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("queued.max.messages.kbytes", "16384")
        .set("statistics.interval.ms", "5000");
    // The operator's properties (`--kafka-property`) win over the sender's defaults above.
    for (key, value) in &options.kafka.properties {
        consumer_config.set(key, value);
    }
    let consumer: BaseConsumer<SenderContext> =
        consumer_config.create_with_context(context).map_err(kafka("creating the consumer"))?;
    consumer.subscribe(&[&options.push_topic]).map_err(kafka("subscribing"))?;
    Ok(consumer)
}

/// Polls `consumer` and dispatches its commands until a shutdown is requested (`Ok`) or the
/// consumer hits a fatal error (which librdkafka reports once, as a consumer error; the
/// consumer can then neither read nor commit).
fn serve(
    runtime: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    consumer: &BaseConsumer<SenderContext>,
    backlog: &Mutex<Backlog>,
    options: &SenderOptions,
    shutdown: &ShutdownFlag,
) -> Result<(), Fatal> {
    let fatal = || {
        let (code, reason) = consumer.client().fatal_error()?;
        Some(Fatal { code, reason })
    };
    let status_file = options.state_dir.join(status::STATUS_FILE);
    let mut last_commit = std::time::Instant::now();
    while !shutdown.requested() {
        dispatch_backlog(runtime, shared, consumer, backlog, &options.push_topic);
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                shared.progress.lock().expect("progress lock").started(partition, offset);
                let payload = message.payload().unwrap_or_default();
                if let Some(command) = decode(runtime, shared, options, payload, partition, offset)
                {
                    let waiting = Waiting { command, partition, offset };
                    let held = backlog.lock().expect("backlog lock").holds(partition);
                    let waiting =
                        if held { Some(waiting) } else { dispatch(runtime, shared, waiting) };
                    if let Some(waiting) = waiting {
                        hold(consumer, backlog, shared, &options.push_topic, waiting);
                    }
                }
            }
            Some(Err(error)) => match fatal() {
                Some(fatal) => return Err(fatal),
                None => tracing::warn!(%error, "consumer error"),
            },
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = std::time::Instant::now();
            if let Some(fatal) = fatal() {
                return Err(fatal);
            }
            commit(consumer, shared, &options.push_topic);
            write_status(shared, options, &status_file);
        }
    }
    Ok(())
}

/// Abandons every partition at once, like a revocation after its drain but without waiting or
/// committing (a dead consumer cannot): the backlog is dropped and the delivery tasks still
/// running are aborted, so only the partitions' next owner acts on their commands (a parked one
/// is sent there, one that may have been mid-call is receipted `interrupted`).
fn abandon(shared: &Shared, backlog: &Mutex<Backlog>) {
    let partitions = shared.progress.lock().expect("progress lock").partitions();
    let mut backlog = backlog.lock().expect("backlog lock");
    let dropped = backlog.drop_partitions(&partitions);
    shared.metrics.backlog.set(backlog.len() as i64);
    let aborted = shared.tasks.lock().expect("tasks lock").abort(&partitions);
    shared.progress.lock().expect("progress lock").release(&partitions);
    tracing::warn!(?partitions, dropped, aborted, "partitions abandoned");
}

/// The command in `payload`, or `None` after sending an undecodable one to the dead-letter
/// topic (and finishing it).
fn decode(
    runtime: &tokio::runtime::Runtime,
    shared: &Shared,
    options: &SenderOptions,
    payload: &[u8],
    partition: i32,
    offset: i64,
) -> Option<SendCommand> {
    let error = match SchemaRegistry::builtin().decode(payload) {
        Ok(command) => return Some(command),
        Err(error) => error,
    };
    let letter = DeadLetter {
        source_topic: options.push_topic.clone(),
        source_partition: partition,
        source_offset: offset,
        key: None,
        value: Some(payload.to_vec()),
        reason: format!("undecodable send command: {error}"),
        stage: "sender".into(),
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
    };
    tracing::warn!(partition, offset, reason = %letter.reason, "command sent to the dead-letter topic");
    if let Ok(bytes) = SchemaRegistry::builtin().encode(&letter) {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&options.dead_letter_topic).payload(&bytes);
        let _ = runtime.block_on(shared.producer.send(record, Duration::from_secs(30)));
    }
    shared.progress.lock().expect("progress lock").finished(partition, offset);
    None
}

/// Queues `waiting` in the backlog and pauses its partition.
fn hold(
    consumer: &BaseConsumer<SenderContext>,
    backlog: &Mutex<Backlog>,
    shared: &Shared,
    topic: &str,
    waiting: Waiting,
) {
    let partition = waiting.partition;
    let mut backlog = backlog.lock().expect("backlog lock");
    if !backlog.holds(partition) {
        let mut paused = TopicPartitionList::new();
        paused.add_partition(topic, partition);
        if let Err(error) = consumer.pause(&paused) {
            tracing::warn!(%error, partition, "pausing a partition");
        }
    }
    backlog.push(waiting);
    shared.metrics.backlog.set(backlog.len() as i64);
}

/// Dispatches the backlog's commands in order while their apps have permits, resuming each
/// partition whose backlog empties.
fn dispatch_backlog(
    runtime: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    consumer: &BaseConsumer<SenderContext>,
    backlog: &Mutex<Backlog>,
    topic: &str,
) {
    let mut backlog = backlog.lock().expect("backlog lock");
    for partition in backlog.partitions() {
        while let Some(waiting) = backlog.pop(partition) {
            if let Some(waiting) = dispatch(runtime, shared, waiting) {
                backlog.unpop(waiting);
                break;
            }
        }
        if backlog.release_if_empty(partition) {
            let mut resumed = TopicPartitionList::new();
            resumed.add_partition(topic, partition);
            if let Err(error) = consumer.resume(&resumed) {
                tracing::warn!(%error, partition, "resuming a partition");
            }
        }
    }
    shared.metrics.backlog.set(backlog.len() as i64);
}

/// Starts delivering `waiting` on a task of its own if its app has a permit free; gives it
/// back otherwise. A message id already being delivered is not started twice: this place
/// finishes with the delivery in progress.
fn dispatch(
    runtime: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    waiting: Waiting,
) -> Option<Waiting> {
    let Waiting { command, partition, offset } = waiting;
    let permit = match shared.apps.get(&command.app_id) {
        Some(app) => match app.try_permit() {
            Some(permit) => Some(permit),
            None => return Some(Waiting { command, partition, offset }),
        },
        None => None,
    };
    {
        let mut delivering = shared.delivering.lock().expect("delivering lock");
        if let Some(places) = delivering.get_mut(&command.message_id) {
            places.push((partition, offset));
            return None;
        }
        delivering.insert(command.message_id.clone(), Vec::new());
    }
    shared.metrics.in_flight.inc();
    let mut guard = Running {
        shared: Arc::clone(shared),
        message_id: command.message_id.clone(),
        ended: false,
    };
    let task = runtime.spawn(async move {
        let shared = Arc::clone(&guard.shared);
        let finished =
            delivery::run(Arc::clone(&shared), command, (partition, offset), permit).await;
        let places = shared.delivering.lock().expect("delivering lock").remove(&guard.message_id);
        guard.ended = true;
        if finished {
            let mut progress = shared.progress.lock().expect("progress lock");
            progress.finished(partition, offset);
            for (partition, offset) in places.into_iter().flatten() {
                progress.finished(partition, offset);
            }
        }
        shared.tasks.lock().expect("tasks lock").remove(partition, offset);
        drop(guard);
    });
    shared.tasks.lock().expect("tasks lock").insert(partition, offset, task.abort_handle());
    None
}

/// A delivery task's presence: when it ends, however (finished, or aborted with its revoked
/// partition), it leaves the in-flight count and the ids being delivered.
struct Running {
    shared: Arc<Shared>,
    message_id: String,
    /// The task removed its id itself (a later delivery of the same id may own it now).
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.metrics.in_flight.dec();
        if !self.ended {
            self.shared.delivering.lock().expect("delivering lock").remove(&self.message_id);
        }
    }
}

/// Abort handles of the delivery tasks by place, and the places whose command is parked.
#[derive(Default)]
pub(super) struct Tasks {
    running: BTreeMap<(i32, i64), tokio::task::AbortHandle>,
    /// Parked on a refused credential: no request in flight, nothing a drain can wait for.
    parked: std::collections::BTreeSet<(i32, i64)>,
}

impl Tasks {
    fn insert(&mut self, partition: i32, offset: i64, handle: tokio::task::AbortHandle) {
        // A task that already ended removed nothing; do not keep its handle.
        if !handle.is_finished() {
            self.running.insert((partition, offset), handle);
        }
    }

    fn remove(&mut self, partition: i32, offset: i64) {
        self.running.remove(&(partition, offset));
        self.parked.remove(&(partition, offset));
    }

    /// Marks the command at `place` parked (true) or moving again (false).
    fn set_parked(&mut self, place: (i32, i64), parked: bool) {
        if parked {
            self.parked.insert(place);
        } else {
            self.parked.remove(&place);
        }
    }

    /// Parked commands of `partitions` (all partitions when `None`).
    pub(super) fn parked(&self, partitions: Option<&[i32]>) -> usize {
        self.parked.iter().filter(|(p, _)| partitions.is_none_or(|ps| ps.contains(p))).count()
    }

    /// Aborts the tasks of `partitions` still running (revoked: their next owner handles their
    /// commands; a parked one was never delivered, one mid-call is receipted `interrupted`);
    /// returns how many.
    pub(super) fn abort(&mut self, partitions: &[i32]) -> usize {
        let mut aborted = 0;
        self.parked.retain(|(partition, _)| !partitions.contains(partition));
        self.running.retain(|(partition, _), handle| {
            if partitions.contains(partition) {
                handle.abort();
                aborted += 1;
                return false;
            }
            true
        });
        aborted
    }
}

/// Commits, per partition, the offset below which every command has its receipt.
fn commit(consumer: &BaseConsumer<SenderContext>, shared: &Shared, topic: &str) {
    let positions = shared.progress.lock().expect("progress lock").committable();
    if positions.is_empty() {
        return;
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in positions {
        let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
        tracing::debug!(%error, "commit failed (partitions moved?)");
    }
}

/// Writes this instance's status (in flight, backlog, parked commands) for
/// `herald send --status`.
fn write_status(shared: &Shared, options: &SenderOptions, path: &std::path::Path) {
    let mut parked = Vec::new();
    for (name, app) in &shared.apps {
        for (platform, provider) in
            [(crate::model::Platform::Ios, "apns"), (crate::model::Platform::Android, "fcm")]
        {
            let reason = app.lane(platform).credential.parked_reason();
            let commands = shared.metrics.parked.with_label_values(&[name, provider]).get();
            if reason.is_some() || commands > 0 {
                parked.push(status::Parked {
                    app: name.clone(),
                    provider: provider.to_string(),
                    commands,
                    reason,
                });
            }
        }
    }
    let status = status::Status {
        instance: options.instance_id.clone(),
        updated_ms: chrono::Utc::now().timestamp_millis(),
        in_flight: shared.metrics.in_flight.get(),
        backlog: shared.metrics.backlog.get(),
        parked,
    };
    if let Err(error) = status.write(path) {
        tracing::debug!(%error, "writing the status file");
    }
}
