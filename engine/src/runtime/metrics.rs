//! Prometheus metrics of the runtime and the `/metrics`, `/healthz`, `/readyz` endpoint.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::RuntimeError;

/// The runtime's metrics, registered in their own registry.
pub struct RuntimeMetrics {
    /// Registry to expose (also usable to register further metrics).
    pub registry: Registry,
    /// Records read, by topic.
    pub records_in: IntCounterVec,
    /// Records written to sinks, by topic.
    pub records_out: IntCounterVec,
    /// Changelog records written, by topic.
    pub changelog_out: IntCounterVec,
    /// Time to commit a transaction.
    pub commit_seconds: Histogram,
    /// Age of each record when processed (wall clock minus the record's timestamp), by source
    /// topic: where end-to-end latency builds up between stages.
    pub record_age_seconds: HistogramVec,
    /// Transactions aborted (fencing, rebalance, errors).
    pub transaction_aborts: IntCounter,
    /// Inputs retried because something they need was unreachable (e.g. a schema registry).
    pub input_unavailable: IntCounter,
    /// Recoveries from Kafka faults, by kind: `rewind` (tasks rebuilt and inputs rewound to the
    /// last commit), `producer` (the transactional producer re-created), `rejoin` (a fenced
    /// consumer replaced), `stall` (no progress on input with records to read: the group
    /// joined again with a new consumer and producer).
    pub recoveries: IntCounterVec,
    /// Waits for a time-ordered source that is behind which ran out (records went on without it).
    pub input_order_waits_expired: IntCounter,
    /// Instances gone from the group whose transactional id this one initialised when their
    /// partitions came here, ending the transaction they left open (`live::fence`).
    pub departed_fenced: IntCounter,
    /// Changelog records restored, by store.
    pub restored_records: IntCounterVec,
    /// Duration of each task restore.
    pub restore_seconds: Histogram,
    /// Tasks currently restoring.
    pub restoring_tasks: IntGauge,
    /// Estimated keys per store and partition.
    pub store_keys: IntGaugeVec,
    /// Records behind the end of each assigned input partition.
    pub consumer_lag: IntGaugeVec,
    /// Timers scheduled and not yet fired or cancelled.
    pub timers_pending: IntGauge,
    /// Timers fired.
    pub timers_fired: IntCounter,
    /// Records sent to the dead-letter topic, by source topic.
    pub dead_letters: IntCounterVec,
    /// Processors' own counters (see [`ProcessorCounter`]), registered on first use.
    processor_counters: Mutex<HashMap<&'static str, IntCounterVec>>,
    ready: AtomicBool,
    /// Seconds the processing loop has not come back, once that is longer than the stall time
    /// (0 while it turns).
    pub loop_blocked_seconds: IntGauge,
    /// When the processing loop last came back, in milliseconds since `created`.
    loop_turned_ms: AtomicU64,
    created: Instant,
}

/// A counter a processor declares (as a `static`) and increments through
/// [`super::ProcessorContext::count`]; exported as `herald_runtime_<name>{<label>="…"}`. Its
/// label values must come from a small fixed vocabulary (never from input data).
#[derive(Debug)]
pub struct ProcessorCounter {
    /// Metric name without the `herald_runtime_` prefix, e.g. `ingest_forwarded_total`.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Name of the one label, e.g. `reason`.
    pub label: &'static str,
}

