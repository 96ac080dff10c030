//! The sender's Prometheus metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Sends by provider and outcome, provider latency, in-flight requests, retries, credential
/// refreshes, dedup hits, parked, interrupted and unknown-outcome commands, the backlog,
/// consumer lag.
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
    /// Commands parked on a refused credential, by app and provider.
    pub parked: IntGaugeVec,
    /// Commands receipted `interrupted`: a sender stopped between their intent and receipt.
    pub interrupted: IntCounter,
    /// Commands failed `unknown_outcome` by provider: sent, then no answer (the connection
    /// dropped, the stream was reset, the request timed out); not sent again.
    pub unknown_outcomes: IntCounterVec,
    /// Receipts whose production failed and was retried.
    pub receipt_retries: IntCounter,
    /// Commands read while their app was at its in-flight bound, waiting in paused partitions.
    pub backlog: IntGauge,
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
        let unknown_outcomes = counter_vec(
            "unknown_outcomes_total",
            "Commands sent without an answer, failed and not sent again",
            &["provider"],
        );
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
        let backlog = gauge("backlog", "Commands waiting in paused partitions");
        let parked = IntGaugeVec::new(
            Opts::new("parked", "Commands parked on a refused credential"),
            &["app", "provider"],
        )
        .expect("valid metric");
        registry.register(Box::new(parked.clone())).expect("unique metric");
        let consumer_lag =
            IntGaugeVec::new(Opts::new("consumer_lag", "Commands not yet read"), &["partition"])
                .expect("valid metric");
        registry.register(Box::new(consumer_lag.clone())).expect("unique metric");
        let dedup_hits = IntCounter::new("dedup_hits_total", "Commands already receipted")
            .expect("valid metric");
        registry.register(Box::new(dedup_hits.clone())).expect("unique metric");
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let interrupted =
            counter("interrupted_total", "Commands whose sender stopped mid-delivery");
        let receipt_retries = counter("receipt_retries_total", "Receipt writes retried");
        Self {
            registry,
            sends,
            latency,
            in_flight,
            retries,
            credential_refreshes,
            dedup_hits,
            parked,
            interrupted,
            unknown_outcomes,
            receipt_retries,
            backlog,
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
