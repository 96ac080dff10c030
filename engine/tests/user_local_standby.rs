//! A `timezone: user` run with a per-run limit whose selected user never comes (issue 14, items
//! 3 and 4): the run selects its users at its release by rank (SHA-256 of run id and user) and
//! holds a place for each until their local time; a selected user who no longer qualifies then
//! gives the place to the next-ranked user whose local time is still to come, else the place
//! is given up and counted, and the run finishes with `RUN_FINISHED` whose `sent` is the real
//! sends. On the replay driver (event time), on 1 and 3 partitions.
//!
//! The run of Friday 2026-11-20 at 09:00 local starts at 09:00 in UTC+14 (19:00Z on the 19th):
//! `a…` users (UTC+14) are sent at the release, `b…` (UTC) at 09:00Z and `c…` (UTC−10) at
//! 19:00Z on the 20th. Its users in rank order are b1, c1, a1, c0, b0, a0 (asserted below).

mod replay_support;

use herald_engine::{campaign::sample, model::scheduled_run_id};
use replay_support::read;
use serde_json::Value;

/// Weekly on Fridays (one run in the replay) at 09:00 in each user's timezone, for users on
/// the `pro` plan, 3 users a run.
const WEEKLY: &str = "id: morning\napp: shop\nname: n\nwho: { property: plan, equals: pro }\nwhen:\n  schedule: { repeat: weekly, days: [fri], time: \"09:00\", timezone: user }\nwhat: { title: t, body: b }\nlimits: { per_run: 3 }\noptions: { ignore_global_caps: true }\n";

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `user` on the `pro` plan in `tz`, with a device, at 18:00Z on the 19th.
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

/// A profile change of `user` at `at`: `change` is the update's fields after the timestamp.
fn change(user: &str, at: &str, change: &str) -> String {
    format!(r#"{{"type":"profile","user":"{user}","ts":"{at}",{change}}}"#)
}

/// Other users' events every 10 minutes from `from` to `to`: time moves on, on every partition
/// (event time is each task's own).
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
    /// (user, hour of its send), by time then user.
    sends: Vec<(String, String)>,
    /// (user, reason) of each user refused by the user stage.
    skips: Vec<(String, String)>,
    /// Its stats: users sent to and users not sent to by reason.
    stats: Value,
    /// The run, `sent` and time of each `RUN_FINISHED`.
    finished: Vec<(String, String, String)>,
}

fn replay(users: &[&str], changes: &[String], partitions: i32) -> Outcome {
    replay_campaign(WEEKLY, users, changes, partitions)
}

/// [`replay`] of `campaign` (campaign id `morning`).
fn replay_campaign(campaign: &str, users: &[&str], changes: &[String], partitions: i32) -> Outcome {
    replay_until(campaign, users, changes, partitions, "2026-11-20T20:00:00Z")
}

/// [`replay_campaign`] with time moving on until `until`.
fn replay_until(
    campaign: &str,
    users: &[&str],
    changes: &[String],
    partitions: i32,
    until: &str,
) -> Outcome {
    let mut lines: Vec<String> = users.iter().map(|u| profile(u)).collect();
    lines.extend(changes.iter().cloned());
    lines.extend(ticks("2026-11-19T18:00:00Z", until));
    let dir = replay_support::replay(campaign, &lines, partitions);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut sends: Vec<(String, String)> = read(dir.path(), "sends.jsonl")
        .iter()
        .map(|s| (text(&s["user_id"]), ts(ms(s["send_time"].as_str().unwrap()))[..13].to_string()))
        .collect();
    sends.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let skips = read(dir.path(), "skips.jsonl")
        .iter()
        .map(|s| (text(&s["user_id"]), text(&s["reason"])))
        .collect();
    let finished = read(dir.path(), "campaign-events.jsonl")
        .iter()
        .filter(|e| e["kind"] == "RunFinished" || e["kind"] == "RUN_FINISHED")
        .map(|e| {
            let at = ts(e["timestamp_ms"].as_i64().unwrap());
            (text(&e["details"]["run_id"]), text(&e["details"]["sent"]), at)
        })
        .collect();
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/stats.json")).unwrap())
            .unwrap();
    Outcome { sends, skips, stats: stats["morning"].clone(), finished }
}

