//! Audiences live against the real broker: a saved segment edited mid-campaign changes who
//! qualifies from then on. And `herald campaign validate` against the history retention.

mod common;

use std::{path::Path, process::Command, time::Duration};

use herald_engine::model::{
    AppEvent, Platform, ProfileUpdate, PropertyValue, SchemaRegistry, SendCommand,
};

fn herald(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_string()
}

/// A profile of app `shop` in `state`, with one Android device.
fn profile(user: &str, state: &str, at: i64) -> (String, Vec<u8>) {
    let (key, bytes) = common::profile(user, Platform::Android, at);
    let mut update: ProfileUpdate = SchemaRegistry::builtin().decode(&bytes).unwrap();
    update.set.insert("state".into(), PropertyValue::String(state.into()));
    (key, SchemaRegistry::builtin().encode(&update).unwrap())
}

fn ping(user: &str, n: u32) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{user}-ping-{n}"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: "Ping".into(),
        timestamp_ms: common::now_ms(),
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

fn push_users(topic: &str, expected: usize) -> Vec<String> {
    let registry = SchemaRegistry::builtin();
    common::read_committed(topic, expected, Duration::from_millis(500), Duration::from_secs(60))
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect()
}

const CAMPAIGN: &str = "id: vip-ping\napp: shop\nname: Ping VIPs\nwho: { segment: vip }\n\
                        when: { event: Ping }\nwhat: { title: t, body: b }\n";

fn segment(state: &str) -> String {
    format!("id: vip\nname: VIPs\nwho: {{ property: state, equals: {state} }}\n")
}

#[test]
fn a_saved_segment_edited_mid_campaign_changes_who_qualifies_from_then_on() {
    let prefix = format!("{}-", common::unique("it-audience"));
    let app_id = common::unique("it-audience-app");
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // One user partition: events are handled in the order produced.
    common::create_topics(&[
        (&topic("events"), 1),
        (&topic("profiles"), 1),
        (&topic("receipts"), 1),
        (&topic("send-gate"), 1),
        (&topic("campaigns"), 1),
        (&topic("segments"), 1),
        (&topic("campaign-flow"), 1),
        (&topic("app-throttle"), 1),
        (&topic("push"), 1),
        (&topic("stats"), 1),
        (&topic("campaign-events"), 1),
        (&topic("dead-letter"), 1),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("engine.log");
    let segments = topic("segments");
    herald(&[
        "segment",
        "apply",
        "--topic",
        &segments,
        &write(dir.path(), "v1.yaml", &segment("CA")),
    ]);
    let campaign = write(dir.path(), "c.yaml", CAMPAIGN);
    herald(&["campaign", "apply", "--topic", &topic("campaigns"), &campaign]);
    let mut engine = common::KillOnDrop::new(common::spawn_engine(
        &prefix,
        &app_id,
        &dir.path().join("state"),
        &log,
    ));
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        [profile("ca", "CA", now), profile("ny", "NY", now), profile("ny2", "NY", now)],
    );
    common::produce(&topic("events"), [ping("ca", 1), ping("ny", 1)]);
    assert_eq!(push_users(&topic("push"), 1), ["ca"], "{}", common::tail(&log, 30));

    // The segment now means New York: from then on, ny qualifies and ca does not.
    herald(&[
        "segment",
        "apply",
        "--topic",
        &segments,
        &write(dir.path(), "v2.yaml", &segment("NY")),
    ]);
    let mut n = 2;
    while !push_users(&topic("push"), 1).contains(&"ny".to_string()) {
        assert!(n < 120, "ny never qualified\n{}", common::tail(&log, 30));
        common::produce(&topic("events"), [ping("ny", n)]);
        n += 1;
    }
    // ca's ping is handled before ny2's (one partition): once ny2 is sent, ca was not.
    let before = push_users(&topic("push"), 2).len();
    common::produce(&topic("events"), [ping("ca", 2), ping("ny2", 1)]);
    let mut sent = push_users(&topic("push"), before + 1);
    while !sent.contains(&"ny2".to_string()) {
        assert!(sent.len() <= before, "{sent:?}");
        sent = push_users(&topic("push"), before + 1);
    }
    assert_eq!(sent.iter().filter(|u| *u == "ca").count(), 1, "{sent:?}");

    // Deleting the segment in use is refused, naming the campaign.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["segment", "delete", "vip", "--topic", &segments])
        .args(["--campaigns-topic", &topic("campaigns")])
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vip-ping"), "{out:?}");

    common::stop_gracefully(engine.take());
    common::delete_topics_starting_with(&[&prefix, &app_id]);
}

#[test]
fn campaign_validate_refuses_a_look_back_beyond_the_configured_history() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = "id: c\napp: shop\nname: n\nwho: { did: Opened, in_last_days: 120 }\n\
                    when: { event: Ping }\nwhat: { title: t, body: b }\n";
    let file = write(dir.path(), "c.yaml", campaign);
    let validate = |config: &str| {
        let config = write(dir.path(), "settings.yaml", config);
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["campaign", "validate", "--app-config", &config, &file])
            .output()
            .unwrap()
    };
    let refused = validate("");
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains("who.in_last_days: looks back further than the 90 days"), "{text}");
    assert!(validate("history: { retention_days: 120 }").status.success());
}
