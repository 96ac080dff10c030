//! The API's Prometheus metrics, served by `herald api --metrics-addr` (no token: a scrape
//! address apart from the API's): requests by route and status, their latency, requests refused
//! for their token, size or rate, and the query channel's metrics of this process (round trips
//! to the engine, replies rejected) from the default registry. A route is its template
//! (`/api/v1/campaigns/{id}`), never a request's path, query or headers: no id, token or secret
//! is ever a label.

use std::time::{Duration, Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::Response,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::ApiState;

/// The label of requests no route matched.
const UNMATCHED: &str = "unmatched";

/// Requests by route and status, latency by route, refusals by reason.
pub struct ApiMetrics {
    /// Registry to expose (with the default registry's metrics).
    pub registry: Registry,
    /// Requests answered, by route template, method and status code.
    pub requests: IntCounterVec,
    /// Time to answer a request, by route template.
    pub latency: HistogramVec,
    /// Requests refused for their caller or their size, by reason: `unauthorized` (401),
    /// `forbidden` (403), `too_large` (413), `rate_limited` (429).
    pub refused: IntCounterVec,
}

impl ApiMetrics {
    /// Registers every metric (prefix `herald_api_`).
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("herald_api".into()), None).expect("a valid metric prefix");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("request_seconds", "Time to answer a request")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new("refused_total", "Requests refused for their token, size or rate"),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        registry.register(Box::new(refused.clone())).expect("unique metric");
        Self { registry, requests, latency, refused }
    }

    /// Counts one request to `route` (a template) answered with `status` after `elapsed`.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let code = status.to_string();
        self.requests.with_label_values(&[route, method, code.as_str()]).inc();
        self.latency.with_label_values(&[route]).observe(elapsed.as_secs_f64());
        let reason = match status {
            401 => "unauthorized",
            403 => "forbidden",
            413 => "too_large",
            429 => "rate_limited",
            _ => return,
        };
        self.refused.with_label_values(&[reason]).inc();
    }

    /// The text exposition of these metrics and the default registry's (the query channel's).
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::default_registry().gather());
        let mut out = String::new();
        // Encoding gathered metric families into a String cannot fail.
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware counting every request in [`ApiMetrics`], by the template of the route it
/// matched (or `unmatched`) and a standard method (else `other`).
pub(super) async fn record(
    State(state): State<ApiState>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = route.map_or_else(|| UNMATCHED.to_string(), |m| m.as_str().to_string());
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics().observe(&route, method, status, started.elapsed());
    response
}
