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
