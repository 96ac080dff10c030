//! `herald bench campaign`: one campaign to many users through the campaign stage, on the
//! replay driver and on the live runtime: send commands per second and the time to the last one.
//! Live, the campaign runs on one shard (one task) and then on `--shards` shards (see
//! `docs/architecture.md`), each with `--instances` engine instances, in the same run: the ratio
//! of their rates, and the trigger latency of a single user once the broadcast is out.

use std::{
    cell::Cell,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use herald_engine::{
    campaign::shards,
    kafka::KafkaConfig,
    model::{
        topics::TopicNames, CampaignCommand, CampaignEnvelope, Candidate, Device, IngestDecoder,
        Platform, PropertyValue, SchemaRegistry,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::{
        partition_for,
        replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        LiveRuntime, RuntimeConfig, RuntimeError, ShutdownFlag, StreamTopology,
    },
};
use rdkafka::{consumer::Consumer, Message};
use serde_json::json;

use super::support::{create_topics, now_ms, output_consumer, producer, send};

#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// Users who qualify for the campaign.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Partitions of the live topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Shards of the campaign in the sharded live run.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Engine instances (processing threads) of each live run.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Single users triggered one at a time after the broadcast (trigger latency).
    #[arg(long, default_value_t = 20)]
    singles: usize,
}

/// What one live run measured.
struct Live {
    sent: usize,
    rate: f64,
    to_last: f64,
    /// Median and worst time from producing one user's candidate to its command.
    single_p50_ms: f64,
    single_max_ms: f64,
}

/// The benchmark campaign on `shards` shards.
fn campaign(shards: u32) -> String {
    json!({
        "id": "bench",
        "app": "bench",
        "name": "Bench",
        "when": {"event": "Ping"},
        "what": {"title": "Hi {{ profile.first_name | default: 'there' }}", "body": "Your offer is waiting"},
        "options": {"shards": shards},
    })
    .to_string()
}

pub fn run(kafka: &KafkaConfig, args: CampaignArgs) -> anyhow::Result<ExitCode> {
    let registry = SchemaRegistry::builtin();
    let base_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let envelope = |shards: u32| {
        registry.encode(&CampaignEnvelope {
            campaign_id: "bench".into(),
            app_id: "bench".into(),
            command: CampaignCommand::Define,
            definition: Some(campaign(shards)),
            revision: 1,
            issued_at_ms: base_ms,
            issued_by: None,
        })
    };
    eprintln!("encoding {} candidates", args.users);
    let candidates: Vec<Vec<u8>> = (0..args.users)
        .map(|i| registry.encode(&candidate(i, base_ms)))
        .collect::<Result<_, _>>()?;

    eprintln!("replay");
    let topics = TopicNames::default();
    let topology = engine_topology(
        "bench-replay",
        topics.clone(),
        Arc::default(),
        IngestDecoder::default(),
        LIVE_STATS_INTERVAL_MS,
    )?;
    let mut records = vec![record(&topics.campaigns, envelope(1)?, base_ms)];
    records.extend(
        candidates
            .iter()
            .enumerate()
            .map(|(i, c)| record(&topics.campaign_flow, c.clone(), base_ms + i as i64)),
    );
    let sent = Cell::new(0usize);
    let last = Cell::new(Duration::ZERO);
    let started = Instant::now();
    let sink = ReplaySink::Callback(Box::new(|topic, _, _, _| {
        if topic == topics.push {
            sent.set(sent.get() + 1);
            last.set(started.elapsed());
        }
        Ok(())
    }));
    replay::run(&topology, ReplayInput::Records(records), sink, &ReplayOptions::default())?;
    let (replay_sent, replay_seconds) = (sent.get(), last.get().as_secs_f64());

    let one = live(kafka, &args, 1, &envelope(1)?, &candidates)?;
    let sharded = live(kafka, &args, args.shards, &envelope(args.shards)?, &candidates)?;
    let spread: std::collections::BTreeSet<i32> = (0..args.shards)
        .map(|s| partition_for(shards::key("bench", s).as_bytes(), args.partitions))
        .collect();

    let replay_rate = replay_sent as f64 / replay_seconds.max(1e-3);
    let ratio = sharded.rate / one.rate.max(1e-3);
    println!(
        "{:<40} {:>10} {:>12} {:>16} {:>14}",
        "run", "commands", "commands/s", "to last command", "single p50/max"
    );
    println!(
        "{:<40} {:>10} {:>12.0} {:>15.1}s {:>14}",
        "replay (one process, event time)", replay_sent, replay_rate, replay_seconds, "-"
    );
    let shown = |name: String, run: &Live| {
        println!(
            "{:<40} {:>10} {:>12.0} {:>15.1}s {:>7.0}/{:.0} ms",
            name, run.sent, run.rate, run.to_last, run.single_p50_ms, run.single_max_ms
        )
    };
    let instances = args.instances;
    shown(format!("live, 1 shard, {instances} instance(s)"), &one);
    shown(format!("live, {} shards, {instances} instance(s)", args.shards), &sharded);
    println!(
        "sharded / one shard: {ratio:.2} ({} shards on {} of {} partitions)",
        args.shards,
        spread.len(),
        args.partitions
    );
    println!(
        "{}",
        json!({
            "bench": "campaign",
            "users": args.users,
            "partitions": args.partitions,
            "instances": instances,
            "shards": args.shards,
            "shard_partitions": spread.len(),
            "replay_commands": replay_sent,
            "replay_commands_per_s": replay_rate.round(),
            "replay_seconds_to_last": (replay_seconds * 10.0).round() / 10.0,
            "live_commands": one.sent,
            "live_commands_per_s": one.rate.round(),
            "live_seconds_to_last": (one.to_last * 10.0).round() / 10.0,
            "live_single_p50_ms": one.single_p50_ms.round(),
            "sharded_commands": sharded.sent,
            "sharded_commands_per_s": sharded.rate.round(),
            "sharded_seconds_to_last": (sharded.to_last * 10.0).round() / 10.0,
            "sharded_single_p50_ms": sharded.single_p50_ms.round(),
            "sharded_ratio": (ratio * 100.0).round() / 100.0,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// One live run: the campaign on `shards` shards, the candidates produced to their shards'
/// keys, `--instances` engines; then single users one at a time.
fn live(
    kafka: &KafkaConfig,
    args: &CampaignArgs,
    shards: u32,
    envelope: &[u8],
    candidates: &[Vec<u8>],
) -> anyhow::Result<Live> {
    eprintln!("live, {shards} shard(s): producing the candidates");
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("bench-{run_id}-");
    let live = TopicNames::with_prefix(&prefix);
    let names = live.all().map(str::to_string);
    create_topics(kafka, &names, args.partitions, |name| name == live.push)?;
    let producer = producer(kafka)?;
    send(&producer, &live.campaigns, b"bench", envelope, None)?;
    let key = |user: usize| match shards {
        1 => "bench".to_string(),
        n => shards::key("bench", shards::of_user(&format!("u{user}"), n)),
    };
    for (i, value) in candidates.iter().enumerate() {
        send(&producer, &live.campaign_flow, key(i).as_bytes(), value, None)?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(120))?;

    eprintln!("live, {shards} shard(s): running {} engine(s)", args.instances);
    // A fresh application id: no state or offsets from an earlier run.
    let topology = || {
        engine_topology(
            &format!("{prefix}engine"),
            live.clone(),
            Arc::default(),
            IngestDecoder::default(),
            LIVE_STATS_INTERVAL_MS,
        )
    };
    // Time to the last command counts from the engine's start (group join and restore included).
    let start_ms = now_ms();
    with_instances(kafka, args.instances, topology, || {
        let consumer = output_consumer(kafka, &live.push)?;
        let deadline = Instant::now() + Duration::from_secs(900);
        let (mut first, mut last, mut seen) = (i64::MAX, i64::MIN, 0usize);
        while seen < args.users && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let appended = message?.timestamp().to_millis().unwrap_or_default();
                first = first.min(appended);
                last = last.max(appended);
                seen += 1;
            }
        }
        let mut latencies = Vec::new();
        for n in 0..args.singles {
            let user = args.users + n;
            let value = SchemaRegistry::builtin().encode(&candidate(user, now_ms()))?;
            let sent = Instant::now();
            send(&producer, &live.campaign_flow, key(user).as_bytes(), &value, None)?;
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10))?;
            let wanted = format!("u{user}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let Some(message) = consumer.poll(Duration::from_millis(5)) else { continue };
                if message?.key() == Some(wanted.as_bytes()) {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
        }
        consumer.unsubscribe();
        latencies.sort_by(f64::total_cmp);
        let live_span = ((last - first) as f64 / 1000.0).max(1e-3);
        Ok(Live {
            sent: seen,
            rate: seen as f64 / live_span,
            to_last: (last - start_ms) as f64 / 1000.0,
            single_p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(f64::NAN),
            single_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        })
    })
}

/// Runs `count` engine instances of one application (own threads, state directories and
/// instance ids) while `measure` runs, then stops them.
fn with_instances<T>(
    kafka: &KafkaConfig,
    count: usize,
    topology: impl Fn() -> Result<StreamTopology, RuntimeError>,
    measure: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let shutdown = ShutdownFlag::default();
    let mut workers = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..count.max(1) {
        let dir = tempfile::tempdir()?;
        let config = RuntimeConfig::new(kafka.clone(), format!("bench-{i}"), dir.path());
        let runtime = LiveRuntime::new(topology()?, config);
        let shutdown = shutdown.clone();
        workers.push(std::thread::spawn(move || runtime.run(&shutdown)));
        dirs.push(dir);
    }
    let result = measure();
    shutdown.request();
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("an engine thread panicked"))??;
    }
    result
}

fn candidate(i: usize, base_ms: i64) -> Candidate {
    Candidate {
        campaign_id: "bench".into(),
        app_id: "bench".into(),
        run_id: "trigger".into(),
        user_id: format!("u{i}"),
        qualified_at_ms: base_ms + i as i64,
        trigger_event: Some("Ping".into()),
        event_properties: Default::default(),
        profile: [("first_name".to_string(), PropertyValue::String(format!("User {i}")))].into(),
        devices: vec![Device {
            device_id: format!("d{i}"),
            platform: if i % 2 == 0 { Platform::Ios } else { Platform::Android },
            token: format!("{i:064x}"),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        timezone: Some("UTC".into()),
        language: Some("en".into()),
        source: None,
    }
}

fn record(topic: &str, value: Vec<u8>, timestamp_ms: i64) -> ReplayRecord {
    ReplayRecord {
        topic: topic.to_string(),
        partition: None,
        offset: 0,
        key: Some(b"bench".to_vec()),
        value: Some(value),
        timestamp_ms,
    }
}
