//! The last alternation and split kinds spread over shards (issue 13 item 1, brief s27/SPLIT2;
//! "Split proportions and alternation" in `docs/architecture.md`), on the replay driver: a
//! triggered campaign in alternation or with a split and no limit. The variant counts are
//! exactly those of the same campaign on one task, read from what a user checks
//! (`sends.jsonl`, the stats).

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::campaign::shards;
use serde_json::Value;
use sharded::*;

/// A triggered campaign on `Ping` sending `what` with `extra` YAML.
fn triggered(id: &str, what: &str, extra: &str) -> String {
    format!("id: {id}\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {what}\n{extra}")
}

/// `users` profiles, then each pings once, in bursts of 100 at one instant (the replay handles
/// each record's consequences before any timer: index grants and returns cross while
/// candidates wait).
fn pinging(users: usize) -> Vec<String> {
    pinging_with(users, profile)
}

/// [`pinging`], each user's profile by `profile_of`.
fn pinging_with(users: usize, profile_of: impl Fn(&str) -> String) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile_of(&format!("u{i}"))).collect();
    lines.extend((0..users).map(|i| event(&format!("u{i}"), 10 + i as i64 / 100, "Ping")));
    lines
}

const ALTERNATE_3: &str = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n    - { id: C, title: t, body: c }";

const SPLIT_70_30: &str =
    "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  split: [70, 30]";

/// Every command of a replay: (user, variant), in order.
fn sends(outcome: &Outcome) -> Vec<(String, String)> {
    let field = |s: &Value, name: &str| s[name].as_str().unwrap().to_string();
    let sends = outcome.lines("sends.jsonl");
    sends.iter().map(|s| (field(s, "user_id"), field(s, "variant_id"))).collect()
}

/// The users `u<from>..u<to>`.
fn users(from: usize, to: usize) -> BTreeSet<String> {
    (from..to).map(|i| format!("u{i}")).collect()
}

/// The shards (of `of`) that sent to the users of `variants`.
fn senders(variants: &BTreeMap<String, String>, of: u32) -> BTreeSet<u32> {
    sending_shards(variants, |user| shards::of_user(user, of))
}

/// Alternation of 3 over 8 shards, no limit, 301 triggers in bursts of 100 at one instant:
/// 101/100/100 as one task, u0..u300 each sent once, every shard sending, the stats equal to the
/// commands, and which user got which variant the same on a re-run.
#[test]
fn alternation_of_3_over_8_shards_without_a_limit_sends_101_100_100_from_every_shard() {
    let campaign = triggered("alt", ALTERNATE_3, "options: { shards: 8 }\n");
    assert_eq!(spread(&campaign), 8, "spread over its 8 shards");
    let lines = pinging(301);

    let outcome = Outcome::replay(&campaign, &lines);
    let expected = counted(&[("A", 101), ("B", 100), ("C", 100)]);
    let variants = outcome.variants(); // one command per user
    assert_eq!(variants.keys().cloned().collect::<BTreeSet<_>>(), users(0, 301));
    assert_eq!(outcome.counts(), expected, "one task's alternation over 301 sends");
    assert_eq!(outcome.stats_sent("alt"), expected, "stats merged from the shards");
    assert_eq!(senders(&variants, 8).len(), 8, "every shard sending");

    let again = Outcome::replay(&campaign, &lines);
    assert!(again.variants() == variants, "the same user gets the same variant");
    let one = triggered("alt", ALTERNATE_3, "");
    assert_eq!(spread(&one), 1);
    assert_eq!(Outcome::replay(&one, &lines).counts(), expected, "as on one task");
}

/// A split 70/30 over 8 shards, no limit, 1,000 triggers: exactly 700 and 300; users who ping
/// again later (u0..u49) keep their variant and take no index: still 700/300 over the 1,000
/// users, 1,050 commands, the stats counting every command.
#[test]
fn a_split_70_30_over_8_shards_without_a_limit_sends_700_and_300_and_repeat_users_keep_theirs() {
    let campaign = triggered("split", SPLIT_70_30, "options: { shards: 8 }\n");
    assert_eq!(spread(&campaign), 8);
    let mut lines = pinging(1_000);
    lines.extend((0..50).map(|i| event(&format!("u{i}"), 100, "Ping")));

    let outcome = Outcome::replay(&campaign, &lines);
    let sends = sends(&outcome);
    assert_eq!(sends.len(), 1_050, "one command per trigger");
    let first: BTreeMap<String, String> = sends[..1_000].iter().cloned().collect();
    assert_eq!(first.keys().cloned().collect::<BTreeSet<_>>(), users(0, 1_000));
    for (user, variant) in &sends[1_000..] {
        assert_eq!(Some(variant), first.get(user), "{user} pinged again: its variant, again");
    }
    let mut counts = BTreeMap::new();
    for variant in first.values() {
        *counts.entry(variant.clone()).or_default() += 1;
    }
    let expected = counted(&[("A", 700), ("B", 300)]);
    assert_eq!(counts, expected, "one task's split over the 1,000 users");
    assert_eq!(senders(&first, 8).len(), 8, "every shard sending");
    let mut stats = expected.clone();
    for (_, variant) in &sends[1_000..] {
        *stats.get_mut(variant).unwrap() += 1;
    }
    assert_eq!(outcome.stats_sent("split"), stats, "stats count every command");
}

