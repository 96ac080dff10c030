//! The driver of the live tests of campaigns spread over shards (`sharded_live.rs`,
//! `sharded_split_live.rs`, `sharded_caps_live.rs`): a deployment's topics under a prefix,
//! `herald campaign apply`, engine instances on their own state, app events, the commands sent.
//! Included by path beside `common`: `mod common; #[path = "common/sharded.rs"] mod sharded;`.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use herald_engine::model::{
    AppEvent, CampaignLifecycleEvent, CampaignStats, Platform, Record, SchemaRegistry, SendCommand,
};

use crate::common::{self, KillOnDrop};

/// The deployment's topics (4 user partitions, `flow` campaign-flow partitions), named by
/// `topic`.
pub fn create_topics(topic: &dyn Fn(&str) -> String, flow: i32) {
    common::create_topics(&[
        (&topic("events"), 4),
        (&topic("profiles"), 4),
        (&topic("receipts"), 4),
        (&topic("send-gate"), 4),
        (&topic("campaigns"), 1),
        (&topic("segments"), 1),
        (&topic("campaign-flow"), flow),
        (&topic("app-throttle"), 1),
        (&topic("push"), 2),
        (&topic("stats"), 1),
        (&topic("campaign-events"), 1),
        (&topic("dead-letter"), 1),
    ]);
}

/// A deployment of its own: a unique topic prefix (`<tag>-…-`) and application id
/// (`<tag>-app-…`), its topics created ([`create_topics`], `flow` campaign-flow partitions),
/// and a working directory.
pub fn deployment(tag: &str, flow: i32) -> (String, String, tempfile::TempDir) {
    let prefix = format!("{}-", common::unique(tag));
    let app_id = common::unique(&format!("{tag}-app"));
    create_topics(&|name: &str| format!("{prefix}herald.{name}"), flow);
    (prefix, app_id, tempfile::tempdir().unwrap())
}

/// `herald campaign apply` of `yaml` (written to `dir/name`) to the topic `campaigns`, which
/// must succeed.
pub fn apply(dir: &Path, campaigns: &str, name: &str, yaml: &str) {
    let out = try_apply(dir, campaigns, name, yaml);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
}

/// `herald campaign apply` of `yaml` (written to `dir/name`) to the topic `campaigns`.
pub fn try_apply(dir: &Path, campaigns: &str, name: &str, yaml: &str) -> std::process::Output {
    let file = dir.join(name);
    std::fs::write(&file, yaml).unwrap();
    herald(&["campaign", "apply", "--topic", campaigns, file.to_str().unwrap()])
}

/// Runs the `herald` binary against the test broker.
pub fn herald(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .unwrap()
}

/// Engine instance `instance` on the deployment's topics, on its own state under `dir`, with
/// `extra` arguments (killed on drop).
pub fn spawn_instance_with(
    prefix: &str,
    app_id: &str,
    dir: &Path,
    log: &Path,
    instance: &str,
    extra: &[&str],
) -> KillOnDrop {
    let state = dir.join(format!("state-{instance}"));
    KillOnDrop::new(common::spawn_engine_instance(prefix, app_id, instance, &state, log, extra))
}

/// Engine instance `instance` on the deployment's topics, on its own state under `dir` (killed
/// on drop).
pub fn spawn_instance(
    prefix: &str,
    app_id: &str,
    dir: &Path,
    log: &Path,
    instance: &str,
) -> KillOnDrop {
    spawn_instance_with(prefix, app_id, dir, log, instance, &[])
}

/// Engine instances `a` and `b` on the deployment's topics, each on its own state under `dir`
/// with `extra` arguments (killed on drop), once they have read the `users` profiles.
pub fn spawn_two_with(
    prefix: &str,
    app_id: &str,
    dir: &Path,
    log: &Path,
    extra: &[&str],
    users: usize,
) -> (KillOnDrop, KillOnDrop) {
    let a = spawn_instance_with(prefix, app_id, dir, log, "a", extra);
    let b = spawn_instance_with(prefix, app_id, dir, log, "b", extra);
    common::wait_for_offsets(&format!("{app_id}-profiles-changelog"), users as i64, log);
    (a, b)
}

/// [`spawn_two_with`] without extra arguments.
pub fn spawn_two(
    prefix: &str,
    app_id: &str,
    dir: &Path,
    log: &Path,
    users: usize,
) -> (KillOnDrop, KillOnDrop) {
    spawn_two_with(prefix, app_id, dir, log, &[], users)
}

/// One engine instance on the deployment's topics (killed on drop).
pub fn spawn_one(prefix: &str, app_id: &str, dir: &Path, log: &Path) -> KillOnDrop {
    spawn_instance(prefix, app_id, dir, log, "a")
}

/// Users `u<i>` of `users`, each with an Android device, now, on `topic` (the profiles).
pub fn profiles(topic: &str, users: std::ops::Range<usize>) {
    let now = common::now_ms();
    let profile = |i: usize| common::profile(&format!("u{i}"), Platform::Android, now);
    common::produce(topic, users.map(profile));
}

/// `name` events of `users`, one each, now, keyed by user.
pub fn events(name: &str, users: impl Iterator<Item = String>) -> Vec<(String, Vec<u8>)> {
    let registry = SchemaRegistry::builtin();
    users
        .map(|user| {
            let event = AppEvent {
                event_id: format!("{name}-{user}"),
                app_id: "shop".into(),
                user_id: user.clone(),
                name: name.into(),
                timestamp_ms: common::now_ms(),
                properties: Default::default(),
                sdk_version: None,
            };
            (user, registry.encode(&event).unwrap())
        })
        .collect()
}

/// The records on `topic` as [`common::read_committed`] reads them (`expected`, `settle`,
/// `limit`), decoded.
pub fn decoded<T: Record>(
    topic: &str,
    expected: usize,
    settle: Duration,
    limit: Duration,
) -> Vec<T> {
    let registry = SchemaRegistry::builtin();
    common::read_committed(topic, expected, settle, limit)
        .iter()
        .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// The send commands on `topic` so far (at least `at_least`, or what came within a minute),
/// decoded.
pub fn commands(topic: &str, at_least: usize) -> Vec<SendCommand> {
    decoded(topic, at_least, Duration::from_secs(2), Duration::from_secs(60))
}

/// The lifecycle events on `topic` (at least `at_least`, or what came within `limit`), decoded.
pub fn lifecycle(topic: &str, at_least: usize, limit: Duration) -> Vec<CampaignLifecycleEvent> {
    decoded(topic, at_least, Duration::from_secs(2), limit)
}

/// Commands per variant.
pub fn per_variant(commands: &[SendCommand]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for command in commands {
        *counts.entry(command.variant_id.as_str()).or_default() += 1;
    }
    counts
}

/// The latest stats snapshot on `topic` (merged from the shards) once it counts `sent` sends,
/// or the latest after 30 s.
pub fn stats_once_sent(topic: &str, sent: usize) -> Option<CampaignStats> {
    let registry = SchemaRegistry::builtin();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let latest =
            common::read_committed(topic, 1, Duration::from_millis(500), Duration::from_secs(10))
                .iter()
                .rev()
                .find_map(|r| registry.decode::<CampaignStats>(r.value.as_deref()?).ok());
        let counted = latest.as_ref().map_or(0, |s| s.variants.iter().map(|v| v.sent).sum::<i64>());
        if counted == sent as i64 || Instant::now() > deadline {
            return latest;
        }
    }
}
