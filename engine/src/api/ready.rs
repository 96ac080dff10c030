//! Whether `herald api` can serve, for its `/readyz`, from its first moment to its last. Not
//! ready while the brokers do not answer, while a table it reads (campaigns, segments, stats,
//! campaign events) has not been read once to the end it had; once started, checked every
//! [`CHECK_EVERY`]: not ready while the brokers do not answer or a table has not reached the
//! end its topic had one check earlier (its reader is stuck or far behind).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{
    table::{self, Followed},
    ApiError, ApiMetrics,
};
use crate::{
    kafka::KafkaConfig,
    runtime::{serve_http, Readiness},
};

/// How often a started API checks the brokers and its tables.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How long one question to the brokers may take.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// The API's metrics and readiness: served on its metrics address from before it reads
/// anything (`/metrics`, `/healthz`, `/readyz`).
#[derive(Clone)]
pub struct ApiHealth {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    metrics: ApiMetrics,
    readiness: Mutex<Readiness>,
}

impl ApiHealth {
    /// Fresh metrics; not ready: starting.
    pub fn new() -> Self {
        let starting = Readiness::NotReady("starting".to_string());
        Self {
            inner: Arc::new(HealthInner {
                metrics: ApiMetrics::new(),
                readiness: Mutex::new(starting),
            }),
        }
    }

    /// The API's metrics.
    pub fn metrics(&self) -> &ApiMetrics {
        &self.inner.metrics
    }

    /// Whether the API can serve now, or why not.
    pub fn readiness(&self) -> Readiness {
        self.inner.readiness.lock().expect("readiness lock").clone()
    }

    /// Records the latest verdict, logging each change.
    pub(super) fn set(&self, verdict: Readiness) {
        let mut readiness = self.inner.readiness.lock().expect("readiness lock");
        if *readiness != verdict {
            match &verdict {
                Readiness::Ready => tracing::info!("herald api ready"),
                Readiness::NotReady(reason) => tracing::warn!(%reason, "herald api not ready"),
            }
            *readiness = verdict;
        }
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (no token) from a thread of its
    /// own; returns the bound address.
    pub fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let (render, ready) = (self.clone(), self.clone());
        serve_http(addr, move || render.metrics().render(), move || ready.readiness())
    }
}

impl Default for ApiHealth {
    fn default() -> Self {
        Self::new()
    }
}

/// Asks the brokers, on a consumer of its own, whether they answer and where topics end.
pub(super) struct Probe {
    consumer: BaseConsumer,
    brokers: String,
}

impl Probe {
    /// A probe of `kafka`'s brokers.
    pub(super) fn new(kafka: &KafkaConfig) -> Result<Self, ApiError> {
        let consumer = kafka
            .client_config()
            .set("group.id", "herald-api")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| ApiError::Internal(format!("creating the readiness consumer: {e}")))?;
        Ok(Self { consumer, brokers: kafka.brokers.clone() })
    }

    /// Waits until the brokers answer a metadata request for `topic` (whether it exists or
    /// not), telling `health` why it is not ready meanwhile.
    pub(super) fn wait_for_brokers(&self, topic: &str, health: &ApiHealth) {
        while let Err(error) = self.consumer.fetch_metadata(Some(topic), ASK_WITHIN) {
            health.set(Readiness::NotReady(self.unreachable(&error)));
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn unreachable(&self, error: &dyn std::fmt::Display) -> String {
        format!("brokers {} unreachable: {error}", self.brokers)
    }

    /// The verdict of one check of `tables`, given the ends their topics had at the check
    /// before (`previous`, replaced by this check's).
    fn check(
        &self,
        tables: &[&dyn Followed],
        previous: &mut HashMap<String, HashMap<i32, i64>>,
    ) -> Readiness {
        let mut ends = HashMap::new();
        for table in tables {
            match table::ends(&self.consumer, table.topic(), ASK_WITHIN) {
                Ok(end) => ends.insert(table.topic().to_string(), end),
                Err(error) => return Readiness::NotReady(self.unreachable(&error)),
            };
        }
        let behind = tables.iter().find_map(|table| {
            let (partition, at, end) = table.behind(previous.get(table.topic())?)?;
            Some(format!(
                "{} not read up to the end it had {CHECK_EVERY:?} ago: partition {partition} \
                 read up to offset {at} of {end}",
                table.topic()
            ))
        });
        *previous = ends;
        behind.map_or(Readiness::Ready, Readiness::NotReady)
    }

    /// Checks every [`CHECK_EVERY`] the tables `tables` gives, telling `health`, until
    /// `owner` is dropped.
    pub(super) fn watch<T: Send + Sync + 'static>(
        self,
        owner: Weak<T>,
        tables: fn(&T) -> Vec<&dyn Followed>,
        health: ApiHealth,
    ) -> Result<(), ApiError> {
        let mut previous = HashMap::new();
        let check = move || loop {
            std::thread::sleep(CHECK_EVERY);
            let Some(owner) = owner.upgrade() else { return };
            let verdict = self.check(&tables(&owner), &mut previous);
            drop(owner);
            health.set(verdict);
        };
        std::thread::Builder::new()
            .name("api-readiness".into())
            .spawn(check)
            .map(drop)
            .map_err(|e| ApiError::Internal(format!("starting the readiness check: {e}")))
    }
}
