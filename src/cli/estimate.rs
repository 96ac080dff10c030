//! `herald campaign estimate FILE` and `herald segment estimate ID`: ask the running engine's
//! user-stage tasks, over the query channel (`herald_engine::query`), how many users a campaign
//! or a saved segment reaches now, counted from the engine's own stores.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;
use herald_engine::{
    campaign::{parse_duration, Campaign},
    kafka::KafkaConfig,
    model::topics::TopicNames,
    query::{
        estimate::{self, Estimate, Question},
        Progress,
    },
};

/// Exit code of an estimate that misses partitions (no answer by the deadline, or refused).
const PARTIAL: u8 = 3;

#[derive(Debug, Args)]
pub struct EstimateArgs {
    /// Prefix of every topic name, as given to the engine (`herald engine --topic-prefix`).
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// How long to wait for every partition's answer (e.g. 30s, 5m); the engine stops working
    /// on the query then too.
    #[arg(long, default_value = "60s")]
    timeout: String,
    /// Print the estimate as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

impl EstimateArgs {
    /// The topic names the engine uses.
    pub fn topics(&self) -> TopicNames {
        TopicNames::with_prefix(&self.topic_prefix)
    }
}

/// What the limits of an estimated campaign apply to.
pub struct CampaignLimits<'a> {
    /// The campaign.
    pub campaign: &'a Campaign,
    /// Users it sent to so far (its latest stats snapshot; 0 for a new campaign).
    pub sent_so_far: u64,
}

/// Asks the engine `question` and prints the estimate; for a scheduled campaign, what its
/// limits leave too. Exits 3 when some partitions did not answer.
pub fn run(
    kafka: &KafkaConfig,
    args: &EstimateArgs,
    what: &str,
    question: &Question,
    limits: Option<CampaignLimits<'_>>,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(
        parse_duration(&args.timeout).map_err(anyhow::Error::msg)?.max(1) as u64,
    );
    let topics = args.topics();
    let mut shown = Instant::now();
    let campaign = limits.map(|l| (l.campaign, l.sent_so_far));
    let (partitions, estimate) =
        estimate::ask(kafka, &topics, question, campaign, timeout, |p: Progress| {
            if shown.elapsed() >= Duration::from_millis(500) || p.answered == p.expected {
                shown = Instant::now();
                eprint!(
                    "\r{} of {} partitions answered, {} users scanned",
                    p.answered, p.expected, p.scanned
                );
                let _ = std::io::stderr().flush();
            }
        })?;
    eprintln!();
    if args.json {
        println!("{}", serde_json::to_string(&estimate)?);
    } else {
        print_table(what, partitions, &estimate);
    }
    if !estimate.partitions_missing.is_empty() {
        let missing: Vec<String> =
            estimate.partitions_missing.iter().map(ToString::to_string).collect();
        eprintln!(
            "partial estimate: partition(s) {} of {} did not answer within {} (is an engine \
             running for them, with --topic-prefix {:?}?)",
            missing.join(", "),
            topics.events,
            args.timeout,
            args.topic_prefix
        );
    }
    for (partition, reason) in &estimate.refused {
        eprintln!("partition {partition} refused: {reason}");
    }
    let complete = estimate.partitions_missing.is_empty() && estimate.refused.is_empty();
    Ok(if complete { ExitCode::SUCCESS } else { ExitCode::from(PARTIAL) })
}

fn print_table(what: &str, partitions: i32, estimate: &Estimate) {
    let c = &estimate.counts;
    println!(
        "estimate of {what}: {} of {partitions} partitions answered, {} users scanned",
        estimate.partitions_answered, c.scanned
    );
    println!("{:<28} {:>12}", "matching now", c.matched);
    println!("{:<28} {:>12}", "reachable by push", c.reachable);
    println!("{:<28} {:>12}", "  with an iOS device", c.ios);
    println!("{:<28} {:>12}", "  with an Android device", c.android);
    if c.candidates + c.waiting + c.skipped.values().sum::<u64>() == 0 && estimate.limited.is_none()
    {
        return;
    }
    println!("{:<28} {:>12}", "candidates of a run now", c.candidates);
    println!("{:<28} {:>12}", "put off (DND, local time)", c.waiting);
    for (reason, n) in &c.skipped {
        println!("{:<28} {:>12}", format!("not sent: {reason}"), n);
    }
    if let Some(l) = &estimate.limited {
        if l.safety_tripped {
            println!("safety check: more users match than limits.safety; a run sends nothing");
        }
        println!("{:<28} {:>12}", "left by limits.per_run", l.per_run);
        if let Some(left) = l.total_left {
            println!("{:<28} {:>12}", "places left in limits.total", left);
        }
        println!("{:<28} {:>12}", "a run would send to", l.sent);
        if let Some(test) = l.test_population {
            println!("{:<28} {:>12}", "A/B test population", test);
        }
    }
}