impl RuntimeMetrics {
    /// Creates and registers every metric (prefixed `herald_runtime_`).
    pub fn new() -> Arc<Self> {
        let registry = Registry::new_custom(Some("herald_runtime".into()), None)
            .expect("static registry prefix is valid");
        let counter_vec = |name: &str, help: &str, label: &str| {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(metric.clone())).expect("unique metric");
            metric
        };
        Arc::new(Self {
            records_in: counter_vec("records_in_total", "Records read, by topic", "topic"),
            records_out: counter_vec(
                "records_out_total",
                "Records written to sinks, by topic",
                "topic",
            ),
            changelog_out: counter_vec(
                "changelog_records_total",
                "Changelog records written, by topic",
                "topic",
            ),
            commit_seconds: histogram(
                "commit_seconds",
                "Time to commit one transaction",
                prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"),
            ),
            record_age_seconds: {
                let opts = HistogramOpts::new(
                    "record_age_seconds",
                    "Age of a record when processed (wall clock minus its timestamp), by topic",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0,
                ]);
                let metric = HistogramVec::new(opts, &["topic"]).expect("valid metric");
                registry.register(Box::new(metric.clone())).expect("unique metric");
                metric
            },
            transaction_aborts: counter("transaction_aborts_total", "Transactions aborted"),
            input_unavailable: counter(
                "input_unavailable_total",
                "Inputs retried after a pause because something they need was unreachable",
            ),
            recoveries: counter_vec(
                "recoveries_total",
                "Recoveries from Kafka faults, by kind (rewind, producer, rejoin, stall)",
                "kind",
            ),
            input_order_waits_expired: counter(
                "input_order_waits_expired_total",
                "Waits for a time-ordered source that is behind which ran out",
            ),
            departed_fenced: counter(
                "departed_fenced_total",
                "Instances gone from the group fenced here, ending the transaction they left open",
            ),
            restored_records: counter_vec(
                "restored_records_total",
                "Changelog records restored, by store",
                "store",
            ),
            restore_seconds: histogram(
                "restore_seconds",
                "Duration of one task restore",
                prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets"),
            ),
            restoring_tasks: gauge("restoring_tasks", "Tasks restoring their stores"),
            store_keys: gauge_vec(
                "store_keys",
                "Estimated keys per store and partition",
                &["store", "partition"],
            ),
            consumer_lag: gauge_vec(
                "consumer_lag",
                "Records behind the partition end",
                &["topic", "partition"],
            ),
            timers_pending: gauge("timers_pending", "Timers scheduled and not yet fired"),
            timers_fired: counter("timers_fired_total", "Timers fired"),
            dead_letters: counter_vec(
                "dead_letters_total",
                "Records sent to the dead-letter topic",
                "topic",
            ),
            processor_counters: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            loop_blocked_seconds: gauge(
                "loop_blocked_seconds",
                "Seconds the processing loop has not come back, beyond the stall time",
            ),
            loop_turned_ms: AtomicU64::new(0),
            created: Instant::now(),
            registry,
        })
    }

    /// Adds `by` to the processor counter `counter` under label value `label`, registering the
    /// counter on first use.
    pub(crate) fn count(&self, counter: &ProcessorCounter, label: &str, by: u64) {
        let mut counters = self.processor_counters.lock().unwrap_or_else(|e| e.into_inner());
        let vec = counters.entry(counter.name).or_insert_with(|| {
            let vec = IntCounterVec::new(Opts::new(counter.name, counter.help), &[counter.label])
                .expect("valid metric");
            // A second instance's registration of the same name fails: it counts unexported.
            let _ = self.registry.register(Box::new(vec.clone()));
            vec
        });
        vec.with_label_values(&[label]).inc_by(by);
    }

    /// The value of processor counter `name` under `label` (0 before its first use).
    pub fn processor_count(&self, name: &str, label: &str) -> u64 {
        let counters = self.processor_counters.lock().unwrap_or_else(|e| e.into_inner());
        counters.get(name).map_or(0, |vec| vec.with_label_values(&[label]).get())
    }

    /// Notes that the processing loop came back (or a restore moved on).
    pub(crate) fn loop_turned(&self) {
        let ms = self.created.elapsed().as_millis() as u64;
        self.loop_turned_ms.store(ms, Ordering::SeqCst);
    }

    /// How long ago the processing loop last came back.
    pub(crate) fn since_loop_turned(&self) -> Duration {
        let turned = Duration::from_millis(self.loop_turned_ms.load(Ordering::SeqCst));
        self.created.elapsed().saturating_sub(turned)
    }

    /// Marks the instance ready (restored and processing) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// True once every assigned task is restored.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding gathered metric families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` from a background thread.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<SocketAddr, RuntimeError> {
        let (render, ready) = (Arc::clone(self), Arc::clone(self));
        let readiness = move || {
            if ready.is_ready() {
                Readiness::Ready
            } else {
                Readiness::NotReady(
                    "not processing: partitions not assigned yet, or their tasks still restoring"
                        .to_string(),
                )
            }
        };
        serve_http(addr, move || render.render(), readiness).map_err(|source| RuntimeError::Io {
            context: format!("serving metrics on {addr}"),
            source,
        })
    }
}

