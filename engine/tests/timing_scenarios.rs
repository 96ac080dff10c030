//! When things happen, on the replay driver (`herald replay`, event time): the end of an
//! inaction window is inclusive, whichever record of that millisecond comes first; the winner
//! sends of a scheduled A/B test are timed when they leave, so their expiry counts from then.

use std::collections::BTreeMap;

mod replay_support;

use replay_support::{read, replay};
use serde_json::Value;

/// 2026-11-18T08:53:20Z plus `ms` milliseconds.
fn at(ms: i64) -> i64 {
    1_795_000_000_000 + ms
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at(ms))
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

fn event(user: &str, ms: i64, name: &str, props: &str) -> String {
    format!(
        r#"{{"type":"event","user":"{user}","ts":"{}","name":"{name}","props":{props}}}"#,
        ts(ms)
    )
}

fn millis(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap().timestamp_millis()
}

const CART: &str = "id: cart\napp: shop\nname: n\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 10m }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n";
const WINDOW: i64 = 600_000;

#[test]
fn charged_at_exactly_the_end_of_the_window_cancels_it_whatever_comes_first_in_that_millisecond() {
    let mut lines: Vec<String> =
        ["u1", "u2", "u3", "u4", "u9"].iter().map(|u| profile(u)).collect();
    for user in ["u1", "u2", "u4"] {
        lines.push(event(user, 1_000, "Added To Cart", "{}"));
    }
    lines.push(event("u3", 2_000, "Added To Cart", "{}"));
    // u1: another user's record of the same millisecond comes first, then Charged at T + 10m.
    lines.push(event("u9", 1_000 + WINDOW, "App Opened", "{}"));
    lines.push(event("u1", 1_000 + WINDOW, "Charged", "{}"));
    // u2: Charged one millisecond after the window: too late.
    lines.push(event("u2", 1_001 + WINDOW, "Charged", "{}"));
    // u3: Charged at T + 10m, the first record of its millisecond.
    lines.push(event("u3", 2_000 + WINDOW, "Charged", "{}"));
    // u4 never buys; time moves on.
    lines.push(event("u9", 3_600_000, "App Opened", "{}"));

    for partitions in [1, 3] {
        let out = replay(CART, &lines, partitions);
        let sends: BTreeMap<String, i64> = read(out.path(), "sends.jsonl")
            .iter()
            .map(|s| (s["user_id"].as_str().unwrap().to_string(), millis(&s["send_time"])))
            .collect();
        let expected = BTreeMap::from([
            ("u2".to_string(), at(1_000 + WINDOW)),
            ("u4".into(), at(1_000 + WINDOW)),
        ]);
        assert_eq!(sends, expected, "on {partitions} partition(s)");
    }
}

#[test]
fn a_window_ending_at_the_last_input_time_closes_at_the_end_of_the_replay() {
    let lines = vec![
        profile("u1"),
        event("u1", 1_000, "Added To Cart", "{}"),
        event("u9", 1_000 + WINDOW, "App Opened", "{}"),
    ];
    let out = replay(CART, &lines, 1);
    let users: Vec<Value> =
        read(out.path(), "sends.jsonl").iter().map(|s| s["user_id"].clone()).collect();
    assert_eq!(users, ["u1"]);
}

#[test]
fn winner_sends_of_a_scheduled_ab_test_expire_30_minutes_after_they_leave_not_after_the_run() {
    let campaign = format!(
        "id: sab\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat:\n  variants:\n    - {{ title: A, body: a, push: {{ ttl: 30m }} }}\n    - {{ title: B, body: b, push: {{ ttl: 30m }} }}\n  ab: {{ test_audience: 10, evaluate_after: 1h }}\noptions: {{ ignore_global_caps: true }}\n",
        ts(100_000)
    );
    let mut lines: Vec<String> = (0..30).map(|i| profile(&format!("u{i}"))).collect();
    lines.push(event("u0", 200_000, "App Opened", "{}"));
    let click = r#"{"campaign_id":"sab","variant_id":"B"}"#;
    lines.push(event("u1", 300_000, "Notification Clicked", click));
    lines.push(event("u0", 2 * 3_600_000, "App Opened", "{}"));
    let out = replay(&campaign, &lines, 1);

    let events = read(out.path(), "campaign-events.jsonl");
    let declared = events.iter().find(|e| e["kind"] == "WINNER_DECLARED").expect("a winner");
    let declared_at = declared["timestamp_ms"].as_i64().unwrap();
    let sends = read(out.path(), "sends.jsonl");
    assert_eq!(sends.len(), 30, "every user once");
    let (test, winners) = sends.split_at(10);
    for send in winners {
        assert_eq!(send["variant_id"], "B", "{send}");
        let (sent, expires) = (millis(&send["send_time"]), millis(&send["expires_at"]));
        assert!(sent >= declared_at, "a winner send leaves after the evaluation: {send}");
        assert_eq!(expires, sent + 1_800_000, "{send}");
    }
    for send in test {
        let (sent, expires) = (millis(&send["send_time"]), millis(&send["expires_at"]));
        assert!(sent >= at(100_000) && sent < declared_at, "{send}");
        assert_eq!(expires, sent + 1_800_000, "{send}");
    }
}
