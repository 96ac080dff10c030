//! A scheduled A/B test with `timezone: user` whose selected test user does not come (issue
//! 14, items 3 and 4; brief s25/I14 item 1): the run takes its test population by rank at its
//! release, the users after it wait in the run's buffer for the winner; a test user who no
//! longer qualifies at their local time passes their place, with its variant, to the
//! next-ranked user of the run still to come, so the test keeps its full size. On the replay
//! driver (event time), on 1 and 3 partitions (such a campaign runs on one shard).
//!
//! The run of Friday 2026-11-20 at 09:00 local starts at 09:00 in UTC+14 (19:00Z on the 19th):
//! `a…` users (UTC+14) come at the release, `b…` (UTC) at 09:00Z and `c…` (UTC−10) at 19:00Z
//! on the 20th. Its users in rank order are b1, c1, a1, c0, b0, a0 (asserted below).

mod replay_support;

use herald_engine::{campaign::sample, model::scheduled_run_id};
use replay_support::read;
use serde_json::Value;

/// Weekly on Fridays at 09:00 in each user's timezone, for users on the `pro` plan: an A/B test
/// of 2 variants on half the run (3 of 6 users: 1 per variant), the winner 1 hour after the
/// last test user's local time.
const CAMPAIGN: &str = "id: morning\napp: shop\nname: n\nwho: { property: plan, equals: pro }\nwhen:\n  schedule: { repeat: weekly, days: [fri], time: \"09:00\", timezone: user }\nwhat:\n  variants:\n    - { id: A, title: ta, body: ba }\n    - { id: B, title: tb, body: bb }\n  ab: { test_audience: \"50%\", evaluate_after: 1h }\noptions: { ignore_global_caps: true }\n";

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `user` on the `pro` plan in its timezone, with a device, at 18:00Z on the 19th.
fn profile(user: &str) -> String {
    let tz = match &user[..1] {
        "a" => "Pacific/Kiritimati",
        "b" => "UTC",
        _ => "Pacific/Honolulu",
    };
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"2026-11-19T18:00:00Z","set":{{"timezone":"{tz}","plan":"pro"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#
    )
}

/// Other users' events every 10 minutes from `from` to `to`: time moves on, on every partition.
fn ticks(from: &str, to: &str) -> Vec<String> {
    (ms(from)..=ms(to))
        .step_by(600_000)
        .flat_map(|at| {
            (0..12).map(move |z| {
                format!(
                    r#"{{"type":"event","user":"z{z}","ts":"{}","name":"App Opened","props":{{}}}}"#,
                    ts(at)
                )
            })
        })
        .collect()
}

/// What a replay gave the campaign.
struct Outcome {
    /// (user, variant, hour of its send), by time then user.
    sends: Vec<(String, String, String)>,
    /// (user, reason) of each user refused.
    skips: Vec<(String, String)>,
    /// Its stats.
    stats: Value,
    /// The `sent` of each `RUN_FINISHED`.
    finished: Vec<String>,
    /// The details of each `WINNER_DECLARED`.
    winners: Vec<Value>,
}

fn replay(users: &[&str], changes: &[String], partitions: i32) -> Outcome {
    let mut lines: Vec<String> = users.iter().map(|u| profile(u)).collect();
    lines.extend(changes.iter().cloned());
    lines.extend(ticks("2026-11-19T18:00:00Z", "2026-11-20T22:00:00Z"));
    let dir = replay_support::replay(CAMPAIGN, &lines, partitions);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut sends: Vec<(String, String, String)> = read(dir.path(), "sends.jsonl")
        .iter()
        .map(|s| {
            let hour = ts(ms(s["send_time"].as_str().unwrap()))[..13].to_string();
            (text(&s["user_id"]), text(&s["variant_id"]), hour)
        })
        .collect();
    sends.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
    let skips = read(dir.path(), "skips.jsonl")
        .iter()
        .map(|s| (text(&s["user_id"]), text(&s["reason"])))
        .collect();
    let events = read(dir.path(), "campaign-events.jsonl");
    let kind = |e: &Value, kind: &str| e["kind"] == kind || e["kind"] == kind.replace('_', "");
    let finished = events
        .iter()
        .filter(|e| kind(e, "RUN_FINISHED") || e["kind"] == "RunFinished")
        .map(|e| text(&e["details"]["sent"]))
        .collect();
    let winners = events
        .iter()
        .filter(|e| kind(e, "WINNER_DECLARED") || e["kind"] == "WinnerDeclared")
        .map(|e| e["details"].clone())
        .collect();
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/stats.json")).unwrap())
            .unwrap();
    Outcome { sends, skips, stats: stats["morning"].clone(), finished, winners }
}

/// The users of the replay's run in its random order.
fn in_rank_order(users: &[&str]) -> Vec<String> {
    let run = scheduled_run_id(ms("2026-11-19T19:00:00Z"));
    let mut users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    users.sort_by_key(|user| sample::rank(&run, user));
    users
}

fn triples(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    items.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

/// The variant's `sent` in the stats.
fn sent_of(stats: &Value, variant: &str) -> i64 {
    let variants = stats["variants"].as_array().expect("variants");
    let of = variants.iter().find(|v| v["id"] == variant || v["variant_id"] == variant);
    of.map_or(0, |v| v["sent"].as_i64().unwrap_or_default())
}

/// The test population is the first 2 in rank order: b1 (variant A) and c1 (B). b1 opts out
/// of push at 05:00Z, before its 09:00 local: its place and variant A go to the next-ranked
/// user still to come, c0 (rank 4, UTC−10, 19:00Z on the 20th; a1, rank 3, came at the
/// release and waits for the winner). The test ends at c0's and c1's local time, the winner
/// (a tie at no clicks: the first variant, A) 1 hour later, sent to the remainder a1, b0 and
/// a0 (c0 not again). Before: b1's place was given up, the test was c1 alone (sent_A 0) and c0
/// got the winner with the remainder.
#[test]
fn a_test_user_who_opts_out_passes_place_and_variant_to_the_next_ranked_user_still_to_come() {
    let users = ["a0", "a1", "b0", "b1", "c0", "c1"];
    assert_eq!(in_rank_order(&users), ["b1", "c1", "a1", "c0", "b0", "a0"]);
    let opts_out =
        r#"{"type":"profile","user":"b1","ts":"2026-11-20T05:00:00Z","set":{"push_opt_out":true}}"#;
    for partitions in [1, 3] {
        let outcome = replay(&users, &[opts_out.to_string()], partitions);
        let sends = triples(&[
            ("c0", "A", "2026-11-20T19"),
            ("c1", "B", "2026-11-20T19"),
            ("a0", "A", "2026-11-20T20"),
            ("a1", "A", "2026-11-20T20"),
            ("b0", "A", "2026-11-20T20"),
        ]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        assert_eq!(outcome.skips, [("b1".to_string(), "not_reachable".to_string())]);
        let [winner] = outcome.winners.as_slice() else {
            panic!("one WINNER_DECLARED on {partitions} partition(s): {:?}", outcome.winners)
        };
        assert_eq!(winner["winner"], "A", "on {partitions} partition(s)");
        assert_eq!((&winner["sent_A"], &winner["sent_B"]), (&"1".into(), &"1".into()), "test");
        // Stats per variant reconcile with the commands.
        for variant in ["A", "B"] {
            let commands = outcome.sends.iter().filter(|(_, v, _)| v == variant).count();
            assert_eq!(sent_of(&outcome.stats, variant), commands as i64, "{variant}");
        }
        assert_eq!(outcome.stats["skipped"], serde_json::json!({ "not_reachable": 1 }));
        assert_eq!(outcome.finished, ["5"], "one RUN_FINISHED on {partitions} partition(s)");
    }
}

/// Without c1 the test population is b1 (A, 09:00Z) and a1 (B, sent at the release): the test
/// would end at 09:00Z. b1 opts out; its place and variant A go to c0 (rank 3, 19:00Z on the
/// 20th), so the test ends at c0's local time instead: the winner is declared at 20:00Z on the
/// counts of both test users, then sent to b0 and a0. Before: the test was a1 alone and the
/// winner was declared at 10:00Z with sent_A 0.
#[test]
fn a_test_place_passed_to_a_later_user_moves_the_end_of_the_test_to_their_local_time() {
    let users = ["a0", "a1", "b0", "b1", "c0"];
    assert_eq!(in_rank_order(&users), ["b1", "a1", "c0", "b0", "a0"]);
    let opts_out =
        r#"{"type":"profile","user":"b1","ts":"2026-11-20T05:00:00Z","set":{"push_opt_out":true}}"#;
    for partitions in [1, 3] {
        let outcome = replay(&users, &[opts_out.to_string()], partitions);
        let sends = triples(&[
            ("a1", "B", "2026-11-19T19"),
            ("c0", "A", "2026-11-20T19"),
            ("a0", "A", "2026-11-20T20"),
            ("b0", "A", "2026-11-20T20"),
        ]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        let [winner] = outcome.winners.as_slice() else {
            panic!("one WINNER_DECLARED on {partitions} partition(s): {:?}", outcome.winners)
        };
        assert_eq!((&winner["sent_A"], &winner["sent_B"]), (&"1".into(), &"1".into()), "test");
        for variant in ["A", "B"] {
            let commands = outcome.sends.iter().filter(|(_, v, _)| v == variant).count();
            assert_eq!(sent_of(&outcome.stats, variant), commands as i64, "{variant}");
        }
        assert_eq!(outcome.finished, ["4"], "one RUN_FINISHED on {partitions} partition(s)");
    }
}
