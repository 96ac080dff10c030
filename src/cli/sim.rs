//! `herald sim`: the APNs/FCM provider simulator over HTTP/2 with TLS.

use std::{
    collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    model::topics::TopicNames,
    sim::{self, Faults, PopulationOptions, SimOptions},
};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory of its certificate and the APNs/FCM credentials (generated when missing;
    /// senders use the same files).
    #[arg(long, default_value = ".local/sim")]
    dir: PathBuf,
    /// Required `iss` (team id) of APNs provider tokens.
    #[arg(long)]
    apns_team_id: Option<String>,
    /// Lifetime of the FCM access tokens it issues, seconds.
    #[arg(long, default_value_t = 3600)]
    fcm_token_ttl: u64,
    /// A fault to inject, `name=value`: unregistered, bad_device_token, unavailable, internal,
    /// too_many_requests (rates 0 to 1), retry_after (seconds), latency_ms (MIN..MAX).
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Simulate this many users (one device each): publish their profiles and send their
    /// Notification Viewed / Clicked events back.
    #[arg(long, default_value_t = 0)]
    population: usize,
    /// App of the population.
    #[arg(long, default_value = "shop")]
    app: String,
    /// Prefix of the topic names the population writes to.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Share of delivered notifications the users view.
    #[arg(long, default_value_t = 0.6)]
    view_rate: f64,
    /// Click rate of a variant's viewed notifications, `VARIANT=RATE` (e.g. B=0.12).
    #[arg(long = "click-rate")]
    click_rates: Vec<String>,
    /// Click rate of variants not listed.
    #[arg(long, default_value_t = 0.05)]
    default_click_rate: f64,
}

pub fn run(kafka: &KafkaConfig, args: SimArgs) -> anyhow::Result<ExitCode> {
    let mut faults = Faults { retry_after_secs: 1, ..Faults::default() };
    for spec in &args.faults {
        faults.set(spec).map_err(anyhow::Error::msg)?;
    }
    let origin = format!("https://{}", args.listen);
    let hosts = vec![args.listen.ip().to_string(), "localhost".to_string()];
    let files = sim::credentials::write(&args.dir, &origin, &hosts)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("preparing credentials in {}", args.dir.display()))?;
    let population = if args.population == 0 {
        None
    } else {
        let mut click_rates = BTreeMap::new();
        for spec in &args.click_rates {
            let (variant, rate) = spec
                .split_once('=')
                .and_then(|(v, r)| Some((v.to_string(), r.parse::<f64>().ok()?)))
                .with_context(|| format!("--click-rate {spec:?}: expected VARIANT=RATE"))?;
            click_rates.insert(variant, rate);
        }
        let topics = TopicNames::with_prefix(&args.topic_prefix);
        Some(PopulationOptions {
            users: args.population,
            app_id: args.app.clone(),
            kafka: kafka.clone(),
            profiles_topic: topics.profiles,
            events_topic: topics.events,
            view_rate: args.view_rate,
            click_rates,
            default_click_rate: args.default_click_rate,
        })
    };
    let options = SimOptions {
        population,
        listen: args.listen,
        files,
        apns_team_id: args.apns_team_id,
        fcm_token_ttl: Duration::from_secs(args.fcm_token_ttl),
        faults,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let bound = sim::start(options).await.map_err(anyhow::Error::msg)?;
        tracing::info!(%bound, dir = %args.dir.display(), "simulator serving APNs, FCM v1 and OAuth over HTTP/2 + TLS; stats at /sim/stats");
        tokio::signal::ctrl_c().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
