//! `herald sim`: the provider simulator. It serves the APNs provider API, FCM HTTP v1 and the
//! OAuth token endpoint over HTTP/2 with TLS, checks provider tokens, access tokens, required
//! headers and payload limits, answers with the providers' statuses and error bodies, injects
//! faults, and records what each device received.

pub mod credentials;
mod faults;
mod handlers;
pub mod population;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::DecodingKey;
use serde_json::json;
use tokio::net::TcpListener;

pub use credentials::CredentialFiles;
pub use faults::Faults;
pub use population::{Population, PopulationOptions};

/// How to run the simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificate, keys and public keys to verify with.
    pub files: CredentialFiles,
    /// Required `iss` of APNs provider tokens, if any.
    pub apns_team_id: Option<String>,
    /// Lifetime of the FCM access tokens it issues.
    pub fcm_token_ttl: Duration,
    /// Errors and latency to inject at start (`GET /sim/faults/…` changes them).
    pub faults: Faults,
    /// A device population to publish and to react to deliveries, if any.
    pub population: Option<PopulationOptions>,
}

/// What the simulator saw, served at `GET /sim/stats`.
#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    /// Deliveries per message id.
    deliveries: Mutex<HashMap<String, u32>>,
    /// Message ids each device token received, in order.
    received: Mutex<HashMap<String, Vec<String>>>,
    token_grants: AtomicU64,
    /// GOAWAY frames sent.
    goaways: AtomicU64,
    provider_tokens: Mutex<HashSet<String>>,
}

/// The simulator's state.
pub(crate) struct Sim {
    options: SimOptions,
    /// The faults injected now.
    faults: std::sync::RwLock<Faults>,
    apns_key: DecodingKey,
    fcm_key: DecodingKey,
    /// FCM access tokens issued, with their expiry.
    access_tokens: Mutex<HashMap<String, Instant>>,
    stats: Stats,
    started: Instant,
    population: Option<Arc<Population>>,
    /// The OAuth token endpoint answers 503 (`GET /sim/token-endpoint/down`, `…/up`).
    token_endpoint_down: std::sync::atomic::AtomicBool,
    /// APNs provider tokens refused as `ExpiredProviderToken` from now on, whatever their age
    /// (`GET /sim/apns/expire-tokens`: those accepted so far).
    expired_provider_tokens: Mutex<HashSet<String>>,
}

