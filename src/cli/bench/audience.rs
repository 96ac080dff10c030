//! `herald bench audience`: a scheduled run with `timezone: user` over many generated profiles,
//! each with a history of a few events, on the replay driver (one process, event time, the
//! engine's own RocksDB stores). It measures the user stage's scan of the run (users per
//! second, from the run's time to its RUN_STARTED) beside a raw scan of the same store (every
//! profile read from RocksDB and decoded, nothing else), the stores' size per user (on disk, per
//! store), and peak memory. An hour before the run, an estimate of the run's reach (the query
//! `herald campaign estimate` sends a live engine, here as a replay input record) is timed from
//! a marker campaign's send just before it to the last partition's answer. The input is made
//! as the replay takes it, so the peak memory is the engine's, not the input's.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    model::{
        topics::TopicNames, AppEvent, CampaignCommand, CampaignEnvelope, Device, IngestDecoder,
        Platform, ProfileUpdate, PropertyValue, Record, SchemaRegistry,
    },
    pipeline::engine_topology,
    query::{
        estimate::{replay_request, Counts, Question},
        QueryReply, QueryStatus,
    },
    runtime::{
        replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        RuntimeError,
    },
    stage_user::Profile,
};
use serde_json::json;

#[derive(Debug, Args)]
pub struct AudienceArgs {
    /// Generated profiles.
    #[arg(long, default_value_t = 2_000_000)]
    users: usize,
    /// Events in each user's history (over the 29 days before the run; every other one a
    /// Purchase with properties).
    #[arg(long, default_value_t = 4)]
    events: usize,
    /// Partitions (user-stage tasks) of the replay.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Where the stores are kept (a temporary directory when absent; deleted at the end).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

const DAY_MS: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z: the profiles; the history follows.
const START_MS: i64 = 1_793_491_200_000;
/// 2026-11-30T19:00:00Z: 09:00 of 1 December in UTC+14, the run's time.
const RUN_MS: i64 = START_MS + 29 * DAY_MS + 19 * 3_600_000;
/// An hour before the run: the estimate of its reach.
const ESTIMATE_MS: i64 = RUN_MS - 3_600_000;

/// Users' timezones, UTC-10 to UTC+14.
const ZONES: [&str; 8] = [
    "Pacific/Honolulu",
    "America/Los_Angeles",
    "America/New_York",
    "UTC",
    "Europe/Paris",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Kiritimati",
];
const CATEGORIES: [&str; 6] = ["shoes", "books", "games", "garden", "toys", "music"];

pub fn run(args: AudienceArgs) -> anyhow::Result<ExitCode> {
    let temporary = tempfile::tempdir()?;
    let state_dir = args.state_dir.clone().unwrap_or_else(|| temporary.path().to_path_buf());
    eprintln!("generating {} profiles with {} events each", args.users, args.events);
    let (input, records) = generate(&args)?;

    eprintln!("replaying {records} records on {} partitions", args.partitions);
    let topics = TopicNames::default();
    let topology = engine_topology(
        "bench-audience",
        topics.clone(),
        Arc::default(),
        IngestDecoder::default(),
        0,
    )?;
    let started = Instant::now();
    let (run_seen, run_started) = (Cell::new(None), Cell::new(None));
    let (estimate_asked, estimate_done) = (Cell::new(None), Cell::new(None));
    let rss_ingest = Cell::new(0);
    let (answered, estimated) = (Cell::new(0), std::cell::RefCell::new(Counts::default()));
    let sink = ReplaySink::Callback(Box::new(|topic, _key, value, _at| {
        let registry = SchemaRegistry::builtin();
        let invalid = |e: &dyn std::fmt::Display| {
            herald_engine::runtime::RuntimeError::Topology(e.to_string())
        };
        if topic == topics.push && estimate_asked.get().is_none() {
            // The marker's first send: the record just before the estimate has been processed.
            estimate_asked.set(Some(started.elapsed()));
            rss_ingest.set(peak_rss_bytes());
        } else if topic == topics.push && run_seen.get().is_none() {
            // The marker's second send: the first record at the run's time has been processed.
            run_seen.set(Some(started.elapsed()));
        } else if topic == topics.query_replies {
            let reply: QueryReply = registry.decode(value).map_err(|e| invalid(&e))?;
            if reply.status == QueryStatus::Done {
                let body = reply.body.unwrap_or_default();
                let counts: Counts = serde_json::from_str(&body).map_err(|e| invalid(&e))?;
                estimated.borrow_mut().add(&counts);
                answered.set(answered.get() + 1);
                if answered.get() == args.partitions {
                    estimate_done.set(Some(started.elapsed()));
                }
            }
        } else if topic == topics.campaign_events && run_started.get().is_none() {
            let event: herald_engine::model::CampaignLifecycleEvent =
                registry.decode(value).map_err(|e| invalid(&e))?;
            if event.campaign_id == "audience" {
                run_started.set(Some(started.elapsed()));
            }
        }
        Ok(())
    }));
    let options = ReplayOptions {
        partitions: args.partitions,
        fire_timers_until: Some(RUN_MS + 1),
        state_dir: Some(state_dir.clone()),
    };
    replay::run(&topology, input, sink, &options)?;
    let total = started.elapsed();
    let seen =
        run_seen.get().context("the marker campaign sent nothing: the run was not reached")?;
    let scan = run_started.get().unwrap_or(total).saturating_sub(seen);
    let asked =
        estimate_asked.get().context("the marker campaign sent nothing before the estimate")?;
    let estimate = estimate_done
        .get()
        .context("not every partition answered the estimate")?
        .saturating_sub(asked);
    let estimated = estimated.into_inner();
    let ingest = asked;
    let rss_replay = peak_rss_bytes();

    eprintln!("raw scan and store sizes");
    let stores = Stores::read(&state_dir)?;
    let users = args.users as f64;
    let scan_rate = users / scan.as_secs_f64().max(1e-6);
    let estimate_rate = estimated.scanned as f64 / estimate.as_secs_f64().max(1e-6);
    let raw_rate = stores.raw_profiles as f64 / stores.raw_scan.as_secs_f64().max(1e-6);
    let ratio = scan_rate / raw_rate.max(1e-6);
    let per_user = |bytes: u64| bytes as f64 / users;

    println!(
        "{:<46} {:>12} {:>14} {:>8}",
        "audience (timezone: user)", "users", "users/s", "ratio"
    );
    println!(
        "{:<46} {:>12} {:>14.0} {:>8}",
        "raw scan of the profiles store (RocksDB)", stores.raw_profiles, raw_rate, "1.000"
    );
    println!(
        "{:<46} {:>12} {:>14.0} {:>8.3}",
        "scheduled run scan (user stage)", args.users, scan_rate, ratio
    );
    println!(
        "{:<46} {:>12} {:>14.0} {:>8.3}",
        "estimate of reach (query, user stage)",
        estimated.scanned,
        estimate_rate,
        estimate_rate / raw_rate.max(1e-6)
    );
    println!(
        "{:<46} {:>12} (waiting for their local time {})",
        "  estimate: users matching", estimated.matched, estimated.waiting
    );
    println!(
        "{:<46} {:>12.0} {:>14}",
        format!("ingest (setup): profiles + {} events each", args.events),
        records as f64 / ingest.as_secs_f64().max(1e-6),
        "records/s"
    );
    println!("{:<46} {:>12}", "store size per user (SST files)", "bytes");
    for (name, bytes) in &stores.by_store {
        println!("{:<46} {:>12.1}", format!("  {name}"), per_user(*bytes));
    }
    println!("{:<46} {:>12.1}", "  all stores", per_user(stores.sst_total));
    println!("{:<46} {:>12.1}", "  on disk (task directories)", per_user(stores.on_disk));
    println!(
        "{:<46} {:>12.0} MB (after the ingest {:.0} MB)",
        "peak RSS",
        rss_replay as f64 / 1e6,
        rss_ingest.get() as f64 / 1e6
    );
    let by_store: serde_json::Map<String, serde_json::Value> = stores
        .by_store
        .iter()
        .map(|(name, bytes)| (name.clone(), json!(per_user(*bytes))))
        .collect();
    println!(
        "{}",
        json!({
            "bench": "audience",
            "users": args.users,
            "events_per_user": args.events,
            "partitions": args.partitions,
            "records": records,
            "scan_users_per_s": scan_rate,
            "scan_s": scan.as_secs_f64(),
            "raw_scan_users_per_s": raw_rate,
            "ratio": ratio,
            "estimate_s": estimate.as_secs_f64(),
            "estimate_users_per_s": estimate_rate,
            "estimate_matched": estimated.matched,
            "ingest_records_per_s": records as f64 / ingest.as_secs_f64().max(1e-6),
            "bytes_per_user": per_user(stores.sst_total),
            "bytes_per_user_on_disk": per_user(stores.on_disk),
            "bytes_per_user_by_store": by_store,
            "peak_rss_bytes": rss_replay,
            "peak_rss_after_ingest_bytes": rss_ingest.get(),
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Events sharing one instant: a live engine taking 20,000 events/s sees about 200 between
/// two ticks (10 ms); the replay ticks every task when event time moves by a tick, so one
/// event per instant would tick every task after every event, which no live engine does.
const EVENTS_PER_INSTANT: usize = 256;

/// The input, in time order, made as the replay takes it (never held in memory as a whole):
/// the campaigns, every profile, the events, an hour before the run the marker's first send
/// and the estimate, and at the run's time the marker event. `records` is how many.
fn generate(args: &AudienceArgs) -> anyhow::Result<(ReplayInput, usize)> {
    let (users, events) = (args.users, args.events);
    let topics = TopicNames::default();
    let mut head = Vec::with_capacity(3);
    // The run of 1 December (from midnight UTC on the 30th: no earlier run), and a marker
    // sending to one user when its event arrives.
    let audience = json!({
        "id": "audience", "app": "bench", "name": "Audience",
        "who": {"did": "App Opened", "in_last_days": 30},
        "when": {"start": "2026-11-30T00:00:00Z",
                 "schedule": {"repeat": "daily", "time": "09:00", "timezone": "user"}},
        "what": {"title": "Hi", "body": "Good morning"},
    });
    let marker = json!({
        "id": "marker", "app": "bench", "name": "Marker",
        "who": {"property": "marker", "equals": true},
        "when": {"event": "Mark"},
        "what": {"title": "t", "body": "b"},
        "options": {"ignore_global_caps": true},
    });
    let audience_definition = audience.to_string();
    for campaign in [audience, marker] {
        let id = campaign["id"].as_str().unwrap_or_default().to_string();
        let envelope = CampaignEnvelope {
            campaign_id: id.clone(),
            app_id: "bench".into(),
            command: CampaignCommand::Define,
            definition: Some(campaign.to_string()),
            revision: 1,
            issued_at_ms: START_MS - 1,
            issued_by: None,
        };
        head.push(record(&topics.campaigns, &id, START_MS - 1, encode(&envelope)?));
    }
    head.push(profile(&topics, "marker".into(), "UTC", true)?);
    // An hour before the run: the marker's first send, then the estimate of the run's reach.
    let mut tail = vec![record(
        &topics.events,
        "marker",
        ESTIMATE_MS - 1,
        encode(&mark("mark-estimate", ESTIMATE_MS - 1))?,
    )];
    let question = Question::Campaign {
        id: "audience".into(),
        definition: audience_definition,
        at_ms: ESTIMATE_MS,
    };
    tail.push(replay_request(&topics.queries, "q-estimate", &question, ESTIMATE_MS)?);
    tail.push(record(&topics.events, "marker", RUN_MS + 1, encode(&mark("mark", RUN_MS + 1))?));

    let records = head.len() + users * (events + 1) + tail.len();
    let profiles = {
        let topics = topics.clone();
        (0..users).map(move |i| profile(&topics, user(i), ZONES[i % ZONES.len()], false))
    };
    // Round r of the events: every user once, in the order of their ids, spread evenly over
    // the 29 days before the run, EVENTS_PER_INSTANT at a time; even rounds App Opened, odd
    // ones a Purchase.
    let instants = (users * events).div_ceil(EVENTS_PER_INSTANT).max(1) as i64;
    let step = (RUN_MS - START_MS - DAY_MS) / instants;
    let history = (0..users * events).map(move |k| {
        let (round, i) = (k / users, k % users);
        let at = START_MS + DAY_MS + (k / EVENTS_PER_INSTANT) as i64 * step;
        let mut properties = herald_engine::model::Properties::new();
        let name = if round % 2 == 0 {
            "App Opened"
        } else {
            let category = CATEGORIES[(i + round) % CATEGORIES.len()];
            properties.insert("category".into(), PropertyValue::String(category.into()));
            properties
                .insert("amount".into(), PropertyValue::Long(((i * 37 + round) % 200) as i64));
            "Purchase"
        };
        let event = AppEvent {
            event_id: String::new(), // no de-duplication entry: the stores hold profiles and history
            app_id: "bench".into(),
            user_id: user(i),
            name: name.into(),
            timestamp_ms: at,
            properties,
            sdk_version: None,
        };
        Ok(record(&topics.events, &event.user_id, at, encode(&event)?))
    });
    let input =
        head.into_iter().map(Ok).chain(profiles).chain(history).chain(tail.into_iter().map(Ok));
    let input = input.map(|made: anyhow::Result<ReplayRecord>| {
        made.map_err(|e| RuntimeError::ReplayInput {
            location: "generated input".into(),
            reason: format!("{e:#}"),
        })
    });
    Ok((ReplayInput::Stream(Box::new(input)), records))
}

fn user(i: usize) -> String {
    format!("u{i:08}")
}

fn record(topic: &str, key: &str, at: i64, value: Vec<u8>) -> ReplayRecord {
    ReplayRecord {
        topic: topic.into(),
        partition: None,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        timestamp_ms: at,
    }
}

/// A profile with a timezone, a name and one device (Android for ids ending in 7).
fn profile(
    topics: &TopicNames,
    id: String,
    zone: &str,
    marker: bool,
) -> anyhow::Result<ReplayRecord> {
    let mut set = herald_engine::model::Properties::new();
    set.insert("timezone".into(), PropertyValue::String(zone.into()));
    set.insert("first_name".into(), PropertyValue::String("Alex".into()));
    if marker {
        set.insert("marker".into(), PropertyValue::Bool(true));
    }
    let update = ProfileUpdate {
        app_id: "bench".into(),
        user_id: id.clone(),
        timestamp_ms: START_MS,
        set,
        unset: Vec::new(),
        devices_added: vec![Device {
            device_id: format!("d-{id}"),
            platform: if id.ends_with('7') { Platform::Android } else { Platform::Ios },
            token: format!("{id}-token-0123456789abcdef0123456789abcdef"),
            app_version: Some("4.2.0".into()),
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        tokens_removed: Vec::new(),
    };
    Ok(record(&topics.profiles, &id, START_MS, encode(&update)?))
}

/// The marker user's event that makes the marker campaign send.
fn mark(id: &str, at: i64) -> AppEvent {
    AppEvent {
        event_id: id.into(),
        app_id: "bench".into(),
        user_id: "marker".into(),
        name: "Mark".into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    }
}

fn encode<R: Record>(record: &R) -> anyhow::Result<Vec<u8>> {
    Ok(SchemaRegistry::builtin().encode(record)?)
}

/// The user-stage stores after the replay: sizes and a raw scan of the profiles.
struct Stores {
    /// SST bytes per store, over every task.
    by_store: Vec<(String, u64)>,
    sst_total: u64,
    /// Bytes of the task directories.
    on_disk: u64,
    raw_profiles: u64,
    raw_scan: Duration,
}

impl Stores {
    fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let mut by_store: std::collections::BTreeMap<String, u64> = Default::default();
        let (mut raw_profiles, mut raw_scan) = (0u64, Duration::ZERO);
        for task in std::fs::read_dir(state_dir)? {
            let path = task?.path().join("rocksdb");
            let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path)
                .with_context(|| format!("listing the stores of {}", path.display()))?;
            if !families.iter().any(|f| f == "profiles") {
                continue; // another stage's task
            }
            let db = rocksdb::DB::open_cf_for_read_only(
                &rocksdb::Options::default(),
                &path,
                &families,
                false,
            )?;
            for family in &families {
                let cf = db.cf_handle(family).context("column family")?;
                let bytes = db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")?;
                *by_store.entry(family.clone()).or_default() += bytes.unwrap_or(0);
            }
            let cf = db.cf_handle("profiles").context("profiles")?;
            let started = Instant::now();
            for entry in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (_, value) = entry?;
                let profile: Profile = serde_json::from_slice(&value)?;
                raw_profiles += u64::from(!profile.devices.is_empty());
            }
            raw_scan += started.elapsed();
        }
        let sst_total = by_store.values().sum();
        let by_store = by_store.into_iter().filter(|(_, bytes)| *bytes > 0).collect();
        Ok(Self { by_store, sst_total, on_disk: dir_bytes(state_dir), raw_profiles, raw_scan })
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Peak resident set size of this process so far (VmHWM), bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
