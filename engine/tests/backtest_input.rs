//! `herald replay` input errors and its dead letters: a malformed line is reported with its line
//! number and the rest is replayed (`--strict` stops at it instead); a scheduled replay's
//! internal run tallies are not dead letters.

use std::path::{Path, PathBuf};

use herald_engine::{
    backtest::{Backtest, BacktestError},
    settings::Settings,
};
use serde_json::Value;

const T0: i64 = 1_795_000_000_000;

fn ts(second: i64) -> String {
    chrono::DateTime::from_timestamp_millis(T0 + second * 1_000).unwrap().to_rfc3339()
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","devices":[{{"platform":"android","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

fn ping(user: &str, second: i64) -> String {
    format!(r#"{{"type":"event","user":"{user}","ts":"{}","name":"Ping"}}"#, ts(second))
}

const INSTANT: &str =
    "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";

/// A backtest of `campaign` over `lines` in a fresh directory.
fn backtest(dir: &Path, campaign: &str, lines: &[String]) -> Backtest {
    std::fs::write(dir.join("campaign.yaml"), campaign).unwrap();
    std::fs::write(dir.join("in.jsonl"), lines.join("\n")).unwrap();
    Backtest {
        campaigns: vec![dir.join("campaign.yaml")],
        input: dir.join("in.jsonl"),
        out: dir.join("out"),
        settings: Settings::default(),
        app: None,
        until_ms: None,
        partitions: 2,
    }
}

fn read(path: PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn users_sent_to(dir: &Path) -> Vec<String> {
    let mut users: Vec<String> = read(dir.join("out/sends.jsonl"))
        .iter()
        .map(|s| s["user_id"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    users
}

#[test]
fn a_malformed_line_is_a_dead_letter_with_its_line_number_and_the_rest_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        profile("u1"),
        profile("u2"),
        profile("u3"),
        ping("u1", 10),
        r#"{"type":"event","user":"u2","ts":"#.to_string(), // line 5: cut short
        ping("u2", 11),
        r#"{"type":"event","user":"u3","ts":-9223372036854775808,"name":"Ping"}"#.to_string(),
        r#"{"type":"event","ts":"2026-11-26T10:00:00Z","name":"Ping"}"#.to_string(), // no user
        ping("u3", 12),
    ];
    let summary = backtest(dir.path(), INSTANT, &lines).run().unwrap();

    assert_eq!(users_sent_to(dir.path()), ["u1", "u2", "u3"], "every good line replayed");
    assert_eq!(summary.records, 6);
    let letters = read(dir.path().join("out/dead-letters.jsonl"));
    let reported: Vec<(u64, &str)> = letters
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(reported.len(), 3, "{letters:?}");
    assert_eq!(reported[0].0, 5);
    assert!(reported[0].1.contains("EOF while parsing"), "{}", reported[0].1);
    assert_eq!(reported[1].0, 7);
    assert!(
        reported[1].1.contains("bad \"ts\": -9223372036854775808 is outside"),
        "{}",
        reported[1].1
    );
    assert_eq!(reported[2], (8, "missing string field \"user\""));
    assert!(letters
        .iter()
        .all(|l| l["source_file"] == dir.path().join("in.jsonl").display().to_string()));
    assert_eq!(summary.dead_letters, 3);
}

#[test]
fn strict_replay_stops_at_the_first_malformed_line_and_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [profile("u1"), ping("u1", 10), "{\"type\":".to_string(), "not json".to_string()];
    let error = backtest(dir.path(), INSTANT, &lines).run_strict().unwrap_err();
    match error {
        BacktestError::Input { line, reason, .. } => {
            assert_eq!(line, 3);
            assert!(reason.contains("EOF while parsing"), "{reason}");
        }
        other => panic!("expected an input error, got {other}"),
    }
    assert!(!dir.path().join("out/sends.jsonl").exists(), "nothing replayed");
}

#[test]
fn a_scheduled_replays_run_tallies_are_not_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = format!(
        "id: weekly\napp: shop\nname: Weekly\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {{ title: t, body: b }}\n",
        ts(100)
    );
    let mut lines: Vec<String> = ["u1", "u2", "u3"].iter().map(|u| profile(u)).collect();
    lines.push(ping("u1", 200));
    let summary = backtest(dir.path(), &campaign, &lines).run().unwrap();

    assert_eq!(users_sent_to(dir.path()), ["u1", "u2", "u3"], "the run reached everyone");
    let letters = std::fs::read_to_string(dir.path().join("out/dead-letters.jsonl")).unwrap();
    assert_eq!(letters, "", "no dead letters");
    assert_eq!(summary.dead_letters, 0);
}
