//! Whether `herald api` can serve, for its `/readyz`, from its first moment to its last. Not
//! ready while the brokers do not answer, while a table it reads (campaigns, segments, stats,
//! campaign events) has not been read once to the end it had; once started, checked every
//! [`CHECK_EVERY`]: not ready once the brokers have not answered for the tolerated silence
//! (`herald api --brokers-down-after`; a shorter silence changes nothing, so one slow answer
//! does not take every replica out at once), or while a table has not reached the end its
//! topic had one check earlier (its reader is stuck or far behind). A partition added to a
//! table's topic is read from then on, and counts like the others.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
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

/// How long the brokers may not answer before a started API is not ready, unless configured.
pub const DEFAULT_BROKERS_DOWN_AFTER: Duration = Duration::from_secs(30);

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

/// Since when the brokers have not answered, and whether that is long enough to say so.
#[derive(Debug)]
struct Silence {
    /// How long a silence is tolerated.
    tolerated: Duration,
    /// When the brokers last answered (or the silence began), monotonic and as a date.
    since: (Instant, SystemTime),
}

impl Silence {
    /// A silence tolerated for `tolerated`, counted from `now`.
    fn new(tolerated: Duration, now: (Instant, SystemTime)) -> Self {
        Self { tolerated, since: now }
    }

    /// The brokers answered at `now`.
    fn answered(&mut self, now: (Instant, SystemTime)) {
        self.since = now;
    }

    /// Why the API is not ready when the brokers did not answer at `now` (`error`), naming
    /// since when they have not; none while the silence is shorter than tolerated.
    fn failed(&self, now: Instant, brokers: &str, error: &dyn std::fmt::Display) -> Option<String> {
        let silent = now.saturating_duration_since(self.since.0);
        (silent >= self.tolerated).then(|| unreachable(brokers, self.since.1, silent, error))
    }
}

/// The reason of an API whose brokers have not answered since `since` (`silent` ago).
fn unreachable(
    brokers: &str,
    since: SystemTime,
    silent: Duration,
    error: &dyn std::fmt::Display,
) -> String {
    let since = chrono::DateTime::<chrono::Utc>::from(since)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        "brokers {brokers} unreachable: no answer since {since} ({} s): {error}",
        silent.as_secs()
    )
}

/// The moment, monotonic and as a date.
fn now() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

/// Asks the brokers, on a consumer of its own, whether they answer and where topics end.
pub(super) struct Probe {
    consumer: BaseConsumer,
    brokers: String,
    /// How long the brokers may not answer before a started API is not ready.
    down_after: Duration,
}

impl Probe {
    /// A probe of `kafka`'s brokers, taking a started API out of service once they have not
    /// answered for `down_after`.
    pub(super) fn new(kafka: &KafkaConfig, down_after: Duration) -> Result<Self, ApiError> {
        let consumer = kafka
            .client_config()
            .set("group.id", "herald-api")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| ApiError::Internal(format!("creating the readiness consumer: {e}")))?;
        Ok(Self { consumer, brokers: kafka.brokers.clone(), down_after })
    }

    /// Waits until the brokers answer a metadata request for `topic` (whether it exists or
    /// not), telling `health` why it is not ready meanwhile (an API not yet started tolerates
    /// no silence: it has never been ready).
    pub(super) fn wait_for_brokers(&self, topic: &str, health: &ApiHealth) {
        let silence = Silence::new(Duration::ZERO, now());
        while let Err(error) = self.consumer.fetch_metadata(Some(topic), ASK_WITHIN) {
            if let Some(reason) = silence.failed(Instant::now(), &self.brokers, &error) {
                health.set(Readiness::NotReady(reason));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The verdict of one check of `tables`, given the ends their topics had at the check
    /// before (`previous`, replaced by this check's) and the brokers' `silence` (none while
    /// a silence is tolerated: the verdict stays as it was); reads the partitions added to a
    /// table's topic.
    fn check(
        &self,
        tables: &[&dyn Followed],
        previous: &mut HashMap<String, HashMap<i32, i64>>,
        silence: &mut Silence,
    ) -> Option<Readiness> {
        let mut ends = HashMap::new();
        for table in tables {
            match table::ends(&self.consumer, table.topic(), ASK_WITHIN) {
                Ok(end) => ends.insert(table.topic().to_string(), end),
                Err(error) => {
                    let reason = silence.failed(Instant::now(), &self.brokers, &error)?;
                    return Some(Readiness::NotReady(reason));
                }
            };
        }
        silence.answered(now());
        for table in tables {
            if let Err(error) = table.follow_new(&ends[table.topic()]) {
                return Some(Readiness::NotReady(error.to_string()));
            }
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
        Some(behind.map_or(Readiness::Ready, Readiness::NotReady))
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
        let mut silence = Silence::new(self.down_after, now());
        let check = move || loop {
            std::thread::sleep(CHECK_EVERY);
            let Some(owner) = owner.upgrade() else { return };
            let verdict = self.check(&tables(&owner), &mut previous, &mut silence);
            drop(owner);
            if let Some(verdict) = verdict {
                health.set(verdict);
            }
        };
        std::thread::Builder::new()
            .name("api-readiness".into())
            .spawn(check)
            .map(drop)
            .map_err(|e| ApiError::Internal(format!("starting the readiness check: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKERS: &str = "kafka-0:9092";

    fn at(start: (Instant, SystemTime), after: Duration) -> (Instant, SystemTime) {
        (start.0 + after, start.1 + after)
    }

    #[test]
    fn a_silence_shorter_than_tolerated_changes_nothing() {
        let start = now();
        let silence = Silence::new(Duration::from_secs(30), start);
        // One slow answer 2 s after the last one, and failures up to just under 30 s.
        for after in [2, 10, 29] {
            let failed =
                silence.failed(at(start, Duration::from_secs(after)).0, BROKERS, &"timed out");
            assert_eq!(failed, None, "{after} s of silence");
        }
    }

    #[test]
    fn a_sustained_silence_says_since_when() {
        let start = (Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_892_400));
        let silence = Silence::new(Duration::from_secs(30), start);
        let failed = silence.failed(at(start, Duration::from_secs(31)).0, BROKERS, &"timed out");
        assert_eq!(
            failed.as_deref(),
            Some(
                "brokers kafka-0:9092 unreachable: no answer since 2026-11-28T19:00:00Z (31 s): \
                 timed out"
            )
        );
    }

    #[test]
    fn an_answer_restarts_the_tolerated_silence() {
        let start = now();
        let mut silence = Silence::new(Duration::from_secs(30), start);
        silence.answered(at(start, Duration::from_secs(20)));
        let failed = silence.failed(at(start, Duration::from_secs(45)).0, BROKERS, &"timed out");
        assert_eq!(failed, None, "25 s since the last answer");
        assert!(silence.failed(at(start, Duration::from_secs(50)).0, BROKERS, &"down").is_some());
    }

    #[test]
    fn an_api_not_yet_started_tolerates_no_silence() {
        let start = now();
        let silence = Silence::new(Duration::ZERO, start);
        let failed = silence.failed(start.0, BROKERS, &"connection refused").unwrap();
        assert!(
            failed.starts_with("brokers kafka-0:9092 unreachable: no answer since "),
            "{failed}"
        );
        assert!(failed.ends_with(" (0 s): connection refused"), "{failed}");
    }
}