/// Alternation of 3 over 8 shards, no limit; 30 of the 301 users (u0, u10, …, u290) have no
/// `first_name` for the template: a shard spends an index only on a user it sends to, and gives
/// back what no candidate of its used, which the home grants again first: the 271 sent are
/// exactly one task's alternation over 271 (91/90/90).
#[test]
fn an_index_whose_user_is_not_sent_is_spent_by_the_next_user_sent() {
    let what = "\n  variants:\n    - { id: A, title: \"Hi {{ profile.first_name }}\", body: a }\n    - { id: B, title: \"Hi {{ profile.first_name }}\", body: b }\n    - { id: C, title: \"Hi {{ profile.first_name }}\", body: c }";
    let campaign = triggered("named", what, "options: { shards: 8 }\n");
    assert_eq!(spread(&campaign), 8);
    let unnamed_users: BTreeSet<String> = (0..300).step_by(10).map(|i| format!("u{i}")).collect();
    let lines = pinging_with(301, |user| match unnamed_users.contains(user) {
        true => unnamed(user),
        false => profile(user),
    });
    let on: BTreeSet<u32> = unnamed_users.iter().map(|u| shards::of_user(u, 8)).collect();
    assert!(on.len() > 4, "users not sent on several shards: {on:?}");

    let outcome = Outcome::replay(&campaign, &lines);
    let sent: BTreeSet<String> = outcome.variants().into_keys().collect();
    assert_eq!(sent, users(0, 301).difference(&unnamed_users).cloned().collect());
    let expected = counted(&[("A", 91), ("B", 90), ("C", 90)]);
    assert_eq!(outcome.counts(), expected, "one task's alternation over the 271 sent");
    assert_eq!(outcome.stats_sent("named"), expected);
}

/// Each user sent to with the hour of the send (`2026-11-20T09`) and the variant, one command
/// each.
fn sent_at(outcome: &Outcome) -> BTreeMap<String, (String, String)> {
    let sends = outcome.lines("sends.jsonl");
    let field = |s: &Value, name: &str| s[name].as_str().unwrap().to_string();
    let hour = |s: &Value| at(ms_of(&field(s, "send_time")))[..13].to_string();
    let by_user: BTreeMap<String, (String, String)> =
        sends.iter().map(|s| (field(s, "user_id"), (hour(s), field(s, "variant_id")))).collect();
    assert_eq!(by_user.len(), sends.len(), "no user gets two commands");
    by_user
}

/// Users per variant of [`sent_at`].
fn per_variant(sent: &BTreeMap<String, (String, String)>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, variant) in sent.values() {
        *counts.entry(variant.clone()).or_default() += 1;
    }
    counts
}

/// A scheduled alternation of 3 with `timezone: user`, no limit, over 8 shards: 67 users in
/// each of UTC+14, UTC and UTC−10, each sent once at 09:00 in their own timezone (the UTC and
/// UTC−10 users after the run's release, on indices the home leases to their shards): 67/67/67
/// as one task, every shard sending.
#[test]
fn a_user_local_alternation_over_8_shards_sends_one_tasks_counts_at_each_users_nine() {
    let campaign = user_local("alt", ALTERNATE_3, ", shards: 8");
    assert_eq!(spread(&campaign), 8, "spread over its 8 shards");
    let lines = three_timezones(67);

    let sent = sent_at(&Outcome::replay(&campaign, &lines));
    assert_eq!(sent.len(), 201, "every user once");
    for (user, (hour, _)) in &sent {
        let nine = match &user[..1] {
            "a" => "2026-11-19T19",
            "b" => "2026-11-20T09",
            _ => "2026-11-20T19",
        };
        assert_eq!(hour, nine, "{user} at 09:00 local");
    }
    let expected = counted(&[("A", 67), ("B", 67), ("C", 67)]);
    assert_eq!(per_variant(&sent), expected, "one task's alternation over 201 sends");
    let by_user: BTreeMap<String, String> =
        sent.iter().map(|(user, (_, variant))| (user.clone(), variant.clone())).collect();
    assert_eq!(senders(&by_user, 8).len(), 8, "every shard sending");
    let one = user_local("alt", ALTERNATE_3, "");
    assert_eq!(spread(&one), 1);
    assert_eq!(per_variant(&sent_at(&Outcome::replay(&one, &lines))), expected, "as on one task");
}