/// What a process's `/readyz` answers: ready (200), or not and why (503).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It can do its work.
    Ready,
    /// It cannot (yet, or any more), for this reason.
    NotReady(String),
}

impl Readiness {
    /// The status code and JSON body of `/readyz`: `{"ready":true}`, or
    /// `{"ready":false,"reason":"..."}` with 503.
    pub fn response(&self) -> (u16, String) {
        match self {
            Self::Ready => (200, serde_json::json!({ "ready": true }).to_string()),
            Self::NotReady(reason) => {
                (503, serde_json::json!({ "ready": false, "reason": reason }).to_string())
            }
        }
    }
}

/// Serves `/metrics` (what `render` returns), `/healthz` and `/readyz` (what `ready` says, as
/// JSON: [`Readiness::response`]) on a thread of its own; returns the bound address.
pub fn serve_http(
    addr: SocketAddr,
    render: impl Fn() -> String + Send + 'static,
    ready: impl Fn() -> Readiness + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| std::io::Error::other(format!("listening on {addr}: {e}")))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new().name("herald-metrics".into()).spawn(move || {
        for request in server.incoming_requests() {
            let (status, body, json) = match request.url() {
                "/metrics" => (200, render(), false),
                "/healthz" => (200, "ok\n".to_string(), false),
                "/readyz" => {
                    let (status, body) = ready().response();
                    (status, body, true)
                }
                _ => (404, "not found\n".to_string(), false),
            };
            let mut response = tiny_http::Response::from_string(body).with_status_code(status);
            if json {
                let header = tiny_http::Header::from_bytes("Content-Type", "application/json");
                response = response.with_header(header.expect("a valid header"));
            }
            let _ = request.respond(response);
        }
    })?;
    Ok(bound)
}

/// A metric vector with one label.
pub(crate) trait ByLabel {
    /// The metric of one label value.
    type Metric;
    /// The metric of `label` (created on first use).
    fn metric(&self, label: &str) -> Self::Metric;
}

impl ByLabel for IntCounterVec {
    type Metric = IntCounter;
    fn metric(&self, label: &str) -> IntCounter {
        self.with_label_values(&[label])
    }
}

impl ByLabel for HistogramVec {
    type Metric = Histogram;
    fn metric(&self, label: &str) -> Histogram {
        self.with_label_values(&[label])
    }
}

/// A metric vector with one label whose per-label metrics are looked up once and cached, for
/// hot paths (the vector's own lookup hashes the label and takes a lock every time).
pub(crate) struct Labelled<V: ByLabel> {
    vec: V,
    cache: HashMap<String, V::Metric>,
}

impl<V: ByLabel> Labelled<V> {
    pub(crate) fn new(vec: V) -> Self {
        Self { vec, cache: HashMap::new() }
    }

    /// The metric of `label`.
    pub(crate) fn get(&mut self, label: &str) -> &V::Metric {
        if !self.cache.contains_key(label) {
            self.cache.insert(label.to_string(), self.vec.metric(label));
        }
        &self.cache[label]
    }
}

/// Counters by label, cached (see [`Labelled`]).
pub(crate) type LabelledCounter = Labelled<IntCounterVec>;

impl LabelledCounter {
    /// Adds one to the counter of `label`.
    pub(crate) fn inc(&mut self, label: &str) {
        self.get(label).inc();
    }
}
