//! The engine live against the real broker: a profile update that would grow a profile past
//! the broker's message size is dead-lettered with the reason, and the records after it on the
//! same partition are still processed.

mod common;

use std::{collections::BTreeSet, process::Command, time::Duration};

use herald_engine::model::{
    AppEvent, DeadLetter, Device, Platform, ProfileUpdate, PropertyValue, SchemaRegistry,
    SendCommand,
};

/// A profile update of `user` setting `set` and adding `device`, keyed by user.
fn update(user: &str, set: &[(&str, String)], device: bool, at: i64) -> (String, Vec<u8>) {
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: at,
        set: set.iter().map(|(k, v)| (k.to_string(), PropertyValue::String(v.clone()))).collect(),
        unset: vec![],
        devices_added: device
            .then(|| Device {
                device_id: format!("d-{user}"),
                platform: Platform::Android,
                token: format!("tok-{user}"),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            })
            .into_iter()
            .collect(),
        tokens_removed: vec![],
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&update).unwrap())
}

fn ping(user: &str, at: i64) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{user}-ping-{at}"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: "Ping".into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

#[test]
fn a_profile_grown_past_the_message_size_is_dead_lettered_and_the_partition_goes_on() {
    let prefix = format!("{}-", common::unique("size"));
    let app_id = common::unique("size-app");
    let dir = tempfile::tempdir().unwrap();
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let topics: Vec<(String, i32)> =
        common::ENGINE_TOPICS.iter().map(|name| (topic(name), 1)).collect();
    common::create_topics(&topics.iter().map(|(t, n)| (t.as_str(), *n)).collect::<Vec<_>>());
    let campaign = dir.path().join("ping.yaml");
    std::fs::write(
        &campaign,
        "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n",
    )
    .unwrap();
    let applied = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", &topic("campaigns"), campaign.to_str().unwrap()])
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));

    // Each update is well under the 1,000,000-byte limit; the second one would make u1's
    // profile about 1.2 MB.
    let now = common::now_ms();
    let half = "x".repeat(600_000);
    common::produce(
        &topic("profiles"),
        [
            update("u1", &[("a", half.clone())], true, now),
            update("u1", &[("b", half)], false, now + 1),
            update("u2", &[], true, now + 2),
        ],
    );
    let log = dir.path().join("engine.log");
    // Strings this long are refused at the door by default (docs/ingest.md, "Validation").
    let settings = dir.path().join("settings.yaml");
    std::fs::write(&settings, "ingest: { max_string_length: 1000000 }\n").unwrap();
    let engine = common::spawn_engine_with(
        &prefix,
        &app_id,
        &dir.path().join("state"),
        &log,
        &["--app-config", settings.to_str().unwrap()],
    );
    let letters = common::read_committed(
        &topic("dead-letter"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(90),
    );
    // Once the refused update is behind it, both users trigger the campaign.
    common::produce(&topic("events"), [ping("u2", now + 3), ping("u1", now + 4)]);
    let sends =
        common::read_committed(&topic("push"), 2, Duration::from_secs(2), Duration::from_secs(60));
    common::stop_gracefully(engine);

    let registry = SchemaRegistry::builtin();
    let users: BTreeSet<String> = sends
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect();
    assert_eq!(
        users,
        BTreeSet::from(["u1".to_string(), "u2".to_string()]),
        "both users are still served after the refused update\n{}",
        common::tail(&log, 30)
    );
    assert_eq!(letters.len(), 1, "{}", common::tail(&log, 30));
    let letter: DeadLetter = registry.decode(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(letter.source_topic, topic("profiles"));
    assert_eq!((letter.source_partition, letter.source_offset), (0, 1), "the second update");
    assert!(
        letter.reason.contains("over the limit of 1000000 bytes (message.max.bytes)"),
        "{}",
        letter.reason
    );
}
