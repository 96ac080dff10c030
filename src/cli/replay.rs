//! `herald replay`: backtest campaigns over a JSON lines file on event time.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use herald_engine::backtest::Backtest;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Campaign files or directories of them.
    #[arg(long, required = true, num_args = 1..)]
    campaigns: Vec<PathBuf>,
    /// Input JSON lines (see docs/replay.md).
    #[arg(long)]
    input: PathBuf,
    /// Output directory: candidates.jsonl, skips.jsonl, engagements.jsonl, dead-letters.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// App settings file (global caps, minimum gap, default timezone).
    #[arg(long)]
    app_config: Option<PathBuf>,
    /// App of input lines without one (default: the first campaign's app).
    #[arg(long)]
    app: Option<String>,
    /// Fire timers due up to this RFC 3339 time (default: the last input time).
    #[arg(long)]
    until: Option<String>,
    /// Tasks per stage, as partitions of the live topics (the outcome does not depend on it).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Stop at the first malformed input line instead of reporting it in dead-letters.jsonl.
    #[arg(long)]
    strict: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load_settings(args.app_config.as_deref())?;
    let until_ms = args
        .until
        .as_deref()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_millis()))
        .transpose()
        .context("--until must be an RFC 3339 time")?;
    let backtest = Backtest {
        campaigns: args.campaigns,
        input: args.input,
        out: args.out.clone(),
        settings,
        app: args.app,
        until_ms,
        partitions: args.partitions,
    };
    let summary = if args.strict { backtest.run_strict()? } else { backtest.run()? };
    println!(
        "replayed {} records: {} candidates, {} sends, {} skips, {} engagements, {} campaign events, \
         {} dead letters; files in {}",
        summary.records,
        summary.candidates,
        summary.sends,
        summary.skips,
        summary.engagements,
        summary.campaign_events,
        summary.dead_letters,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
