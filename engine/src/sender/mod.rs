//! `herald send`: a sender process in a consumer group on `herald.push`, whose partitions are
//! its shards. It delivers each command to APNs or FCM over HTTP/2 (at least once, duplicates
//! suppressed by message id), retries transient errors with backoff and `Retry-After`, and
//! produces one final receipt per command to `herald.receipts`. A partition's offset is
//! committed only up to the first command whose receipt is not yet produced.

pub mod apns;
pub mod app;
pub mod config;
pub mod dedup;
pub mod fcm;
pub mod h2;
pub mod metrics;
pub mod outcome;
mod progress;
pub mod reason;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};
use tokio::time::Instant;

use self::{
    app::AppSender,
    config::{ConfigError, SenderConfig},
    dedup::{DedupStore, Seen},
    metrics::SenderMetrics,
    outcome::Attempt,
    progress::Progress,
    reason::{Reason, Refusal},
};
use crate::{
    kafka::KafkaConfig,
    model::{DeadLetter, Platform, Receipt, ReceiptStatus, SchemaRegistry, SendCommand},
    runtime::ShutdownFlag,
};

/// How often consumed positions are committed.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a graceful stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Dead-letter topic (undecodable commands).
    pub dead_letter_topic: String,
    /// Consumer group of all senders.
    pub group: String,
    /// This instance's id (static membership: a restarted instance keeps its shards).
    pub instance_id: String,
    /// Local state (the dedup store).
    pub state_dir: PathBuf,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
}

/// What every command's task shares.
struct Shared {
    apps: BTreeMap<String, AppSender>,
    config: SenderConfig,
    dedup: DedupStore,
    producer: FutureProducer,
    receipts_topic: String,
    progress: Arc<std::sync::Mutex<Progress>>,
    metrics: Arc<SenderMetrics>,
}

/// Runs a sender until `shutdown` is requested. The consumer is polled on the calling thread
/// (its rebalance callback may block there); deliveries run on a Tokio runtime.
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
    if let Some(addr) = options.metrics_addr {
        let render = Arc::clone(&metrics);
        let bound = crate::runtime::serve_http(addr, move || render.render(), || true)
            .map_err(|e| SenderError::Setup(format!("serving metrics: {e}")))?;
        tracing::info!(%bound, "serving /metrics");
    }
    let dedup = DedupStore::open(&options.state_dir.join("dedup"), config.dedup_window)
        .map_err(SenderError::Setup)?;
    let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
    let consumer: BaseConsumer<RevocationDrain> = options
        .kafka
        .client_config()
        .set("group.id", &options.group)
        .set("group.instance.id", format!("{}-{}", options.group, options.instance_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", "10000")
        .set("queued.max.messages.kbytes", "16384")
        .set("statistics.interval.ms", "5000")
        .create_with_context(RevocationDrain {
            progress: Arc::clone(&progress),
            topic: options.push_topic.clone(),
            metrics: Arc::clone(&metrics),
        })
        .map_err(kafka("creating the consumer"))?;
    consumer.subscribe(&[&options.push_topic]).map_err(kafka("subscribing"))?;
    let producer: FutureProducer = options
        .kafka
        .client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(kafka("creating the receipts producer"))?;
    let shared = Arc::new(Shared {
        apps,
        config,
        dedup,
        producer,
        receipts_topic: options.receipts_topic.clone(),
        progress,
        metrics,
    });
    tracing::info!(group = %options.group, instance = %options.instance_id, topic = %options.push_topic, "sender started");

    let mut last_commit = std::time::Instant::now();
    while !shutdown.requested() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                shared.progress.lock().expect("progress lock").started(partition, offset);
                let payload = message.payload().unwrap_or_default().to_vec();
                dispatch(&runtime, &shared, &options, payload, partition, offset);
            }
            Some(Err(error)) => tracing::warn!(%error, "consumer error"),
            None => {}
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            last_commit = std::time::Instant::now();
            commit(&consumer, &shared, &options.push_topic);
        }
    }
    tracing::info!("stopping: waiting for requests in flight");
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while shared.metrics.in_flight.get() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    commit(&consumer, &shared, &options.push_topic);
    Ok(())
}

