//! Scenarios of the campaign stage, read like the product reference, on the replay driver
//! (`herald replay`): limits, A/B tests, split delivery, payload limits.

use std::path::Path;

use herald_engine::{backtest::Backtest, model::CampaignLifecycleEvent, settings::Settings};
use serde_json::Value;

fn ts(second: i64) -> String {
    chrono::DateTime::from_timestamp(1_795_000_000 + second, 0).unwrap().to_rfc3339()
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"first_name":"N{user}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

fn event(user: &str, second: i64, name: &str, props: &str) -> String {
    format!(
        r#"{{"type":"event","user":"{user}","ts":"{}","name":"{name}","props":{props}}}"#,
        ts(second)
    )
}

struct Outcome {
    dir: tempfile::TempDir,
}

impl Outcome {
    fn run(campaign: &str, lines: &[String]) -> Self {
        Self::run_until(campaign, lines, None)
    }

    fn run_until(campaign: &str, lines: &[String], until_ms: Option<i64>) -> Self {
        Self::run_on(campaign, lines, until_ms, 1)
    }

    fn run_on(campaign: &str, lines: &[String], until_ms: Option<i64>, partitions: i32) -> Self {
        Self::replay(&[campaign], lines, until_ms, partitions, Settings::default())
    }

    fn replay(
        campaigns: &[&str],
        lines: &[String],
        until_ms: Option<i64>,
        partitions: i32,
        settings: Settings,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("campaigns")).unwrap();
        for (i, campaign) in campaigns.iter().enumerate() {
            std::fs::write(dir.path().join(format!("campaigns/c{i}.yaml")), campaign).unwrap();
        }
        std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).unwrap();
        Backtest {
            campaigns: vec![dir.path().join("campaigns")],
            input: dir.path().join("in.jsonl"),
            out: dir.path().join("out"),
            settings,
            app: None,
            until_ms,
            partitions,
        }
        .run()
        .unwrap();
        Self { dir }
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        read(&self.dir.path().join("out").join(file))
    }

    fn variants(&self) -> Vec<String> {
        self.lines("sends.jsonl")
            .iter()
            .map(|s| s["variant_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn events(&self) -> Vec<CampaignLifecycleEvent> {
        self.lines("campaign-events.jsonl")
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    fn stats(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("out/stats.json")).unwrap(),
        )
        .unwrap()
    }
}

fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn coupon_limit_10000_qualify_total_1000_gives_exactly_1000_sends_and_completes() {
    let campaign = "id: coupons\napp: shop\nname: Coupons\nwhen: { event: App Opened }\nwhat: { title: \"Coupon for {{ profile.first_name }}\", body: b }\nlimits: { total: 1000 }\n";
    let mut lines: Vec<String> = (0..10_000).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..10_000).map(|i| event(&format!("u{i}"), 10 + i, "App Opened", "{}")));
    let outcome = Outcome::run(campaign, &lines);

    let sends = outcome.lines("sends.jsonl");
    assert_eq!(sends.len(), 1_000);
    assert_eq!(sends[0]["title"], "Coupon for Nu0", "rendered per user");
    let events = outcome.events();
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["LimitReached", "Completed"]);
    assert_eq!(events[0].details["limit"], "total");
    assert_eq!(events[1].details["reason"], "total_limit");
    assert_eq!(events[1].details["sent"], "1000");
    assert_eq!(outcome.stats()["coupons"]["skipped"]["total_limit"], 9_000);
}

const AB: &str = r#"
id: ab
app: shop
name: A/B
when: { event: Ping }
what:
  variants:
    - { title: "A", body: a }
    - { title: "B", body: b }
  ab: { test_audience: 500, evaluate_after: 1h }
"#;

