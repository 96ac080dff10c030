//! Calendar schedules through the live engine: a recurrence never runs first for a time before
//! the campaign existed, and a run missed while the engine was down follows its catch-up policy
//! (sent once, late, within the grace; skipped beyond it).

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use herald_engine::model::{
    scheduled_run_time, CampaignLifecycleEvent, LifecycleKind, Platform, SchemaRegistry,
    SendCommand,
};

const USERS: usize = 6;

/// Topics of one engine deployment (a unique prefix), deleted when dropped.
struct Topics {
    prefix: String,
}

impl Topics {
    fn new(name: &str) -> Self {
        let topics = Self { prefix: format!("{}-", common::unique(name)) };
        let partitions = [
            ("events", 2),
            ("profiles", 2),
            ("receipts", 2),
            ("send-gate", 2),
            ("campaigns", 1),
            ("campaign-flow", 2),
            ("app-throttle", 1),
            ("push", 2),
            ("stats", 1),
            ("campaign-events", 1),
            ("dead-letter", 1),
            ("segments", 1),
        ];
        let named: Vec<(String, i32)> =
            partitions.iter().map(|(name, n)| (topics.topic(name), *n)).collect();
        let named: Vec<(&str, i32)> = named.iter().map(|(name, n)| (name.as_str(), *n)).collect();
        common::create_topics(&named);
        topics
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        common::delete_topics_starting_with(&[&self.prefix]);
    }
}

/// Publishes a campaign definition with `herald campaign apply`.
fn apply(topics: &Topics, dir: &Path, id: &str, schedule: &str) {
    let yaml = format!(
        "id: {id}\napp: shop\nname: {id}\nwhen:\n  schedule: {schedule}\nwhat: {{ title: t, body: b }}\noptions: {{ ignore_global_caps: true }}\n"
    );
    let file = dir.join(format!("{id}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["campaign", "apply", "--topic", &topics.topic("campaigns")])
        .arg(&file)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// A daily schedule at the UTC time of day of `at_ms` (to the second), with `extra` fields.
fn daily_at(at_ms: i64, extra: &str) -> String {
    let time = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().format("%H:%M:%S");
    format!("{{ repeat: daily, time: \"{time}\", timezone: UTC{extra} }}")
}

#[test]
fn a_recurrence_never_runs_first_in_the_past_and_missed_runs_follow_the_catch_up_policy() {
    let topics = Topics::new("timing");
    let app_id = common::unique("timing-app");
    let dir = tempfile::tempdir().unwrap();
    let (state, log): (PathBuf, PathBuf) = (dir.path().join("state"), dir.path().join("log"));
    let runs_changelog = format!("{app_id}-runs-changelog");
    let now = common::now_ms();
    // Today's occurrence is five minutes old when the campaign is defined: it is not sent.
    apply(&topics, dir.path(), "past", &daily_at(now - 5 * 60_000, ""));
    common::produce(
        &topics.topic("profiles"),
        (0..USERS).map(|i| common::profile(&format!("u{i}"), Platform::Android, now)),
    );
    let engine =
        common::KillOnDrop::new(common::spawn_engine(&topics.prefix, &app_id, &state, &log));
    // Each of the 2 user tasks saw `past` (and recorded its latest occurrence as skipped).
    common::wait_for_offsets(&runs_changelog, 2, &log);

    // Two campaigns due shortly, seen by both tasks, then the engine is down at their time.
    let due = common::now_ms() + 8_000;
    apply(&topics, dir.path(), "within-grace", &daily_at(due, ", grace: 1h"));
    apply(&topics, dir.path(), "beyond-grace", &daily_at(due, ", grace: 1s"));
    common::wait_for_offsets(&runs_changelog, 6, &log);
    let mut engine = engine;
    assert!(common::now_ms() < due - 1_000, "the engine saw the campaigns too late for the test");
    common::stop_gracefully(engine.take());
    // The engine restarts two seconds after the run time (the 1 s grace has passed).
    while common::now_ms() < due - due % 1_000 + 2_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let engine =
        common::KillOnDrop::new(common::spawn_engine(&topics.prefix, &app_id, &state, &log));

    let registry = SchemaRegistry::builtin();
    let sends: Vec<SendCommand> = common::read_committed(
        &topics.topic("push"),
        USERS,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .iter()
    .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
    .collect();
    let events: Vec<CampaignLifecycleEvent> = common::read_committed(
        &topics.topic("campaign-events"),
        2,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .iter()
    .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
    .collect();
    drop(engine);

    let sent: BTreeSet<(String, String)> =
        sends.iter().map(|s| (s.campaign_id.clone(), s.user_id.clone())).collect();
    let expected: BTreeSet<(String, String)> =
        (0..USERS).map(|i| ("within-grace".to_string(), format!("u{i}"))).collect();
    assert_eq!(sent, expected, "{}", common::tail(&log, 30));
    assert_eq!(sends.len(), USERS, "one send per user");
    let started: Vec<(&str, LifecycleKind)> =
        events.iter().map(|e| (e.campaign_id.as_str(), e.kind)).collect();
    assert_eq!(
        started,
        [("within-grace", LifecycleKind::RunStarted), ("within-grace", LifecycleKind::RunFinished)]
    );
    // The run is the occurrence it missed, sent late, not one at the restart.
    let run_id = &events[0].details["run_id"];
    assert_eq!(scheduled_run_time(run_id), Some(due / 1_000 * 1_000));
}
