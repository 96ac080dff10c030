//! The estimate query on the replay driver (no broker): every task answers once with its own
//! users' counts, which add up to the population's; DND hours put users off; caps and the
//! sample are counted by reason.

use std::{cell::RefCell, collections::BTreeMap, sync::Arc};

use herald_engine::{
    model::{topics::TopicNames, Device, IngestDecoder, Platform, ProfileUpdate, PropertyValue},
    model::{Record, SchemaRegistry},
    pipeline::engine_topology,
    query::{
        estimate::{replay_request, Counts, Question},
        QueryReply, QueryStatus,
    },
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
};

/// 2026-06-01T12:00:00Z.
const T0: i64 = 1_780_315_200_000;

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

/// `user` in `state` with devices on `platforms` (in timezone `tz`).
fn profile(user: &str, state: &str, platforms: &[Platform], tz: &str) -> ProfileUpdate {
    ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: T0,
        set: [
            ("state".to_string(), PropertyValue::String(state.into())),
            ("timezone".to_string(), PropertyValue::String(tz.into())),
        ]
        .into(),
        unset: vec![],
        devices_added: platforms
            .iter()
            .enumerate()
            .map(|(i, platform)| Device {
                device_id: format!("d-{user}-{i}"),
                platform: *platform,
                token: format!("tok-{user}-{i}"),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            })
            .collect(),
        tokens_removed: vec![],
    }
}

#[test]
fn every_partition_answers_once_and_the_counts_add_up() {
    let topics = TopicNames::default();
    let (ios, android) = (Platform::Ios, Platform::Android);
    let users = [
        profile("ca-1", "CA", &[ios], "UTC"),
        profile("ca-2", "CA", &[android], "UTC"),
        profile("ca-3", "CA", &[ios, android], "UTC"),
        // 12:00 UTC is 21:00 in Tokyo: inside the campaign's DND hours (delay).
        profile("ca-tokyo", "CA", &[ios], "Asia/Tokyo"),
        profile("ca-none", "CA", &[], "UTC"),
        profile("ny-1", "NY", &[ios], "UTC"),
        profile("ny-2", "NY", &[android], "UTC"),
    ];
    let mut input: Vec<ReplayRecord> =
        users.iter().map(|p| record(&topics.profiles, &p.user_id, T0, p)).collect();
    let definition = serde_json::json!({
        "id": "ca", "app": "shop", "name": "CA",
        "who": {"property": "state", "equals": "CA"},
        "when": {"schedule": {"at": "2030-01-01T00:00:00Z"}},
        "what": {"title": "t", "body": "b"},
        "options": {"dnd": {"start": "20:00", "end": "08:00", "action": "delay"}},
    });
    let question = Question::Campaign {
        id: "ca".into(),
        definition: definition.to_string(),
        at_ms: T0 + 1_000,
    };
    input.push(replay_request(&topics.queries, "q-1", &question, T0 + 1_000).unwrap());

    let replies = RefCell::new(Vec::new());
    let sink = ReplaySink::Callback(Box::new(|topic, _key, value, _at| {
        if topic == topics.query_replies {
            let reply: QueryReply = SchemaRegistry::builtin().decode(value).unwrap();
            replies.borrow_mut().push(reply);
        }
        Ok(())
    }));
    let topology =
        engine_topology("estimate", topics.clone(), Arc::default(), IngestDecoder::default(), 0)
            .unwrap();
    let options =
        ReplayOptions { partitions: 3, fire_timers_until: Some(T0 + 2_000), state_dir: None };
    replay::run(&topology, ReplayInput::Records(input), sink, &options).unwrap();

    let replies = replies.into_inner();
    let by_partition: BTreeMap<i32, &QueryReply> =
        replies.iter().map(|r| (r.partition, r)).collect();
    assert_eq!(by_partition.len(), 3, "{replies:?}");
    assert_eq!(replies.len(), 3, "one final reply per partition, no progress: {replies:?}");
    let mut total = Counts::default();
    for reply in &replies {
        assert_eq!((reply.request_id.as_str(), reply.status), ("q-1", QueryStatus::Done));
        let counts: Counts = serde_json::from_str(reply.body.as_deref().unwrap()).unwrap();
        assert_eq!(counts.scanned as i64, reply.scanned);
        total.add(&counts);
    }
    assert_eq!(total.scanned, 7);
    assert_eq!((total.matched, total.reachable, total.ios, total.android), (5, 4, 3, 2));
    assert_eq!((total.candidates, total.waiting), (3, 1), "{total:?}");
    assert_eq!(total.skipped, [("not_reachable".to_string(), 1)].into());
}