#[test]
fn triggered_ab_test_alternates_250_250_then_sends_the_clicked_winner_b() {
    let mut lines: Vec<String> = (0..1_000).map(|i| profile(&format!("u{i}"))).collect();
    // 500 users qualify, alternating A, B, A, B …
    lines.extend((0..500).map(|i| event(&format!("u{i}"), 10 + i, "Ping", "{}")));
    // Clicks arrive meanwhile: 40 on B, 10 on A.
    let click = |variant: &str| format!(r#"{{"campaign_id":"ab","variant_id":"{variant}"}}"#);
    lines.extend((0..40).map(|i| {
        event(&format!("u{}", 2 * i + 1), 1_000 + i, "Notification Clicked", &click("B"))
    }));
    lines
        .extend((0..10).map(|i| {
            event(&format!("u{}", 2 * i), 1_100 + i, "Notification Clicked", &click("A"))
        }));
    // After the evaluation window, 500 more users qualify.
    lines.extend((500..1_000).map(|i| event(&format!("u{i}"), 10_000 + i, "Ping", "{}")));
    let outcome = Outcome::run(AB, &lines);

    let variants = outcome.variants();
    assert_eq!(variants.len(), 1_000);
    let (test, rest) = variants.split_at(500);
    assert!(
        test.iter().enumerate().all(|(i, v)| v == if i % 2 == 0 { "A" } else { "B" }),
        "strict alternation"
    );
    assert!(rest.iter().all(|v| v == "B"), "everything after the 500th goes to the winner");
    let events = outcome.events();
    assert_eq!(events.len(), 1);
    assert_eq!(format!("{:?}", events[0].kind), "WinnerDeclared");
    assert_eq!(events[0].details["winner"], "B");
    assert_eq!(
        (events[0].details["clicks_A"].as_str(), events[0].details["clicks_B"].as_str()),
        ("10", "40")
    );
}

#[test]
fn with_fewer_users_than_the_test_audience_alternation_continues_throughout() {
    let mut lines: Vec<String> = (0..300).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..300).map(|i| event(&format!("u{i}"), 10 + i * 60, "Ping", "{}")));
    let outcome = Outcome::run(AB, &lines);
    let variants = outcome.variants();
    assert_eq!(variants.len(), 300);
    assert!(variants.iter().enumerate().all(|(i, v)| v == if i % 2 == 0 { "A" } else { "B" }));
    assert!(outcome.events().is_empty(), "no winner without a full test audience");
}

#[test]
fn split_delivery_sends_exactly_the_configured_proportions() {
    let campaign = "id: split\napp: shop\nname: n\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { title: A, body: a }\n    - { title: B, body: b }\n    - { title: C, body: c }\n  split: [50, 30, 20]\n";
    let mut lines: Vec<String> = (0..1_000).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..1_000).map(|i| event(&format!("u{i}"), 10 + i, "Ping", "{}")));
    let variants = Outcome::run(campaign, &lines).variants();
    let count = |v: &str| variants.iter().filter(|x| *x == v).count();
    assert_eq!((count("A"), count("B"), count("C")), (500, 300, 200));
}

#[test]
fn a_5_kb_payload_is_rejected_and_counted() {
    let body = "x".repeat(5 * 1024);
    let campaign = format!("id: big\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: {body} }}\n");
    let lines = vec![profile("u1"), event("u1", 10, "Ping", "{}")];
    let outcome = Outcome::run(&campaign, &lines);
    assert!(outcome.lines("sends.jsonl").is_empty());
    assert_eq!(outcome.stats()["big"]["skipped"]["payload_too_large"], 1);
}

#[test]
fn multi_message_picks_the_variant_of_the_users_language_with_a_default() {
    let campaign = "id: multi\napp: shop\nname: n\nwhen: { event: Ping }\nwhat:\n  choose_by: language\n  variants:\n    - { id: en, title: Hello, body: b }\n    - { id: fr, title: Bonjour, body: b }\n    - { id: default, title: Hi, body: b }\n";
    let with_language = |user: &str, language: &str| {
        format!(
            r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"language":"{language}"}},"devices":[{{"platform":"android","token":"t-{user}"}}]}}"#,
            ts(0)
        )
    };
    let lines = vec![
        with_language("anne", "fr"),
        with_language("bob", "en"),
        with_language("carl", "de"),
        event("anne", 10, "Ping", "{}"),
        event("bob", 11, "Ping", "{}"),
        event("carl", 12, "Ping", "{}"),
    ];
    let outcome = Outcome::run(campaign, &lines);
    let titles: Vec<(String, String)> = outcome
        .lines("sends.jsonl")
        .iter()
        .map(|s| {
            (s["user_id"].as_str().unwrap().to_string(), s["title"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        titles,
        vec![
            ("anne".to_string(), "Bonjour".to_string()),
            ("bob".to_string(), "Hello".to_string()),
            ("carl".to_string(), "Hi".to_string()),
        ]
    );
}

#[test]
fn throttle_of_100_per_15_minutes_over_500_candidates_sends_5_windows_of_100() {
    let campaign = "id: slow\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions: { throttle: { max: 100, per: 15m } }\n";
    let mut lines: Vec<String> = (0..500).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..500).map(|i| event(&format!("u{i}"), 10 + i, "Ping", "{}")));
    let until = chrono::DateTime::parse_from_rfc3339(&ts(3 * 3600)).unwrap().timestamp_millis();
    let outcome = Outcome::run_until(campaign, &lines, Some(until));

    let sends = outcome.lines("sends.jsonl");
    assert_eq!(sends.len(), 500);
    let times: Vec<String> =
        sends.iter().map(|s| s["send_time"].as_str().unwrap().to_string()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "in send-time order");
    let users: Vec<&str> = sends.iter().map(|s| s["user_id"].as_str().unwrap()).collect();
    assert_eq!(users[100], "u100", "the outbox keeps arrival order");
    // Windows: the first 100 right away, then one window of 100 every 15 minutes.
    let mut per_window = std::collections::BTreeMap::new();
    for send in &sends {
        let at = chrono::DateTime::parse_from_rfc3339(send["send_time"].as_str().unwrap())
            .unwrap()
            .timestamp();
        *per_window.entry((at - (1_795_000_000 + 10)) / 900).or_insert(0) += 1;
    }
    assert_eq!(
        per_window.into_iter().collect::<Vec<_>>(),
        vec![(0, 100), (1, 100), (2, 100), (3, 100), (4, 100)]
    );
}

