//! Scenarios of the user stage, read like the product reference, run with `herald replay`'s
//! backtest on event time (the same operator code as the live engine).

/// A profile with one device (`replay_support/profiles.rs`, shared by the tests).
#[path = "replay_support/profiles.rs"]
mod profiles;

use std::path::Path;

use herald_engine::{
    backtest::{Backtest, BacktestSummary},
    model::{Candidate, Skip},
    settings::Settings,
};

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn campaign(&self, name: &str, yaml: &str) -> &Self {
        std::fs::create_dir_all(self.dir.path().join("campaigns")).unwrap();
        std::fs::write(self.dir.path().join("campaigns").join(format!("{name}.yaml")), yaml)
            .unwrap();
        self
    }

    fn replay(&self, lines: &[String], settings: &str, until: Option<&str>) -> BacktestSummary {
        let input = self.dir.path().join("input.jsonl");
        std::fs::write(&input, lines.join("\n")).unwrap();
        Backtest {
            campaigns: vec![self.dir.path().join("campaigns")],
            input,
            out: self.dir.path().join("out"),
            settings: Settings::parse(settings, "settings").unwrap(),
            app: None,
            until_ms: until.map(ms),
            partitions: 1,
        }
        .run()
        .unwrap()
    }

    fn candidates(&self) -> Vec<Candidate> {
        read(&self.dir.path().join("out/candidates.jsonl"))
    }

    fn skips(&self) -> Vec<Skip> {
        read(&self.dir.path().join("out/skips.jsonl"))
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

fn profile(user: &str, ts: &str, set: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{ts}","set":{set},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#
    )
}