/// The same with a split 70/30 and 100 users per timezone: 210/90, one task's round robin
/// over 300.
#[test]
fn a_user_local_split_over_8_shards_sends_210_and_90() {
    let campaign = user_local("split", SPLIT_70_30, ", shards: 8");
    assert_eq!(spread(&campaign), 8);
    let outcome = Outcome::replay(&campaign, &three_timezones(100));
    let sent = sent_at(&outcome);
    assert_eq!(sent.len(), 300, "every user once");
    let expected = counted(&[("A", 210), ("B", 90)]);
    assert_eq!(per_variant(&sent), expected, "one task's split over 300 sends");
    assert_eq!(outcome.stats_sent("split"), expected, "stats merged from the shards");
}

/// Sends as (hour, user, variant), and lifecycle events as (kind, details).
type Happened = (Vec<(String, String, String)>, Vec<(String, Value)>);

/// What a user checks of a replay: each send as (hour, user, variant) in order of hour and user,
/// and the lifecycle events as (kind, details).
fn what_happened(outcome: &Outcome) -> Happened {
    let mut sends: Vec<(String, String, String)> =
        sent_at(outcome).into_iter().map(|(user, (hour, variant))| (hour, user, variant)).collect();
    sends.sort();
    let mut events = outcome.lines("campaign-events.jsonl");
    for event in &mut events {
        event["details"].as_object_mut().unwrap().remove("shards"); // RUN_STARTED's over shards
    }
    let events =
        events.iter().map(|e| (e["kind"].as_str().unwrap().to_string(), e["details"].clone()));
    (sends, events.collect())
}

/// A scheduled A/B test with `timezone: user` over 8 shards: 60 users in UTC+14, UTC and
/// UTC−10, a test of 20% (12 users by rank, 6 per variant) whose users are sent at 09:00 in
/// their own timezone, the winner an hour after the last of them: exactly what one task sends
/// (the same test users with the same variants at the same hours, the winner, then the
/// remainder), `WINNER_DECLARED` and `RUN_FINISHED` once.
#[test]
fn a_user_local_ab_test_over_8_shards_sends_what_one_task_sends_and_finishes_once() {
    let ab = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  ab: { test_audience: \"20%\", evaluate_after: 1h }";
    let campaign = user_local("test", ab, ", shards: 8");
    assert_eq!(spread(&campaign), 8, "spread over its 8 shards");
    let lines = three_timezones(20);

    let one = what_happened(&Outcome::replay(&user_local("test", ab, ""), &lines));
    let (sends, events) = what_happened(&Outcome::replay(&campaign, &lines));
    let kinds: Vec<&str> = one.1.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["RUN_STARTED", "WINNER_DECLARED", "RUN_FINISHED"], "one task");
    assert_eq!(one.0.len(), 60, "one task sends every user once");
    let tested = |sends: &[(String, String, String)]| {
        sends.iter().filter(|(hour, ..)| hour.as_str() < "2026-11-20T20").count()
    };
    assert!(tested(&one.0) >= 12, "the test users before the winner at 20:00Z");
    assert_eq!(sends, one.0, "the same users, variants and hours as one task");
    assert_eq!(events, one.1, "the same winner and RUN_FINISHED, once");
}

/// The same test, a test user (b1, sent variant A at 09:00Z by one task) opting out of push at
/// 05:00Z: one task passes its place and variant to the next-ranked user still to come (c2, A
/// at 19:00Z). Over shards that user is on another shard: the place goes there with its test
/// variant (through the home), so c2 is sent A at 19:00Z and the test keeps its 12 users, as
/// one task. On the code before, the place went without its variant: c2 was sent the winner at
/// 20:00Z with the remainder and the test had 11 users (`WINNER_DECLARED` sent_A 5).
#[test]
fn a_user_local_ab_test_user_who_opts_out_over_8_shards() {
    let ab = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  ab: { test_audience: \"20%\", evaluate_after: 1h }";
    let mut lines = three_timezones(20);
    let opts_out =
        r#"{"type":"profile","user":"b1","ts":"2026-11-20T05:00:00Z","set":{"push_opt_out":true}}"#;
    lines.insert(60, opts_out.to_string());

    let one = what_happened(&Outcome::replay(&user_local("test", ab, ""), &lines));
    assert!(one.0.iter().all(|(_, user, _)| user != "b1"));
    let sharded = what_happened(&Outcome::replay(&user_local("test", ab, ", shards: 8"), &lines));
    assert_eq!(sharded.0, one.0, "the same users, variants and hours as one task");
    assert_eq!(sharded.1, one.1, "the same winner and RUN_FINISHED, once");
}