/// Starts handling one consumed command: waits for a permit of its app (backpressure: the
/// consumer is not polled meanwhile), then delivers it on a task of its own.
fn dispatch(
    runtime: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    options: &SenderOptions,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
) {
    let command: SendCommand = match SchemaRegistry::builtin().decode(&payload) {
        Ok(command) => command,
        Err(error) => {
            let letter = DeadLetter {
                source_topic: options.push_topic.clone(),
                source_partition: partition,
                source_offset: offset,
                key: None,
                value: Some(payload),
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
            return;
        }
    };
    let permit = shared.apps.get(&command.app_id).map(|app| runtime.block_on(app.permit()));
    let shared = Arc::clone(shared);
    shared.metrics.in_flight.inc();
    runtime.spawn(async move {
        let finished = handle(&shared, &command).await;
        drop(permit);
        shared.metrics.in_flight.dec();
        if finished {
            shared.progress.lock().expect("progress lock").finished(partition, offset);
        }
    });
}

/// Delivers one command and produces its receipt; false when the command must stay
/// unacknowledged (its app is stopped, or Kafka or the store failed).
async fn handle(shared: &Shared, command: &SendCommand) -> bool {
    let receipt = match shared.dedup.seen(&command.message_id) {
        Ok(Seen::Receipted) => {
            shared.metrics.dedup_hits.inc();
            return true;
        }
        Ok(Seen::Outcome(receipt)) => {
            shared.metrics.dedup_hits.inc();
            *receipt
        }
        Ok(Seen::New) => {
            let receipt = match shared.apps.get(&command.app_id) {
                Some(app) => match deliver(shared, app, command).await {
                    Some(receipt) => receipt,
                    None => return false,
                },
                None => {
                    let text = format!("unknown app {}", command.app_id);
                    let refusal = Refusal::new(Reason::NotConfigured, text);
                    receipt(command, ReceiptStatus::Failed, Some(&refusal), None, None)
                }
            };
            if let Err(error) = shared.dedup.outcome(&receipt) {
                tracing::error!(%error, "dedup store");
            }
            receipt
        }
        Err(error) => {
            tracing::error!(%error, "dedup store");
            return false;
        }
    };
    let bytes = match SchemaRegistry::builtin().encode(&receipt) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "encoding a receipt");
            return false;
        }
    };
    let record = FutureRecord::to(&shared.receipts_topic).key(&receipt.user_id).payload(&bytes);
    if let Err((error, _)) = shared.producer.send(record, Duration::from_secs(60)).await {
        tracing::error!(%error, message = %receipt.message_id, "producing a receipt failed; the command stays unacknowledged");
        return false;
    }
    if let Err(error) = shared.dedup.receipted(&command.message_id) {
        tracing::error!(%error, "dedup store");
    }
    true
}

