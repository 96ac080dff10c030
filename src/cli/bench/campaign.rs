//! `herald bench campaign`: one campaign to many users through the campaign stage, on the
//! replay driver and on the live runtime: send commands per second and the time to the last one.

use std::{
    cell::Cell,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    model::{
        topics::TopicNames, CampaignCommand, CampaignEnvelope, Candidate, Device, IngestDecoder,
        Platform, PropertyValue, SchemaRegistry,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
};
use rdkafka::{consumer::Consumer, Message};
use serde_json::json;

use super::support::{create_topics, now_ms, output_consumer, producer, send, with_runtime};

#[derive(Debug, Args)]
pub struct CampaignArgs {
    /// Users who qualify for the campaign.
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Partitions of the live topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

const CAMPAIGN: &str = r#"{"id":"bench","app":"bench","name":"Bench","when":{"event":"Ping"},"what":{"title":"Hi {{ profile.first_name | default: 'there' }}","body":"Your offer is waiting"}}"#;

pub fn run(kafka: &KafkaConfig, args: CampaignArgs) -> anyhow::Result<ExitCode> {
    let registry = SchemaRegistry::builtin();
    let base_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let envelope = registry.encode(&CampaignEnvelope {
        campaign_id: "bench".into(),
        app_id: "bench".into(),
        command: CampaignCommand::Define,
        definition: Some(CAMPAIGN.into()),
        revision: 1,
        issued_at_ms: base_ms,
        issued_by: None,
    })?;
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
    let mut records = vec![record(&topics.campaigns, envelope.clone(), base_ms)];
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

    eprintln!("live: producing the candidates");
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let prefix = format!("bench-{run_id}-");
    let live = TopicNames::with_prefix(&prefix);
    let names = live.all().map(str::to_string);
    create_topics(kafka, &names, args.partitions, |name| name == live.push)?;
    let producer = producer(kafka)?;
    send(&producer, &live.campaigns, b"bench", &envelope, None)?;
    for value in &candidates {
        send(&producer, &live.campaign_flow, b"bench", value, None)?;
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(120))?;
    drop(candidates);

    eprintln!("live: running the engine");
    // A fresh application id: no state or offsets from an earlier run.
    let topology = engine_topology(
        &format!("{prefix}engine"),
        live.clone(),
        Arc::default(),
        IngestDecoder::default(),
        LIVE_STATS_INTERVAL_MS,
    )?;
    let state = tempfile::tempdir()?;
    // Time to the last command counts from the engine's start (group join and restore included).
    let start_ms = now_ms();
    let (first_ms, last_ms, live_sent) =
        with_runtime(kafka, topology, state.path().to_path_buf(), || {
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
            consumer.unsubscribe();
            Ok((first, last, seen))
        })?;
    let live_span = ((last_ms - first_ms) as f64 / 1000.0).max(1e-3);
    let to_last = (last_ms - start_ms) as f64 / 1000.0;

    let replay_rate = replay_sent as f64 / replay_seconds.max(1e-3);
    let live_rate = live_sent as f64 / live_span;
    println!("{:<34} {:>12} {:>14} {:>16}", "run", "commands", "commands/s", "to last command");
    println!(
        "{:<34} {:>12} {:>14.0} {:>15.1}s",
        "replay (one process, event time)", replay_sent, replay_rate, replay_seconds
    );
    println!(
        "{:<34} {:>12} {:>14.0} {:>15.1}s",
        "live (exactly-once, real broker)", live_sent, live_rate, to_last
    );
    println!(
        "{}",
        json!({
            "bench": "campaign",
            "users": args.users,
            "replay_commands": replay_sent,
            "replay_commands_per_s": replay_rate.round(),
            "replay_seconds_to_last": (replay_seconds * 10.0).round() / 10.0,
            "live_commands": live_sent,
            "live_commands_per_s": live_rate.round(),
            "live_seconds_to_last": (to_last * 10.0).round() / 10.0,
        })
    );
    Ok(ExitCode::SUCCESS)
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
