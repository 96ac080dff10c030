//! Scenarios of Herald's ingest door, replayed on event time over several partitions with
//! records pinned where other producers put them: records on the wrong partition for their user
//! (another partitioner, no key) reach their user's task through `herald.ingest-repartition`;
//! events with an id seen within the window count once; bad records are dead-lettered with the
//! field in the reason and the rest goes on; an anonymous id that identifies merges into the
//! known user.

use std::collections::{BTreeMap, HashMap};

use herald_engine::{
    model::{
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, Candidate, DeadLetter, Device, IngestConfig,
        IngestDecoder, Platform, ProfileUpdate, Properties, PropertyValue, Record, SchemaRegistry,
        SendCommand, Skip,
    },
    payload,
    pipeline::engine_topology,
    runtime::{
        partition_for,
        replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    },
    settings::Settings,
};

const PARTITIONS: i32 = 4;
/// 2025-11-24T16:00:00Z.
const T0: i64 = 1_764_000_000_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

const PING: &str =
    "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";

/// The replay input: records pinned to partitions, with per-partition offsets.
#[derive(Default)]
struct Input {
    records: Vec<ReplayRecord>,
    offsets: HashMap<(String, i32), i64>,
}

impl Input {
    /// Adds a record to `partition` of `topic`; returns its origin (`topic/partition/offset`).
    fn push(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&str>,
        value: Vec<u8>,
        at: i64,
    ) -> String {
        let offset = self.offsets.entry((topic.to_string(), partition)).or_default();
        let origin = format!("{topic}/{partition}/{offset}");
        self.records.push(ReplayRecord {
            topic: topic.into(),
            partition: Some(partition),
            offset: *offset,
            key: key.map(|k| k.as_bytes().to_vec()),
            value: Some(value),
            timestamp_ms: at,
        });
        *offset += 1;
        origin
    }

    fn profile(&mut self, partition: i32, update: &ProfileUpdate) -> String {
        let bytes = SchemaRegistry::builtin().encode(update).unwrap();
        self.push(topics::PROFILES, partition, Some(&update.user_id), bytes, update.timestamp_ms)
    }

    fn event(&mut self, partition: i32, key: Option<&str>, event: &AppEvent) -> String {
        let bytes = SchemaRegistry::builtin().encode(event).unwrap();
        self.push(topics::EVENTS, partition, key, bytes, event.timestamp_ms)
    }

    fn json(&mut self, partition: i32, json: serde_json::Value, at: i64) -> String {
        self.push(topics::EVENTS, partition, None, json.to_string().into_bytes(), at)
    }
}

/// The partition the engine reads `user` from.
fn right(user: &str) -> i32 {
    partition_for(user.as_bytes(), PARTITIONS)
}

/// Another partition than `user`'s.
fn wrong(user: &str) -> i32 {
    (right(user) + 1) % PARTITIONS
}

fn profile(user: &str, at: i64, set: &[(&str, &str)], with_device: bool) -> ProfileUpdate {
    ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: at,
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), PropertyValue::String(v.to_string())))
            .collect(),
        unset: vec![],
        devices_added: if with_device {
            let token = format!("tok-{user}");
            vec![Device { platform: Platform::Ios, token, ..device(&format!("d-{user}")) }]
        } else {
            vec![]
        },
        tokens_removed: vec![],
    }
}

fn device(id: &str) -> Device {
    Device {
        device_id: id.into(),
        platform: Platform::Android,
        token: format!("tok-{id}"),
        app_version: None,
        os_version: None,
        make: None,
        model: None,
        sdk_version: None,
    }
}

fn event(user: &str, name: &str, id: &str, at: i64) -> AppEvent {
    AppEvent {
        event_id: id.into(),
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties: Properties::new(),
        sdk_version: None,
    }
}

/// What a replay wrote.
#[derive(Default)]
struct Out {
    sends: Vec<SendCommand>,
    /// Run ids of the candidates the user stage qualified.
    candidate_runs: Vec<String>,
    skips: Vec<Skip>,
    dead_letters: Vec<DeadLetter>,
    /// Records written to the repartition topic.
    forwarded: u64,
}

impl Out {
    /// (user, token, message id) of every send, sorted.
    fn sent(&self) -> Vec<(String, String, String)> {
        let mut sent: Vec<_> = self
            .sends
            .iter()
            .map(|s| (s.user_id.clone(), s.token.clone(), s.message_id.clone()))
            .collect();
        sent.sort();
        sent
    }

