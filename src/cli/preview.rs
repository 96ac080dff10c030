//! `herald campaign preview ID --user U` and `herald campaign test-send ID --user U…`: a campaign
//! rendered for a user from the running engine's profile (over the query channel), as the
//! senders would send it; and a test send to test users through the real senders, recorded on
//! the audit topic.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    api::{AuditRecord, AUDIT_TOPIC},
    campaign::{admin, parse_duration, test_send, Campaign},
    kafka::KafkaConfig,
    model::{topics::TopicNames, CampaignEnvelope, SchemaRegistry},
    query::profile,
    render::preview::preview,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Campaign id (as applied: read from the campaigns topic).
    id: String,
    /// User to render for.
    #[arg(long)]
    user: String,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct TestSendArgs {
    /// Campaign id (as applied: read from the campaigns topic).
    id: String,
    /// Test users (profiles marked as such, see docs/api.md); others are refused.
    #[arg(long = "user", required = true)]
    users: Vec<String>,
    /// Variant to send; every variant when absent.
    #[arg(long)]
    variant: Option<String>,
    /// How long to wait for the senders' receipts (e.g. 15s).
    #[arg(long, default_value = "15s")]
    receipts_timeout: String,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Prefix of every topic name, as given to the engine (`herald engine --topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// How long to wait for the engine's answer to a profile lookup (e.g. 10s).
    #[arg(long, default_value = "10s")]
    timeout: String,
}

impl EngineArgs {
    fn lookup_timeout(&self) -> anyhow::Result<Duration> {
        duration(&self.timeout)
    }
}

fn duration(text: &str) -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(parse_duration(text).map_err(anyhow::Error::msg)?.max(1) as u64))
}

/// The campaign `id` as applied, compiled.
fn campaign(kafka: &KafkaConfig, topics: &TopicNames, id: &str) -> anyhow::Result<Campaign> {
    let envelope = super::campaign::latest::<CampaignEnvelope>(kafka, &topics.campaigns, id)?
        .with_context(|| format!("campaign {id} not found in {}", topics.campaigns))?;
    admin::compile(&envelope).map_err(|e| anyhow::anyhow!("campaign {id} does not validate: {e}"))
}

/// Prints campaign `args.id` rendered for `args.user`, per variant, with each device's request
/// body and size; exits 2 when a variant does not render or a payload is over the limit.
pub fn preview_campaign(kafka: &KafkaConfig, args: &PreviewArgs) -> anyhow::Result<ExitCode> {
    let topics = TopicNames::with_prefix(&args.engine.topic_prefix);
    let campaign = campaign(kafka, &topics, &args.id)?;
    let timeout = args.engine.lookup_timeout()?;
    let Some(profile) = profile::lookup(kafka, &topics, &args.user, timeout)? else {
        eprintln!("user {} has no profile in the engine", args.user);
        return Ok(ExitCode::from(2));
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let preview = preview(&campaign, &args.user, &profile.properties, &profile.devices, now_ms);
    let mut clean = true;
    for variant in &preview.variants {
        println!("variant {}", variant.variant);
        if let Some(error) = &variant.error {
            clean = false;
            println!("  does not render: {error}");
        }
        if let Some(texts) = &variant.texts {
            println!("  title: {}\n  body:  {}", texts.title, texts.body);
        }
        for request in &variant.requests {
            let device = request.device_id.as_deref().unwrap_or("(no device)");
            println!(
                "  {:?} {device}: {} of {} bytes",
                request.platform, request.bytes, request.limit
            );
            match (&request.payload, &request.error) {
                (Some(payload), _) => println!("    {payload}"),
                (None, Some(error)) => {
                    clean = false;
                    println!("    NOT SENT: {error}");
                }
                (None, None) => {}
            }
        }
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// Sends campaign `args.id` to the test users and prints each device's outcome; exits 2 when a
/// user is refused, 3 when a device is not accepted (or has no receipt by the deadline).
pub fn test_send(kafka: &KafkaConfig, args: &TestSendArgs) -> anyhow::Result<ExitCode> {
    let topics = TopicNames::with_prefix(&args.engine.topic_prefix);
    let campaign = campaign(kafka, &topics, &args.id)?;
    let timeout = args.engine.lookup_timeout()?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (mut commands, mut results) = (Vec::new(), Vec::new());
    for user in &args.users {
        let profile = profile::lookup(kafka, &topics, user, timeout)?;
        let variant = args.variant.as_deref();
        match test_send::commands(&campaign, variant, user, profile.as_ref(), now_ms) {
            Ok((sent, not_sent)) => {
                commands.extend(sent);
                results.extend(not_sent);
            }
            Err(error) => {
                eprintln!("refused: {error}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let receipts_timeout = duration(&args.receipts_timeout)?;
    let mut sent = test_send::send_and_wait(kafka, &topics, &commands, receipts_timeout)?;
    sent.append(&mut results);
    audit(kafka, &args.engine.topic_prefix, &campaign.id, &sent)?;
    let mut all_accepted = true;
    for result in &sent {
        all_accepted &= result.status == test_send::DeviceStatus::Accepted;
        println!(
            "{:<12} {:<4} {:<16} {:<8} {:<14} {}{}",
            result.user_id,
            result.variant_id,
            result.device_id,
            format!("{:?}", result.platform),
            format!("{:?}", result.status),
            result.message_id.as_deref().unwrap_or("-"),
            result.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        );
    }
    Ok(if all_accepted { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// Records the test send on the audit topic, as the API does for its own: the user running the
/// CLI as actor (role `cli`), status 200, every message id in `details`.
fn audit(
    kafka: &KafkaConfig,
    prefix: &str,
    campaign: &str,
    results: &[test_send::DeviceResult],
) -> anyhow::Result<()> {
    let record = AuditRecord {
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
        actor: std::env::var("USER").unwrap_or_else(|_| "cli".into()),
        role: "cli".into(),
        action: "herald campaign test-send".into(),
        target: Some(campaign.into()),
        status: 200,
        error: None,
        details: test_send::audit_details(results),
    };
    let bytes = SchemaRegistry::builtin().encode(&record)?;
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .context("creating the Kafka producer")?;
    let topic = format!("{prefix}{AUDIT_TOPIC}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime
        .block_on(producer.send(
            FutureRecord::to(&topic).key(&record.actor).payload(&bytes),
            Duration::from_secs(30),
        ))
        .map_err(|(error, _)| anyhow::anyhow!("writing the audit record to {topic}: {error}"))?;
    Ok(())
}
