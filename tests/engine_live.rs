//! The user stage live against the real broker: an inaction window survives a SIGKILL of the
//! engine and yields exactly one candidate; an event that does not decode goes to the
//! dead-letter topic with its offset and reason.

mod common;

use std::{process::Command, time::Duration};

use herald_engine::model::{
    AppEvent, Candidate, DeadLetter, Device, Platform, ProfileUpdate, SchemaRegistry, SendCommand,
};

fn spawn_engine(
    prefix: &str,
    app_id: &str,
    state: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["engine", "--topic-prefix", prefix, "--app-id", app_id, "--instance-id", "a"])
        .arg("--state-dir")
        .arg(state)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn inaction_window_survives_a_restart_and_yields_exactly_one_candidate() {
    let prefix = format!("{}-", common::unique("engine"));
    let topic = |name: &str| format!("{prefix}herald.{name}");
    common::create_topics(&[
        (&topic("events"), 2),
        (&topic("profiles"), 2),
        (&topic("receipts"), 2),
        (&topic("campaigns"), 1),
        (&topic("campaign-flow"), 2),
        (&topic("push"), 2),
        (&topic("stats"), 1),
        (&topic("campaign-events"), 1),
        (&topic("dead-letter"), 1),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let campaign = dir.path().join("cart.yaml");
    std::fs::write(
        &campaign,
        "id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 8s }\nwhat: { title: t, body: b }\n",
    )
    .unwrap();
    let applied = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", &topic("campaigns")])
        .arg(&campaign)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));

    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let profile = |user: &str| {
        let update = ProfileUpdate {
            app_id: "shop".into(),
            user_id: user.into(),
            timestamp_ms: now,
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
        (user.to_string(), registry.encode(&update).unwrap())
    };
    let event = |user: &str, name: &str, at: i64| {
        let event = AppEvent {
            event_id: format!("{user}-{name}"),
            app_id: "shop".into(),
            user_id: user.into(),
            name: name.into(),
            timestamp_ms: at,
            properties: Default::default(),
            sdk_version: None,
        };
        (user.to_string(), registry.encode(&event).unwrap())
    };
    common::produce(&topic("profiles"), [profile("u1"), profile("u2")]);
    common::produce(
        &topic("events"),
        [
            event("u1", "Added To Cart", now),
            event("u2", "Added To Cart", now),
            event("u2", "Charged", now + 2_000),
            ("u3".to_string(), b"{not avro".to_vec()),
        ],
    );

    let app_id = common::unique("engine-app");
    let log = dir.path().join("engine.log");
    let engine = spawn_engine(&prefix, &app_id, &dir.path().join("state"), &log);
    std::thread::sleep(Duration::from_secs(4));
    common::kill_hard(engine);
    assert!(common::now_ms() < now + 8_000, "killed before the window closed");

    let engine = spawn_engine(&prefix, &app_id, &dir.path().join("state"), &log);
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
    let prefix = format!("{}-", common::unique("coupon"));
    let topic = |name: &str| format!("{prefix}herald.{name}");
    common::create_topics(&[
        (&topic("events"), 4),
        (&topic("profiles"), 4),
        (&topic("receipts"), 4),
        (&topic("campaigns"), 1),
        (&topic("campaign-flow"), 2),
        (&topic("push"), 2),
        (&topic("stats"), 1),
        (&topic("campaign-events"), 1),
        (&topic("dead-letter"), 1),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let campaign = dir.path().join("coupons.yaml");
    std::fs::write(
        &campaign,
        format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: App Opened }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {LIMIT} }}\n"),
    )
    .unwrap();
    let applied = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", &topic("campaigns")])
        .arg(&campaign)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(applied.status.success());

    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let profiles = (0..USERS).map(|i| {
        let user = format!("u{i}");
        let update = ProfileUpdate {
            app_id: "shop".into(),
            user_id: user.clone(),
            timestamp_ms: now,
            set: Default::default(),
            unset: vec![],
            devices_added: vec![Device {
                device_id: format!("d-{user}"),
                platform: Platform::Ios,
                token: format!("tok-{user}"),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            }],
            tokens_removed: vec![],
        };
        (user, registry.encode(&update).unwrap())
    });
    common::produce(&topic("profiles"), profiles);
    let app_id = common::unique("coupon-app");
    let log = dir.path().join("engine.log");
    let engine = spawn_engine(&prefix, &app_id, &dir.path().join("state"), &log);
    // Events arrive while the engine runs; it is killed once sends have started.
    let events = (0..USERS).map(|i| {
        let event = AppEvent {
            event_id: format!("e{i}"),
            app_id: "shop".into(),
            user_id: format!("u{i}"),
            name: "App Opened".into(),
            timestamp_ms: now + i as i64,
            properties: Default::default(),
            sdk_version: None,
        };
        (format!("u{i}"), registry.encode(&event).unwrap())
    });
    common::produce(&topic("events"), events);
    let started = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        common::end_offsets(&topic("push")) > 0
    });
    assert!(started, "no sends\n{}", common::tail(&log, 30));
    common::kill_hard(engine);
    let engine = spawn_engine(&prefix, &app_id, &dir.path().join("state"), &log);
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

    let mut users: Vec<String> = sends
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect();
    users.sort();
    users.dedup();
    assert_eq!(sends.len(), LIMIT, "exactly the limit\n{}", common::tail(&log, 20));
    assert_eq!(users.len(), LIMIT, "one send per user");
    assert_eq!(events.len(), 1, "one completion event");
    let event: herald_engine::model::CampaignLifecycleEvent =
        registry.decode(events[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(format!("{:?}", event.kind), "Completed");

    let printed = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "stats", "coupons", "--topic", &topic("stats")])
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{table}");
    let row = table.lines().find(|l| l.starts_with("A ")).expect("variant row");
    assert_eq!(row.split_whitespace().nth(1), Some("300"), "{table}");
    assert!(table.contains("total_limit"), "{table}");
}