/// The users of the replay's run in its random order.
fn in_rank_order(users: &[&str]) -> Vec<String> {
    let run = scheduled_run_id(ms("2026-11-19T19:00:00Z"));
    let mut users: Vec<String> = users.iter().map(|u| u.to_string()).collect();
    users.sort_by_key(|user| sample::rank(&run, user));
    users
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// b1 (UTC), selected, opts out of push at 05:00Z, before its 09:00 local: at 09:00Z its place
/// goes to the next user in rank order whose local time is still to come, c0 (19:00Z). b0
/// (rank 5, 09:00Z) comes after c0 in the order, so it is counted `run_limit` whichever of b0
/// and b1 the campaign stage hears of first. Before: the place stayed b1's, the run sent 2 and
/// announced `RUN_FINISHED` with sent 3 at its release.
#[test]
fn a_selected_user_who_opts_out_gives_the_place_to_the_next_ranked_user_still_to_come() {
    let users = ["a0", "a1", "b0", "b1", "c0", "c1"];
    assert_eq!(in_rank_order(&users), ["b1", "c1", "a1", "c0", "b0", "a0"]);
    let opts_out = change("b1", "2026-11-20T05:00:00Z", r#""set":{"push_opt_out":true}"#);
    for partitions in [1, 3] {
        let outcome = replay(&users, std::slice::from_ref(&opts_out), partitions);
        let sends =
            pairs(&[("a1", "2026-11-19T19"), ("c0", "2026-11-20T19"), ("c1", "2026-11-20T19")]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        assert_eq!(outcome.skips, pairs(&[("b1", "not_reachable")]), "{partitions}");
        assert_eq!(outcome.stats["variants"][0]["sent"], 3, "on {partitions} partition(s)");
        let skipped = serde_json::json!({ "not_reachable": 1, "run_limit": 2 });
        assert_eq!(outcome.stats["skipped"], skipped, "a0, b0; on {partitions} partition(s)");
        let [(_, sent, at)] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!(sent, "3", "on {partitions} partition(s)");
        assert!(at.as_str() >= "2026-11-20T19", "after c0 and c1 came, at {at}");
    }
}

/// c1 (UTC−10), selected, leaves the audience (its plan is unset) before its 09:00 local, when
/// every other user's local time has passed (a1 and a0 at the release, b0 at 09:00Z): no one
/// takes the place; c1 is counted `not_eligible` and the run finishes with sent 2. Before:
/// nothing reported c1, and `RUN_FINISHED` said 3 at the release.
#[test]
fn a_selected_user_who_leaves_the_audience_with_no_one_left_to_come_ends_the_run_with_2() {
    let users = ["a0", "a1", "b0", "b1", "c1"];
    assert_eq!(in_rank_order(&users), ["b1", "c1", "a1", "b0", "a0"]);
    let leaves = change("c1", "2026-11-20T12:00:00Z", r#""unset":["plan"]"#);
    for partitions in [1, 3] {
        let outcome = replay(&users, std::slice::from_ref(&leaves), partitions);
        let sends = pairs(&[("a1", "2026-11-19T19"), ("b1", "2026-11-20T09")]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        assert_eq!(outcome.skips, pairs(&[("c1", "not_eligible")]), "{partitions}");
        assert_eq!(outcome.stats["variants"][0]["sent"], 2, "on {partitions} partition(s)");
        let skipped = serde_json::json!({ "not_eligible": 1, "run_limit": 2 });
        assert_eq!(outcome.stats["skipped"], skipped, "a0, b0; on {partitions} partition(s)");
        let [(_, sent, at)] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!(sent, "2", "on {partitions} partition(s)");
        assert!(at.as_str() >= "2026-11-20T19", "once c1's local time came, at {at}");
    }
}

/// The same as the first test with a daily run: the next run starts at 19:00Z on the 20th, when
/// c0 and c1 (UTC−10) come for the first one. The first run, replaced while it still waited
/// for them, is kept until they come and finishes with sent 3; the second one's users come on
/// the 21st, after the replay.
#[test]
fn a_daily_run_replaced_before_its_last_selected_users_come_finishes_when_they_come() {
    let daily = WEEKLY.replace("repeat: weekly, days: [fri]", "repeat: daily");
    let users = ["a0", "a1", "b0", "b1", "c0", "c1"];
    let opts_out = change("b1", "2026-11-20T05:00:00Z", r#""set":{"push_opt_out":true}"#);
    let first = scheduled_run_id(ms("2026-11-19T19:00:00Z"));
    for partitions in [1, 3] {
        let outcome = replay_campaign(&daily, &users, std::slice::from_ref(&opts_out), partitions);
        let of_first: Vec<&(String, String)> =
            outcome.sends.iter().filter(|(user, _)| !user.starts_with('a')).collect();
        let expected = pairs(&[("c0", "2026-11-20T19"), ("c1", "2026-11-20T19")]);
        assert_eq!(of_first, expected.iter().collect::<Vec<_>>(), "{partitions}");
        let [(run, sent, at)] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!((run, sent.as_str()), (&first, "3"), "on {partitions} partition(s)");
        assert!(at.as_str() >= "2026-11-20T19", "after c0 and c1 came, at {at}");
    }
}

/// The window's close (the backstop): do-not-disturb hours 08:00-13:00 local with `action:
/// delay` put every user's send 4 hours after their 09:00 local, so c1 (UTC−10), selected,
/// would come at 23:00Z on the 20th, after the run's window closed (19:00Z on the 19th + 26 h +
/// 1 h = 22:00Z on the 20th) with no report of c1 before it. Users in rank order: b1, c1, c0,
/// b0; `per_run: 2` selects b1 and c1, c0 and b0 stand by. b1 is sent at 13:00Z; at the close
/// c1 gives up the place, counted `expired` once, c0 is dropped from the standby; the run
/// announces `RUN_FINISHED` once, then, with sent 1 (b1, the only command). c1 and c0 coming
/// later are not sent.
#[test]
fn a_selected_user_who_has_not_come_when_the_window_closes_gives_up_the_place_as_expired() {
    let users = ["b0", "b1", "c0", "c1"];
    assert_eq!(in_rank_order(&users), ["b1", "c1", "c0", "b0"]);
    let campaign = WEEKLY.replace("per_run: 3", "per_run: 2").replace(
        "options: { ignore_global_caps: true }",
        "options: { ignore_global_caps: true, dnd: { start: \"08:00\", end: \"13:00\", action: delay } }",
    );
    for partitions in [1, 3] {
        let outcome = replay_until(&campaign, &users, &[], partitions, "2026-11-21T02:00:00Z");
        assert_eq!(
            outcome.sends,
            pairs(&[("b1", "2026-11-20T13")]),
            "on {partitions} partition(s)"
        );
        assert_eq!(outcome.stats["variants"][0]["sent"], 1, "on {partitions} partition(s)");
        let skipped = serde_json::json!({ "expired": 1, "run_limit": 2 });
        assert_eq!(outcome.stats["skipped"], skipped, "c1; b0, c0; on {partitions} partition(s)");
        let [(_, sent, at)] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!(sent, "1", "on {partitions} partition(s)");
        assert!(at.as_str() >= "2026-11-20T22", "at the window's close, at {at}");
    }
}

/// Over 3 shards the run's users go to shards by ranges of rank: shard 0 holds b1, a1; shard 1
/// c3; shard 2 c5, c9, a2 (asserted below), so the run's order is b1, a1, c3, c5, c9, a2 and
/// `per_run: 3` selects b1, a1 (shard 0) and c3 (shard 1); shard 2's c5 and c9 stand by (a2,
/// UTC+14, came at the release: `run_limit`). b1 opts out before its 09:00 local: shard 0 has
/// no one standing by, shard 1 neither, so the place goes home and on, shard by shard in the
/// run's order, to c5 (19:00Z on the 20th); c9 comes after it and is counted `run_limit`.
/// Before: shard 0 gave the place up (2 sent, c5 `run_limit`).
#[test]
fn over_shards_a_place_no_one_on_its_shard_can_take_goes_to_the_next_shard_in_the_order() {
    let users = ["a1", "a2", "b1", "c3", "c5", "c9"];
    assert_eq!(in_rank_order(&users), ["b1", "a1", "c3", "c5", "c9", "a2"]);
    let run = scheduled_run_id(ms("2026-11-19T19:00:00Z"));
    let shards: Vec<u32> = in_rank_order(&users)
        .iter()
        .map(|user| sample::shard_of_rank(sample::rank(&run, user), 3))
        .collect();
    assert_eq!(shards, [0, 0, 1, 2, 2, 2]);
    let campaign = WEEKLY.replace(
        "options: { ignore_global_caps: true }",
        "options: { ignore_global_caps: true, shards: 3 }",
    );
    let opts_out = change("b1", "2026-11-20T05:00:00Z", r#""set":{"push_opt_out":true}"#);
    for partitions in [1, 3] {
        let outcome =
            replay_campaign(&campaign, &users, std::slice::from_ref(&opts_out), partitions);
        let sends =
            pairs(&[("a1", "2026-11-19T19"), ("c3", "2026-11-20T19"), ("c5", "2026-11-20T19")]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        assert_eq!(outcome.skips, pairs(&[("b1", "not_reachable")]), "{partitions}");
        assert_eq!(outcome.stats["variants"][0]["sent"], 3, "on {partitions} partition(s)");
        let skipped = serde_json::json!({ "not_reachable": 1, "run_limit": 2 });
        assert_eq!(outcome.stats["skipped"], skipped, "a2, c9; on {partitions} partition(s)");
        let [(_, sent, _)] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!(sent, "3", "on {partitions} partition(s)");
    }
}

/// As above with c7, first of shard 1 (before c3): `per_run: 3` selects b1, a1 and c7; c3
/// (shard 1), c5 and c9 (shard 2) stand by. b1's place goes to the first of them in the run's
/// order, c3 on shard 1, not shard 2's.
#[test]
fn over_shards_a_place_passed_on_goes_to_the_first_shard_with_someone_standing_by() {
    let users = ["a1", "a2", "b1", "c3", "c5", "c7", "c9"];
    assert_eq!(in_rank_order(&users), ["b1", "a1", "c7", "c3", "c5", "c9", "a2"]);
    let campaign = WEEKLY.replace(
        "options: { ignore_global_caps: true }",
        "options: { ignore_global_caps: true, shards: 3 }",
    );
    let opts_out = change("b1", "2026-11-20T05:00:00Z", r#""set":{"push_opt_out":true}"#);
    for partitions in [1, 3] {
        let outcome =
            replay_campaign(&campaign, &users, std::slice::from_ref(&opts_out), partitions);
        let sends =
            pairs(&[("a1", "2026-11-19T19"), ("c3", "2026-11-20T19"), ("c7", "2026-11-20T19")]);
        assert_eq!(outcome.sends, sends, "on {partitions} partition(s)");
        let skipped = serde_json::json!({ "not_reachable": 1, "run_limit": 3 });
        assert_eq!(outcome.stats["skipped"], skipped, "a2, c5, c9; on {partitions} partition(s)");
        assert_eq!(outcome.finished.len(), 1, "on {partitions} partition(s)");
    }
}

/// As the window's close above, with c1 opting out at 22:30Z, after the close and before its
/// do-not-disturb hours end: the user stage reports c1 `not_reachable` at 23:00Z; c1 was
/// counted `expired` at the close and is not counted again.
#[test]
fn a_user_expired_at_the_window_close_and_reported_later_is_counted_once() {
    let users = ["b0", "b1", "c0", "c1"];
    let campaign = WEEKLY.replace("per_run: 3", "per_run: 2").replace(
        "options: { ignore_global_caps: true }",
        "options: { ignore_global_caps: true, dnd: { start: \"08:00\", end: \"13:00\", action: delay } }",
    );
    let opts_out = change("c1", "2026-11-20T22:30:00Z", r#""set":{"push_opt_out":true}"#);
    for partitions in [1, 3] {
        let outcome = replay_until(
            &campaign,
            &users,
            std::slice::from_ref(&opts_out),
            partitions,
            "2026-11-21T02:00:00Z",
        );
        assert_eq!(outcome.sends, pairs(&[("b1", "2026-11-20T13")]), "{partitions}");
        assert_eq!(outcome.skips, pairs(&[("c1", "not_reachable")]), "{partitions}");
        let skipped = serde_json::json!({ "expired": 1, "run_limit": 2 });
        assert_eq!(outcome.stats["skipped"], skipped, "c1; b0, c0; on {partitions} partition(s)");
        assert_eq!(outcome.finished.len(), 1, "on {partitions} partition(s)");
    }
}