    fn reasons(&self) -> Vec<(String, String)> {
        self.dead_letters
            .iter()
            .map(|d| {
                (
                    format!("{}/{}/{}", d.source_topic, d.source_partition, d.source_offset),
                    d.reason.clone(),
                )
            })
            .collect()
    }
}

/// Replays `input` over [`PARTITIONS`] partitions with `campaigns` defined first; the events
/// topic reads Segment JSON (Herald's Avro records too) for app `shop`.
fn run(campaigns: &[&str], settings: &str, input: Input) -> Out {
    let registry = SchemaRegistry::builtin();
    let start = input.records.iter().map(|r| r.timestamp_ms).min().unwrap_or(T0) - HOUR;
    let mut records: Vec<ReplayRecord> = campaigns
        .iter()
        .map(|yaml| {
            let id = yaml.lines().find_map(|l| l.strip_prefix("id: ")).unwrap().trim().to_string();
            let envelope = CampaignEnvelope {
                campaign_id: id.clone(),
                app_id: "shop".into(),
                command: CampaignCommand::Define,
                definition: Some(yaml.to_string()),
                revision: 0,
                issued_at_ms: start,
                issued_by: None,
            };
            ReplayRecord {
                topic: topics::CAMPAIGNS.into(),
                partition: None,
                offset: 0,
                key: Some(id.into_bytes()),
                value: Some(registry.encode(&envelope).unwrap()),
                timestamp_ms: start,
            }
        })
        .collect();
    records.extend(input.records);
    records.sort_by_key(|r| r.timestamp_ms);
    let ingest: IngestConfig =
        toml::from_str("[events]\nformat = \"segment\"\napp = \"shop\"\n").unwrap();
    let topology = engine_topology(
        "herald-replay",
        TopicNames::default(),
        std::sync::Arc::new(Settings::parse(settings, "settings").unwrap()),
        IngestDecoder::from_config(&ingest).unwrap(),
        0,
    )
    .unwrap();
    let mut out = Out::default();
    let sink = ReplaySink::Callback(Box::new(|topic: &str, _key: &[u8], value: &[u8], _ts| {
        let (name, _) = registry.decode_value(value).unwrap();
        match (topic, name) {
            (topics::PUSH, SendCommand::FULL_NAME) => {
                out.sends.push(registry.decode(value).unwrap())
            }
            (topics::CAMPAIGN_FLOW, Candidate::FULL_NAME) => {
                out.candidate_runs.push(registry.decode::<Candidate>(value).unwrap().run_id)
            }
            (topics::CAMPAIGN_FLOW, Skip::FULL_NAME) => {
                out.skips.push(registry.decode(value).unwrap())
            }
            (topics::DEAD_LETTER, _) => out.dead_letters.push(registry.decode(value).unwrap()),
            (topics::INGEST_REPARTITION, _) => out.forwarded += 1,
            _ => {}
        }
        Ok(())
    }));
    let options = ReplayOptions { partitions: PARTITIONS, ..ReplayOptions::default() };
    replay::run(&topology, ReplayInput::Records(records), sink, &options).unwrap();
    out
}

fn message_id(campaign: &str, run: &str, user: &str, device: &str) -> String {
    payload::message_id(campaign, run, user, device)
}

#[test]
fn profiles_and_events_on_any_partition_or_without_a_key_reach_their_users_task() {
    let mut input = Input::default();
    let users: Vec<String> = (0..24).map(|i| format!("user-{i}")).collect();
    let mut expected = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let at = T0 + i as i64;
        // Profiles from a producer with another partitioner: always elsewhere.
        input.profile(wrong(user), &profile(user, at, &[], true));
        let later = T0 + MINUTE + i as i64;
        // Events: a third where the engine reads the user, a third elsewhere, a third without
        // a key or an event id (named by where they were first read).
        let with_id = event(user, "Ping", &format!("e-{i}"), later);
        let run = match i % 3 {
            0 => {
                input.event(right(user), Some(user), &with_id);
                format!("trigger:e-{i}")
            }
            1 => {
                input.event(wrong(user), Some(user), &with_id);
                format!("trigger:e-{i}")
            }
            _ => {
                let partition = i as i32 % PARTITIONS;
                let origin = input.event(partition, None, &event(user, "Ping", "", later));
                format!("trigger:{origin}")
            }
        };
        expected.push((
            user.clone(),
            format!("tok-{user}"),
            message_id("ping", &run, user, &format!("d-{user}")),
        ));
    }
    let out = run(&[PING], "", input);
    expected.sort();
    assert_eq!(
        out.sent(),
        expected,
        "every user is sent to once, with the message id of the occurrence"
    );
    assert!(out.skips.is_empty(), "nobody skipped (not_reachable): {:?}", out.skips);
    assert!(out.dead_letters.is_empty(), "{:?}", out.reasons());
    let misplaced_events = users
        .iter()
        .enumerate()
        .filter(|(i, u)| i % 3 == 1 || (i % 3 == 2 && (*i as i32) % PARTITIONS != right(u)))
        .count();
    assert_eq!(
        out.forwarded,
        (users.len() + misplaced_events) as u64,
        "exactly the misplaced records are forwarded"
    );
}

