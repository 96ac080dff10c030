//! The engine live against the real broker: an inaction window survives a SIGKILL and yields
//! exactly one candidate and one send; an undecodable event goes to the dead-letter topic; the
//! total limit holds exactly across user partitions and a restart.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use herald_engine::model::{
    AppEvent, Candidate, DeadLetter, Device, Platform, ProfileUpdate, SchemaRegistry, SendCommand,
};

/// An engine deployment on topics of its own (a unique prefix) with one campaign applied.
struct Deployment {
    prefix: String,
    app_id: String,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(name: &str, user_partitions: i32, campaign_yaml: &str) -> Self {
        let deployment = Self {
            prefix: format!("{}-", common::unique(name)),
            app_id: common::unique(&format!("{name}-app")),
            dir: tempfile::tempdir().unwrap(),
        };
        let topic = |name: &str| deployment.topic(name);
        common::create_topics(&[
            (&topic("events"), user_partitions),
            (&topic("profiles"), user_partitions),
            (&topic("receipts"), user_partitions),
            (&topic("campaigns"), 1),
            (&topic("campaign-flow"), 2),
            (&topic("app-throttle"), 1),
            (&topic("push"), 2),
            (&topic("stats"), 1),
            (&topic("campaign-events"), 1),
            (&topic("dead-letter"), 1),
        ]);
        let file = deployment.dir.path().join("campaign.yaml");
        std::fs::write(&file, campaign_yaml).unwrap();
        let applied = deployment.herald(&[
            "campaign",
            "apply",
            "--topic",
            &topic("campaigns"),
            file.to_str().unwrap(),
        ]);
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));
        deployment
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("engine.log")
    }

    fn herald(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_BROKERS", common::kafka().brokers)
            .output()
            .unwrap()
    }

    fn spawn_engine(&self) -> std::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).unwrap();
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "engine",
                "--topic-prefix",
                &self.prefix,
                "--app-id",
                &self.app_id,
                "--instance-id",
                "a",
            ])
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .env("HERALD_BROKERS", common::kafka().brokers)
            .env("RUST_LOG", "info,librdkafka=warn")
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

/// How many distinct users the send commands `sends` address.
fn distinct_users(sends: &[common::Consumed]) -> usize {
    let registry = SchemaRegistry::builtin();
    let users: std::collections::BTreeSet<String> = sends
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect();
    users.len()
}

/// A profile update giving `user` one device on `platform`, keyed by user.
fn profile(user: &str, platform: Platform, at: i64) -> (String, Vec<u8>) {
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: at,
        set: Default::default(),
        unset: vec![],
        devices_added: vec![Device {
            device_id: format!("d-{user}"),
            platform,
            token: format!("tok-{user}"),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        tokens_removed: vec![],
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&update).unwrap())
}

/// An app event, keyed by user.
fn event(user: &str, name: &str, at: i64) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{user}-{name}-{at}"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

