//! A rejected input has no effect but its dead letter, through a real stage: the user stage
//! records an event in the user's history before it finds a `Notification Clicked` without a
//! `campaign_id` (rejected); that history write must not stay.

use herald_engine::{backtest::Backtest, model::Candidate, settings::Settings};

fn event(user: &str, ts: &str, name: &str, props: &str) -> String {
    format!(r#"{{"type":"event","user":"{user}","ts":"{ts}","name":"{name}","props":{props}}}"#)
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"2026-11-01T00:00:00Z","set":{{}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#
    )
}

#[test]
fn a_rejected_click_leaves_no_history_behind() {
    let dir = tempfile::tempdir().unwrap();
    let campaigns = dir.path().join("campaigns");
    std::fs::create_dir_all(&campaigns).unwrap();
    std::fs::write(
        campaigns.join("clickers.yaml"),
        r#"
id: clickers
app: shop
name: Clicked before
who:
  did: Notification Clicked
  at_least: 1
  in_last_days: 30
when: { event: App Opened }
what: { title: t, body: b }
"#,
    )
    .unwrap();
    let lines = [
        profile("good"),
        profile("bad"),
        event(
            "good",
            "2026-11-10T10:00:00Z",
            "Notification Clicked",
            r#"{"campaign_id":"earlier","message_id":"m1"}"#,
        ),
        event("bad", "2026-11-10T10:00:00Z", "Notification Clicked", r#"{"message_id":"m2"}"#),
        event("good", "2026-11-12T10:00:00Z", "App Opened", "{}"),
        event("bad", "2026-11-12T10:00:00Z", "App Opened", "{}"),
    ];
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let summary = Backtest {
        campaigns: vec![campaigns],
        input,
        out: out.clone(),
        settings: Settings::parse("", "settings").unwrap(),
        app: None,
        until_ms: None,
        partitions: 1,
    }
    .run()
    .unwrap();
    assert_eq!(summary.dead_letters, 1, "the click without a campaign_id");
    let letters = std::fs::read_to_string(out.join("dead-letters.jsonl")).unwrap();
    assert!(letters.contains("without a campaign_id"), "{letters}");
    let selected: Vec<String> = std::fs::read_to_string(out.join("candidates.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Candidate>(l).unwrap().user_id)
        .collect();
    assert_eq!(selected, ["good"], "the rejected click is not in bad's history");
}