#[test]
fn an_event_id_seen_within_the_window_counts_once_even_on_another_partition() {
    let mut input = Input::default();
    input.profile(right("u1"), &profile("u1", T0, &[], true));
    // An SDK retry: the same batch again, once through another partition.
    input.event(right("u1"), Some("u1"), &event("u1", "Ping", "e-1", T0 + MINUTE));
    input.event(wrong("u1"), Some("u1"), &event("u1", "Ping", "e-1", T0 + 2 * MINUTE));
    input.event(right("u1"), Some("u1"), &event("u1", "Ping", "e-1", T0 + 3 * MINUTE));
    // Another id: another occurrence.
    input.event(right("u1"), Some("u1"), &event("u1", "Ping", "e-2", T0 + 4 * MINUTE));
    // After the window (1 h here) the user stage lets the id through again, but it is the same
    // occurrence: the user stage, which remembers occurrences judged for days, counts it
    // `duplicate` and passes no candidate.
    input.event(wrong("u1"), Some("u1"), &event("u1", "Ping", "e-1", T0 + 2 * HOUR));
    let out = run(&[PING], "ingest: { dedup_window: 1h }\n", input);
    let device = "d-u1";
    let id =
        |run: &str| ("u1".to_string(), "tok-u1".to_string(), message_id("ping", run, "u1", device));
    let mut expected = vec![id("trigger:e-1"), id("trigger:e-2")];
    expected.sort();
    assert_eq!(
        out.candidate_runs,
        ["trigger:e-1", "trigger:e-2"],
        "the user stage lets e-1 through once, in its window and after it, and e-2"
    );
    let skips: Vec<(&str, &str)> =
        out.skips.iter().map(|s| (s.user_id.as_str(), s.reason.as_str())).collect();
    assert_eq!(skips, [("u1", "duplicate")], "e-1 after the window");
    assert_eq!(out.sent(), expected, "e-1 once, in its window and after it; e-2 once");
    assert!(out.dead_letters.is_empty(), "{:?}", out.reasons());
}

#[test]
fn bad_records_are_dead_lettered_naming_the_field_and_the_rest_goes_on() {
    let mut input = Input::default();
    input.profile(right("u1"), &profile("u1", T0 - 401 * 24 * HOUR, &[], true));
    let no_user = input.event(0, None, &event("", "Ping", "bad-1", T0 + MINUTE));
    let mut crowded = event("u1", "Ping", "bad-2", T0 + MINUTE);
    crowded.properties = (0..101).map(|i| (format!("p{i}"), PropertyValue::Long(i))).collect();
    let crowded = input.event(wrong("u1"), Some("u1"), &crowded);
    let mut long = event("u1", "Ping", "bad-3", T0 + MINUTE);
    long.properties = [("url".to_string(), PropertyValue::String("x".repeat(5_000)))].into();
    let long = input.event(right("u1"), Some("u1"), &long);
    let hostile_time = input.json(
        1,
        serde_json::json!({"type": "track", "event": "Ping", "userId": "u1", "messageId": "bad-4", "timestamp": i64::MIN}),
        T0 + MINUTE,
    );
    // Devices: 21 in one update is refused at the door; 20 are accepted, one more is refused.
    let mut phones = profile("u2", T0 + MINUTE, &[], false);
    phones.devices_added = (0..21).map(|i| device(&format!("d{i}"))).collect();
    let too_many = input.profile(right("u2"), &phones);
    phones.devices_added.pop();
    input.profile(wrong("u2"), &phones);
    phones.devices_added = vec![device("d-extra")];
    phones.timestamp_ms += 1;
    let one_more = input.profile(right("u2"), &phones);
    // Replays are on event time: old records are not refused (only live records are checked
    // against the window around now).
    input.event(right("u1"), Some("u1"), &event("u1", "Ping", "old", T0 - 400 * 24 * HOUR));
    input.event(wrong("u1"), Some("u1"), &event("u1", "Ping", "good", T0 + 2 * MINUTE));
    let out = run(&[PING], "ingest: { max_properties: 100, max_string_length: 2048 }\n", input);
    let reasons: BTreeMap<String, String> = out.reasons().into_iter().collect();
    let reason = |origin: &str| {
        reasons
            .get(origin)
            .cloned()
            .unwrap_or_else(|| panic!("{origin} not dead-lettered: {reasons:?}"))
    };
    assert!(reason(&no_user).starts_with("user_id: missing"), "{}", reason(&no_user));
    assert!(reason(&crowded).starts_with("properties: 101 entries"), "{}", reason(&crowded));
    assert!(reason(&long).starts_with("properties.url: 5000 bytes"), "{}", reason(&long));
    assert!(reason(&hostile_time).contains("timestamp"), "{}", reason(&hostile_time));
    assert!(
        reason(&too_many).starts_with("devices_added: the user would have 21"),
        "{}",
        reason(&too_many)
    );
    assert!(
        reason(&one_more).starts_with("devices_added: the user would have 21"),
        "{}",
        reason(&one_more)
    );
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    let runs: Vec<&str> = out.sends.iter().map(|s| s.run_id.as_str()).collect();
    assert_eq!(runs, vec!["trigger:old", "trigger:good"], "the good records went on");
}