fn ms(second: i64) -> i64 {
    (1_795_000_000 + second) * 1000
}

/// A scheduled campaign running once at second 100, for everyone with a device.
fn scheduled(id: &str, extra: &str) -> String {
    format!(
        "id: {id}\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {{ title: t, body: b }}\n{extra}",
        ts(100)
    )
}

/// `users` profiles, then one event after the run time (moving event time past it).
fn audience(users: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile(&format!("u{i}"))).collect();
    lines.push(event("u0", 200, "App Opened", "{}"));
    lines
}

fn kinds(events: &[CampaignLifecycleEvent]) -> Vec<String> {
    events.iter().map(|e| format!("{:?}", e.kind)).collect()
}

#[test]
fn safety_check_10000_qualify_with_limit_1000_sends_nothing_and_alerts_with_the_count() {
    let campaign = scheduled("coupons", "limits: { safety: 1000 }\n");
    let outcome = Outcome::run_on(&campaign, &audience(10_000), None, 4);

    assert!(outcome.lines("sends.jsonl").is_empty(), "a tripped run sends nothing");
    let events = outcome.events();
    assert_eq!(kinds(&events), ["SafetyCheckTripped"]);
    assert_eq!(events[0].details["qualified"], "10000", "counted across the 4 partitions");
    assert_eq!(events[0].details["safety_limit"], "1000");
    assert_eq!(outcome.stats()["coupons"]["skipped"]["safety_check"], 10_000);
}

#[test]
fn per_run_limit_1000_of_10000_qualified_sends_exactly_1000_across_4_partitions() {
    let campaign = scheduled("run", "limits: { per_run: 1000, safety: 20000 }\n");
    let outcome = Outcome::run_on(&campaign, &audience(10_000), None, 4);

    let sends = outcome.lines("sends.jsonl");
    assert_eq!(sends.len(), 1_000);
    let mut users: Vec<&str> = sends.iter().map(|s| s["user_id"].as_str().unwrap()).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users.len(), 1_000, "no user twice");
    let events = outcome.events();
    assert_eq!(kinds(&events), ["RunStarted", "RunFinished"]);
    assert_eq!(events[0].details["qualified"], "10000");
    assert_eq!(events[1].details["sent"], "1000");
    assert_eq!(outcome.stats()["run"]["skipped"]["run_limit"], 9_000);
}

