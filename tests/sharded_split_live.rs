//! A scheduled split campaign spread over 8 shards, live against the real broker on two engine
//! instances, one of them killed (SIGKILL) mid-run and restarted: the variant counts are exactly
//! one task's round robin over the users sent (see "Split proportions and alternation" in
//! `docs/architecture.md`), read by user and by variant on the push topic and in the stats.

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::wait_for_offsets;
use herald_engine::{
    model::{CampaignLifecycleEvent, SendCommand},
    stage_campaign::ab::SplitDelivery,
};
use sharded::{
    apply, decoded, deployment, lifecycle, per_variant, profiles, spawn_instance, spawn_two,
    stats_once_sent,
};

const USERS: usize = 12_000;
const TOTAL: usize = 9_999;

/// A split 70/30 to everyone at `at_ms`, at most 9,999 users in all, over 8 shards.
fn campaign(at_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().to_rfc3339();
    format!(
        "id: split\napp: shop\nname: Split\nwhen: {{ schedule: {{ at: \"{at}\" }} }}\nwhat:\n  variants:\n    - {{ id: A, title: A, body: a }}\n    - {{ id: B, title: B, body: b }}\n  split: [70, 30]\nlimits: {{ total: {TOTAL}, safety: 50000 }}\noptions: {{ ignore_global_caps: true, shards: 8 }}\n"
    )
}

#[test]
fn a_split_70_30_over_8_shards_is_one_tasks_round_robin_when_an_instance_is_killed_mid_run() {
    let (prefix, app_id, dir) = deployment("it-split", 8);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // The run is set once the engines have read every profile: first a week out, then soon.
    let week = campaign(common::now_ms() + 7 * 86_400_000);
    apply(dir.path(), &topic("campaigns"), "week.yaml", &week);
    profiles(&topic("profiles"), 0..USERS);
    let log = dir.path().join("engines.log");
    let (mut a, mut b) = spawn_two(&prefix, &app_id, dir.path(), &log, USERS);
    apply(dir.path(), &topic("campaigns"), "soon.yaml", &campaign(common::now_ms() + 3_000));
    // Killed once the run has started sending, then restarted on its own state.
    wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(b.take());
    b = spawn_instance(&prefix, &app_id, dir.path(), &log, "b");
    let commands: Vec<SendCommand> =
        decoded(&topic("push"), TOTAL, Duration::from_secs(10), Duration::from_secs(240));
    let events: Vec<CampaignLifecycleEvent> =
        lifecycle(&topic("campaign-events"), 4, Duration::from_secs(60));
    // The stats snapshot merged from the shards, once it counts every send.
    let stats = stats_once_sent(&topic("stats"), TOTAL);
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());

    let users: BTreeSet<&str> = commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(commands.len(), TOTAL, "exactly the total limit\n{}", common::tail(&log, 30));
    assert_eq!(users.len(), TOTAL, "one command per user");
    let mut split = SplitDelivery::new(&[70, 30]);
    let mut expected: BTreeMap<&str, usize> = BTreeMap::from([("A", 0), ("B", 0)]);
    for _ in 0..TOTAL {
        *expected.get_mut(["A", "B"][split.next_variant()]).unwrap() += 1;
    }
    assert_eq!(per_variant(&commands), expected, "one task's round robin over the 9,999 sent");
    let shards: BTreeSet<u32> =
        commands.iter().map(|c| herald_engine::campaign::shards::of_user(&c.user_id, 8)).collect();
    assert_eq!(shards.len(), 8, "every shard sent its share");
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["RunStarted", "RunFinished", "LimitReached", "Completed"]);
    assert_eq!(events[0].details["shards"], "8");
    assert_eq!(events[1].details["sent"], TOTAL.to_string());
    let stats = stats.expect("a stats snapshot");
    let sent: BTreeMap<&str, usize> =
        stats.variants.iter().map(|v| (v.variant_id.as_str(), v.sent as usize)).collect();
    assert_eq!(sent, expected, "the stats merged from the shards equal the commands");

    common::delete_topics_starting_with(&[&prefix, &app_id]);
}