const BROWSERS: &str = r#"id: browsers
app: shop
name: Still thinking
who:
  all:
    - { did: Viewed Product, at_least: 2, at_most: 2, in_last_days: 30 }
when: { event: Checkout }
what: { title: "{{ profile.first_name }} {{ profile.plan }}", body: b }
"#;

#[test]
fn an_anonymous_user_who_identifies_brings_devices_and_history_to_the_known_user_once() {
    let mut input = Input::default();
    let (anon, known) = ("anon-7", "ana");
    // The anonymous visitor: a device, a profile and two product views (on any partition).
    input.profile(
        wrong(anon),
        &profile(anon, T0, &[("first_name", "Visitor"), ("plan", "free")], true),
    );
    input.event(wrong(anon), Some(anon), &event(anon, "Viewed Product", "v-1", T0 + MINUTE));
    input.event(right(anon), Some(anon), &event(anon, "Viewed Product", "v-2", T0 + 2 * MINUTE));
    // The known user, without a device.
    input.profile(right(known), &profile(known, T0 + 3 * MINUTE, &[("first_name", "Ana")], false));
    // Checkout before identifying: the known user has no device and no views yet.
    input.event(right(known), Some(known), &event(known, "Checkout", "c-0", T0 + 4 * MINUTE));
    // Identify (Segment): twice, as an SDK retry would, the second time through another partition.
    let identify = serde_json::json!({
        "type": "identify", "userId": known, "anonymousId": anon, "messageId": "i-1",
        "timestamp": "2025-11-24T16:05:00Z", "traits": {}
    });
    input.json(right(anon), identify.clone(), T0 + 5 * MINUTE);
    input.json(wrong(anon), identify, T0 + 6 * MINUTE);
    // The known user checks out: the merged history and device qualify them, once.
    input.event(wrong(known), Some(known), &event(known, "Checkout", "c-1", T0 + 7 * MINUTE));
    // A late event under the anonymous id lands on the known user.
    input.event(right(anon), Some(anon), &event(anon, "Checkout", "c-2", T0 + 8 * MINUTE));
    let out = run(&[BROWSERS], "", input);
    assert!(out.dead_letters.is_empty(), "{:?}", out.reasons());
    let device = format!("d-{anon}");
    let mut expected = vec![
        (
            known.to_string(),
            format!("tok-{anon}"),
            message_id("browsers", "trigger:c-1", known, &device),
        ),
        (
            known.to_string(),
            format!("tok-{anon}"),
            message_id("browsers", "trigger:c-2", known, &device),
        ),
    ];
    expected.sort();
    assert_eq!(
        out.sent(),
        expected,
        "the known user, on the anonymous device, history counted once"
    );
    let titles: Vec<bool> = out.sends.iter().map(|s| s.payload.contains("Ana free")).collect();
    assert_eq!(titles, vec![true, true], "the known user's name wins, the anonymous plan fills in");
}
