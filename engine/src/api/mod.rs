//! The admin HTTP API (`herald api`): campaigns, saved segments, stats, events, dead letters,
//! app settings, test sends and previews, behind bearer tokens with two roles (`docs/api.md`).

mod audit;
mod auth;
mod dashboard;
mod error;
mod estimate;
mod handlers;
mod live;
mod metrics;
mod preview;
mod ready;
mod router;
mod segments;
mod status;
mod table;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rdkafka::producer::FutureProducer;

pub use audit::AuditRecord;
pub use auth::{Caller, RateLimit, Role, TokenError, Tokens};
pub use error::{ApiError, ErrorBody, FieldProblem};
pub use metrics::ApiMetrics;
pub use ready::{ApiHealth, CHECK_EVERY, DEFAULT_BROKERS_DOWN_AFTER};
pub use router::{openapi, router};
pub use table::{Row, SegmentText, Table};

use crate::{
    kafka::KafkaConfig,
    model::{topics::TopicNames, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats},
    runtime::Readiness,
};

/// Name of the audit topic (see `topologies/default.toml`), before any prefix.
pub const AUDIT_TOPIC: &str = "herald.audit";

/// Default largest request body, bytes.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// How the API is set up.
#[derive(Debug)]
pub struct ApiConfig {
    /// The cluster.
    pub kafka: KafkaConfig,
    /// Herald's topics.
    pub topics: TopicNames,
    /// Where admin actions are recorded.
    pub audit_topic: String,
    /// Who may call it.
    pub tokens: Tokens,
    /// Largest request body, bytes (larger: 413).
    pub body_limit: usize,
    /// Requests per token (more: 429).
    pub rate_limit: RateLimit,
    /// The app settings file the engine reads, if the API may show and change it.
    pub settings_path: Option<PathBuf>,
    /// How long the brokers may not answer before a started API is not ready.
    pub brokers_down_after: Duration,
}

/// What every handler shares: configuration, the followed topics, a producer.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    limiter: auth::RateLimiter,
    /// Held by every write of a campaign or segment from its check of the current state until
    /// the API has read its own write back, and by every write of the settings file, so two
    /// admins at once are served one after the other (two creates of one id: 201 and 409; a
    /// resume after a stop: 409; two settings files: one whole, not a mix).
    writes: tokio::sync::Mutex<()>,
    health: ApiHealth,
    producer: FutureProducer,
    campaigns: Table<CampaignEnvelope>,
    stats: Table<CampaignStats>,
    events: Table<CampaignLifecycleEvent>,
    segments: Table<SegmentText>,
}

/// Lifecycle events kept per campaign.
const EVENTS_KEPT: usize = 1_000;

/// Stats snapshots kept per campaign (the dashboard's sends over time; the engine writes about
/// one a second while a campaign's counts change).
const STATS_KEPT: usize = 1_000;

/// The tables an API reads, once read to their end.
struct Tables {
    campaigns: Table<CampaignEnvelope>,
    stats: Table<CampaignStats>,
    events: Table<CampaignLifecycleEvent>,
    segments: Table<SegmentText>,
}

impl Tables {
    /// Reads the campaigns, segments, stats and campaign events topics to their end (then
    /// follows them in the background), telling `health` which it reads; creates the segments
    /// topic if missing.
    fn read(config: &ApiConfig, health: &ApiHealth) -> Result<Self, ApiError> {
        let wait = Duration::from_secs(60);
        let reading = |topic: &str| {
            health.set(Readiness::NotReady(format!("reading {topic} to its end")));
        };
        let topics = &config.topics;
        reading(&topics.campaigns);
        let campaigns = Table::follow(&config.kafka, &topics.campaigns, wait)?;
        reading(&topics.segments);
        segments::ensure_topic(&config.kafka, &topics.segments)?;
        let segments = Table::follow(&config.kafka, &topics.segments, wait)?;
        reading(&topics.stats);
        let stats = Table::follow_keeping(&config.kafka, &topics.stats, STATS_KEPT, wait)?;
        reading(&topics.campaign_events);
        let events =
            Table::follow_keeping(&config.kafka, &topics.campaign_events, EVENTS_KEPT, wait)?;
        Ok(Self { campaigns, stats, events, segments })
    }
}

/// What the readiness check follows.
fn followed(inner: &Inner) -> Vec<&dyn table::Followed> {
    vec![&inner.campaigns, &inner.segments, &inner.stats, &inner.events]
}

impl ApiState {
    /// Waits until the brokers answer, then reads the campaigns, segments, stats and campaign
    /// events topics to their end (then follows them in the background; creates the segments
    /// topic if missing), trying again as long as it takes, telling `health` why it is not
    /// ready meanwhile; then `health` follows the brokers and the tables. Call it from a
    /// blocking thread of a tokio runtime.
    pub fn start(config: ApiConfig, health: ApiHealth) -> Result<Self, ApiError> {
        let probe = ready::Probe::new(&config.kafka, config.brokers_down_after)?;
        let Tables { campaigns, stats, events, segments } = loop {
            probe.wait_for_brokers(&config.topics.campaigns, &health);
            match Tables::read(&config, &health) {
                Ok(tables) => break tables,
                Err(error) => {
                    health.set(Readiness::NotReady(error.to_string()));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        let producer = config
            .kafka
            .client_config()
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| ApiError::Internal(format!("creating the Kafka producer: {e}")))?;
        let limiter = auth::RateLimiter::new(config.rate_limit);
        let inner = Arc::new(Inner {
            config,
            limiter,
            writes: tokio::sync::Mutex::new(()),
            health: health.clone(),
            producer,
            campaigns,
            stats,
            events,
            segments,
        });
        health.set(Readiness::Ready);
        probe.watch(Arc::downgrade(&inner), followed, health)?;
        Ok(Self { inner })
    }

    /// The latest envelope of every campaign.
    pub fn campaigns(&self) -> &Table<CampaignEnvelope> {
        &self.inner.campaigns
    }

    /// The latest stats snapshot of every campaign.
    pub fn stats(&self) -> &Table<CampaignStats> {
        &self.inner.stats
    }

    /// The latest lifecycle events of every campaign.
    pub fn events(&self) -> &Table<CampaignLifecycleEvent> {
        &self.inner.events
    }

    /// The text of every saved segment.
    pub fn segments(&self) -> &Table<SegmentText> {
        &self.inner.segments
    }

    /// The API's metrics.
    pub fn metrics(&self) -> &ApiMetrics {
        self.inner.health.metrics()
    }

    /// The producer of the API's writes.
    pub fn producer(&self) -> &FutureProducer {
        &self.inner.producer
    }

    /// How the API is set up.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// Waits for this API's turn to write a campaign, segment or the settings file: hold it
    /// from reading the current state until the write is read back (or the file renamed).
    pub(crate) async fn write_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.writes.lock().await
    }
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The callers' addresses: requests without a valid token are rate limited by address.
    let service = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(shutdown).await
}
