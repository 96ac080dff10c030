//! Campaign definitions: every example in docs/campaigns.md is valid; invalid files list every
//! error with its field path.

use herald_engine::campaign::{
    parse_campaign, Assignment, DndAction, Filter, Op, TestPopulation, Trigger,
};

fn doc_example(id: &str) -> String {
    doc_examples()
        .into_iter()
        .find(|e| e.starts_with(&format!("id: {id}\n")))
        .expect("documented example")
}

fn doc_examples() -> Vec<String> {
    let doc = include_str!("../../docs/campaigns.md");
    doc.split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_string())
        .collect()
}

#[test]
fn every_example_in_the_documentation_is_valid() {
    let examples = doc_examples();
    assert!(examples.len() >= 7, "found {} examples", examples.len());
    for (i, example) in examples.iter().enumerate() {
        if let Err(errors) = parse_campaign(example, &format!("docs example {i}")) {
            panic!("{errors}\n---\n{example}");
        }
    }
}

#[test]
fn the_cart_example_compiles_to_an_inaction_trigger() {
    let cart = parse_campaign(&doc_example("cart-abandon"), "cart").unwrap();
    let Trigger::Event { event, conditions, unless } = &cart.when.trigger else {
        panic!("event trigger")
    };
    assert_eq!(event, "Added To Cart");
    assert_eq!(conditions[0].op, Op::Gt(10.0));
    let unless = unless.as_ref().unwrap();
    assert_eq!((unless.event.as_str(), unless.within_ms), ("Charged", 600_000));
    assert_eq!(cart.who, Filter::All(vec![]), "no who: everyone");
    assert_eq!(
        cart.profile_variables.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["first_name"],
        "templates are scanned for the profile properties they use"
    );

    let coupons = parse_campaign(&doc_example("coupons"), "coupons").unwrap();
    assert_eq!(coupons.limits.total, Some(1000));
    assert_eq!(coupons.options.dnd.as_ref().unwrap().action, DndAction::Delay);
    assert_eq!(coupons.options.timezone, Some(chrono_tz::America::Los_Angeles));
}

#[test]
fn the_winback_example_is_a_weekly_schedule_with_a_percentage_test() {
    let winback = parse_campaign(&doc_example("winback"), "winback").unwrap();
    let Trigger::Scheduled(schedule) = &winback.when.trigger else { panic!("scheduled") };
    let first = chrono::DateTime::parse_from_rfc3339("2026-12-01T17:00:00Z").unwrap();
    let week = 7 * 24 * 3_600_000;
    assert_eq!(schedule.at_ms, vec![first.timestamp_millis(), first.timestamp_millis() + week]);
    assert_eq!(schedule.every_ms, Some(week));
    let Assignment::AbTest(test) = &winback.assignment else { panic!("A/B test") };
    assert_eq!(test.test_audience, TestPopulation::Percent(15.0));
    assert_eq!((winback.limits.per_run, winback.limits.safety), (Some(500_000), Some(2_000_000)));
    // Four weeks after the first run, the latest run is the fourth.
    let end = winback.when.end.map(|t| t.timestamp_millis());
    let now = first.timestamp_millis() + 3 * week + 3_600_000;
    assert_eq!(schedule.latest_run(now, end), Some(first.timestamp_millis() + 3 * week));
    assert_eq!(schedule.latest_run(first.timestamp_millis() - 1, end), None, "not yet");
}

#[test]
fn run_limits_and_percentage_tests_need_a_schedule() {
    let text = "id: t\napp: shop\nname: n\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { title: a, body: a }\n    - { title: b, body: b }\n  ab: { test_audience: \"15%\", evaluate_after: 1h }\nlimits: { safety: 10 }\n";
    let errors = parse_campaign(text, "t").unwrap_err().to_string();
    assert!(
        errors.contains("what.ab.test_audience: a percentage needs a scheduled campaign"),
        "{errors}"
    );
    assert!(errors.contains("limits: per_run and safety apply to scheduled campaigns"), "{errors}");
    let text = "id: t\napp: shop\nname: n\nwhen: { schedule: { at: [\"2026-12-01T00:00:00Z\", \"2026-12-01T00:00:00Z\"], every: 10s } }\nwhat: { title: a, body: b }\n";
    let errors = parse_campaign(text, "t").unwrap_err().to_string();
    assert!(errors.contains("when.schedule.at: lists the same run time twice"), "{errors}");
}

