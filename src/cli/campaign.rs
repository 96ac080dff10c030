//! `herald campaign validate|apply|pause|resume|stop|stats|preview|test-send`: check campaign
//! definition files, publish them, issue operator commands, show stats, render a campaign for a
//! user and send it to test users.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    campaign::admin,
    kafka::KafkaConfig,
    model::{CampaignCommand, CampaignEnvelope, CampaignStats, Record, SchemaRegistry},
    query::estimate::Question,
};
use rdkafka::producer::FutureProducer;

use super::estimate::CampaignLimits;

#[derive(Debug, Subcommand)]
pub enum CampaignCommandArgs {
    /// Check definition files; print every error with its field path.
    Validate(FilesArgs),
    /// Check definition files and publish the valid ones to the campaigns topic. Nothing is
    /// published if any file is invalid.
    Apply(ApplyArgs),
    /// Print a campaign's latest stats snapshot as a table.
    Stats(StatsArgs),
    /// Hold a campaign: no new triggers; due timers, pending users and throttled sends wait.
    Pause(OperatorArgs),
    /// Continue a paused campaign: what waited is released.
    Resume(OperatorArgs),
    /// End a campaign for good: what waited is dropped (counted `stopped`).
    Stop(OperatorArgs),
    /// Render an applied campaign for a user (profile and devices from the running engine):
    /// every variant's texts and the exact APNs/FCM request bodies with their sizes against the
    /// 4,096-byte limit. Exits 2 when a variant does not render or a body is over the limit.
    Preview(super::preview::PreviewArgs),
    /// Send an applied campaign to test users (profiles marked as such, see docs/api.md)
    /// through the real senders, outside stats, caps and limits, and print each device's
    /// receipt. Exits 2 when a user is refused, 3 when a device is not accepted by the deadline.
    TestSend(super::preview::TestSendArgs),
    /// Ask the running engine how many users a campaign definition (applied or not) reaches
    /// now: users matching its audience, reachable by push (per platform), the candidates of a
    /// run started now (after sample, DND and frequency caps) and, for a scheduled campaign,
    /// what its limits leave (per-run limit, total limit left, A/B test population). Counted by
    /// every user-stage task from its own stores; shows progress; exits 3 when some partitions
    /// did not answer within --timeout.
    Estimate(EstimateCampaignArgs),
}

#[derive(Debug, Args)]
pub struct EstimateCampaignArgs {
    /// Campaign definition file (YAML or JSON).
    file: PathBuf,
    #[command(flatten)]
    estimate: super::estimate::EstimateArgs,
}

#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Campaign id.
    id: String,
    /// Topic of campaign definitions.
    #[arg(long, default_value = "herald.campaigns")]
    topic: String,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Campaign id.
    id: String,
    /// Topic of stats snapshots.
    #[arg(long, default_value = "herald.stats")]
    topic: String,
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Campaign definition files (YAML or JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The engine's app settings file: campaigns looking back further than its history
    /// retention (default 90 days) are refused.
    #[arg(long)]
    app_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FilesArgs,
    /// Topic of campaign definitions.
    #[arg(long, default_value = "herald.campaigns")]
    topic: String,
}

