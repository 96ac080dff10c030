//! Records for the runtime's replay, where a campaign may be edited between events (the
//! backtest defines its campaigns once, before its input): campaign definitions of app `shop`,
//! users with one iOS device, app events; and what a replay of them sent and announced.
//! Included by path (`#[path = "replay_support/records.rs"] mod records;`) where it is used.

use std::{cell::RefCell, sync::Arc};

use herald_engine::model::topics::{self, TopicNames};
use herald_engine::model::{AppEvent, ProfileUpdate, Record, SchemaRegistry, SendCommand};
use herald_engine::model::{CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent};
use herald_engine::runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink};
use herald_engine::{model::IngestDecoder, pipeline::engine_topology, settings::Settings};
use serde_json::json;

/// Milliseconds at the start of the input.
pub const T0: i64 = 1_795_000_000_000;

/// `value` on `topic` under `key`, at `at`.
fn keyed(topic: &str, key: &str, value: &impl Record, at: i64) -> ReplayRecord {
    let value = Some(SchemaRegistry::builtin().encode(value).unwrap());
    let key = Some(key.as_bytes().to_vec());
    ReplayRecord { topic: topic.into(), key, value, timestamp_ms: at, partition: None, offset: 0 }
}

/// The definition `yaml` of campaign `id` (app shop), applied at `at`.
pub fn define(id: &str, yaml: &str, at: i64) -> ReplayRecord {
    let envelope = CampaignEnvelope {
        campaign_id: id.into(),
        app_id: "shop".into(),
        command: CampaignCommand::Define,
        definition: Some(yaml.into()),
        revision: at,
        issued_at_ms: at,
        issued_by: None,
    };
    keyed(topics::CAMPAIGNS, id, &envelope, at)
}

/// Users `from..to` (`u<i>`) with an iOS device each, at `at`.
pub fn profiles(from: usize, to: usize, at: i64) -> impl Iterator<Item = ReplayRecord> {
    (from..to).map(move |i| {
        let user = format!("u{i}");
        let device = json!({
            "device_id": format!("d-{user}"),
            "platform": "IOS",
            "token": format!("tok-{user}"),
        });
        let update = json!({
            "app_id": "shop",
            "user_id": user,
            "timestamp_ms": at,
            "devices_added": [device],
        });
        let update: ProfileUpdate = serde_json::from_value(update).unwrap();
        keyed(topics::PROFILES, &user, &update, at)
    })
}

/// Users `from..to` send event `name` from `at` on, a millisecond apart (`tag` tells
/// occurrences apart).
pub fn events(
    name: &str,
    tag: &str,
    from: usize,
    to: usize,
    at: i64,
) -> impl Iterator<Item = ReplayRecord> {
    let (name, tag) = (name.to_string(), tag.to_string());
    (from..to).map(move |i| {
        let user = format!("u{i}");
        let event = AppEvent {
            event_id: format!("{tag}-{user}"),
            app_id: "shop".into(),
            user_id: user.clone(),
            name: name.clone(),
            timestamp_ms: at + i as i64,
            properties: Default::default(),
            sdk_version: None,
        };
        keyed(topics::EVENTS, &user, &event, at + i as i64)
    })
}

/// What a replay of `input` on 4 partitions (timers fired until `until`; shards report their
/// counters home every `stats_interval_ms`, 0: on every change) sent, in order, and the
/// lifecycle events announced.
pub fn replay(
    input: Vec<ReplayRecord>,
    until: i64,
    stats_interval_ms: i64,
) -> (Vec<SendCommand>, Vec<CampaignLifecycleEvent>) {
    let topology = engine_topology(
        "sharded",
        TopicNames::default(),
        Arc::new(Settings::default()),
        IngestDecoder::default(),
        stats_interval_ms,
    )
    .unwrap();
    let (sends, events) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
    let registry = SchemaRegistry::builtin();
    let sink = ReplaySink::Callback(Box::new(|topic, _, value, _| {
        if topic == topics::PUSH {
            sends.borrow_mut().push(registry.decode(value).unwrap());
        } else if topic == topics::CAMPAIGN_EVENTS {
            events.borrow_mut().push(registry.decode(value).unwrap());
        }
        Ok(())
    }));
    let options =
        ReplayOptions { partitions: 4, fire_timers_until: Some(until), ..ReplayOptions::default() };
    replay::run(&topology, ReplayInput::Records(input), sink, &options).unwrap();
    (sends.into_inner(), events.into_inner())
}
