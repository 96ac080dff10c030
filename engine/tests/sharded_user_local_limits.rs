//! Scheduled campaigns sent at each user's local time (`timezone: user`) in alternation, with a
//! split or an A/B test, and a total, daily or per-run limit, spread over shards (issue 13,
//! brief s28/UL; "Split proportions and alternation" in `docs/architecture.md`), on the replay
//! driver: the counts are exactly one task's (which users, which variants, `LIMIT_REACHED` and
//! `RUN_FINISHED` once), read from what a user checks (`sends.jsonl`, the lifecycle events).

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::BTreeMap;

use serde_json::Value;
use sharded::*;

const ALTERNATE_3: &str = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n    - { id: C, title: t, body: c }";

/// [`user_local`] with `limits` YAML.
fn limited(id: &str, what: &str, limits: &str, options: &str) -> String {
    format!("{}limits: {limits}\n", user_local(id, what, options))
}

/// Each user sent to with the variant (one command each).
fn sent(outcome: &Outcome) -> BTreeMap<String, String> {
    outcome.variants()
}

/// `(kind, details)` of the lifecycle events, without the run's shard count.
fn events(outcome: &Outcome) -> Vec<(String, Value)> {
    let mut events = outcome.lines("campaign-events.jsonl");
    for event in &mut events {
        event["details"].as_object_mut().unwrap().remove("shards");
    }
    events.iter().map(|e| (e["kind"].as_str().unwrap().to_string(), e["details"].clone())).collect()
}

const SPLIT_70_30: &str =
    "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  split: [70, 30]";

/// Users per zone (`a`: UTC+14, sent at the release; `b`: UTC; `c`: UTC−10) among `users`.
fn zones(users: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut zones = BTreeMap::new();
    for user in users.keys() {
        *zones.entry(user[..1].to_string()).or_default() += 1;
    }
    zones
}

/// The kinds of the lifecycle events with their `sent`.
fn kinds(events: &[(String, Value)]) -> Vec<(String, String)> {
    let sent = |d: &Value| d["sent"].as_str().unwrap_or_default().to_string();
    events.iter().map(|(kind, details)| (kind.clone(), sent(details))).collect()
}

/// What one task and 8 shards send of `what` with `limits` to `per_zone` users in each of the
/// three timezones: (one task, 8 shards).
fn both(what: &str, limits: &str, per_zone: usize) -> (Outcome, Outcome) {
    let lines = three_timezones(per_zone);
    let sharded = limited("t", what, limits, ", shards: 8");
    assert_eq!(spread(&sharded), 8, "spread over its 8 shards");
    (Outcome::replay(&limited("t", what, limits, ""), &lines), Outcome::replay(&sharded, &lines))
}

/// The events one task announces for a total of `total` reached after a run of `at_release`:
/// `RUN_STARTED`, `RUN_FINISHED` (the users at the release), `LIMIT_REACHED` and `COMPLETED`.
fn limit_reached(at_release: usize, total: usize) -> Vec<(String, String)> {
    let (at_release, total) = (at_release.to_string(), total.to_string());
    [("RUN_STARTED", ""), ("RUN_FINISHED", &at_release), ("LIMIT_REACHED", &total)]
        .into_iter()
        .chain([("COMPLETED", total.as_str())])
        .map(|(kind, sent)| (kind.to_string(), sent.to_string()))
        .collect()
}

/// Alternation of 3 with `timezone: user` and a total of 100 over 8 shards, 40 users in each of
/// UTC+14, UTC and UTC−10: the 40 at the release and the 60 next to come at their local time
/// (every UTC user, 20 of UTC−10) as one task, 34/33/33 as one task's round robin over 100,
/// `LIMIT_REACHED` and `COMPLETED` once at 100, `RUN_FINISHED` once, every shard sending. On
/// the code before, the campaign ran on its home alone.
#[test]
fn a_user_local_alternation_with_a_total_of_100_over_8_shards_sends_one_tasks_34_33_33() {
    let (one, sharded) = both(ALTERNATE_3, "{ total: 100 }", 40);
    let expected = counted(&[("A", 34), ("B", 33), ("C", 33)]);
    assert_eq!(one.counts(), expected, "one task");
    let zoned = counted(&[("a", 40), ("b", 40), ("c", 20)]);
    assert_eq!(zones(&one.variants()), zoned, "one task: the first 100 to come");
    assert_eq!(kinds(&events(&one)), limit_reached(40, 100), "one task");

    let sent = sent(&sharded);
    assert_eq!(zones(&sent), zoned, "the first 100 to come, each once");
    let users = |sent: &BTreeMap<String, String>| sent.keys().cloned().collect::<Vec<_>>();
    assert_eq!(users(&sent), users(&one.variants()), "the same users as one task");
    assert_eq!(sharded.counts(), expected, "one task's alternation over 100 sends");
    assert_eq!(sharded.stats_sent("t"), expected, "stats merged from the shards");
    assert_eq!(kinds(&events(&sharded)), limit_reached(40, 100), "each once");
    let shards = sending_shards(&sent, |user| herald_engine::campaign::shards::of_user(user, 8));
    assert_eq!(shards.len(), 8, "every shard sending");
}

/// A split 70/30 with `timezone: user` and a total of 200 over 8 shards, 100 users per zone:
/// 140/60 as one task's round robin over 200, the 100 at the release and 100 UTC users.
#[test]
fn a_user_local_split_with_a_total_of_200_over_8_shards_sends_140_and_60() {
    let (one, sharded) = both(SPLIT_70_30, "{ total: 200 }", 100);
    let expected = counted(&[("A", 140), ("B", 60)]);
    assert_eq!(one.counts(), expected, "one task");
    assert_eq!(sharded.counts(), expected, "one task's split over 200 sends");
    assert_eq!(zones(&sent(&sharded)), zones(&one.variants()), "as one task: a and b users");
    assert_eq!(kinds(&events(&sharded)), limit_reached(100, 200));
}

/// One message with `timezone: user` and a total of 100 over 8 shards (spread on the code
/// before too): the users who come after the release are sent within the total, as by one task
/// (100 users, `LIMIT_REACHED` and `COMPLETED` once). On the code before they were refused
/// `run_limit`: 40 sent, the limit never reached.
#[test]
fn a_user_local_message_with_a_total_over_8_shards_sends_up_to_the_total() {
    let (one, sharded) = both("{ title: t, body: b }", "{ total: 100 }", 40);
    let zoned = counted(&[("a", 40), ("b", 40), ("c", 20)]);
    assert_eq!(zones(&one.variants()), zoned, "one task");
    assert_eq!(zones(&sent(&sharded)), zoned, "the first 100 to come, each once");
    assert_eq!(kinds(&events(&sharded)), kinds(&events(&one)), "each once, as one task");
}