/// Attempts until a final outcome: success, a dead token, a permanent error, expiry, or the
/// retry deadline. `None` when the app's credential was refused after a refresh.
async fn deliver(shared: &Shared, app: &AppSender, command: &SendCommand) -> Option<Receipt> {
    let provider = match command.platform {
        Platform::Ios => "apns",
        Platform::Android => "fcm",
    };
    let started = Instant::now();
    let deadline = started + shared.config.retry_deadline;
    let mut refreshed = false;
    let mut backoff = Duration::from_millis(100);
    let finish = |status: ReceiptStatus, refusal: Option<&Refusal>, provider_id: Option<String>| {
        let outcome = format!("{status:?}").to_lowercase();
        shared.metrics.sends.with_label_values(&[provider, &outcome]).inc();
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        Some(receipt(command, status, refusal, provider_id, Some(latency)))
    };
    loop {
        let now_ms = chrono::Utc::now().timestamp_millis();
        if command.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
            let refusal = Refusal::new(Reason::Expired, "expired before delivery");
            return finish(ReceiptStatus::Expired, Some(&refusal), None);
        }
        if app.is_stopped() {
            return None;
        }
        app.wait_turn().await;
        let attempt_started = Instant::now();
        let attempt = app.attempt(command).await;
        shared
            .metrics
            .latency
            .with_label_values(&[provider])
            .observe(attempt_started.elapsed().as_secs_f64());
        match attempt {
            Attempt::Accepted { provider_id } => {
                return finish(ReceiptStatus::Accepted, None, provider_id)
            }
            Attempt::TokenInvalid(refusal) => {
                return finish(ReceiptStatus::TokenInvalid, Some(&refusal), None)
            }
            Attempt::Failed(refusal) => return finish(ReceiptStatus::Failed, Some(&refusal), None),
            Attempt::Credentials(refusal) if !refreshed => {
                refreshed = true;
                shared.metrics.credential_refreshes.with_label_values(&[provider]).inc();
                tracing::warn!(app = %app.name, provider, reason = %refusal, "credential refused; renewing it once");
                app.refresh_credentials(command.platform).await;
            }
            Attempt::Credentials(refusal) => {
                if !app.is_stopped() {
                    shared.metrics.apps_stopped.inc();
                }
                app.stop(&refusal.to_string());
                return None;
            }
            Attempt::Retry { refusal, after } => {
                shared.metrics.retries.with_label_values(&[provider]).inc();
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
                let delay = after.unwrap_or(backoff + jitter);
                if let Some(after) = after {
                    app.pause_for(after).await;
                }
                if Instant::now() + delay > deadline {
                    let text = format!("retries exhausted: {}", refusal.provider_text);
                    let refusal = Refusal::new(refusal.reason, text);
                    return finish(ReceiptStatus::Failed, Some(&refusal), None);
                }
                tokio::time::sleep(delay).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The receipt of `command`: its outcome, and for a refusal Herald's reason and the provider's
/// text.
fn receipt(
    command: &SendCommand,
    status: ReceiptStatus,
    refusal: Option<&Refusal>,
    provider_id: Option<String>,
    latency_ms: Option<i64>,
) -> Receipt {
    Receipt {
        message_id: command.message_id.clone(),
        campaign_id: command.campaign_id.clone(),
        variant_id: command.variant_id.clone(),
        app_id: command.app_id.clone(),
        user_id: command.user_id.clone(),
        device_id: command.device_id.clone(),
        token: command.token.clone(),
        status,
        reason: refusal.map(|r| r.reason.as_str().to_string()),
        provider_id,
        latency_ms,
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
        provider_reason: refusal.map(|r| r.provider_text.clone()),
    }
}

/// Commits, per partition, the offset below which every command has its receipt.
fn commit(consumer: &BaseConsumer<RevocationDrain>, shared: &Shared, topic: &str) {
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

/// Consumer context that, before partitions are revoked, waits for the receipts of their
/// commands in flight and commits them, so the next owner neither re-sends nor re-receipts.
struct RevocationDrain {
    progress: Arc<std::sync::Mutex<Progress>>,
    topic: String,
    metrics: Arc<SenderMetrics>,
}

impl rdkafka::ClientContext for RevocationDrain {
    /// Publishes the consumer lag librdkafka reports (every `statistics.interval.ms`).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for RevocationDrain {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        let rdkafka::consumer::Rebalance::Revoke(revoked) = rebalance else { return };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        while self.progress.lock().expect("progress lock").unfinished(&partitions) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let positions = self.progress.lock().expect("progress lock").release(&partitions);
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in positions {
            let _ = offsets.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(%error, "commit before revocation failed; the next owner may resend");
            }
        }
        tracing::info!(?partitions, "partitions revoked after their commands in flight finished");
    }
}