#[test]
fn inaction_window_survives_a_restart_and_yields_exactly_one_candidate() {
    let deployment = Deployment::new(
        "engine",
        2,
        "id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 8s }\nwhat: { title: t, body: b }\n",
    );
    let topic = |name: &str| deployment.topic(name);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        [profile("u1", Platform::Android, now), profile("u2", Platform::Android, now)],
    );
    common::produce(
        &topic("events"),
        [
            event("u1", "Added To Cart", now),
            event("u2", "Added To Cart", now),
            event("u2", "Charged", now + 2_000),
            ("u3".to_string(), b"{not avro".to_vec()),
        ],
    );

    let log = deployment.log();
    let engine = deployment.spawn_engine();
    std::thread::sleep(Duration::from_secs(4));
    common::kill_hard(engine);
    assert!(common::now_ms() < now + 8_000, "killed before the window closed");

    let engine = deployment.spawn_engine();
    let flow = common::read_committed(
        &topic("campaign-flow"),
        1,
        Duration::from_secs(8),
        Duration::from_secs(60),
    );
    let letters = common::read_committed(
        &topic("dead-letter"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let sends =
        common::read_committed(&topic("push"), 1, Duration::from_secs(1), Duration::from_secs(30));
    common::stop_gracefully(engine);

    let candidates: Vec<Candidate> = flow
        .iter()
        .filter_map(|r| registry.decode::<Candidate>(r.value.as_deref().unwrap()).ok())
        .collect();
    assert_eq!(candidates.len(), 1, "exactly one candidate\n{}", common::tail(&log, 30));
    assert_eq!(candidates[0].user_id, "u1");
    assert_eq!(candidates[0].qualified_at_ms, now + 8_000);
    assert_eq!(flow.len(), 1, "nothing else in the flow");
    assert_eq!(sends.len(), 1, "one send command for u1's one device");
    let command: SendCommand = registry.decode(sends[0].value.as_deref().unwrap()).unwrap();
    assert_eq!((command.user_id.as_str(), command.platform), ("u1", Platform::Android));
    assert!(command.payload.contains("\"token\":\"tok-u1\""), "{}", command.payload);

    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = registry.decode(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(letter.source_topic, topic("events"));
    assert!(letter.reason.contains("not an Avro single-object record"), "{}", letter.reason);
    assert_eq!(letter.value.as_deref(), Some(&b"{not avro"[..]));
}

#[test]
fn coupon_limit_holds_exactly_across_four_user_partitions_and_a_restart() {
    const USERS: usize = 2_000;
    const LIMIT: usize = 300;
    let deployment = Deployment::new(
        "coupon",
        4,
        &format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: App Opened }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {LIMIT} }}\n"),
    );
    let topic = |name: &str| deployment.topic(name);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        (0..USERS).map(|i| profile(&format!("u{i}"), Platform::Ios, now)),
    );
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    // Events arrive while the engine runs; it is killed once sends have started.
    common::produce(
        &topic("events"),
        (0..USERS).map(|i| event(&format!("u{i}"), "App Opened", now + i as i64)),
    );
    let started = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        common::end_offsets(&topic("push")) > 0
    });
    assert!(started, "no sends\n{}", common::tail(&log, 30));
    common::kill_hard(engine);
    let engine = deployment.spawn_engine();
    let sends = common::read_committed(
        &topic("push"),
        LIMIT,
        Duration::from_secs(8),
        Duration::from_secs(90),
    );
    let events = common::read_committed(
        &topic("campaign-events"),
        1,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    common::stop_gracefully(engine);

    let users = distinct_users(&sends);
    assert_eq!(sends.len(), LIMIT, "exactly the limit\n{}", common::tail(&log, 20));
    assert_eq!(users, LIMIT, "one send per user");
    assert_eq!(events.len(), 1, "one completion event");
    let event: herald_engine::model::CampaignLifecycleEvent =
        registry.decode(events[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(format!("{:?}", event.kind), "Completed");

    let printed = deployment.herald(&["campaign", "stats", "coupons", "--topic", &topic("stats")]);
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{table}");
    let row = table.lines().find(|l| l.starts_with("A ")).expect("variant row");
    assert_eq!(row.split_whitespace().nth(1), Some("300"), "{table}");
    assert!(table.contains("total_limit"), "{table}");
}

#[test]
fn scheduled_run_per_run_limit_holds_across_four_user_partitions_and_a_restart() {
    const USERS: usize = 12_000;
    const PER_RUN: usize = 5_000;
    let run_at = chrono::DateTime::from_timestamp_millis(common::now_ms() + 8_000).unwrap();
    let deployment = Deployment::new(
        "scheduled",
        4,
        &format!(
            "id: weekly\napp: shop\nname: Weekly\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {{ title: t, body: b }}\nlimits: {{ per_run: {PER_RUN}, safety: 50000 }}\noptions: {{ ignore_global_caps: true }}\n",
            run_at.to_rfc3339()
        ),
    );
    let topic = |name: &str| deployment.topic(name);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        (0..USERS).map(|i| profile(&format!("u{i}"), Platform::Android, now)),
    );
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    // Killed once the run has started sending.
    let started = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        common::end_offsets(&topic("push")) > 0
    });
    assert!(started, "no sends\n{}", common::tail(&log, 30));
    common::kill_hard(engine);
    let engine = deployment.spawn_engine();
    let sends = common::read_committed(
        &topic("push"),
        PER_RUN,
        Duration::from_secs(8),
        Duration::from_secs(120),
    );
    let events = common::read_committed(
        &topic("campaign-events"),
        2,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    common::stop_gracefully(engine);

    let users = distinct_users(&sends);
    assert_eq!(sends.len(), PER_RUN, "exactly the per-run limit\n{}", common::tail(&log, 20));
    assert_eq!(users, PER_RUN, "one send per user");
    let events: Vec<herald_engine::model::CampaignLifecycleEvent> =
        events.iter().map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap()).collect();
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["RunStarted", "RunFinished"]);
    assert_eq!(events[0].details["qualified"], USERS.to_string(), "all 4 partitions counted");
    assert_eq!(events[1].details["sent"], PER_RUN.to_string());
}
