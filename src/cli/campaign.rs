//! `herald campaign validate|apply`: check campaign definition files, publish them.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};
use herald_engine::{
    campaign::parse_campaign,
    kafka::KafkaConfig,
    model::{CampaignCommand, CampaignEnvelope, SchemaRegistry},
};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Subcommand)]
pub enum CampaignCommandArgs {
    /// Check definition files; print every error with its field path.
    Validate(FilesArgs),
    /// Check definition files and publish the valid ones to the campaigns topic. Nothing is
    /// published if any file is invalid.
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Campaign definition files (YAML or JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    files: FilesArgs,
    /// Topic of campaign definitions.
    #[arg(long, default_value = "herald.campaigns")]
    topic: String,
}

/// Reads and validates every file; returns (id, app, definition as JSON) per file, or prints
/// all errors of all files.
fn load(files: &[PathBuf]) -> anyhow::Result<Option<Vec<(String, String, String)>>> {
    let mut valid = Vec::new();
    let mut failed = false;
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        match parse_campaign(&text, &path.display().to_string()) {
            Ok(campaign) => {
                println!("ok       {} ({}: {})", path.display(), campaign.id, campaign.name);
                let document: serde_json::Value = serde_norway::from_str(&text)?;
                valid.push((campaign.id, campaign.app, document.to_string()));
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
        CampaignCommandArgs::Validate(args) => {
            Ok(if load(&args.files)?.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        CampaignCommandArgs::Apply(args) => {
            let Some(campaigns) = load(&args.files.files)? else {
                eprintln!("nothing published: fix the errors above first");
                return Ok(ExitCode::from(2));
            };
            let producer: FutureProducer = kafka
                .client_config()
                .set("enable.idempotence", "true")
                .create()
                .context("creating the Kafka producer")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            for (id, app, definition) in campaigns {
                let envelope = CampaignEnvelope {
                    campaign_id: id.clone(),
                    app_id: app,
                    command: CampaignCommand::Define,
                    definition: Some(definition),
                    revision: now_ms,
                    issued_at_ms: now_ms,
                    issued_by: std::env::var("USER").ok(),
                };
                let bytes = SchemaRegistry::builtin().encode(&envelope)?;
                runtime
                    .block_on(producer.send(
                        FutureRecord::to(&args.topic).key(&id).payload(&bytes),
                        Duration::from_secs(30),
                    ))
                    .map_err(|(e, _)| e)
                    .with_context(|| format!("publishing {id} to {}", args.topic))?;
                println!("published {id} to {}", args.topic);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
