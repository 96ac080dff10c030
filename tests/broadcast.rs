//! A scheduled broadcast through the live engine with a 2 s transaction timeout: the run's
//! scan, buffering and release are cut into transactions of bounded work, so the run completes
//! and every user gets exactly one send command. (Before, the release ran inside one
//! transaction, which outlived the timeout, aborted and started again, forever.)
//!
//! The 100,000-user version runs in the normal suite; `make test-broadcast` runs the
//! 1,000,000-user one (release build).

mod common;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use herald_engine::{
    model::{
        topics::TopicNames, CampaignLifecycleEvent, Device, IngestFormat, LifecycleKind, Platform,
        ProfileUpdate, SchemaRegistry, SendCommand,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::{LiveRuntime, RuntimeConfig, ShutdownFlag},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

#[test]
fn scheduled_run_to_100_000_users_with_a_2_s_transaction_timeout_sends_each_user_once() {
    broadcast(100_000, 2_000, Duration::from_secs(600));
}

#[test]
#[ignore = "long: make test-broadcast"]
fn scheduled_run_to_1_000_000_users_with_a_2_s_transaction_timeout_sends_each_user_once() {
    broadcast(1_000_000, 20_000, Duration::from_secs(1_800));
}

/// Loads `users` profiles into a live engine (2 s transaction timeout, `work_cap` units of work
/// per transaction), schedules a campaign to all of them and checks that each gets exactly one
/// send command, all with distinct message ids, within `limit`.
fn broadcast(users: usize, work_cap: u64, limit: Duration) {
    const PARTITIONS: i32 = 4;
    let prefix = format!("{}-", common::unique("broadcast"));
    let topics = TopicNames::with_prefix(&prefix);
    let names: Vec<(&str, i32)> = topics.all().into_iter().map(|t| (t, PARTITIONS)).collect();
    common::create_topics(&names);
    let started = Instant::now();
    common::produce(&topics.profiles, (0..users).map(profile));
    eprintln!("{users} profiles produced in {:.1} s", started.elapsed().as_secs_f64());

    let topology = engine_topology(
        &common::unique("broadcast-app"),
        topics.clone(),
        Arc::default(),
        IngestFormat::Avro,
        LIVE_STATS_INTERVAL_MS,
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(common::kafka(), "a", state.path());
    config.transaction_timeout = Duration::from_secs(2);
    config.max_work_per_transaction = work_cap;
    let runtime = LiveRuntime::new(topology, config);
    let metrics = Arc::clone(runtime.metrics());
    let shutdown = ShutdownFlag::default();
    let engine = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || runtime.run(&shutdown))
    };
    let profiles_in = || metrics.records_in.with_label_values(&[&topics.profiles]).get();
    assert!(
        poll(limit, || profiles_in() >= users as u64),
        "the engine read {} of {users} profiles",
        profiles_in()
    );
    eprintln!("profiles loaded after {:.1} s", started.elapsed().as_secs_f64());

    let run_at = chrono::DateTime::from_timestamp_millis(common::now_ms() + 2_000).unwrap();
    apply_campaign(
        &topics.campaigns,
        &format!(
            "id: broadcast\napp: shop\nname: Broadcast\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {{ title: \"Hi {{{{ profile.first_name | default: 'there' }}}}\", body: b }}\nlimits: {{ safety: 100000000 }}\noptions: {{ ignore_global_caps: true }}\n",
            run_at.to_rfc3339()
        ),
    );
    let sent = SentCommands::read(&topics.push, users, limit);
    let events = common::read_committed(
        &topics.campaign_events,
        2,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    shutdown.request();
    engine.join().unwrap().unwrap();
    let commits = metrics.commit_seconds.get_sample_count();
    eprintln!(
        "{users} users: {} commands after {:.1} s; {commits} transactions, {} aborted",
        sent.commands,
        started.elapsed().as_secs_f64(),
        metrics.transaction_aborts.get()
    );

    let missing: Vec<usize> = (0..users).filter(|u| sent.per_user[*u] == 0).take(5).collect();
    let doubled: Vec<usize> = (0..users).filter(|u| sent.per_user[*u] > 1).take(5).collect();
    assert!(missing.is_empty(), "users without a command, e.g. {missing:?}");
    assert!(doubled.is_empty(), "users with several commands, e.g. {doubled:?}");
    assert_eq!(sent.commands, users, "one command per user, nothing else");
    assert_eq!(sent.message_ids.len(), users, "distinct message ids");
    let registry = SchemaRegistry::builtin();
    let events: Vec<CampaignLifecycleEvent> =
        events.iter().map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap()).collect();
    let finished = events.iter().find(|e| e.kind == LifecycleKind::RunFinished);
    assert_eq!(
        finished.map(|e| e.details["sent"].clone()),
        Some(users.to_string()),
        "the run finished with every user sent: {events:?}"
    );
    assert!(commits as usize >= users / work_cap as usize, "work was cut into transactions");
}

/// A profile update giving user `i` one Android device, keyed by user.
fn profile(i: usize) -> (String, Vec<u8>) {
    let user = format!("u{i}");
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.clone(),
        timestamp_ms: common::now_ms(),
        set: Default::default(),
        unset: vec![],
        devices_added: vec![Device {
            device_id: format!("d-{user}"),
            platform: Platform::Android,
            token: format!("tok-{user}"),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        tokens_removed: vec![],
    };
    (user, SchemaRegistry::builtin().encode(&update).unwrap())
}

fn apply_campaign(topic: &str, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broadcast.yaml");
    std::fs::write(&file, yaml).unwrap();
    let applied = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", topic])
        .arg(&file)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}

/// Whether `condition` held within `limit` (checked every 200 ms).
fn poll(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    condition()
}

/// The committed send commands of a broadcast, counted per user as they are read (a million
/// whole commands would not fit comfortably in memory).
struct SentCommands {
    commands: usize,
    per_user: Vec<u32>,
    message_ids: HashSet<String>,
}

impl SentCommands {
    /// Reads `topic` until `users` commands arrived and nothing more came for 5 s, or `limit`.
    fn read(topic: &str, users: usize, limit: Duration) -> Self {
        let consumer: BaseConsumer = common::kafka()
            .client_config()
            .set("group.id", common::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let registry = SchemaRegistry::builtin();
        let mut sent = Self { commands: 0, per_user: vec![0; users], message_ids: HashSet::new() };
        let started = Instant::now();
        let mut last = Instant::now();
        let settle = Duration::from_secs(5);
        while started.elapsed() < limit && (sent.commands < users || last.elapsed() < settle) {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.expect("consume");
            last = Instant::now();
            let command: SendCommand = registry.decode(message.payload().unwrap()).unwrap();
            sent.commands += 1;
            let user = command.user_id.strip_prefix('u').and_then(|n| n.parse::<usize>().ok());
            if let Some(count) = user.and_then(|user| sent.per_user.get_mut(user)) {
                *count += 1;
            }
            sent.message_ids.insert(command.message_id);
        }
        sent
    }
}