#[test]
fn scheduled_ab_reach_20000_test_15_percent_3_variants_1000_each_then_winner_to_17000() {
    let campaign = format!(
        "id: sab\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat:\n  variants:\n    - {{ title: A, body: a }}\n    - {{ title: B, body: b }}\n    - {{ title: C, body: c }}\n  ab: {{ test_audience: \"15%\", evaluate_after: 1h }}\n",
        ts(100)
    );
    let mut lines = audience(20_000);
    // During the wait, clicks favour C.
    let click = |variant: &str| format!(r#"{{"campaign_id":"sab","variant_id":"{variant}"}}"#);
    for (i, variant) in ["A", "B", "C", "C", "C", "B"].iter().cycle().take(60).enumerate() {
        lines.push(event(
            &format!("u{i}"),
            300 + i as i64,
            "Notification Clicked",
            &click(variant),
        ));
    }
    let outcome = Outcome::run_on(&campaign, &lines, Some(ms(200 + 3_600 + 60)), 2);

    let variants = outcome.variants();
    assert_eq!(variants.len(), 20_000);
    let (test, rest) = variants.split_at(3_000);
    let count = |group: &[String], v: &str| group.iter().filter(|x| *x == v).count();
    assert_eq!((count(test, "A"), count(test, "B"), count(test, "C")), (1_000, 1_000, 1_000));
    assert!(rest.iter().all(|v| v == "C"), "the remaining 17,000 get the winner");
    let events = outcome.events();
    assert_eq!(kinds(&events), ["RunStarted", "WinnerDeclared", "RunFinished"]);
    assert_eq!(events[0].details["test_per_variant"], "1000");
    assert_eq!(events[0].details["after_winner"], "17000");
    assert_eq!(events[1].details["winner"], "C");
}

#[test]
fn a_daily_recurring_run_reaches_the_audience_once_per_run() {
    let campaign = format!(
        "id: daily\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\", every: 1d }} }}\nwhat: {{ title: t, body: b }}\noptions: {{ ignore_global_caps: true }}\n",
        ts(100)
    );
    let mut lines = audience(10);
    lines.push(event("u0", 86_400 + 200, "App Opened", "{}"));
    let outcome = Outcome::run_on(&campaign, &lines, None, 2);

    let runs: Vec<String> = outcome
        .lines("sends.jsonl")
        .iter()
        .map(|s| s["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(runs.len(), 20, "10 users, 2 runs");
    let events = outcome.events();
    assert_eq!(kinds(&events), ["RunStarted", "RunFinished", "RunStarted", "RunFinished"]);
    assert_ne!(events[0].details["run_id"], events[2].details["run_id"]);
}

#[test]
fn app_throttle_of_100_per_15_minutes_spans_campaigns_150_plus_150_leave_in_3_windows() {
    let settings =
        Settings::parse("apps:\n  shop:\n    throttle: { max: 100, per: 15m }\n", "apps").unwrap();
    let campaign = |id: &str, event: &str| {
        format!("id: {id}\napp: shop\nname: n\nwhen: {{ event: {event} }}\nwhat: {{ title: t, body: b }}\n")
    };
    let mut lines: Vec<String> = (0..300).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..150).map(|i| event(&format!("u{i}"), 10 + i, "Ping", "{}")));
    lines.extend((150..300).map(|i| event(&format!("u{i}"), 10 + i, "Pong", "{}")));
    let (first, second) = (campaign("first", "Ping"), campaign("second", "Pong"));
    let until = ms(3 * 3600);
    let outcome = Outcome::replay(&[&first, &second], &lines, Some(until), 2, settings);

    let sends = outcome.lines("sends.jsonl");
    assert_eq!(sends.len(), 300, "nothing lost");
    let window = |s: &Value| {
        let at = chrono::DateTime::parse_from_rfc3339(s["send_time"].as_str().unwrap()).unwrap();
        (at.timestamp_millis() - ms(10)) / 900_000
    };
    let mut per_window = std::collections::BTreeMap::new();
    for send in &sends {
        *per_window.entry(window(send)).or_insert(0) += 1;
    }
    assert_eq!(per_window.into_values().collect::<Vec<_>>(), vec![100, 100, 100]);
    let campaigns: Vec<&str> =
        sends[..100].iter().map(|s| s["campaign_id"].as_str().unwrap()).collect();
    assert!(campaigns.iter().all(|c| *c == "first"), "arrival order across campaigns");
}

#[test]
fn commands_expire_at_the_campaigns_end_or_their_ttl_whichever_is_first() {
    let campaign = |id: &str, ttl: &str| {
        format!(
            "id: {id}\napp: shop\nname: n\nwhen: {{ event: Ping, end: \"{}\" }}\nwhat: {{ title: t, body: b{ttl} }}\n",
            ts(3_600)
        )
    };
    let lines = vec![profile("u1"), event("u1", 10, "Ping", "{}")];
    let expiry = |outcome: &Outcome| outcome.lines("sends.jsonl")[0]["expires_at"].clone();
    let cut_off = Outcome::run(&campaign("cut", ""), &lines);
    assert_eq!(expiry(&cut_off), ts(3_600), "no TTL: the campaign's end");
    let ttl = Outcome::run(&campaign("ttl", ", push: { ttl: 10m }"), &lines);
    assert_eq!(expiry(&ttl), ts(10 + 600), "a TTL ending before the campaign");
}

/// A throttled broadcast (1 a minute) limited to 3 users, of 6: u1 and u2, queued behind the
/// throttle, get today's one notification from another campaign before their turn (app cap 1 a
/// day), so the send gate refuses them and their places go to the next users. Exactly 3 are
/// reached, whichever limit it is; the rest is refused by the limit.
#[test]
fn a_throttled_broadcast_limited_to_3_whose_queued_users_get_capped_still_reaches_exactly_3() {
    let news = "id: news\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n";
    let caps = "apps:\n  shop:\n    caps: { per_day: 1 }\n";
    for (limit, reason) in
        [("total: 3", "total_limit"), ("daily: 3", "daily_limit"), ("per_run: 3", "run_limit")]
    {
        let options = "options: { throttle: { max: 1, per: 1m } }";
        let campaign = scheduled("run", &format!("limits: {{ {limit} }}\n{options}\n"));
        let mut lines: Vec<String> = (0..6).map(|i| profile(&format!("u{i}"))).collect();
        lines.push(event("u1", 110, "Pong", "{}"));
        lines.push(event("u2", 120, "Pong", "{}"));
        lines.push(event("u5", 1_000, "App Opened", "{}"));
        let settings = Settings::parse(caps, "settings").unwrap();
        let outcome = Outcome::replay(&[&campaign, news], &lines, None, 1, settings);

        let reached: Vec<String> = outcome
            .lines("sends.jsonl")
            .iter()
            .filter(|s| s["campaign_id"] == "run")
            .map(|s| s["user_id"].as_str().unwrap().to_string())
            .collect();
        let mut reached = reached;
        reached.sort(); // a per-run limit sends in the run's random order: the set is what counts
        assert_eq!(reached, ["u0", "u3", "u4"], "{limit}");
        let skipped: Vec<(String, String)> = outcome
            .lines("skips.jsonl")
            .iter()
            .filter(|s| s["campaign_id"] == "run")
            .map(|s| (s["user_id"].as_str().unwrap().into(), s["reason"].as_str().unwrap().into()))
            .collect();
        let mut skipped = skipped;
        skipped.sort();
        let skip = |user: &str| (user.to_string(), "capped_daily".to_string());
        // Refusals at the gate (the campaign stage counts its own refusals in its stats).
        assert_eq!(skipped, [skip("u1"), skip("u2")], "{limit}");
        let stats = &outcome.stats()["run"];
        assert_eq!(stats["variants"][0]["sent"], 3, "{limit}");
        assert_eq!(stats["skipped"][reason], 1, "{limit}: u5");
        assert_eq!(stats["skipped"]["capped_daily"], 2, "{limit}");
    }
}

/// The same with a live trigger: 6 users Ping within seconds, the campaign sends 1 a minute and
/// is limited to 3; u1 and u2 are capped while queued. Those who found the limit full while
/// places were in flight waited; u3 and u4 take the returned places.
#[test]
fn a_throttled_trigger_limited_to_3_whose_queued_users_get_capped_still_reaches_exactly_3() {
    let news = "id: news\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n";
    let caps = "apps:\n  shop:\n    caps: { per_day: 1 }\n";
    for (limit, reason) in [("total: 3", "total_limit"), ("daily: 3", "daily_limit")] {
        let campaign = format!(
            "id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ {limit} }}\noptions: {{ throttle: {{ max: 1, per: 1m }} }}\n"
        );
        let mut lines: Vec<String> = (0..6).map(|i| profile(&format!("u{i}"))).collect();
        lines.extend((0..6).map(|i| event(&format!("u{i}"), 100 + i, "Ping", "{}")));
        lines.push(event("u1", 110, "Pong", "{}"));
        lines.push(event("u2", 120, "Pong", "{}"));
        lines.push(event("u5", 1_000, "App Opened", "{}"));
        let settings = Settings::parse(caps, "settings").unwrap();
        let outcome = Outcome::replay(&[&campaign, news], &lines, None, 1, settings);

        let reached: Vec<String> = outcome
            .lines("sends.jsonl")
            .iter()
            .filter(|s| s["campaign_id"] == "ping")
            .map(|s| s["user_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(reached, ["u0", "u3", "u4"], "{limit}");
        let stats = &outcome.stats()["ping"];
        assert_eq!(stats["variants"][0]["sent"], 3, "{limit}");
        assert_eq!(stats["skipped"][reason], 1, "{limit}: u5");
        assert_eq!(stats["skipped"]["capped_daily"], 2, "{limit}");
        let kinds = kinds(&outcome.events());
        let expected: &[&str] = if reason == "total_limit" {
            &["LimitReached", "Completed"]
        } else {
            &["LimitReached"]
        };
        assert_eq!(kinds, expected, "{limit}: announced once, when final");
    }
}
