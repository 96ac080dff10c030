//! The A/B winner of a campaign spread over shards is decided on every shard's counters as of
//! the decision (`docs/architecture.md`, "Winner decision"), not on what each shard last
//! reported in its stats interval: replayed over 4 partitions with the live stats interval.

use herald_engine::{
    campaign::shards,
    model::{CampaignLifecycleEvent, LifecycleKind, SendCommand},
    pipeline::LIVE_STATS_INTERVAL_MS,
    runtime::replay::ReplayRecord,
};
use records::{define, events, profiles, replay, T0};
use sharded::click;

#[path = "replay_support/records.rs"]
mod records;
#[path = "replay_support/sharded.rs"]
mod sharded;

/// When the run starts.
const RUN_AT: i64 = T0 + 100_000;

/// A scheduled A/B test of A and B over 4 shards: half of 40 users in the test.
fn campaign() -> String {
    let at = chrono::DateTime::from_timestamp_millis(RUN_AT).unwrap().to_rfc3339();
    format!(
        "id: sab\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{at}\" }} }}\nwhat:\n  variants:\n    - {{ title: A, body: a }}\n    - {{ title: B, body: b }}\n  ab: {{ test_audience: \"50%\", evaluate_after: 1h }}\noptions: {{ shards: 4 }}\n"
    )
}

/// Three users of one shard (their clicks are counted by that shard alone).
fn users_of_one_shard() -> [String; 3] {
    let users: Vec<String> = (0..40)
        .map(|i| format!("u{i}"))
        .filter(|user| shards::of_user(user, 4) == shards::of_user("u0", 4))
        .take(3)
        .collect();
    users.try_into().expect("three of 40 users share u0's shard")
}

/// The users, the campaign, and an event just after the run's time (moving event time on).
fn input() -> Vec<ReplayRecord> {
    let mut input: Vec<ReplayRecord> = profiles(0, 40, T0).collect();
    input.push(define("sab", &campaign(), T0));
    input.extend(events("App Opened", "moves-time", 0, 1, RUN_AT + 1_000));
    input
}

/// The lifecycle events of a replay of `input` with the live stats interval.
fn announced(
    input: Vec<ReplayRecord>,
    until: i64,
) -> (Vec<SendCommand>, Vec<CampaignLifecycleEvent>) {
    replay(input, until, LIVE_STATS_INTERVAL_MS)
}

fn winner_declared(lifecycle: &[CampaignLifecycleEvent]) -> Vec<&CampaignLifecycleEvent> {
    lifecycle.iter().filter(|e| e.kind == LifecycleKind::WinnerDeclared).collect()
}

#[test]
fn clicks_a_shard_has_not_reported_yet_still_decide_the_winner() {
    // When the winner is decided without clicks: the evaluation's time.
    let until = RUN_AT + 3_600_000 + 600_000;
    let (_, probe) = announced(input(), until);
    let decided_at = winner_declared(&probe)[0].timestamp_ms;
    let [first, second, third] = users_of_one_shard();
    let mut input = input();
    // Just before the decision the shard counts one click for A, which it reports home at
    // once, then two for B within the same stats interval: its next report would leave after
    // the decision.
    input.push(click("sab", &first, "A", decided_at - 900));
    input.push(click("sab", &second, "B", decided_at - 100));
    input.push(click("sab", &third, "B", decided_at - 100));
    let (sends, lifecycle) = announced(input, until);

    let declared = winner_declared(&lifecycle);
    assert_eq!(declared.len(), 1, "one decision: {lifecycle:?}");
    assert_eq!(declared[0].timestamp_ms, decided_at, "decided at the evaluation's time");
    assert_eq!(declared[0].details["clicks_A"], "1");
    assert_eq!(declared[0].details["clicks_B"], "2", "the shard's last clicks count");
    assert_eq!(declared[0].details["winner"], "B");
    let rest: Vec<&str> = sends[20..].iter().map(|s| s.variant_id.as_str()).collect();
    assert_eq!(rest, ["B"; 20], "the 20 users after the test get B");
}