impl Sim {
    fn new(options: SimOptions) -> Result<Self, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let apns_key = DecodingKey::from_ec_pem(&read(&options.files.apns_public_key)?)
            .map_err(|e| format!("{}: {e}", options.files.apns_public_key.display()))?;
        let fcm_key = DecodingKey::from_rsa_pem(&read(&options.files.fcm_public_key)?)
            .map_err(|e| format!("{}: {e}", options.files.fcm_public_key.display()))?;
        let population = match &options.population {
            Some(population) => Some(Arc::new(Population::new(population.clone())?)),
            None => None,
        };
        Ok(Self {
            population,
            faults: std::sync::RwLock::new(options.faults.clone()),
            options,
            apns_key,
            fcm_key,
            access_tokens: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            started: Instant::now(),
            token_endpoint_down: Default::default(),
            expired_provider_tokens: Mutex::new(HashSet::new()),
        })
    }

    /// The faults injected now.
    fn faults(&self) -> Faults {
        self.faults.read().expect("faults lock").clone()
    }

    fn reject(&self, reason: &str) {
        *self.stats.rejected.lock().expect("stats lock").entry(reason.to_string()).or_default() +=
            1;
    }

    /// Records a delivery; the device's user may react to it.
    fn delivered(&self, token: &str, herald: &serde_json::Value, message_id: &str) {
        if let Some(population) = &self.population {
            let field = |name: &str| herald[name].as_str().unwrap_or_default();
            population.delivered(token, field("campaign_id"), field("variant_id"), message_id);
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .deliveries
            .lock()
            .expect("stats lock")
            .entry(message_id.to_string())
            .or_default() += 1;
        self.stats
            .received
            .lock()
            .expect("stats lock")
            .entry(token.to_string())
            .or_default()
            .push(message_id.to_string());
    }

    /// Refuses every APNs provider token accepted so far as `ExpiredProviderToken` from now on
    /// (Apple's answer to a token past its hour); returns how many.
    fn expire_provider_tokens(&self) -> usize {
        let accepted = self.stats.provider_tokens.lock().expect("stats lock").clone();
        let mut expired = self.expired_provider_tokens.lock().expect("tokens lock");
        expired.extend(accepted);
        expired.len()
    }

    /// What `token` received: `GET /sim/devices/<token>`.
    fn device_json(&self, token: &str) -> serde_json::Value {
        let received = self.stats.received.lock().expect("stats lock");
        let messages = received.get(token).cloned().unwrap_or_default();
        json!({ "token": token, "messages": messages })
    }

    fn stats_json(&self) -> serde_json::Value {
        let deliveries = self.stats.deliveries.lock().expect("stats lock");
        let duplicates: u64 = deliveries.values().map(|n| u64::from(n.saturating_sub(1))).sum();
        json!({
            "accepted": self.stats.accepted.load(Ordering::Relaxed),
            "messages": deliveries.len(),
            "duplicates": duplicates,
            "rejected": *self.stats.rejected.lock().expect("stats lock"),
            "token_grants": self.stats.token_grants.load(Ordering::Relaxed),
            "goaways": self.stats.goaways.load(Ordering::Relaxed),
            "provider_tokens": self.stats.provider_tokens.lock().expect("stats lock").len(),
            "uptime_seconds": self.started.elapsed().as_secs(),
        })
    }
}

/// Starts the simulator; returns the bound address. It serves until the process ends.
pub async fn start(options: SimOptions) -> Result<SocketAddr, String> {
    let files = &options.files;
    let tls =
        crate::tls::server_config(&files.certificate, &files.server_key, &files.ca_certificate)
            .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", options.listen))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let sim = Arc::new(Sim::new(options)?);
    if let Some(population) = &sim.population {
        population.publish_profiles()?;
        tracing::info!(
            users = sim.options.population.as_ref().map_or(0, |p| p.users),
            "population profiles published"
        );
    }
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let (acceptor, sim) = (acceptor.clone(), Arc::clone(&sim));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let client_certificate = stream.get_ref().1.peer_certificates().is_some();
                let control = Arc::new(handlers::Connection::new(client_certificate));
                let service = {
                    let control = Arc::clone(&control);
                    service_fn(move |request: Request<Incoming>| {
                        let (sim, control) = (Arc::clone(&sim), Arc::clone(&control));
                        async move {
                            let reply = handlers::handle(&sim, &control, request).await;
                            Ok::<_, std::convert::Infallible>(reply)
                        }
                    })
                };
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1_000)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                loop {
                    tokio::select! {
                        _ = connection.as_mut() => break,
                        _ = control.goaway.notified() => connection.as_mut().graceful_shutdown(),
                        // Dropping the connection closes the socket: no answer, no GOAWAY.
                        _ = control.drop.notified() => break,
                    }
                }
            });
        }
    });
    Ok(bound)
}

/// Reads a running simulator's JSON endpoint `path` (`/sim/stats`, `/sim/devices/<token>`) at
/// `origin`, trusting `ca_certificate`.
pub async fn fetch_json(
    origin: &str,
    ca_certificate: &std::path::Path,
    path: &str,
) -> Result<serde_json::Value, String> {
    let tls = crate::tls::client_config(Some(ca_certificate), None).map_err(|e| e.to_string())?;
    let pool = crate::sender::h2::H2Pool::new(origin, 1, tls, Duration::from_secs(10))?;
    let request = Request::get(format!("{origin}{path}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = pool.send(request).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&response.body).map_err(|e| format!("bad answer from {path}: {e}"))
}
