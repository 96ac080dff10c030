//! `herald api`: the admin HTTP API (`docs/api.md`).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    api::{
        self, ApiConfig, ApiHealth, ApiState, RateLimit, Tokens, AUDIT_TOPIC, DEFAULT_BODY_LIMIT,
        DEFAULT_BROKERS_DOWN_AFTER,
    },
    kafka::KafkaConfig,
    model::topics::TopicNames,
    runtime::ShutdownFlag,
};

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Tokens file: one `read|admin NAME TOKEN` per line. Without it, the tokens come from
    /// HERALD_API_TOKENS (same lines, `;` also separates them).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Prefix of every topic name (as given to `herald engine`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// App settings file the engine reads, shown and changed under /api/v1/settings.
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Requests a token may make at once.
    #[arg(long, default_value_t = 100)]
    rate_burst: u32,
    /// Requests per second a token earns back.
    #[arg(long, default_value_t = 20.0)]
    rate_per_second: f64,
    /// Serve /metrics, /healthz and /readyz here, without a token (keep it apart from --listen,
    /// where Prometheus scrapes and callers do not); /readyz answers 503 with its reason while
    /// the brokers do not answer or the campaigns, segments, stats and events are not read
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Seconds the brokers may not answer before a started API says it is not ready (a shorter
    /// outage leaves /readyz as it was, so one slow answer does not take every replica out)
    #[arg(long, default_value_t = DEFAULT_BROKERS_DOWN_AFTER.as_secs())]
    brokers_down_after: u64,
}

fn tokens(args: &ApiArgs) -> anyhow::Result<Tokens> {
    let (text, source) = match &args.tokens {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            std::env::var("HERALD_API_TOKENS")
                .context("no tokens: give --tokens FILE or set HERALD_API_TOKENS")?,
            "HERALD_API_TOKENS".to_string(),
        ),
    };
    Ok(Tokens::parse(&text, &source)?)
}

pub fn run(kafka: &KafkaConfig, args: ApiArgs) -> anyhow::Result<ExitCode> {
    let config = ApiConfig {
        kafka: kafka.clone(),
        topics: TopicNames::with_prefix(&args.topic_prefix),
        audit_topic: format!("{}{AUDIT_TOPIC}", args.topic_prefix),
        tokens: tokens(&args)?,
        body_limit: args.body_limit,
        rate_limit: RateLimit { burst: args.rate_burst, per_second: args.rate_per_second },
        settings_path: args.settings,
        brokers_down_after: Duration::from_secs(args.brokers_down_after),
    };
    // Signals first: as PID 1 in a container, a SIGTERM not handled is ignored, and the
    // start-up may wait for the brokers for as long as they are away.
    let shutdown = ShutdownFlag::on_signals()?;
    let stopped = move || {
        let shutdown = shutdown.clone();
        async move {
            while !shutdown.requested() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = runtime.block_on(async {
        // Health first: /readyz says why the API cannot serve while it waits for the brokers.
        let health = ApiHealth::new();
        if let Some(addr) = args.metrics_addr {
            let bound = health.serve(addr).with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(address = %bound, "herald api serving /metrics, /healthz, /readyz");
        }
        let start = tokio::task::spawn_blocking(move || ApiState::start(config, health));
        let state = tokio::select! {
            state = start => state??,
            () = stopped() => {
                tracing::info!("stopping on a signal (SIGTERM, SIGINT or SIGUSR1) during start-up");
                return anyhow::Ok(());
            }
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        tracing::info!(address = %listener.local_addr()?, "herald api listening");
        api::serve(listener, state, stopped()).await?;
        anyhow::Ok(())
    });
    // A start-up cut short leaves its thread waiting for the brokers: do not wait for it.
    runtime.shutdown_background();
    served?;
    Ok(ExitCode::SUCCESS)
}
