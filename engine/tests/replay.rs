//! The replay driver on the event-time clock: the same input fires the same timers in the same
//! order every run, and the outputs are identical byte for byte.

use std::path::Path;

use herald_engine::runtime::{
    example::counting_topology,
    replay::{self, ReplayInput, ReplayOptions, ReplaySink, ReplaySummary},
};

fn write_input(path: &Path) {
    // Timers at 5000 (a, b), 5000 (c, later cancelled), 7000 (a); events advance stream time.
    let lines = [
        r#"{"topic": "in", "key": "b", "timestamp_ms": 1000, "value": "schedule:5000"}"#,
        r#"{"topic": "in", "key": "a", "timestamp_ms": 1100, "value": "schedule:5000"}"#,
        r#"{"topic": "in", "key": "c", "timestamp_ms": 1200, "value": "schedule:5000"}"#,
        r#"{"topic": "in", "key": "a", "timestamp_ms": 1300, "value": "schedule:7000"}"#,
        r#"{"topic": "in", "key": "c", "timestamp_ms": 4000, "value": "cancel:5000"}"#,
        r#"{"topic": "in", "key": "z", "timestamp_ms": 6000, "value": "tick"}"#,
        r#"{"topic": "in", "key": "z", "timestamp_ms": 9000, "value": "tick"}"#,
    ];
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn replay_once(input: &Path, out: &Path) -> ReplaySummary {
    let topology = counting_topology("replay-test", "in", "out").unwrap();
    replay::run(
        &topology,
        ReplayInput::Jsonl(input.to_path_buf()),
        ReplaySink::JsonlDir(out.to_path_buf()),
        &ReplayOptions::default(),
    )
    .unwrap()
}

fn values(out: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["key"].as_str().unwrap().to_string(), v["value"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn replay_fires_the_same_timers_in_the_same_order_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    write_input(&input);
    let first = replay_once(&input, &dir.path().join("run1"));
    let second = replay_once(&input, &dir.path().join("run2"));
    assert_eq!(first, second);
    assert_eq!(first.records_in, 7);
    assert_eq!(first.timers_fired, 3);

    let run1 = std::fs::read(dir.path().join("run1/out.jsonl")).unwrap();
    let run2 = std::fs::read(dir.path().join("run2/out.jsonl")).unwrap();
    assert_eq!(run1, run2, "byte-identical outputs");

    let fired: Vec<(String, String)> = values(&dir.path().join("run1"))
        .into_iter()
        .filter(|(_, v)| v.starts_with("fired"))
        .collect();
    assert_eq!(
        fired,
        vec![
            ("a".to_string(), "fired:5000".to_string()), // due 5000, key order a < b
            ("b".to_string(), "fired:5000".to_string()),
            ("a".to_string(), "fired:7000".to_string()), // fired when stream time reached 9000
        ],
        "c's timer was cancelled; timers fire in (time, key) order before the advancing record"
    );
    let all = values(&dir.path().join("run1"));
    let tick_at_6000 = all.iter().position(|(k, v)| k == "z" && v == "tick:1").unwrap();
    let b_fired = all.iter().position(|(k, v)| k == "b" && v == "fired:5000").unwrap();
    assert!(b_fired < tick_at_6000, "timers due before a record fire before it is processed");
}

#[test]
fn replay_input_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"topic\": \"in\", \"key\": \"a\", \"timestamp_ms\": 1, \"value\": \"x\"}\n{\"key\": \"a\"}\n").unwrap();
    let topology = counting_topology("replay-test", "in", "out").unwrap();
    let err = replay::run(
        &topology,
        ReplayInput::Jsonl(input.clone()),
        ReplaySink::JsonlDir(dir.path().join("out")),
        &ReplayOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, format!("replay input {}:2: missing string field \"topic\"", input.display()));
}