#[test]
fn an_invalid_file_reports_every_error_with_its_field_path() {
    let text = r#"
id: "bad id!"
app: shop
status: running
who:
  all:
    - { property: age, older_than: 30 }
    - { property: age, between: [40, 25] }
    - { device: colour, equals: red }
when:
  event: Added To Cart
  unless: { event: Charged, within: 10 minutes }
  start: 2026-12-01T00:00:00Z
  end: 2026-11-01T00:00:00Z
what:
  variants:
    - { title: "Hi {{ profile.name ", body: b }
    - { title: t, body: b }
    - { title: t, body: b }
    - { title: t, body: b }
options:
  sample_percent: 150
  dnd: { start: "9pm", end: "09:00" }
  timezone: Mars/Olympus
  colour: blue
"#;
    let errors = parse_campaign(text, "bad.yaml").unwrap_err();
    let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "id",
            "name",
            "status",
            "who.all[0].older_than",
            "who.all[1].between",
            "who.all[2].device",
            "when.unless.within",
            "when.end",
            "what.variants",
            "what.variants[0].title",
            "options.colour",
            "options.dnd.start",
            "options.sample_percent",
            "options.timezone",
        ],
        "{errors}"
    );
    let text = errors.to_string();
    assert!(text.starts_with("bad.yaml: 14 errors"), "{text}");
    for reason in [
        "who.all[0].older_than: unknown property operator \"older_than\"",
        "when.unless.within: bad duration \"10 minutes\"",
        "when.end: 2026-11-01 00:00:00 UTC is not after when.start",
        "what.variants: has 4 variants; an A/B test has at most 3",
        "what.variants[0].title: template syntax error",
        "name: is required",
    ] {
        assert!(text.contains(reason), "missing {reason:?} in\n{text}");
    }
}

#[test]
fn yaml_syntax_errors_name_the_position() {
    let errors = parse_campaign("id: [unclosed", "broken.yaml").unwrap_err();
    assert_eq!(errors.errors.len(), 1);
    assert!(errors.to_string().contains("line"), "{errors}");
}

#[test]
fn push_options_are_parsed_and_checked() {
    use herald_engine::campaign::{InterruptionLevel, Priority};
    let rich = parse_campaign(&doc_example("rich"), "rich").unwrap();
    let push = &rich.what[0].push;
    assert_eq!(push.collapse_id.as_deref(), Some("cart-reminder"));
    assert_eq!(push.ttl_ms, Some(6 * 3_600_000));
    assert_eq!(push.priority, Priority::High);
    assert_eq!(push.interruption_level, Some(InterruptionLevel::TimeSensitive));
    assert_eq!(push.carousel.len(), 2);
    assert_eq!(push.actions[1].link, None);

    let long_collapse = doc_example("rich")
        .replace("collapse_id: cart-reminder", &format!("collapse_id: {}", "x".repeat(65)));
    let five_actions = doc_example("rich").replace(
        "      - { id: later, title: Remind me later }",
        &"      - { id: a, title: A }\n".repeat(4),
    );
    let errors = parse_campaign(&long_collapse, "a").unwrap_err().to_string();
    assert!(errors.contains("what.push.collapse_id: is longer than 64 bytes"), "{errors}");
    let errors = parse_campaign(&five_actions, "b").unwrap_err().to_string();
    assert!(errors.contains("what.push.actions: has more than 4 actions"), "{errors}");
}

#[test]
fn structural_errors_come_from_the_schema_each_with_its_path_and_reason() {
    let text = r#"
id: welcome
app: 42
name: Welcome
status: live
who:
  any:
    - { did: Bought, in_last_days: 500, first_before: 2026-01-01T00:00:00Z, first_after: 2025-01-01T00:00:00Z }
    - { colour: red }
    - { segment: [] }
when:
  schedule: { at: "2026-12-01T09:00:00Z", every: 1d, time: "09:00" }
  where: [{ property: plan, equals: pro }]
what:
  variants:
    - { title: A, body: a, push: { priority: urgent, badge: -1 } }
    - { title: B }
  ab: { test_audience: 100, evaluate_after: 1h }
  split: [50, 50]
limits: { total: 0 }
options:
  platforms: []
  throttle: { max: 10 }
"#;
    let errors = parse_campaign(text, "structure.yaml").unwrap_err().to_string();
    let expected = r#"structure.yaml: 15 errors
  app: expected text, found a number
  status: unknown status "live"; expected draft, active, paused or stopped
  who.any[0]: use first_before or first_after, not both
  who.any[0].in_last_days: 500 days is more than the longest history kept (400)
  who.any[1]: expected one of all, any, not, property, device, near, did, did_not, segment
  who.any[2].segment: needs at least one segment id
  when: where and unless apply to event triggers, not to reminder or schedule
  when.schedule.time: applies to a calendar schedule (repeat)
  what: use ab or split, not both
  what.variants[0].push.badge: expected a whole number, found -1
  what.variants[0].push.priority: unknown priority "urgent"; expected max, high or default
  what.variants[1].body: is required
  limits.total: expected a positive whole number, found 0
  options.throttle.per: is required
  options.platforms: expected a non-empty list of ios, android"#;
    assert_eq!(errors, expected);
}

