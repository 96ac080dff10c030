//! Bad input against the real broker: `campaign apply` with one invalid file among several (or
//! two files of one campaign) publishes nothing; a click without `campaign_id` and an event timed
//! `i64::MIN` go to the dead-letter topic with their offsets and reasons while the engine goes on
//! sending.

mod common;

use std::{path::Path, process::Command, time::Duration};

use herald_engine::model::{
    AppEvent, CampaignEnvelope, DeadLetter, Device, Platform, ProfileUpdate, PropertyValue,
    SchemaRegistry, SendCommand,
};

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap()
}

fn apply(topic: &str, files: &[&Path]) -> std::process::Output {
    let mut args = vec!["campaign", "apply", "--topic", topic];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    herald(&args)
}

fn campaign(id: &str, within: &str) -> String {
    format!(
        "id: {id}\napp: shop\nname: n\nwhen: {{ event: Added To Cart, unless: {{ event: Charged, within: {within} }} }}\nwhat: {{ title: t, body: b }}\n"
    )
}

#[test]
fn campaign_apply_with_one_invalid_file_among_three_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("{}-herald.campaigns", common::unique("apply"));
    common::create_topics(&[(&topic, 1)]);
    let files: Vec<_> = [("a", "10m"), ("b", "9999999999999d"), ("c", "1h")]
        .iter()
        .map(|(id, within)| {
            let path = dir.path().join(format!("{id}.yaml"));
            std::fs::write(&path, campaign(id, within)).unwrap();
            path
        })
        .collect();

    let refused = apply(&topic, &files.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("when.unless.within: duration \"9999999999999d\" is longer"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing published"));

    // Two files defining the same campaign are refused the same way.
    let again = dir.path().join("a-again.yaml");
    std::fs::write(&again, campaign("a", "5m")).unwrap();
    let refused = apply(&topic, &[&files[0], &files[2], &again]);
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("campaign a is already defined in"), "{stdout}");

    // The valid files alone are published: the topic shows exactly them, so nothing of the
    // refused apply was there before.
    let applied = apply(&topic, &[&files[0], &files[2]]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));
    let published: Vec<String> =
        common::read_committed(&topic, 2, Duration::from_secs(2), Duration::from_secs(30))
            .iter()
            .map(|r| {
                let envelope: CampaignEnvelope =
                    SchemaRegistry::builtin().decode(r.value.as_deref().unwrap()).unwrap();
                envelope.campaign_id
            })
            .collect();
    assert_eq!(published, ["a", "c"]);
}

#[test]
fn a_click_without_campaign_id_and_an_event_timed_i64_min_are_dead_letters_and_sends_go_on() {
    let prefix = format!("{}-", common::unique("hostile"));
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let partitioned = common::ENGINE_TOPICS.map(topic);
    common::create_topics(&partitioned.iter().map(|t| (t.as_str(), 1)).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ping.yaml");
    std::fs::write(
        &file,
        "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n",
    )
    .unwrap();
    let applied = apply(&topic("campaigns"), &[&file]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));

    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let profile = ProfileUpdate {
        app_id: "shop".into(),
        user_id: "u1".into(),
        timestamp_ms: now - 1_000,
        set: Default::default(),
        unset: vec![],
        devices_added: vec![Device {
            device_id: "d1".into(),
            platform: Platform::Android,
            token: "tok-u1".into(),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        tokens_removed: vec![],
    };
    common::produce(&topic("profiles"), [("u1".to_string(), registry.encode(&profile).unwrap())]);
    let event = |id: &str, name: &str, timestamp_ms: i64| {
        let event = AppEvent {
            event_id: id.into(),
            app_id: "shop".into(),
            user_id: "u1".into(),
            name: name.into(),
            timestamp_ms,
            properties: [("message_id".to_string(), PropertyValue::String("m1".into()))].into(),
            sdk_version: None,
        };
        ("u1".to_string(), registry.encode(&event).unwrap())
    };
    common::produce(
        &topic("events"),
        [
            event("click", "Notification Clicked", now),
            event("ancient", "Ping", i64::MIN),
            event("ping", "Ping", now + 1),
        ],
    );
    let log = dir.path().join("engine.log");
    let engine = common::spawn_engine(
        &prefix,
        &common::unique("hostile-app"),
        &dir.path().join("state"),
        &log,
    );
    let letters = common::read_committed(
        &topic("dead-letter"),
        2,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    let sends =
        common::read_committed(&topic("push"), 1, Duration::from_secs(2), Duration::from_secs(60));
    common::stop_gracefully(engine);

    let letters: Vec<(i64, String)> = letters
        .iter()
        .map(|r| {
            let letter: DeadLetter = registry.decode(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(letter.source_topic, topic("events"));
            (letter.source_offset, letter.reason)
        })
        .collect();
    assert_eq!(letters.len(), 2, "{letters:?}\n{}", common::tail(&log, 20));
    assert_eq!(letters[0].0, 0, "the click");
    assert!(
        letters[0].1.contains("Notification Clicked event without a campaign_id property"),
        "{}",
        letters[0].1
    );
    assert_eq!(letters[1].0, 1, "the event of i64::MIN");
    assert!(
        letters[1].1.contains("timestamp_ms: -9223372036854775808 is outside"),
        "{}",
        letters[1].1
    );
    let sent: Vec<String> = sends
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect();
    assert_eq!(sent, ["u1"], "the valid Ping after them was sent\n{}", common::tail(&log, 20));
}