/// Reads and validates every file; returns the `Define` envelope of each, or prints all errors
/// of all files (two files defining the same campaign id is one).
fn load(args: &FilesArgs) -> anyhow::Result<Option<Vec<CampaignEnvelope>>> {
    let retention = super::load_settings(args.app_config.as_deref())?.history().days();
    let files = &args.files;
    let mut valid = Vec::new();
    let mut failed = false;
    let mut defined_in = std::collections::HashMap::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let issued_by = std::env::var("USER").ok();
        match admin::define(&text, &path.display().to_string(), issued_by, now_ms) {
            Ok((campaign, _)) if defined_in.contains_key(&campaign.id) => {
                failed = true;
                println!(
                    "INVALID  {}: id: campaign {} is already defined in {}",
                    path.display(),
                    campaign.id,
                    defined_in[&campaign.id]
                );
            }
            Ok((campaign, _)) if !campaign.who.look_backs_beyond(retention, "who").is_empty() => {
                failed = true;
                for path_in_file in campaign.who.look_backs_beyond(retention, "who") {
                    println!(
                        "INVALID  {}: {path_in_file}: looks back further than the {retention} \
                         days of history kept (history.retention_days)",
                        path.display()
                    );
                }
            }
            Ok((campaign, envelope)) => {
                defined_in.insert(campaign.id.clone(), path.display().to_string());
                println!("ok       {} ({}: {})", path.display(), campaign.id, campaign.name);
                valid.push(envelope);
            }
            Err(errors) => {
                failed = true;
                println!("INVALID  {errors}");
            }
        }
    }
    Ok((!failed).then_some(valid))
}

