//! Delivery at 09:00 in each user's own timezone (`timezone: user`) with a cut-off at 11:00, on
//! the replay driver (event time), for users in UTC+14, UTC and UTC−10: on time, each user at
//! 09:00 local over 24 hours; started late (the engine was down until 10:30Z), the UTC+14 user
//! is past the cut-off (expired), the UTC user is sent at once and the UTC−10 user at 09:00
//! local.

mod replay_support;

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
    [("a", "Pacific/Kiritimati"), ("b", "UTC"), ("c", "Pacific/Honolulu")]
        .iter()
        .map(|(user, tz)| {
            format!(
                r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"timezone":"{tz}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
                ts(at)
            )
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
    let dir = replay_support::replay(CAMPAIGN, lines, partitions);
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
