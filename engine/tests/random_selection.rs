//! Random selection (issue 14 item 3) on the replay driver over 4 partitions: where a per-run
//! limit or an A/B test takes part of a run's audience, the users taken are one uniform random
//! sample of the whole audience, exact in count, the same on a re-run and whatever the shards.
//! (With `timezone: user`: `user_local_scenarios.rs`.)

mod replay_support;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::campaign::{sample, shards};
use serde_json::Value;

fn ts(second: i64) -> String {
    chrono::DateTime::from_timestamp(1_795_000_000 + second, 0).unwrap().to_rfc3339()
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

/// `users` profiles, then one event after the run time (moving event time past it).
fn audience(users: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile(&format!("u{i}"))).collect();
    lines.push(format!(
        r#"{{"type":"event","user":"u0","ts":"{}","name":"App Opened","props":{{}}}}"#,
        ts(200)
    ));
    lines
}

/// A campaign running once at second 100 for everyone with a device, with `extra` YAML.
fn scheduled(what: &str, extra: &str) -> String {
    format!(
        "id: sample\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {what}\n{extra}",
        ts(100)
    )
}

/// The sends of a replay over 4 partitions: (user, variant), in the order they were written.
fn sends(campaign: &str, lines: &[String]) -> Vec<(String, String)> {
    let dir = replay_support::replay(campaign, lines, 4);
    let text = |s: &Value, field: &str| s[field].as_str().unwrap().to_string();
    let sends: Vec<(String, String)> = replay_support::read(dir.path(), "sends.jsonl")
        .iter()
        .map(|s| (text(s, "user_id"), text(s, "variant_id")))
        .collect();
    let users: BTreeSet<&String> = sends.iter().map(|(user, _)| user).collect();
    assert_eq!(users.len(), sends.len(), "no user gets two commands");
    sends
}

fn users(sends: &[(String, String)]) -> BTreeSet<String> {
    sends.iter().map(|(user, _)| user.clone()).collect()
}

/// Each user-stage partition's share of `picked` is its share of the audience `0..audience`
/// (binomial, within 4 standard deviations).
fn assert_in_proportion(picked: &BTreeSet<String>, audience: usize) {
    let partition = |user: &str| shards::of_user(user, 4) as usize;
    let mut audience_of = [0f64; 4];
    (0..audience).for_each(|i| audience_of[partition(&format!("u{i}"))] += 1.0);
    let mut picked_of = [0f64; 4];
    picked.iter().for_each(|user| picked_of[partition(user)] += 1.0);
    let n = picked.len() as f64;
    for (picked, audience_of) in picked_of.iter().zip(audience_of) {
        let expected = n * audience_of / audience as f64;
        assert!((picked - expected).abs() <= 4.0 * expected.sqrt(), "{picked} of {expected}");
    }
}

#[test]
fn a_per_run_limit_of_1000_of_10000_over_4_shards_is_the_one_global_sample_of_one_shard() {
    let lines = audience(10_000);
    let limit = "limits: { per_run: 1000, safety: 20000 }\n";
    let one = users(&sends(&scheduled("{ title: t, body: b }", limit), &lines));
    let sharded = scheduled("{ title: t, body: b }", &format!("{limit}options: {{ shards: 4 }}\n"));
    let four = users(&sends(&sharded, &lines));

    assert_eq!(four.len(), 1_000, "exactly the limit");
    // One cut-off over the whole audience's random order: the users one shard takes, not a
    // share of each shard's (which differs at every shard's margin).
    assert_eq!(four, one);
    assert_in_proportion(&four, 10_000);
    assert_eq!(users(&sends(&sharded, &lines)), four, "the run id decides: a re-run agrees");
}

#[test]
fn an_ab_test_population_over_4_shards_is_the_one_global_sample_of_one_shard() {
    let what = "\n  variants:\n    - { title: A, body: a }\n    - { title: B, body: b }\n  ab: { test_audience: \"10%\", evaluate_after: 1h }";
    let lines = audience(8_000);
    let tested = |extra: &str| -> BTreeMap<String, String> {
        // No winner within the replay: the test population is all that is sent.
        let sends = sends(&scheduled(what, extra), &lines);
        assert_eq!(sends.len(), 800, "{extra}");
        sends.into_iter().collect()
    };
    let (one, four) = (tested(""), tested("options: { shards: 4 }\n"));
    let per_variant = |test: &BTreeMap<String, String>, variant: &str| {
        test.values().filter(|v| *v == variant).count()
    };
    assert_eq!((per_variant(&four, "A"), per_variant(&four, "B")), (400, 400));
    assert_eq!(four, one, "the same users, each with the same variant");
    assert_in_proportion(&four.keys().cloned().collect(), 8_000);
}

/// A user held back by do-not-disturb hours at the run's scan comes while the run waits for
/// its A/B winner, ranked before every user already released (the test population): buffered
/// below where the release stopped, they still leave with the winner's share, once. (Release
/// steps resume where the last one stopped instead of at the buffer's start.)
#[test]
fn a_user_come_after_dnd_ranked_before_the_released_test_users_leaves_with_the_winner() {
    let run_id = format!("run-{}", (1_795_000_000i64 + 100) * 1_000);
    let mut lines = audience(100);
    let lowest = (0..100).map(|i| sample::rank(&run_id, &format!("u{i}"))).min().unwrap();
    let late = (0..)
        .map(|i| format!("late{i}"))
        .find(|user| sample::rank(&run_id, user) < lowest)
        .unwrap();
    // 01:08 in UTC+14 at the run (11:08Z): their night ends at 09:00 local (19:00Z), before the
    // evaluation at 23:08Z.
    lines.insert(
        0,
        format!(
            r#"{{"type":"profile","user":"{late}","ts":"{}","set":{{"timezone":"Pacific/Kiritimati"}},"devices":[{{"platform":"ios","token":"tok-{late}"}}]}}"#,
            ts(0)
        ),
    );
    // Time moves past the evaluation on every partition.
    lines.extend((0..100).map(|i| {
        format!(
            r#"{{"type":"event","user":"u{i}","ts":"{}","name":"App Opened","props":{{}}}}"#,
            ts(86_400)
        )
    }));
    let what = "\n  variants:\n    - { title: A, body: a }\n    - { title: B, body: b }\n  ab: { test_audience: \"10%\", evaluate_after: 12h }";
    let dnd = "options: { dnd: { start: \"21:00\", end: \"09:00\", action: delay } }\n";
    let sends: BTreeMap<String, String> =
        sends(&scheduled(what, dnd), &lines).into_iter().collect();

    assert_eq!(sends.len(), 101, "everyone once: {sends:?}");
    let count = |variant: &str| sends.values().filter(|v| *v == variant).count();
    let winner = if count("A") > count("B") { "A" } else { "B" };
    assert_eq!(count(winner), 5 + 90 + 1, "5 tested, then the 90 others and {late}");
    assert_eq!(sends[&late], winner);
}
