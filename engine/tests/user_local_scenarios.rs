//! Delivery at 09:00 in each user's own timezone (`timezone: user`) with a cut-off at 11:00, on
//! the replay driver (event time), for users in UTC+14, UTC and UTC−10: on time, each user at
//! 09:00 local over 24 hours; started late (the engine was down until 10:30Z), the UTC+14 user
//! is past the cut-off (expired), the UTC user is sent at once and the UTC−10 user at 09:00
//! local. With `timezone: best`, each user at the local hour they were most active in, and
//! users without activity at the campaign's time. With a per-run limit, the run's random sample
//! is taken over every timezone at the run's scan (issue 14 item 3).

mod replay_support;

use std::collections::BTreeMap;

use replay_support::read;

/// (user, hour of a send) or (user, reason of a skip).
type Pairs = Vec<(String, String)>;

const CAMPAIGN: &str = "id: morning\napp: shop\nname: n\nwhen:\n  schedule: { repeat: daily, time: \"09:00\", timezone: user, until: \"11:00\" }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n";

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Users a (UTC+14), b (UTC) and c (UTC−10), with their devices, at `at`.
fn profiles(at: i64) -> Vec<String> {
    crowd(at, &[String::new()])
}

/// In each of UTC+14, UTC and UTC−10 (`a…`, `b…`, `c…`), a user per name in `names` (`a` then
/// the name), with their devices, at `at`.
fn crowd(at: i64, names: &[String]) -> Vec<String> {
    [("a", "Pacific/Kiritimati"), ("b", "UTC"), ("c", "Pacific/Honolulu")]
        .iter()
        .flat_map(|(zone, tz)| {
            names.iter().map(move |name| {
                format!(
                    r#"{{"type":"profile","user":"{zone}{name}","ts":"{}","set":{{"timezone":"{tz}"}},"devices":[{{"platform":"ios","token":"tok-{zone}{name}"}}]}}"#,
                    ts(at)
                )
            })
        })
        .collect()
}

