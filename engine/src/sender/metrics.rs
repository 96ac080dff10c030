//! The sender's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Sends by provider and outcome, provider latency, in-flight requests, retries, credential
/// refreshes, dedup hits, consumer lag.
pub struct SenderMetrics {
    /// Registry to expose.
    pub registry: Registry,
    /// Final outcomes by provider (`apns`, `fcm`) and outcome.
    pub sends: IntCounterVec,
    /// Time of one provider request, by provider.
    pub latency: HistogramVec,
    /// Requests in flight.
    pub in_flight: IntGauge,
    /// Retried attempts by provider.
    pub retries: IntCounterVec,
    /// Credentials re-signed or re-fetched after the provider refused them, by provider.
    pub credential_refreshes: IntCounterVec,
    /// Commands skipped because their message id was already receipted.
    pub dedup_hits: IntCounter,
    /// Apps whose sending stopped on a refused credential.
    pub apps_stopped: IntGauge,
    /// Commands not yet read, by partition of `herald.push` (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
}

impl SenderMetrics {
    /// Registers every metric (prefix `herald_sender_`).
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("herald_sender".into()), None)
            .expect("a valid metric prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let sends = counter_vec("sends_total", "Final outcomes", &["provider", "outcome"]);
        let retries = counter_vec("retries_total", "Retried attempts", &["provider"]);
        let credential_refreshes = counter_vec(
            "credential_refreshes_total",
            "Credentials renewed after a refusal",
            &["provider"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new("provider_latency_seconds", "Time of one provider request")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
            &["provider"],
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let in_flight = gauge("in_flight", "Requests in flight");
        let apps_stopped = gauge("apps_stopped", "Apps stopped on a refused credential");
        let consumer_lag =
            IntGaugeVec::new(Opts::new("consumer_lag", "Commands not yet read"), &["partition"])
                .expect("valid metric");
        registry.register(Box::new(consumer_lag.clone())).expect("unique metric");
        let dedup_hits = IntCounter::new("dedup_hits_total", "Commands already receipted")
            .expect("valid metric");
        registry.register(Box::new(dedup_hits.clone())).expect("unique metric");
        Self {
            registry,
            sends,
            latency,
            in_flight,
            retries,
            credential_refreshes,
            dedup_hits,
            apps_stopped,
            consumer_lag,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for SenderMetrics {
    fn default() -> Self {
        Self::new()
    }
}
