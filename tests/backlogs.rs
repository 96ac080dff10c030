//! Work that piles up, through the live engine. A scheduled broadcast with a 2 s transaction
//! timeout: the run's scan, buffering and release are cut into transactions of bounded work,
//! so the run completes and every user gets exactly one send command (before, the release ran
//! inside one transaction, which outlived the timeout, aborted and started again, forever).
//! A throttled backlog after downtime: the waiting users leave at the throttle's rate, in
//! windows that start when the engine is back (before, the release timer chained windows from
//! its past due time and the whole backlog left in one burst).
//!
//! The 100,000-user broadcast runs in the normal suite; `make test-broadcast` runs the
//! 1,000,000-user one (release build).

mod common;

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use herald_engine::{
    kafka::apply_topology,
    model::{
        topics::TopicNames, AppEvent, CampaignLifecycleEvent, Device, IngestDecoder, LifecycleKind,
        Platform, ProfileUpdate, SchemaRegistry, SendCommand,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::{LiveRuntime, RuntimeConfig, RuntimeError, RuntimeMetrics, ShutdownFlag},
    topology::{CleanupPolicy, TopicSpec, Topology},
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
    let topics = Deployment::new(4);
    let started = Instant::now();
    let now = common::now_ms();
    common::produce(&topics.profiles, (0..users).map(|i| profile(i, now)));
    eprintln!("{users} profiles produced in {:.1} s", started.elapsed().as_secs_f64());
    let state = tempfile::tempdir().unwrap();
    let engine = Engine::start(&topics.app_id("broadcast-app"), &topics, state.path(), |config| {
        config.transaction_timeout = Duration::from_secs(2);
        config.max_work_per_transaction = work_cap;
    });
    let profiles_in = || engine.metrics.records_in.with_label_values(&[&topics.profiles]).get();
    assert!(
        common::poll_until(limit, || profiles_in() >= users as u64),
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
    let registry = SchemaRegistry::builtin();
    let (mut commands, mut per_user, mut message_ids) = (0, vec![0u32; users], HashSet::new());
    read(&topics.push, limit, Duration::from_secs(5), |_, value| {
        let command: SendCommand = registry.decode(value).unwrap();
        commands += 1;
        let user = command.user_id.strip_prefix('u').and_then(|n| n.parse::<usize>().ok());
        if let Some(count) = user.and_then(|user| per_user.get_mut(user)) {
            *count += 1;
        }
        message_ids.insert(command.message_id);
        commands >= users
    });
    let mut events = Vec::new();
    read(&topics.campaign_events, Duration::from_secs(60), Duration::ZERO, |_, value| {
        events.push(registry.decode::<CampaignLifecycleEvent>(value).unwrap());
        events.iter().any(|e| e.kind == LifecycleKind::RunFinished)
    });
    let metrics = engine.stop();
    let transactions = metrics.commit_seconds.get_sample_count();
    eprintln!(
        "{users} users: {commands} commands after {:.1} s; {transactions} transactions, {} aborted",
        started.elapsed().as_secs_f64(),
        metrics.transaction_aborts.get()
    );

    let missing: Vec<usize> = (0..users).filter(|u| per_user[*u] == 0).take(5).collect();
    let doubled: Vec<usize> = (0..users).filter(|u| per_user[*u] > 1).take(5).collect();
    assert!(missing.is_empty(), "users without a command, e.g. {missing:?}");
    assert!(doubled.is_empty(), "users with several commands, e.g. {doubled:?}");
    assert_eq!(commands, users, "one command per user, nothing else");
    assert_eq!(message_ids.len(), users, "distinct message ids");
    let finished = events.iter().find(|e| e.kind == LifecycleKind::RunFinished);
    assert_eq!(
        finished.map(|e| e.details["sent"].clone()),
        Some(users.to_string()),
        "the run finished with every user sent: {events:?}"
    );
    assert!(transactions as usize >= users / work_cap as usize, "work was cut into transactions");
}

#[test]
fn a_throttled_backlog_leaves_at_its_rate_after_downtime_not_in_one_burst() {
    const USERS: usize = 20;
    const MAX: usize = 5;
    const PER_MS: i64 = 2_000;
    let topics = Deployment::new(1);
    let now = common::now_ms();
    common::produce(&topics.profiles, (0..USERS).map(|i| profile(i, now)));
    apply_campaign(
        &topics.campaigns,
        &format!(
            "id: slow\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions: {{ throttle: {{ max: {MAX}, per: {}s }}, ignore_global_caps: true }}\n",
            PER_MS / 1_000
        ),
    );
    common::produce(&topics.events, (0..USERS).map(|i| ping(i, now + 1_000)));
    let (app_id, state) = (topics.app_id("throttle-app"), tempfile::tempdir().unwrap());
    let sends = |count: usize, settle: Duration| {
        let mut sends = Vec::new();
        // A generous limit: the 100,000-user broadcast of this binary may run alongside.
        read(&topics.push, Duration::from_secs(240), settle, |appended, value| {
            let user = SchemaRegistry::builtin().decode::<SendCommand>(value).unwrap().user_id;
            sends.push((appended, user));
            sends.len() >= count
        });
        sends
    };

    let engine = Engine::start(&app_id, &topics, state.path(), |_| {});
    sends(MAX, Duration::ZERO);
    engine.stop();
    let before = sends(MAX, Duration::from_secs(1));
    assert!(before.len() < USERS, "the engine stopped with users waiting: {before:?}");
    // Downtime: three windows pass.
    let back_at = common::now_ms() + 3 * PER_MS;
    assert!(common::poll_until(Duration::from_secs(30), || common::now_ms() >= back_at));
    let engine = Engine::start(&app_id, &topics, state.path(), |_| {});
    let sends = sends(USERS, Duration::from_secs(1));
    engine.stop();

    let users: BTreeSet<&str> = sends.iter().map(|(_, user)| user.as_str()).collect();
    let expected: BTreeSet<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    assert_eq!(users, expected.iter().map(String::as_str).collect(), "every user");
    assert_eq!(sends.len(), USERS, "no user twice: {sends:?}");
    // At most MAX per window: any MAX + 1 sends in a row span a window (by the broker's append
    // times, when the commands really left; a little slack for batching).
    let mut appended: Vec<i64> = sends.iter().map(|(at, _)| *at).collect();
    appended.sort_unstable();
    for (i, run) in appended.windows(MAX + 1).enumerate() {
        let span = run[MAX] - run[0];
        assert!(
            span >= PER_MS - 300,
            "sends {i}..={} left within {span} ms: {appended:?}",
            i + MAX
        );
    }
}

/// "Added to cart, no `Charged` within 10 minutes", read from a backlog: the carts, thousands of
/// other events, then half of the users' `Charged`, all written half an hour ago while the
/// engine was down. Every window ended long ago on the wall clock, yet a window closes only after
/// the events before its end are read: the users who bought get nothing, the others get one
/// send each (before, the windows closed after the first batch, and every user was sent to).
#[test]
fn an_inaction_window_behind_a_backlog_closes_after_the_events_before_its_end() {
    const CARTS: usize = 20;
    const OTHERS: usize = 5_000;
    let topics = Deployment::new(1);
    let start = common::now_ms() - 30 * 60_000;
    common::produce(&topics.profiles, (0..CARTS).map(|i| profile(i, start - 60_000)));
    apply_campaign(
        &topics.campaigns,
        "id: cart\napp: shop\nname: n\nwhen: { event: Added To Cart, unless: { event: Charged, within: 10m } }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n",
    );
    // Written live while the engine was down: each record stamped when it happened.
    let carts = (0..CARTS).map(|i| ("Added To Cart", format!("u{i}"), start));
    let others = (0..OTHERS).map(|i| ("Ping", format!("other{i}"), start + i as i64 * 20));
    let bought = (0..CARTS / 2).map(|i| ("Charged", format!("u{i}"), start + 5 * 60_000));
    common::produce_at(
        &topics.events,
        carts.chain(others).chain(bought).map(|(name, user, at)| {
            let (key, value) = event(name, &user, at);
            (key, value, Some(at))
        }),
    );

    let (app_id, state) = (topics.app_id("inaction-app"), tempfile::tempdir().unwrap());
    let engine = Engine::start(&app_id, &topics, state.path(), |_| {});
    let mut users = Vec::new();
    read(&topics.push, Duration::from_secs(120), Duration::from_secs(3), |_, value| {
        users.push(SchemaRegistry::builtin().decode::<SendCommand>(value).unwrap().user_id);
        users.len() >= CARTS / 2
    });
    engine.stop();
    users.sort();
    let mut expected: Vec<String> = (CARTS / 2..CARTS).map(|i| format!("u{i}")).collect();
    expected.sort();
    assert_eq!(users, expected, "exactly the users who did not buy, once each");
}

/// Profiles, then their users' events, all written while the engine was down: every user is
/// sent to, none skipped as not reachable because an event was read before its profile.
#[test]
fn events_behind_their_profiles_in_a_backlog_find_the_profiles() {
    const USERS: usize = 20_000;
    let topics = Deployment::new(1);
    let start = common::now_ms() - 10 * 60_000;
    apply_campaign(
        &topics.campaigns,
        "id: hello\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n",
    );
    common::produce_at(
        &topics.profiles,
        (0..USERS).map(|i| {
            let (key, value) = profile(i, start);
            (key, value, Some(start))
        }),
    );
    common::produce_at(
        &topics.events,
        (0..USERS).map(|i| {
            let (key, value) = ping(i, start + 60_000);
            (key, value, Some(start + 60_000))
        }),
    );
    let (app_id, state) = (topics.app_id("order-app"), tempfile::tempdir().unwrap());
    let engine = Engine::start(&app_id, &topics, state.path(), |_| {});
    let mut users = BTreeSet::new();
    read(&topics.push, Duration::from_secs(180), Duration::from_secs(5), |_, value| {
        users.insert(SchemaRegistry::builtin().decode::<SendCommand>(value).unwrap().user_id);
        users.len() >= USERS
    });
    engine.stop();
    let missing: Vec<String> =
        (0..USERS).map(|i| format!("u{i}")).filter(|u| !users.contains(u)).collect();
    assert!(
        missing.is_empty(),
        "{} users not sent to, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Topics of one test under a unique prefix, `herald.push` stamped with the broker's append
/// time (when a command really left); its engines' app ids share the prefix, so every topic
/// the test made (changelogs too) is deleted when it is dropped.
struct Deployment {
    prefix: String,
    topics: TopicNames,
}

impl Deployment {
    /// Creates the topics, `partitions` each.
    fn new(partitions: i32) -> Self {
        let prefix = format!("{}-", common::unique("backlog"));
        let topics = TopicNames::with_prefix(&prefix);
        let specs = topics
            .all()
            .into_iter()
            .map(|name| TopicSpec {
                name: name.to_string(),
                partitions,
                cleanup_policy: CleanupPolicy::Delete,
                retention_ms: None,
                description: String::new(),
                configs: if name == topics.push {
                    [("message.timestamp.type".to_string(), "LogAppendTime".to_string())].into()
                } else {
                    Default::default()
                },
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let topology = Topology { replication_factor: 1, topics: specs };
        runtime.block_on(apply_topology(&common::kafka(), &topology)).unwrap();
        Self { prefix, topics }
    }

    /// The app id of engine `name`, under the deployment's prefix.
    fn app_id(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl std::ops::Deref for Deployment {
    type Target = TopicNames;

    fn deref(&self) -> &TopicNames {
        &self.topics
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        common::delete_topics_starting_with(&[&self.prefix]);
    }
}

/// The engine running in a thread of the test.
struct Engine {
    shutdown: ShutdownFlag,
    thread: JoinHandle<Result<(), RuntimeError>>,
    metrics: Arc<RuntimeMetrics>,
}

impl Engine {
    /// Starts instance "a" of application `app_id` on `topics` with its state in `state`,
    /// configured by `configure`.
    fn start(
        app_id: &str,
        topics: &TopicNames,
        state: &std::path::Path,
        configure: impl FnOnce(&mut RuntimeConfig),
    ) -> Self {
        let topology = engine_topology(
            app_id,
            topics.clone(),
            Arc::default(),
            IngestDecoder::default(),
            LIVE_STATS_INTERVAL_MS,
        )
        .unwrap();
        let mut config = RuntimeConfig::new(common::kafka(), "a", state);
        configure(&mut config);
        let runtime = LiveRuntime::new(topology, config);
        let metrics = Arc::clone(runtime.metrics());
        let shutdown = ShutdownFlag::default();
        let flag = shutdown.clone();
        let thread = std::thread::spawn(move || runtime.run(&flag));
        Self { shutdown, thread, metrics }
    }

    /// Stops gracefully (commit, checkpoint); the instance's metrics.
    fn stop(self) -> Arc<RuntimeMetrics> {
        self.shutdown.request();
        self.thread.join().unwrap().unwrap();
        self.metrics
    }
}

/// Reads the committed records of `topic` from its beginning, handing each (timestamp, value)
/// to `each`, until `each` said it has enough and nothing more came for `settle`, or `limit`.
fn read(topic: &str, limit: Duration, settle: Duration, mut each: impl FnMut(i64, &[u8]) -> bool) {
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
    let (started, mut last, mut enough) = (Instant::now(), Instant::now(), false);
    while started.elapsed() < limit && !(enough && last.elapsed() >= settle) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.expect("consume");
        last = Instant::now();
        let timestamp = message.timestamp().to_millis().unwrap_or_default();
        enough = each(timestamp, message.payload().unwrap_or_default());
    }
}

/// A profile update giving user `i` one Android device, keyed by user.
fn profile(i: usize, at: i64) -> (String, Vec<u8>) {
    let user = format!("u{i}");
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.clone(),
        timestamp_ms: at,
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

/// A `Ping` event of user `i`, keyed by user.
fn ping(i: usize, at: i64) -> (String, Vec<u8>) {
    event("Ping", &format!("u{i}"), at)
}

/// Event `name` of `user` at `at`, keyed by user, with an id of its own.
fn event(name: &str, user: &str, at: i64) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{name}-{user}-{at}"),
        app_id: "shop".into(),
        user_id: user.to_string(),
        name: name.into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

fn apply_campaign(topic: &str, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("campaign.yaml");
    std::fs::write(&file, yaml).unwrap();
    let applied = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", topic])
        .arg(&file)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
}
