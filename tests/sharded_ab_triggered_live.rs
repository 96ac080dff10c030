//! A triggered A/B test spread over 8 shards, live against the real broker on two engine
//! instances, one of them killed (SIGKILL) while the test is running and restarted on its own
//! state (brief s27/TAB; "A/B test audience" in `docs/architecture.md`): the test's audience is
//! exact, the winner is decided once at home and every later user, waiting at their shard, gets
//! it.

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::wait_for_offsets;
use herald_engine::model::{CampaignLifecycleEvent, LifecycleKind, SendCommand};
use sharded::{
    apply, decoded, deployment, events, lifecycle, per_variant, profiles, spawn_instance, spawn_two,
};

const USERS: usize = 1_200;
/// Users who ping before the kill.
const FIRST: usize = 600;

/// A test of 300 users, A, B and C, on `Ping`, over 8 shards; the winner 20 s after the test.
const CAMPAIGN: &str = "id: tab\napp: shop\nname: Tab\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { id: A, title: a, body: a }\n    - { id: B, title: b, body: b }\n    - { id: C, title: c, body: c }\n  ab: { test_audience: 300, evaluate_after: 20s }\noptions: { ignore_global_caps: true, shards: 8 }\n";

#[test]
fn a_triggered_test_of_300_over_8_shards_stays_exact_when_an_instance_is_killed_mid_test() {
    let (prefix, app_id, dir) = deployment("it-tab", 8);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    apply(dir.path(), &topic("campaigns"), "tab.yaml", CAMPAIGN);
    profiles(&topic("profiles"), 0..USERS);
    let log = dir.path().join("engines.log");
    let (mut a, mut b) = spawn_two(&prefix, &app_id, dir.path(), &log, USERS);
    let users = |range: std::ops::Range<usize>| range.map(|i| format!("u{i}"));
    // Half ping; once the test's first sends leave, one instance is killed while the rest ping,
    // then restarted on its own state.
    common::produce(&topic("events"), events("Ping", users(0..FIRST)));
    wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(b.take());
    common::produce(&topic("events"), events("Ping", users(FIRST..USERS)));
    b = spawn_instance(&prefix, &app_id, dir.path(), &log, "b");
    let commands: Vec<SendCommand> =
        decoded(&topic("push"), USERS, Duration::from_secs(10), Duration::from_secs(180));
    let lifecycle = lifecycle(&topic("campaign-events"), 1, Duration::from_secs(30));
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());
    common::delete_topics_starting_with(&[&prefix, &app_id]);

    let sent: BTreeSet<&str> = commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(commands.len(), USERS, "one command per user\n{}", common::tail(&log, 30));
    assert_eq!(sent, users(0..USERS).collect::<BTreeSet<_>>().iter().map(String::as_str).collect());
    let declared: Vec<&CampaignLifecycleEvent> =
        lifecycle.iter().filter(|e| e.kind == LifecycleKind::WinnerDeclared).collect();
    assert_eq!(declared.len(), 1, "one decision: {lifecycle:?}");
    let details = &declared[0].details;
    assert_eq!(details["winner"], "A", "no clicks: the first variant");
    let tested = [&details["sent_A"], &details["sent_B"], &details["sent_C"]];
    assert_eq!(tested, ["100", "100", "100"], "the test alone, exactly");
    let expected = BTreeMap::from([("A", 1_000), ("B", 100), ("C", 100)]);
    assert_eq!(per_variant(&commands), expected, "100 each tested, the other 900 the winner");
    // Which shards test depends on whose users ask first (a shard of the killed instance may
    // find the test full when it is back); every shard sends.
    let senders: BTreeSet<Option<&str>> = commands.iter().map(|c| c.place_key.as_deref()).collect();
    assert_eq!(senders.len(), 8, "sent by the 8 shard keys: {senders:?}");
}