/// Other users' events every 10 minutes from `from` to `to`: time moves on, on every partition
/// (event time is each task's own).
fn ticks(from: i64, to: i64) -> Vec<String> {
    (from..=to)
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

/// Replays `lines` on `partitions` partitions: each send as (user, hour of its send time), in
/// order, and the users skipped with their reasons. Users sent at once leave with the run's
/// release, when the replay's time next moves (within 10 minutes here), hence the hours.
fn replay(lines: &[String], partitions: i32) -> (Pairs, Pairs) {
    replay_campaign(CAMPAIGN, lines, partitions)
}

/// [`replay`] of `campaign`.
fn replay_campaign(campaign: &str, lines: &[String], partitions: i32) -> (Pairs, Pairs) {
    let dir = replay_support::replay(campaign, lines, partitions);
    let mut sends: Vec<(String, String)> = read(dir.path(), "sends.jsonl")
        .iter()
        .map(|s| {
            let at = ms(s["send_time"].as_str().unwrap());
            (ts(at)[..13].to_string(), s["user_id"].as_str().unwrap().to_string())
        })
        .map(|(hour, user)| (user, hour))
        .collect();
    sends.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    let skips = read(dir.path(), "skips.jsonl")
        .iter()
        .map(|s| {
            (
                s["user_id"].as_str().unwrap_or("").to_string(),
                s["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (sends, skips)
}

fn pairs(items: &[(&str, &str)]) -> Pairs {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn nine_local_for_each_user_over_24_hours() {
    let start = ms("2026-11-19T18:00:00Z");
    let mut lines = profiles(start);
    lines.extend(ticks(start, ms("2026-11-20T20:00:00Z")));
    for partitions in [1, 3] {
        let (sends, skips) = replay(&lines, partitions);
        // The run of 2026-11-20 starts when it is 09:00 in UTC+14 (19:00Z the day before); the
        // run of 2026-11-21 at 19:00Z on the 20th.
        let expected = pairs(&[
            ("a", "2026-11-19T19"),
            ("b", "2026-11-20T09"),
            ("a", "2026-11-20T19"),
            ("c", "2026-11-20T19"),
        ]);
        assert_eq!(sends, expected, "on {partitions} partition(s)");
        assert_eq!(skips, Vec::new(), "on {partitions} partition(s)");
    }
}

#[test]
fn started_late_past_the_cut_off_in_utc_plus_14_at_once_in_utc_at_nine_in_utc_minus_10() {
    let start = ms("2026-11-19T18:00:00Z");
    let mut lines = profiles(start);
    // Nothing between 18:00Z and 10:30Z the next day: the run of 19:00Z starts late.
    lines.extend(ticks(start, start));
    lines.extend(ticks(ms("2026-11-20T10:30:00Z"), ms("2026-11-20T19:10:00Z")));
    for partitions in [1, 3] {
        let (sends, skips) = replay(&lines, partitions);
        // UTC at once, UTC-10 at 09:00 local (and UTC+14 again in the next day's run).
        let expected =
            pairs(&[("b", "2026-11-20T10"), ("a", "2026-11-20T19"), ("c", "2026-11-20T19")]);
        assert_eq!(sends, expected, "on {partitions} partition(s)");
        assert_eq!(skips, pairs(&[("a", "expired")]), "on {partitions} partition(s)");
    }
}

/// Daily at each user's most active local hour, from the run of 2026-11-20 on; 09:00 local for
/// users without activity.
const BEST: &str = "id: best\napp: shop\nname: n\nwhen:\n  start: \"2026-11-19T00:00:00Z\"\n  schedule: { repeat: daily, time: \"09:00\", timezone: best }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n";

/// `user` opening the app at `local` (HH:MM) in UTC`offset_h` on each of the days 10 to 18
/// of November 2026 in `days`.
fn opened(
    user: &str,
    offset_h: i64,
    local: &str,
    days: std::ops::RangeInclusive<u32>,
) -> Vec<String> {
    days.map(|day| {
        let at = ms(&format!("2026-11-{day:02}T{local}:00Z")) - offset_h * 3_600_000;
        format!(
            r#"{{"type":"event","user":"{user}","ts":"{}","name":"App Opened","props":{{}}}}"#,
            ts(at)
        )
    })
    .collect()
}

#[test]
fn best_time_sends_each_user_at_their_most_active_local_hour_else_the_campaign_time() {
    let start = ms("2026-11-10T00:00:00Z");
    // early: Tokyo (UTC+9), mostly at 07:xx; late: Sao Paulo (UTC-3), mostly at 20:xx; new: no
    // activity (UTC).
    let mut lines: Vec<String> =
        [("early", "Asia/Tokyo"), ("late", "America/Sao_Paulo"), ("new", "UTC")]
            .iter()
            .map(|(user, tz)| {
                format!(
                    r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"timezone":"{tz}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
                    ts(start)
                )
            })
            .collect();
    lines.extend(opened("early", 9, "07:15", 10..=18));
    lines.extend(opened("early", 9, "12:30", 12..=15));
    lines.extend(opened("late", -3, "20:40", 11..=18));
    lines.extend(opened("late", -3, "09:10", 10..=14));
    lines.extend(ticks(ms("2026-11-18T12:00:00Z"), ms("2026-11-20T23:10:00Z")));
    // A calendar campaign's first run must be seen within a minute of its time.
    lines.extend(ticks(ms("2026-11-19T10:00:30Z"), ms("2026-11-19T10:00:30Z")));
    lines.sort_by_key(|line| {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        ms(value["ts"].as_str().unwrap())
    });
    for partitions in [1, 3] {
        let (sends, skips) = replay_campaign(BEST, &lines, partitions);
        // The run of 2026-11-20 starts at midnight in UTC+14 (10:00Z on the 19th): early at
        // 07:00 in Tokyo, new at 09:00 UTC, late at 20:00 in Sao Paulo; the run of the 21st
        // (10:00Z on the 20th) reaches early's 07:00 before the replay ends.
        let expected = pairs(&[
            ("early", "2026-11-19T22"),
            ("new", "2026-11-20T09"),
            ("early", "2026-11-20T22"),
            ("late", "2026-11-20T23"),
        ]);
        assert_eq!(sends, expected, "on {partitions} partition(s)");
        assert_eq!(skips, Vec::new(), "on {partitions} partition(s)");
    }
}

#[test]
fn a_per_run_limit_samples_every_timezone_at_the_scan_each_user_at_nine_local() {
    let campaign = CAMPAIGN.replace(", until: \"11:00\"", "") + "limits: { per_run: 90 }\n";
    let start = ms("2026-11-19T18:00:00Z");
    let names: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let mut lines = crowd(start, &names);
    lines.extend(ticks(start, ms("2026-11-20T19:10:00Z")));
    // The run of 2026-11-20 starts at 09:00 in UTC+14 (19:00Z the day before); the next run's
    // UTC+14 users are sent from 19:00Z on the 20th.
    let first_run = |campaign: &str, partitions: i32| -> BTreeMap<String, String> {
        let (sends, skips) = replay_campaign(campaign, &lines, partitions);
        assert_eq!(skips, Vec::new());
        let next_run = |(user, hour): &(String, String)| {
            user.starts_with('a') && hour.as_str() >= "2026-11-20T19"
        };
        let first: Vec<(String, String)> = sends.into_iter().filter(|s| !next_run(s)).collect();
        let users: BTreeMap<String, String> = first.iter().cloned().collect();
        assert_eq!(users.len(), first.len(), "no user gets two commands");
        users
    };
    let users = first_run(&campaign, 3);
    assert_eq!(users.len(), 90, "exactly the per-run limit");
    // A sample of the whole audience, not of the timezones whose 09:00 comes first (before: 90
    // of 90 in UTC+14). Hypergeometric: 30 expected per timezone, sd about 4.3; within 4 sd.
    for zone in ["a", "b", "c"] {
        let count = users.keys().filter(|u| u.starts_with(zone)).count();
        assert!((13..=47).contains(&count), "{count} of 90 in timezone {zone}: {users:?}");
    }
    // Each at 09:00 in their own timezone.
    for (user, hour) in &users {
        let expected = match &user[..1] {
            "a" => "2026-11-19T19",
            "b" => "2026-11-20T09",
            _ => "2026-11-20T19",
        };
        assert_eq!(hour, expected, "{user}");
    }
    // The run id decides: the same users on one partition, and over 4 shards.
    assert_eq!(first_run(&campaign, 1), users);
    let sharded =
        campaign.replace("ignore_global_caps: true", "ignore_global_caps: true, shards: 4");
    assert_eq!(first_run(&sharded, 3), users);
}

/// Over 4 shards, a run without limits sends every user at 09:00 in their own timezone, as on
/// one task: the home plans each shard's places from the users buffered at the release (those
/// whose 09:00 had come), and the shards refused the users who came later at their local time
/// as `run_limit` (48 of 90 users on the code before, 42 skipped).
#[test]
fn over_4_shards_a_run_without_limits_sends_every_user_at_their_local_time() {
    let campaign = CAMPAIGN.replace(", until: \"11:00\"", "");
    let start = ms("2026-11-19T18:00:00Z");
    let names: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    let mut lines = crowd(start, &names);
    lines.extend(ticks(start, ms("2026-11-20T19:10:00Z")));
    let (one_task, skips) = replay_campaign(&campaign, &lines, 3);
    assert_eq!(skips, Vec::new());
    let first_run = |sends: &Pairs| -> BTreeMap<String, String> {
        let next_run = |(user, hour): &&(String, String)| {
            user.starts_with('a') && hour.as_str() >= "2026-11-20T19"
        };
        sends.iter().filter(|s| !next_run(s)).cloned().collect()
    };
    assert_eq!(first_run(&one_task).len(), 90, "every user once");
    let sharded =
        campaign.replace("ignore_global_caps: true", "ignore_global_caps: true, shards: 4");
    let (sends, skips) = replay_campaign(&sharded, &lines, 3);
    assert_eq!(skips, Vec::new());
    assert_eq!(sends, one_task, "the same users at the same hours as one task");
}