fn event(user: &str, ts: &str, name: &str, props: &str) -> String {
    format!(r#"{{"type":"event","user":"{user}","ts":"{ts}","name":"{name}","props":{props}}}"#)
}

const CART: &str = r#"
id: cart
app: shop
name: Cart reminder
when:
  event: Added To Cart
  unless: { event: Charged, within: 10m }
what: { title: "{{ profile.first_name }}, you forgot {{ event.item }}", body: "Come back" }
"#;

#[test]
fn added_to_cart_without_charged_within_10_minutes_gives_one_candidate_at_t_plus_10() {
    let run = Run::new();
    run.campaign("cart", CART);
    run.replay(
        &[
            profile("u1", "2026-11-26T09:00:00Z", r#"{"first_name":"Ana","secret":"x"}"#),
            event("u1", "2026-11-26T10:00:00Z", "Added To Cart", r#"{"item":"tea"}"#),
            event("u9", "2026-11-26T11:00:00Z", "App Opened", "{}"),
        ],
        "",
        None,
    );
    let candidates = run.candidates();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0].user_id, "u1");
    assert_eq!(candidates[0].qualified_at_ms, ms("2026-11-26T10:10:00Z"));
    assert_eq!(
        candidates[0].event_properties["item"],
        herald_engine::model::PropertyValue::String("tea".into())
    );
    let carried: Vec<&String> = candidates[0].profile.keys().collect();
    assert_eq!(carried, vec!["first_name"], "only the properties the templates use travel on");
}

#[test]
fn charged_at_t_plus_9_minutes_cancels_the_window() {
    let run = Run::new();
    run.campaign("cart", CART);
    run.replay(
        &[
            profile("u1", "2026-11-26T09:00:00Z", "{}"),
            event("u1", "2026-11-26T10:00:00Z", "Added To Cart", r#"{"item":"tea"}"#),
            event("u1", "2026-11-26T10:09:00Z", "Charged", "{}"),
        ],
        "",
        Some("2026-11-26T12:00:00Z"),
    );
    assert!(run.candidates().is_empty());
}

/// A generated population: user i lives in one of three regions, speaks one of two languages,
/// and is 18 + (i % 40) years old.
fn population() -> (Vec<String>, usize) {
    let regions = ["California", "Texas", "Bavaria"];
    let languages = ["en", "de"];
    let mut lines = Vec::new();
    let mut expected = 0;
    for i in 0..600 {
        let (region, language, age) = (regions[i % 3], languages[i % 2], 18 + (i % 40));
        if region == "California" && language == "en" && (25..=40).contains(&age) {
            expected += 1;
        }
        let set = format!(r#"{{"region":"{region}","language":"{language}","age":{age}}}"#);
        lines.push(profile(&format!("u{i}"), "2026-11-26T08:00:00Z", &set));
        lines.push(event(&format!("u{i}"), "2026-11-26T09:00:00Z", "App Opened", "{}"));
    }
    (lines, expected)
}

#[test]
fn lives_in_california_speaks_english_aged_25_to_40_selects_exactly_the_matching_users() {
    let run = Run::new();
    run.campaign(
        "ca",
        r#"
id: ca
app: shop
name: Californians
who:
  all:
    - { property: region, equals: California }
    - { property: language, equals: en }
    - { property: age, between: [25, 40] }
when: { event: App Opened }
what: { title: t, body: b }
"#,
    );
    let (lines, expected) = population();
    run.replay(&lines, "", None);
    let candidates = run.candidates();
    assert!(expected > 10);
    assert_eq!(candidates.len(), expected);
    for c in &candidates {
        let i: usize = c.user_id[1..].parse().unwrap();
        assert!(
            i % 3 == 0 && i % 2 == 0 && (25..=40).contains(&(18 + i % 40)),
            "{} should not match",
            c.user_id
        );
    }
}

#[test]
fn geography_radius_around_san_francisco_and_paris_selects_by_distance() {
    let run = Run::new();
    run.campaign(
        "geo",
        r#"
id: geo
app: shop
name: Near stores
who:
  near:
    - { lat: 37.7749, lon: -122.4194, radius_km: 25 }
    - { lat: 48.8566, lon: 2.3522, radius_km: 10 }
when: { event: App Opened }
what: { title: t, body: b }
"#,
    );
    let places = [
        ("oakland", 37.8044, -122.2712, true),   // ~13 km from SF
        ("san_jose", 37.3382, -121.8863, false), // ~68 km
        ("versailles", 48.8049, 2.1204, false),  // ~17 km from Paris
        ("montmartre", 48.8867, 2.3431, true),   // ~3 km
        ("nowhere", 0.0, 0.0, false),
    ];
    let mut lines = Vec::new();
    for (user, lat, lon, _) in places {
        lines.push(profile(
            user,
            "2026-11-26T08:00:00Z",
            &format!(r#"{{"lat":{lat},"lon":{lon}}}"#),
        ));
        lines.push(event(user, "2026-11-26T09:00:00Z", "App Opened", "{}"));
    }
    run.replay(&lines, "", None);
    let mut selected: Vec<String> = run.candidates().into_iter().map(|c| c.user_id).collect();
    selected.sort();
    assert_eq!(selected, vec!["montmartre", "oakland"]);
}

#[test]
fn global_cap_of_two_a_day_caps_the_third_trigger_and_the_next_day_passes() {
    let run = Run::new();
    run.campaign(
        "capped",
        "id: capped\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n",
    );
    run.campaign(
        "exempt",
        "id: exempt\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n",
    );
    let settings = "apps:\n  shop:\n    caps: { per_day: 2 }\n    timezone: Europe/Paris\n";
    run.replay(
        &[
            profile("u1", "2026-11-26T07:00:00Z", "{}"),
            event("u1", "2026-11-26T08:00:00Z", "Ping", "{}"),
            event("u1", "2026-11-26T09:00:00Z", "Ping", "{}"),
            event("u1", "2026-11-26T10:00:00Z", "Ping", "{}"), // third today: capped
            event("u1", "2026-11-26T11:00:00Z", "Pong", "{}"), // opted out: passes
            event("u1", "2026-11-27T08:00:00Z", "Ping", "{}"), // next local day: passes
        ],
        settings,
        None,
    );
    let sent: Vec<(String, i64)> =
        run.candidates().into_iter().map(|c| (c.campaign_id, c.qualified_at_ms)).collect();
    assert_eq!(
        sent,
        vec![
            ("capped".to_string(), ms("2026-11-26T08:00:00Z")),
            ("capped".to_string(), ms("2026-11-26T09:00:00Z")),
            ("exempt".to_string(), ms("2026-11-26T11:00:00Z")),
            ("capped".to_string(), ms("2026-11-27T08:00:00Z")),
        ]
    );
    let skips = run.skips();
    assert_eq!(skips.len(), 1);
    assert_eq!(
        (skips[0].reason.as_str(), skips[0].timestamp_ms),
        ("capped_daily", ms("2026-11-26T10:00:00Z"))
    );
}

fn dnd_campaign(action: &str) -> String {
    format!(
        "id: dnd\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions:\n  dnd: {{ start: \"21:00\", end: \"09:00\", action: {action} }}\n"
    )
}

#[test]
fn dnd_discard_drops_and_counts_sends_in_the_users_night() {
    let run = Run::new();
    run.campaign("dnd", &dnd_campaign("discard"));
    run.replay(
        &[
            profile("paris", "2026-11-26T00:00:00Z", r#"{"timezone":"Europe/Paris"}"#),
            profile("la", "2026-11-26T00:00:00Z", r#"{"timezone":"America/Los_Angeles"}"#),
            // 22:00 in Paris (night), 13:00 in Los Angeles (day).
            event("paris", "2026-11-26T21:00:00Z", "Ping", "{}"),
            event("la", "2026-11-26T21:00:00Z", "Ping", "{}"),
        ],
        "",
        None,
    );
    let sent: Vec<String> = run.candidates().into_iter().map(|c| c.user_id).collect();
    assert_eq!(sent, vec!["la"]);
    let skips = run.skips();
    assert_eq!(skips.len(), 1);
    assert_eq!((skips[0].user_id.as_str(), skips[0].reason.as_str()), ("paris", "dnd_discarded"));
}

#[test]
fn dnd_delay_sends_at_nine_local_time_in_each_users_timezone() {
    let run = Run::new();
    run.campaign("dnd", &dnd_campaign("delay"));
    run.replay(
        &[
            profile("paris", "2026-11-26T00:00:00Z", r#"{"timezone":"Europe/Paris"}"#),
            profile("tokyo", "2026-11-26T00:00:00Z", r#"{"timezone":"Asia/Tokyo"}"#),
            // 23:00 Paris; 07:00 next morning in Tokyo: both in the window.
            event("paris", "2026-11-26T22:00:00Z", "Ping", "{}"),
            event("tokyo", "2026-11-26T22:00:00Z", "Ping", "{}"),
        ],
        "",
        Some("2026-11-28T00:00:00Z"),
    );
    let mut sent: Vec<(String, i64)> =
        run.candidates().into_iter().map(|c| (c.user_id, c.qualified_at_ms)).collect();
    sent.sort();
    assert_eq!(
        sent,
        vec![
            ("paris".to_string(), ms("2026-11-27T08:00:00Z")), // 09:00 Paris (UTC+1)
            ("tokyo".to_string(), ms("2026-11-27T00:00:00Z")), // 09:00 Tokyo (UTC+9)
        ]
    );
    assert!(run.skips().is_empty());
}

#[test]
fn date_property_reminder_fires_24_hours_before_the_departure_once() {
    let run = Run::new();
    run.campaign(
        "flight",
        r#"
id: flight
app: travel
name: Check-in
when:
  reminder: { event: Flight Booked, date_property: departure, offset: -24h }
what: { title: "Flight to {{ event.destination }} tomorrow", body: b }
"#,
    );
    let booked = r#"{"departure":"2026-12-01T15:00:00Z","destination":"Lisbon"}"#;
    run.replay(
        &[
            profile("u1", "2026-11-26T00:00:00Z", "{}"),
            event("u1", "2026-11-26T10:00:00Z", "Flight Booked", booked),
            event("u1", "2026-11-27T10:00:00Z", "Flight Booked", booked), // the same booking again
        ],
        "",
        Some("2026-12-02T00:00:00Z"),
    );
    let candidates = run.candidates();
    assert_eq!(candidates.len(), 1, "{candidates:?}");
    assert_eq!(candidates[0].qualified_at_ms, ms("2026-11-30T15:00:00Z"));
}

#[test]
fn users_without_a_token_for_the_targeted_platforms_are_skipped_as_not_reachable() {
    let run = Run::new();
    run.campaign(
        "android-only",
        "id: a\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions: { platforms: [android] }\n",
    );
    run.replay(
        &[
            profile("u1", "2026-11-26T00:00:00Z", "{}"),
            event("u1", "2026-11-26T01:00:00Z", "Ping", "{}"),
        ],
        "",
        None,
    );
    assert!(run.candidates().is_empty());
    assert_eq!(run.skips()[0].reason, "not_reachable");
}

#[test]
fn past_behaviour_viewed_twice_in_30_days_with_price_over_50() {
    let run = Run::new();
    run.campaign(
        "browsers",
        r#"
id: browsers
app: shop
name: Still thinking
who:
  did: Viewed Product
  at_least: 2
  in_last_days: 30
  where: [ { property: price, gt: 50 } ]
when: { event: App Opened }
what: { title: t, body: b }
"#,
    );
    let view = |user: &str, day: &str, price: u32| {
        event(
            user,
            &format!("2026-11-{day}T10:00:00Z"),
            "Viewed Product",
            &format!(r#"{{"price":{price}}}"#),
        )
    };
    run.replay(
        &[
            profile("twice", "2026-11-01T00:00:00Z", "{}"),
            profile("cheap", "2026-11-01T00:00:00Z", "{}"),
            profile("once", "2026-11-01T00:00:00Z", "{}"),
            view("twice", "10", 80),
            view("twice", "20", 60),
            view("cheap", "10", 20),
            view("cheap", "20", 30),
            view("once", "20", 99),
            event("twice", "2026-11-26T10:00:00Z", "App Opened", "{}"),
            event("cheap", "2026-11-26T10:00:00Z", "App Opened", "{}"),
            event("once", "2026-11-26T10:00:00Z", "App Opened", "{}"),
        ],
        "",
        None,
    );
    let selected: Vec<String> = run.candidates().into_iter().map(|c| c.user_id).collect();
    assert_eq!(selected, vec!["twice"]);
}

/// Engagements: a delivered receipt, a click, and a purchase within the conversion window
/// become DELIVERED, CLICK and CONVERSION records keyed by campaign; a token-invalid receipt
/// removes the device, so the next trigger finds the user unreachable.
#[test]
fn receipts_clicks_and_conversions_become_engagements() {
    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            Engagement, EngagementKind, IngestDecoder, Receipt, ReceiptStatus, SchemaRegistry,
        },
        pipeline::engine_topology,
        runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    };
    use std::{cell::RefCell, sync::Arc};

    let registry = SchemaRegistry::builtin();
    let campaign = r#"{"id":"promo","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"options":{"conversion":{"event":"Charged","within":"1h"}}}"#;
    let envelope = herald_engine::model::CampaignEnvelope {
        campaign_id: "promo".into(),
        app_id: "shop".into(),
        command: herald_engine::model::CampaignCommand::Define,
        definition: Some(campaign.into()),
        revision: 1,
        issued_at_ms: 0,
        issued_by: None,
    };
    let t0 = ms("2026-11-26T10:00:00Z");
    let record = |topic: &str, key: &str, value: Vec<u8>, at: i64| ReplayRecord {
        topic: topic.into(),
        partition: None,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        timestamp_ms: at,
    };
    let receipt = |status: ReceiptStatus, at: i64| Receipt {
        message_id: "m1".into(),
        campaign_id: "promo".into(),
        variant_id: "A".into(),
        app_id: "shop".into(),
        user_id: "u1".into(),
        device_id: "tok-u1".into(),
        token: "tok-u1".into(),
        status,
        reason: (status == ReceiptStatus::TokenInvalid).then(|| "Unregistered".to_string()),
        provider_id: None,
        latency_ms: None,
        timestamp_ms: at,
        provider_reason: None,
    };
    let app_event = |name: &str, props: &str, at: i64| herald_engine::model::AppEvent {
        event_id: format!("{name}-{at}"),
        app_id: "shop".into(),
        user_id: "u1".into(),
        name: name.into(),
        timestamp_ms: at,
        properties: serde_json::from_str(props).unwrap(),
        sdk_version: None,
    };
    let profile = herald_engine::model::ProfileUpdate {
        app_id: "shop".into(),
        user_id: "u1".into(),
        timestamp_ms: t0,
        set: Default::default(),
        unset: vec![],
        devices_added: vec![herald_engine::model::Device {
            device_id: "tok-u1".into(),
            platform: herald_engine::model::Platform::Ios,
            token: "tok-u1".into(),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        tokens_removed: vec![],
    };
    let input = vec![
        record(topics::CAMPAIGNS, "promo", registry.encode(&envelope).unwrap(), t0),
        record(topics::PROFILES, "u1", registry.encode(&profile).unwrap(), t0),
        record(
            topics::RECEIPTS,
            "u1",
            registry.encode(&receipt(ReceiptStatus::Accepted, t0 + 1_000)).unwrap(),
            t0 + 1_000,
        ),
        record(
            topics::EVENTS,
            "u1",
            registry
                .encode(&app_event(
                    "Notification Clicked",
                    r#"{"campaign_id":"promo","variant_id":"A","message_id":"m1"}"#,
                    t0 + 2_000,
                ))
                .unwrap(),
            t0 + 2_000,
        ),
        record(
            topics::EVENTS,
            "u1",
            registry.encode(&app_event("Charged", r#"{"value":25.5}"#, t0 + 60_000)).unwrap(),
            t0 + 60_000,
        ),
        record(
            topics::EVENTS,
            "u1",
            registry.encode(&app_event("Charged", r#"{"value":9.0}"#, t0 + 70_000)).unwrap(),
            t0 + 70_000,
        ),
        record(
            topics::RECEIPTS,
            "u1",
            registry.encode(&receipt(ReceiptStatus::TokenInvalid, t0 + 80_000)).unwrap(),
            t0 + 80_000,
        ),
        record(
            topics::EVENTS,
            "u1",
            registry.encode(&app_event("Ping", "{}", t0 + 90_000)).unwrap(),
            t0 + 90_000,
        ),
    ];
    let topology = engine_topology(
        "engagements",
        TopicNames::default(),
        Arc::new(Settings::default()),
        IngestDecoder::default(),
        0,
    )
    .unwrap();
    let outputs = RefCell::new(Vec::new());
    replay::run(
        &topology,
        ReplayInput::Records(input),
        ReplaySink::Callback(Box::new(|_, _, value, _| {
            outputs.borrow_mut().push(value.to_vec());
            Ok(())
        })),
        &ReplayOptions::default(),
    )
    .unwrap();
    let outputs = outputs.into_inner();
    let engagements: Vec<(EngagementKind, Option<f64>)> = outputs
        .iter()
        .filter_map(|v| registry.decode::<Engagement>(v).ok())
        .map(|e| (e.kind, e.value))
        .collect();
    assert_eq!(
        engagements,
        vec![
            (EngagementKind::Delivered, None),
            (EngagementKind::Click, None),
            (EngagementKind::Conversion, Some(25.5)), // once per delivery: the second Charged is not attributed
            (EngagementKind::TokenInvalid, None),
        ]
    );
    let skips: Vec<String> =
        outputs.iter().filter_map(|v| registry.decode::<Skip>(v).ok()).map(|s| s.reason).collect();
    assert_eq!(skips, vec!["not_reachable"], "the invalid token was removed from the profile");
    let stats = outputs
        .iter()
        .rev()
        .find_map(|v| registry.decode::<herald_engine::model::CampaignStats>(v).ok())
        .expect("stats snapshots");
    assert_eq!(stats.failed["Unregistered"], 1, "failures are counted by the provider's reason");
}

#[test]
fn first_time_after_a_date_selects_newcomers() {
    let run = Run::new();
    run.campaign(
        "newcomers",
        "id: n\napp: shop\nname: n\nwho: { did: App Opened, first_after: 2026-11-15T00:00:00Z }\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n",
    );
    run.replay(
        &[
            profile("old", "2026-11-01T00:00:00Z", "{}"),
            profile("new", "2026-11-01T00:00:00Z", "{}"),
            event("old", "2026-11-10T10:00:00Z", "App Opened", "{}"),
            event("old", "2026-11-20T10:00:00Z", "App Opened", "{}"),
            event("new", "2026-11-20T10:00:00Z", "App Opened", "{}"),
            event("old", "2026-11-26T10:00:00Z", "Ping", "{}"),
            event("new", "2026-11-26T10:00:00Z", "Ping", "{}"),
        ],
        "",
        None,
    );
    let selected: Vec<String> = run.candidates().into_iter().map(|c| c.user_id).collect();
    assert_eq!(selected, vec!["new"]);
}

impl Run {
    fn sends(&self) -> Vec<serde_json::Value> {
        read(&self.dir.path().join("out/sends.jsonl"))
    }

    fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("out/stats.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// (campaign, user) of every send, in order.
    fn sent_pairs(&self) -> Vec<(String, String)> {
        self.sends()
            .iter()
            .map(|s| {
                (s["campaign_id"].as_str().unwrap().into(), s["user_id"].as_str().unwrap().into())
            })
            .collect()
    }
}

/// The `sent` count of `campaign`'s variant `variant` in the final stats.
fn sent_stat(stats: &serde_json::Value, campaign: &str, variant: &str) -> i64 {
    stats[campaign]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant_id"] == variant)
        .map(|v| v["sent"].as_i64().unwrap())
        .unwrap()
}

const PING: &str =
    "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";

#[test]
fn two_pings_an_hour_apart_are_two_notifications_with_their_own_message_ids() {
    let lines = [
        profile("u1", "2026-11-26T07:00:00Z", "{}"),
        event("u1", "2026-11-26T08:00:00Z", "Ping", "{}"),
        event("u1", "2026-11-26T09:00:00Z", "Ping", "{}"),
    ];
    let ids = |run: &Run| -> Vec<String> {
        run.sends().iter().map(|s| s["message_id"].as_str().unwrap().to_string()).collect()
    };
    let run = Run::new();
    run.campaign("ping", PING);
    run.replay(&lines, "", None);
    let first = ids(&run);
    assert_eq!(first.len(), 2, "{first:?}");
    assert_ne!(first[0], first[1], "two occurrences share a message id");
    assert_eq!(sent_stat(&run.stats(), "ping", "A"), 2);
    // The same occurrences processed again keep their ids (the senders' dedup relies on it).
    run.replay(&lines, "", None);
    assert_eq!(ids(&run), first);
}

#[test]
fn a_total_limit_of_3_spends_the_daily_cap_of_only_the_3_users_sent_to() {
    let run = Run::new();
    run.campaign(
        "coupon",
        "id: coupon\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 3 }\n",
    );
    run.campaign(
        "news",
        "id: news\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n",
    );
    let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    let mut lines: Vec<String> =
        users.iter().map(|u| profile(u, "2026-11-26T07:00:00Z", "{}")).collect();
    for (i, user) in users.iter().enumerate() {
        lines.push(event(user, &format!("2026-11-26T08:{i:02}:00Z"), "Ping", "{}"));
    }
    for (i, user) in users.iter().enumerate() {
        lines.push(event(user, &format!("2026-11-26T12:{i:02}:00Z"), "Pong", "{}"));
    }
    run.replay(&lines, "apps:\n  shop:\n    caps: { per_day: 1 }\n", None);
    let pair = |c: &str, u: &str| (c.to_string(), u.to_string());
    let mut expected: Vec<(String, String)> =
        users[..3].iter().map(|u| pair("coupon", u)).collect();
    expected.extend(users[3..].iter().map(|u| pair("news", u)));
    assert_eq!(run.sent_pairs(), expected);
    let capped: Vec<(String, String, String)> = run
        .skips()
        .into_iter()
        .filter(|s| s.campaign_id == "news")
        .map(|s| (s.campaign_id, s.user_id, s.reason))
        .collect();
    let capped_expected: Vec<(String, String, String)> =
        users[..3].iter().map(|u| ("news".into(), u.clone(), "capped_daily".into())).collect();
    assert_eq!(capped, capped_expected);
    let stats = run.stats();
    assert_eq!(sent_stat(&stats, "coupon", "A"), 3);
    assert_eq!(sent_stat(&stats, "news", "A"), 7);
}

#[test]
fn a_throttled_send_counts_against_caps_when_it_leaves_and_is_skipped_if_capped_by_then() {
    let run = Run::new();
    run.campaign(
        "slow",
        "id: slow\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions: { throttle: { max: 1, per: 1h } }\n",
    );
    run.campaign(
        "fast",
        "id: fast\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n",
    );
    run.replay(
        &[
            profile("u1", "2026-11-26T07:00:00Z", "{}"),
            profile("u2", "2026-11-26T07:00:00Z", "{}"),
            // u2 has two devices: one notification, two commands, one decision at the gate.
            r#"{"type":"profile","user":"u2","ts":"2026-11-26T07:00:00Z","devices":[{"platform":"android","token":"tok-u2-a"}]}"#.to_string(),
            profile("clock", "2026-11-26T07:00:00Z", "{}"),
            event("u1", "2026-11-26T08:00:00Z", "Ping", "{}"), // leaves at once
            event("u2", "2026-11-26T08:00:01Z", "Ping", "{}"), // waits for 09:00
            event("u2", "2026-11-26T08:30:00Z", "Pong", "{}"), // u2's first notification today
            event("clock", "2026-11-26T10:00:00Z", "Tick", "{}"),
        ],
        "apps:\n  shop:\n    caps: { per_day: 1 }\n",
        None,
    );
    let pair = |c: &str, u: &str| (c.to_string(), u.to_string());
    assert_eq!(run.sent_pairs(), vec![pair("slow", "u1"), pair("fast", "u2"), pair("fast", "u2")]);
    // Both of u2's device commands are refused at the gate; the first gives the place back.
    let skipped: Vec<(String, String, String, i64, bool)> = run
        .skips()
        .into_iter()
        .map(|s| (s.campaign_id, s.user_id, s.reason, s.timestamp_ms, s.returns_place))
        .collect();
    let refused = |first| {
        ("slow".into(), "u2".into(), "capped_daily".into(), ms("2026-11-26T09:00:00Z"), first)
    };
    assert_eq!(skipped, vec![refused(true), refused(false)]);
    let stats = run.stats();
    assert_eq!(sent_stat(&stats, "slow", "A"), 1);
    assert_eq!(sent_stat(&stats, "fast", "A"), 2);
    assert_eq!(stats["slow"]["skipped"]["capped_daily"], 1);
}

#[test]
fn dnd_of_a_user_without_a_timezone_uses_the_campaigns_timezone_before_the_apps() {
    let run = Run::new();
    run.campaign(
        "dnd",
        "id: dnd\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions:\n  timezone: America/Los_Angeles\n  dnd: { start: \"21:00\", end: \"09:00\", action: delay }\n",
    );
    // 22:00 in Paris (the app's timezone) is 13:00 in Los Angeles: outside the campaign's DND.
    run.replay(
        &[
            profile("u1", "2026-11-26T00:00:00Z", "{}"),
            event("u1", "2026-11-26T21:00:00Z", "Ping", "{}"),
        ],
        "apps:\n  shop:\n    timezone: Europe/Paris\n",
        None,
    );
    let at: Vec<i64> = run.candidates().into_iter().map(|c| c.qualified_at_ms).collect();
    assert_eq!(at, vec![ms("2026-11-26T21:00:00Z")]);
}

/// Records for the replay driver with operator commands between them: campaign envelopes of one
/// campaign, profiles with one iOS device, app events.
mod operated {
    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, Candidate,
            IngestDecoder, LifecycleKind, Platform, SchemaRegistry, Skip,
        },
        pipeline::engine_topology,
        runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        settings::Settings,
    };
    use std::{cell::RefCell, sync::Arc};

    /// One campaign, by id and definition (JSON), and the records that drive it.
    pub struct Operated {
        pub id: &'static str,
        pub definition: String,
    }

    /// What the replay wrote, decoded.
    pub struct Outcome {
        pub candidates: Vec<Candidate>,
        pub skips: Vec<(String, String)>,
        pub lifecycle: Vec<CampaignLifecycleEvent>,
    }

    impl Outcome {
        pub fn kinds(&self) -> Vec<LifecycleKind> {
            self.lifecycle.iter().map(|e| e.kind).collect()
        }
    }

    fn on_key(topic: &str, key: &str, value: Vec<u8>, at: i64) -> ReplayRecord {
        ReplayRecord {
            topic: topic.into(),
            partition: None,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            timestamp_ms: at,
        }
    }

    impl Operated {
        pub fn command(&self, command: CampaignCommand, at: i64) -> ReplayRecord {
            let envelope = CampaignEnvelope {
                campaign_id: self.id.into(),
                app_id: "shop".into(),
                command,
                definition: Some(self.definition.clone()),
                revision: at,
                issued_at_ms: at,
                issued_by: None,
            };
            let value = SchemaRegistry::builtin().encode(&envelope).unwrap();
            on_key(topics::CAMPAIGNS, self.id, value, at)
        }

        pub fn profile(&self, user: &str, at: i64) -> ReplayRecord {
            let update = crate::profiles::profile_update(user, Platform::Ios, at, &[]);
            on_key(topics::PROFILES, user, SchemaRegistry::builtin().encode(&update).unwrap(), at)
        }

        pub fn event(&self, user: &str, name: &str, at: i64) -> ReplayRecord {
            let event = AppEvent {
                event_id: format!("{user}-{name}-{at}"),
                app_id: "shop".into(),
                user_id: user.into(),
                name: name.into(),
                timestamp_ms: at,
                properties: Default::default(),
                sdk_version: None,
            };
            on_key(topics::EVENTS, user, SchemaRegistry::builtin().encode(&event).unwrap(), at)
        }

        /// Replays `input` through the engine's topology on event time.
        pub fn replay(&self, input: Vec<ReplayRecord>) -> Outcome {
            let topology = engine_topology(
                "operated",
                TopicNames::default(),
                Arc::new(Settings::default()),
                IngestDecoder::default(),
                0,
            )
            .unwrap();
            let outputs = RefCell::new(Vec::new());
            replay::run(
                &topology,
                ReplayInput::Records(input),
                ReplaySink::Callback(Box::new(|_, _, value, _| {
                    outputs.borrow_mut().push(value.to_vec());
                    Ok(())
                })),
                &ReplayOptions::default(),
            )
            .unwrap();
            let registry = SchemaRegistry::builtin();
            let outputs = outputs.into_inner();
            Outcome {
                candidates: outputs.iter().filter_map(|v| registry.decode(v).ok()).collect(),
                skips: outputs
                    .iter()
                    .filter_map(|v| registry.decode::<Skip>(v).ok())
                    .map(|s| (s.user_id, s.reason))
                    .collect(),
                lifecycle: outputs.iter().filter_map(|v| registry.decode(v).ok()).collect(),
            }
        }
    }
}

const MINUTE: i64 = 60_000;

fn cart_campaign(end: Option<&str>) -> operated::Operated {
    let end = end.map(|e| format!(r#","end":"{e}""#)).unwrap_or_default();
    operated::Operated {
        id: "cart",
        definition: format!(
            r#"{{"id":"cart","app":"shop","name":"n","when":{{"event":"Added To Cart","unless":{{"event":"Charged","within":"10m"}}{end}}},"what":{{"title":"t","body":"b"}}}}"#
        ),
    }
}

/// Pause holds and stop ends, on the replay's event-time clock with operator commands in the
/// input: windows that end during a pause are held and sent on resume; an `unless` event during
/// the pause still closes a window; a stopped campaign drops what it held, counted `stopped`.
#[test]
fn a_pause_holds_ended_windows_until_resume_and_a_stop_drops_them_counted() {
    use herald_engine::model::{CampaignCommand::*, LifecycleKind};
    let t0 = ms("2026-11-26T10:00:00Z");
    let cart = cart_campaign(None);
    let outcome = cart.replay(vec![
        cart.command(Define, t0),
        cart.profile("u1", t0),
        cart.profile("u2", t0),
        cart.profile("u3", t0),
        cart.profile("u4", t0),
        cart.event("u1", "Added To Cart", t0 + MINUTE),
        cart.event("u2", "Added To Cart", t0 + MINUTE),
        cart.event("u3", "Added To Cart", t0 + MINUTE),
        cart.command(Pause, t0 + 5 * MINUTE),
        cart.event("u2", "Charged", t0 + 8 * MINUTE), // during the pause, before u2's window ends
        // The windows of u1 and u3 end at +11 min, during the pause.
        cart.command(Resume, t0 + 20 * MINUTE),
        cart.event("u4", "Added To Cart", t0 + 30 * MINUTE),
        cart.command(Pause, t0 + 35 * MINUTE),
        // u4's window ends at +40 min, during the pause; then the campaign is stopped.
        cart.command(Stop, t0 + 45 * MINUTE),
        cart.event("u1", "App Opened", t0 + 60 * MINUTE),
    ]);
    let released: Vec<&str> = outcome.candidates.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(released, ["u1", "u3"], "held on pause, released on resume; u2 bought");
    for candidate in &outcome.candidates {
        let at = candidate.qualified_at_ms;
        assert!((t0 + 20 * MINUTE..t0 + 30 * MINUTE).contains(&at), "released at resume: {at}");
    }
    assert_eq!(outcome.skips, [("u4".to_string(), "stopped".to_string())]);
    assert_eq!(
        outcome.kinds(),
        [
            LifecycleKind::Paused,
            LifecycleKind::Resumed,
            LifecycleKind::Paused,
            LifecycleKind::Stopped
        ]
    );
}

#[test]
fn users_held_by_a_pause_past_the_campaigns_end_count_expired_and_the_end_completes_it() {
    use herald_engine::model::{CampaignCommand::*, LifecycleKind};
    let t0 = ms("2026-11-26T10:00:00Z");
    let cart = cart_campaign(Some("2026-11-26T10:30:00Z"));
    let outcome = cart.replay(vec![
        cart.command(Define, t0),
        cart.profile("u1", t0),
        cart.event("u1", "Added To Cart", t0 + MINUTE),
        cart.command(Pause, t0 + 5 * MINUTE),
        // u1's window ends at +11 min during the pause; the campaign ends at +30 min, paused.
        cart.event("u1", "App Opened", t0 + 40 * MINUTE),
        cart.event("u1", "App Opened", t0 + 45 * MINUTE),
    ]);
    assert!(outcome.candidates.is_empty());
    assert_eq!(outcome.skips, [("u1".to_string(), "expired".to_string())]);
    assert_eq!(outcome.kinds(), [LifecycleKind::Paused, LifecycleKind::Completed]);
    assert_eq!(outcome.lifecycle[1].details["reason"], "end_date");
}

/// A throttled send counted on one day, refused at the gate after midnight, does not give its
/// place back to the new day: the new day's limit of 2 still sends 2.
#[test]
fn a_throttled_send_refused_after_midnight_does_not_free_a_place_of_the_new_day() {
    let run = Run::new();
    run.campaign(
        "slow",
        "id: slow\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { daily: 2 }\noptions: { throttle: { max: 1, per: 1h } }\n",
    );
    run.campaign(
        "fast",
        "id: fast\napp: shop\nname: n\nwhen: { event: Pong }\nwhat: { title: t, body: b }\n",
    );
    let mut lines: Vec<String> = ["u1", "u2", "u3", "u4", "u5"]
        .iter()
        .map(|u| profile(u, "2026-11-26T20:00:00Z", "{}"))
        .collect();
    lines.extend([
        event("u1", "2026-11-26T23:30:00Z", "Ping", "{}"), // leaves at once (day 1: 1)
        event("u2", "2026-11-26T23:40:00Z", "Ping", "{}"), // waits for 00:30 (day 1: 2)
        event("u2", "2026-11-27T00:10:00Z", "Pong", "{}"), // u2's notification of day 2
        event("u3", "2026-11-27T00:20:00Z", "Ping", "{}"), // day 2: 1
        // 00:30: u2's slow send leaves and is refused (capped); day 2 keeps its count.
        event("u4", "2026-11-27T00:40:00Z", "Ping", "{}"), // day 2: 2
        event("u5", "2026-11-27T00:45:00Z", "Ping", "{}"), // day 2 is full
        event("u1", "2026-11-27T06:00:00Z", "Tick", "{}"),
    ]);
    run.replay(&lines, "apps:\n  shop:\n    caps: { per_day: 1 }\n", None);
    let pair = |c: &str, u: &str| (c.to_string(), u.to_string());
    let mut sent = run.sent_pairs();
    sent.sort();
    assert_eq!(
        sent,
        vec![pair("fast", "u2"), pair("slow", "u1"), pair("slow", "u3"), pair("slow", "u4")]
    );
    let skipped: Vec<(String, String, String)> =
        run.skips().into_iter().map(|s| (s.campaign_id, s.user_id, s.reason)).collect();
    assert_eq!(skipped, vec![("slow".into(), "u2".into(), "capped_daily".into())]);
    assert_eq!(run.stats()["slow"]["skipped"]["daily_limit"], 1, "u5");
}
