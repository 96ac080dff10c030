//! A `timezone: user` run with a per-run limit on an app with caps (review s21 finding 8): each
//! place of the run waits in flight for the send gate, those of the users sent at the release
//! and those of the users selected at the release who come later at their local time alike. On
//! the replay driver (event time), with a throttle holding the sends in the outbox for hours.

use std::path::Path;

use herald_engine::{backtest::Backtest, model::CampaignLifecycleEvent, settings::Settings};
use serde_json::Value;

/// Daily at 09:00 in each user's timezone, 3 users a run, 1 send every 7 hours.
const MORNING: &str = "id: morning\napp: shop\nname: n\nwhen:\n  schedule: { repeat: daily, time: \"09:00\", timezone: user }\nwhat: { title: t, body: b }\nlimits: { per_run: 3 }\noptions: { throttle: { max: 1, per: 7h } }\n";
/// Another campaign, on `Pong`: it spends a user's cap.
const NEWS: &str =
    "id: news\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n";
const CAPS: &str = "apps:\n  shop:\n    caps: { per_day: 1 }\n";

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn profile(user: &str, tz: &str, at: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{at}","set":{{"timezone":"{tz}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#
    )
}

fn event(user: &str, name: &str, at: &str) -> String {
    format!(r#"{{"type":"event","user":"{user}","ts":"{at}","name":"{name}","props":{{}}}}"#)
}

/// Other users' events every 10 minutes from `from` to `to`: time moves on, on every partition.
fn ticks(from: &str, to: &str) -> Vec<String> {
    (ms(from)..=ms(to))
        .step_by(600_000)
        .flat_map(|at| (0..12).map(move |z| event(&format!("z{z}"), "App Opened", &ts(at))))
        .collect()
}

fn read(dir: &Path, file: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out").join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What a replay of `lines` on `partitions` partitions gave campaign `morning`.
struct Outcome {
    /// (user, send time) of each command on the push topic, in order.
    sends: Vec<(String, String)>,
    /// (user, reason) of each user refused.
    skips: Vec<(String, String)>,
    /// Its `RUN_FINISHED` events.
    finished: Vec<CampaignLifecycleEvent>,
    /// Users sent to, as its stats count them.
    sent: i64,
}

fn replay(lines: &[String], partitions: i32) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("campaigns")).unwrap();
    std::fs::write(dir.path().join("campaigns/morning.yaml"), MORNING).unwrap();
    std::fs::write(dir.path().join("campaigns/news.yaml"), NEWS).unwrap();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).unwrap();
    Backtest {
        campaigns: vec![dir.path().join("campaigns")],
        input: dir.path().join("in.jsonl"),
        out: dir.path().join("out"),
        settings: Settings::parse(CAPS, "settings").unwrap(),
        app: None,
        until_ms: None,
        partitions,
    }
    .run()
    .unwrap();
    let of_morning = |v: &&Value| v["campaign_id"] == "morning";
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let sends = read(dir.path(), "sends.jsonl")
        .iter()
        .filter(of_morning)
        .map(|s| (text(&s["user_id"]), text(&s["send_time"])))
        .collect();
    let skips = read(dir.path(), "skips.jsonl")
        .iter()
        .filter(of_morning)
        .map(|s| (text(&s["user_id"]), text(&s["reason"])))
        .collect();
    let finished = read(dir.path(), "campaign-events.jsonl")
        .into_iter()
        .map(|v| serde_json::from_value::<CampaignLifecycleEvent>(v).unwrap())
        .filter(|e| e.campaign_id == "morning" && format!("{:?}", e.kind) == "RunFinished")
        .collect();
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/stats.json")).unwrap())
            .unwrap();
    let sent = stats["morning"]["variants"][0]["sent"].as_i64().unwrap();
    Outcome { sends, skips, finished, sent }
}

/// The run of 2026-11-20 starts at 09:00 in UTC+14 (19:00Z the day before): a1 and a2 (UTC+14)
/// are sent at once, b1 (Tokyo, 00:00Z) is selected and comes at 09:00 local. The throttle
/// sends a1 at 19:00Z, a2 at 02:00Z and b1 at 09:00Z; b1 got another campaign's notification at
/// 05:00Z, so the gate refuses b1 then (capped). b1's place was in flight from 00:00Z: a2's
/// confirmation at 02:00Z does not finish the run (before: b1 was not counted in the run's
/// places in flight and a2's settling took the run's last one, so `RUN_FINISHED` came at 02:00Z
/// with sent 3 for the 2 users the run reached).
#[test]
fn a_selected_users_place_in_flight_keeps_the_run_open_until_the_gate_decides() {
    let mut lines = vec![
        profile("a1", "Pacific/Kiritimati", "2026-11-19T18:00:00Z"),
        profile("a2", "Pacific/Kiritimati", "2026-11-19T18:00:00Z"),
        profile("b1", "Asia/Tokyo", "2026-11-19T18:00:00Z"),
    ];
    lines.extend(ticks("2026-11-19T18:00:00Z", "2026-11-20T05:00:00Z"));
    lines.push(event("b1", "Pong", "2026-11-20T05:00:00Z"));
    lines.extend(ticks("2026-11-20T05:10:00Z", "2026-11-20T18:00:00Z"));
    for partitions in [1, 3] {
        let outcome = replay(&lines, partitions);
        let sends: Vec<(&str, &str)> =
            outcome.sends.iter().map(|(u, at)| (u.as_str(), &at[..13])).collect();
        assert_eq!(sends, [("a1", "2026-11-19T19"), ("a2", "2026-11-20T02")], "{partitions}");
        assert_eq!(outcome.skips, [("b1".to_string(), "capped_daily".to_string())]);
        assert_eq!(outcome.sent, 2, "on {partitions} partition(s)");
        let [finished] = outcome.finished.as_slice() else {
            panic!("one RUN_FINISHED on {partitions} partition(s): {:?}", outcome.finished)
        };
        assert_eq!(finished.details["sent"], "2", "on {partitions} partition(s)");
        assert!(
            finished.timestamp_ms >= ms("2026-11-20T09:00:00Z"),
            "finished once b1's place was decided, at {}",
            ts(finished.timestamp_ms)
        );
    }
}