#[test]
fn schema_and_semantic_errors_are_told_once_each_in_one_pass() {
    // The schema refuses the duration's shape and the unknown field; the Rust checks add what a
    // schema cannot say (a duration's length, a time zone, a template, an empty window) on the
    // fields the schema did not refuse, and say nothing twice.
    let text = r#"
id: twice
app: shop
name: Twice
when:
  event: Ping
  unless: { event: Pong, within: 20 years }
  end: 2026-12-01T00:00:00Z
what: { title: "{% if %}", body: b, push: { ttl: 3661d } }
options:
  timezone: Europe/Atlantis
  dnd: { start: "22:00", end: "22:00" }
  colour: red
"#;
    let errors = parse_campaign(text, "twice.yaml").unwrap_err();
    let lines: Vec<String> =
        errors.errors.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect();
    let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "when.unless.within",
            "what.title",
            "what.push.ttl",
            "options.colour",
            "options.dnd.end",
            "options.timezone"
        ],
        "{errors}"
    );
    assert!(lines[0].starts_with("when.unless.within: bad duration \"20 years\""), "{errors}");
    assert!(lines[1].starts_with("what.title: template syntax error"), "{errors}");
    assert!(lines[2].contains("longer than 3660d (ten years)"), "{errors}");
    assert!(lines[3].starts_with("options.colour: unknown field; expected one of"), "{errors}");
    assert_eq!(lines[4], "options.dnd.end: equals start: the window would be empty");
    assert!(lines[5].starts_with("options.timezone: unknown timezone \"Europe/Atlantis\""));
}

/// Every node of `value` as a JSON pointer.
fn pointers(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                pointers(inner, format!("{at}/{}", key.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                pointers(inner, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

#[test]
fn whatever_a_field_holds_the_schema_and_serde_agree() {
    // Any value in any field of the documented campaigns, or a field removed: the file is
    // valid, or its errors are the schema's and the semantic checks' words, never serde's (a
    // part serde could not read although the schema accepted it).
    use serde_json::{json, Value};
    let replacements = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(2.0),
        json!(2.5),
        json!(1e20),
        json!(""),
        json!("x"),
        json!("1h"),
        json!("2026-12-01T00:00:00Z"),
        json!([]),
        json!(["x"]),
        json!({}),
        json!({"x": 1}),
    ];
    let serde_words =
        ["invalid type", "invalid value", "missing field", "unknown variant", "did not match"];
    let mut checked = 0;
    for example in doc_examples().iter().filter(|e| e.starts_with("id: ")) {
        let document: Value = serde_norway::from_str(example).unwrap();
        let mut nodes = Vec::new();
        pointers(&document, String::new(), &mut nodes);
        for node in nodes.iter().filter(|node| !node.is_empty()) {
            let (parent, key) = node.rsplit_once('/').unwrap();
            let mut variants: Vec<Value> = replacements
                .iter()
                .map(|replacement| {
                    let mut changed = document.clone();
                    *changed.pointer_mut(node).unwrap() = replacement.clone();
                    changed
                })
                .collect();
            let mut removed = document.clone();
            match removed.pointer_mut(parent).unwrap() {
                Value::Object(map) => drop(map.remove(key)),
                Value::Array(items) => drop(items.remove(key.parse::<usize>().unwrap())),
                _ => unreachable!(),
            }
            variants.push(removed);
            for changed in variants {
                let text = changed.to_string();
                if let Err(errors) = parse_campaign(&text, "changed.json") {
                    for error in &errors.errors {
                        assert!(
                            !serde_words.iter().any(|words| error.reason.contains(words)),
                            "{node}: {errors}\n{text}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 1_000, "only {checked} files");
}

#[test]
fn a_field_set_to_nothing_is_absent_and_a_whole_number_may_have_a_fraction() {
    let text = "id: t\napp: shop\nname: n\nstatus:\nwho: ~\nwhen: { event: Ping, where: }\n\
                what: { title: t, body: b, subtitle: , push: { sound: ~, badge: 2.0, data: { a: ~, b: 1.0 } } }\n\
                limits: { total: 1000.0, daily: }\noptions: { timezone: ~, dnd: }\n";
    let campaign = parse_campaign(text, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(campaign.status, herald_engine::campaign::CampaignStatus::Active);
    assert_eq!((campaign.limits.total, campaign.limits.daily), (Some(1000), None));
    let push = &campaign.what[0].push;
    assert_eq!(
        (push.sound.as_deref(), push.badge, campaign.what[0].subtitle.as_deref()),
        (None, Some(2), None)
    );
    let data: Vec<(&str, &str)> = push.data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(data, [("a", "null"), ("b", "1.0")], "push.data is sent as written");
    let errors = parse_campaign(&text.replace("name: n", "name: ~"), "t").unwrap_err();
    assert_eq!(errors.to_string(), "t: 1 error\n  name: is required");
}