pub fn run(kafka: &KafkaConfig, command: CampaignCommandArgs) -> anyhow::Result<ExitCode> {
    match command {
        CampaignCommandArgs::Stats(args) => stats(kafka, &args),
        CampaignCommandArgs::Pause(args) => operate(kafka, &args, CampaignCommand::Pause),
        CampaignCommandArgs::Resume(args) => operate(kafka, &args, CampaignCommand::Resume),
        CampaignCommandArgs::Stop(args) => operate(kafka, &args, CampaignCommand::Stop),
        CampaignCommandArgs::Preview(args) => super::preview::preview_campaign(kafka, &args),
        CampaignCommandArgs::TestSend(args) => super::preview::test_send(kafka, &args),
        CampaignCommandArgs::Estimate(args) => estimate(kafka, &args),
        CampaignCommandArgs::Validate(args) => {
            Ok(if load(&args)?.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        CampaignCommandArgs::Apply(args) => {
            let Some(campaigns) = load(&args.files)? else {
                eprintln!("nothing published: fix the errors above first");
                return Ok(ExitCode::from(2));
            };
            if !shards_kept(kafka, &args.topic, &campaigns)? {
                eprintln!("nothing published: fix the errors above first");
                return Ok(ExitCode::from(2));
            }
            for envelope in campaigns {
                publish(kafka, &args.topic, &envelope)?;
                println!("published {} to {}", envelope.campaign_id, args.topic);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether every definition keeps the shard count of its live campaign on `topic` (see
/// `admin::shards_change`); prints each refusal with its field path.
fn shards_kept(
    kafka: &KafkaConfig,
    topic: &str,
    campaigns: &[CampaignEnvelope],
) -> anyhow::Result<bool> {
    // A topic just created may not answer at once: read again a few times before giving up.
    let mut attempt = 0;
    let table = loop {
        attempt += 1;
        match super::segment::read_table(kafka, topic) {
            Ok(table) => break table,
            // A deployment's first apply: no campaign is live yet.
            Err(error) if error.to_string().ends_with("not found") => break Default::default(),
            Err(error) if attempt >= 5 => {
                return Err(error.context(format!("reading the live campaigns of {topic}")))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    };
    let registry = SchemaRegistry::builtin();
    let mut kept = true;
    for envelope in campaigns {
        let current = table.get(&envelope.campaign_id);
        let Some(current) = current.and_then(|v| registry.decode::<CampaignEnvelope>(v).ok())
        else {
            continue;
        };
        let next = admin::compile(envelope).map_err(anyhow::Error::msg)?;
        if let Some(refused) = admin::shards_change(&current, &next) {
            kept = false;
            println!("REFUSED  {}: {}: {}", envelope.campaign_id, refused.path, refused.reason);
        }
    }
    Ok(kept)
}

/// Reads `topic` to its end and returns the last record keyed `key` that decodes as `R` (none
/// after a tombstone: a deleted campaign).
pub(super) fn latest<R: Record>(
    kafka: &KafkaConfig,
    topic: &str,
    key: &str,
) -> anyhow::Result<Option<R>> {
    let mut table = super::segment::read_table(kafka, topic)?;
    Ok(table.remove(key).and_then(|value| SchemaRegistry::builtin().decode::<R>(&value).ok()))
}

/// Publishes an operator `command` for a campaign: its current definition under the command,
/// so the compacted topic keeps a complete envelope.
fn operate(
    kafka: &KafkaConfig,
    args: &OperatorArgs,
    command: CampaignCommand,
) -> anyhow::Result<ExitCode> {
    let Some(current) = latest::<CampaignEnvelope>(kafka, &args.topic, &args.id)? else {
        eprintln!("campaign {} not found in {}", args.id, args.topic);
        return Ok(ExitCode::from(2));
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let envelope = match admin::command(current, command, std::env::var("USER").ok(), now_ms) {
        Ok(envelope) => envelope,
        Err(refused) => {
            eprintln!("{refused}");
            return Ok(ExitCode::from(2));
        }
    };
    publish(kafka, &args.topic, &envelope)?;
    println!("{:?} {} published to {}", command, args.id, args.topic);
    Ok(ExitCode::SUCCESS)
}

/// Publishes `envelope` to `topic`, keyed by its campaign, and waits for the broker's ack.
fn publish(kafka: &KafkaConfig, topic: &str, envelope: &CampaignEnvelope) -> anyhow::Result<()> {
    let producer: FutureProducer = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .context("creating the Kafka producer")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(admin::publish(&producer, topic, envelope))?;
    Ok(())
}

/// Asks the running engine for the reach of the campaign defined in `args.file`.
fn estimate(kafka: &KafkaConfig, args: &EstimateCampaignArgs) -> anyhow::Result<ExitCode> {
    let path = &args.file;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (campaign, envelope) = match admin::define(&text, &path.display().to_string(), None, now_ms)
    {
        Ok(defined) => defined,
        Err(errors) => {
            println!("INVALID  {errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // Sends so far count against the total limit (none for a campaign never applied, or when
    // the stats topic cannot be read).
    let stats = latest::<CampaignStats>(kafka, &args.estimate.topics().stats, &campaign.id);
    let sent_so_far =
        stats.ok().flatten().map_or(0, |s| herald_engine::query::estimate::sent_so_far(&s));
    let question = Question::Campaign {
        id: campaign.id.clone(),
        definition: envelope.definition.unwrap_or_default(),
        at_ms: now_ms,
    };
    let what = format!("campaign {}", campaign.id);
    let limits = CampaignLimits { campaign: &campaign, sent_so_far };
    super::estimate::run(kafka, &args.estimate, &what, &question, Some(limits))
}

/// Reads the stats topic to its end and prints the latest snapshot of the campaign.
fn stats(kafka: &KafkaConfig, args: &StatsArgs) -> anyhow::Result<ExitCode> {
    let Some(stats) = latest::<CampaignStats>(kafka, &args.topic, &args.id)? else {
        eprintln!("no stats for campaign {} in {}", args.id, args.topic);
        return Ok(ExitCode::from(2));
    };
    println!(
        "campaign {} (as of {})",
        stats.campaign_id,
        chrono::DateTime::from_timestamp_millis(stats.as_of_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    );
    let qualified: i64 =
        stats.variants.iter().map(|v| v.sent).sum::<i64>() + stats.skipped.values().sum::<i64>();
    println!("qualified {qualified}");
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12}",
        "variant", "sent", "delivered", "failed", "impressions", "clicks", "conversions"
    );
    for v in &stats.variants {
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>12}",
            v.variant_id, v.sent, v.delivered, v.failed, v.impressions, v.clicks, v.conversions
        );
    }
    for (title, counts) in [("skipped:", &stats.skipped), ("failed:", &stats.failed)] {
        if !counts.is_empty() {
            println!("{title}");
            for (reason, count) in counts {
                println!("  {reason:<20} {count:>10}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
