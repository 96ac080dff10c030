//! Event properties in the history (issue 14 item 7): a campaign defined after the events sees,
//! in its `where` conditions on past behaviour, the occurrences from before it existed, within
//! the configured budget of property sets per user, event and day. Run on the replay driver with
//! the campaign defined part-way through the input, as `herald campaign apply` would.

/// A profile with one device (`replay_support/profiles.rs`, shared by the tests).
#[path = "replay_support/profiles.rs"]
mod profiles;

use std::{cell::RefCell, sync::Arc};

use herald_engine::{
    model::{
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, Candidate, IngestDecoder, Platform,
        PropertyValue, Record, SchemaRegistry,
    },
    pipeline::engine_topology,
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    settings::Settings,
};

const DAY: i64 = 86_400_000;
/// 2026-11-01T00:00:00Z.
const NOV_1: i64 = 1_793_491_200_000;

/// Triggered by `App Opened`: users who bought shoes for at least 50 in the last 30 days.
const SHOES: &str = r#"{"id":"shoes","app":"shop","name":"n",
  "who":{"did":"Purchase","in_last_days":30,"where":[{"property":"category","equals":"shoes"},{"property":"amount","gte":50}]},
  "when":{"event":"App Opened"},"what":{"title":"t","body":"b"},"options":{"ignore_global_caps":true}}"#;

fn record<R: Record>(topic: &str, key: &str, at: i64, value: &R) -> ReplayRecord {
    ReplayRecord {
        topic: topic.into(),
        partition: None,
        offset: 0,
        key: Some(key.as_bytes().to_vec()),
        value: Some(SchemaRegistry::builtin().encode(value).unwrap()),
        timestamp_ms: at,
    }
}

fn profile(user: &str, at: i64) -> ReplayRecord {
    record(topics::PROFILES, user, at, &profiles::profile_update(user, Platform::Ios, at, &[]))
}

fn event(user: &str, at: i64, name: &str, properties: &[(&str, PropertyValue)]) -> ReplayRecord {
    let event = AppEvent {
        event_id: format!("{user}-{name}-{at}-{}", properties.len()),
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties: properties.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        sdk_version: None,
    };
    record(topics::EVENTS, user, at, &event)
}

fn purchase(user: &str, at: i64, category: &str, amount: i64) -> ReplayRecord {
    let category = PropertyValue::String(category.into());
    event(user, at, "Purchase", &[("category", category), ("amount", PropertyValue::Long(amount))])
}

fn define(campaign: &str, at: i64) -> ReplayRecord {
    let definition: serde_json::Value = serde_json::from_str(campaign).unwrap();
    let envelope = CampaignEnvelope {
        campaign_id: definition["id"].as_str().unwrap().into(),
        app_id: "shop".into(),
        command: CampaignCommand::Define,
        definition: Some(definition.to_string()),
        revision: 0,
        issued_at_ms: at,
        issued_by: None,
    };
    record(topics::CAMPAIGNS, "shoes", at, &envelope)
}

/// Replays `input` with `settings` on `partitions` partitions: the users who became candidates.
fn candidates(settings: &str, input: Vec<ReplayRecord>, partitions: i32) -> Vec<String> {
    let settings = Arc::new(Settings::parse(settings, "settings").unwrap());
    let topology =
        engine_topology("it-props", TopicNames::default(), settings, IngestDecoder::default(), 0)
            .unwrap();
    let users = RefCell::new(Vec::new());
    let sink = ReplaySink::Callback(Box::new(|topic, _key, value, _at| {
        let registry = SchemaRegistry::builtin();
        if topic == topics::CAMPAIGN_FLOW
            && registry.decode_value(value).map(|(name, _)| name == Candidate::FULL_NAME).unwrap()
        {
            users.borrow_mut().push(registry.decode::<Candidate>(value).unwrap().user_id);
        }
        Ok(())
    }));
    let options = ReplayOptions { partitions, ..ReplayOptions::default() };
    replay::run(&topology, ReplayInput::Records(input), sink, &options).unwrap();
    let mut users = users.into_inner();
    users.sort();
    users
}

/// Purchases from the 1st to the 9th, the campaign defined on the 10th, everyone opening the app
/// on the 11th.
fn input() -> Vec<ReplayRecord> {
    let users = ["big", "twice", "cheap", "books", "none", "old"];
    let mut input: Vec<ReplayRecord> = users.iter().map(|u| profile(u, NOV_1)).collect();
    input.extend([
        purchase("old", NOV_1 - 40 * DAY + 3_600_000, "shoes", 200), // before the look-back
        purchase("big", NOV_1 + 2 * DAY, "shoes", 120),
        purchase("twice", NOV_1 + 3 * DAY, "books", 80),
        purchase("twice", NOV_1 + 3 * DAY + 60_000, "shoes", 90),
        purchase("cheap", NOV_1 + 4 * DAY, "shoes", 20),
        purchase("books", NOV_1 + 5 * DAY, "books", 300),
        event("none", NOV_1 + 6 * DAY, "App Opened", &[]),
    ]);
    input.sort_by_key(|r| r.timestamp_ms);
    input.push(define(SHOES, NOV_1 + 9 * DAY));
    input.extend(users.iter().map(|u| event(u, NOV_1 + 10 * DAY, "App Opened", &[])));
    input
}

#[test]
fn a_campaign_defined_after_the_events_sees_their_properties() {
    for partitions in [1, 3] {
        let found = candidates("", input(), partitions);
        assert_eq!(found, ["big", "twice"], "on {partitions} partition(s)");
    }
}

#[test]
fn a_property_set_past_the_days_budget_is_not_kept() {
    // One set per user, event and day: twice's shoes (the day's second set) is not kept.
    let found = candidates("history: { properties: { max_sets: 1 } }", input(), 1);
    assert_eq!(found, ["big"]);
    // 20 bytes a day: no set of {"amount":…,"category":…} fits.
    let found = candidates("history: { properties: { max_bytes: 20 } }", input(), 1);
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn only_the_kept_properties_are_seen() {
    // amount is not kept: a condition on it cannot be met from the history.
    let found = candidates("history: { properties: { keep: [category] } }", input(), 1);
    assert_eq!(found, Vec::<String>::new());
    let found = candidates("history: { properties: { keep: [category, amount] } }", input(), 1);
    assert_eq!(found, ["big", "twice"]);
}

#[test]
fn property_history_settings_default_and_errors_name_the_field() {
    let defaults = Settings::parse("", "s").unwrap();
    assert_eq!(defaults.property_history().max_sets, 8);
    assert_eq!(defaults.property_history().max_bytes, 1024);
    let errors = Settings::parse("history: { properties: { keep: 3, max_sets: 0 } }", "s")
        .unwrap_err()
        .errors;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["history.properties.keep", "history.properties.max_sets"]);
}
