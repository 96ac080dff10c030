//! Limits that fill exactly behind the send gate, at the edges: a retried notification, a stop,
//! a pause, an edit removing the throttle while places are in flight (replay driver, event
//! time). Every place taken must settle, and nobody waits forever.

mod replay_support {
    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats,
            Device, IngestDecoder, Platform, ProfileUpdate, SchemaRegistry, SendCommand,
        },
        pipeline::engine_topology,
        runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        settings::Settings,
    };
    use std::{cell::RefCell, sync::Arc};

    pub const T0: i64 = 1_795_000_000_000;
    pub const MIN: i64 = 60_000;

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
    pub fn command(id: &str, def: &str, command: CampaignCommand, at: i64) -> ReplayRecord {
        let envelope = CampaignEnvelope {
            campaign_id: id.into(),
            app_id: "shop".into(),
            command,
            definition: Some(def.into()),
            revision: at,
            issued_at_ms: at,
            issued_by: None,
        };
        on_key(topics::CAMPAIGNS, id, SchemaRegistry::builtin().encode(&envelope).unwrap(), at)
    }
    pub fn profile(user: &str, at: i64) -> ReplayRecord {
        let update = ProfileUpdate {
            app_id: "shop".into(),
            user_id: user.into(),
            timestamp_ms: at,
            set: Default::default(),
            unset: vec![],
            devices_added: vec![Device {
                device_id: format!("d-{user}"),
                platform: Platform::Ios,
                token: format!("tok-{user}"),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            }],
            tokens_removed: vec![],
        };
        on_key(topics::PROFILES, user, SchemaRegistry::builtin().encode(&update).unwrap(), at)
    }
    pub fn event(id: &str, user: &str, name: &str, at: i64) -> ReplayRecord {
        let event = AppEvent {
            event_id: id.into(),
            app_id: "shop".into(),
            user_id: user.into(),
            name: name.into(),
            timestamp_ms: at,
            properties: Default::default(),
            sdk_version: None,
        };
        on_key(topics::EVENTS, user, SchemaRegistry::builtin().encode(&event).unwrap(), at)
    }

    pub struct Out {
        pub sends: Vec<SendCommand>,
        pub stats: Vec<CampaignStats>,
        pub events: Vec<CampaignLifecycleEvent>,
    }
    impl Out {
        pub fn users(&self, campaign: &str) -> Vec<String> {
            self.sends
                .iter()
                .filter(|s| s.campaign_id == campaign)
                .map(|s| s.user_id.clone())
                .collect()
        }
        pub fn last_stats(&self, campaign: &str) -> CampaignStats {
            self.stats.iter().rev().find(|s| s.campaign_id == campaign).unwrap().clone()
        }
        pub fn kinds(&self, campaign: &str) -> Vec<String> {
            self.events
                .iter()
                .filter(|e| e.campaign_id == campaign)
                .map(|e| format!("{:?}", e.kind))
                .collect()
        }
    }

    pub fn run(settings: &str, input: Vec<ReplayRecord>, until: Option<i64>) -> Out {
        let settings = Arc::new(Settings::parse(settings, "settings").unwrap());
        let topology =
            engine_topology("review", TopicNames::default(), settings, IngestDecoder::default(), 0)
                .unwrap();
        let outputs = RefCell::new(Vec::new());
        replay::run(
            &topology,
            ReplayInput::Records(input),
            ReplaySink::Callback(Box::new(|topic, _, value, _| {
                outputs.borrow_mut().push((topic.to_string(), value.to_vec()));
                Ok(())
            })),
            &ReplayOptions { fire_timers_until: until, ..ReplayOptions::default() },
        )
        .unwrap();
        let registry = SchemaRegistry::builtin();
        let outputs = outputs.into_inner();
        fn of<'a>(
            o: &'a [(String, Vec<u8>)],
            t: &'a str,
        ) -> impl Iterator<Item = &'a Vec<u8>> + 'a {
            o.iter().filter(move |(topic, _)| topic == t).map(|(_, v)| v)
        }
        Out {
            sends: of(&outputs, topics::PUSH).filter_map(|v| registry.decode(v).ok()).collect(),
            stats: of(&outputs, topics::STATS).filter_map(|v| registry.decode(v).ok()).collect(),
            events: of(&outputs, topics::CAMPAIGN_EVENTS)
                .filter_map(|v| registry.decode(v).ok())
                .collect(),
        }
    }
}

const CAPS: &str = "apps:\n  shop:\n    caps: { per_day: 1 }\n";
const NEWS: &str = r#"{"id":"news","app":"shop","name":"n","when":{"event":"Pong"},"what":{"title":"t","body":"b"}}"#;

/// A producer retries an event (same event id), so the same notification reaches the gate
/// twice: the gate confirms every command that asks for it, so whatever place the repeat took
/// settles and nobody waits forever: every qualified user is sent or refused by the limit.
#[test]
fn a_retried_event_settles_every_place_it_takes() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2}}"#;
    let out = run(
        "apps:\n  shop:\n    caps: { per_day: 5 }\n",
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            event("e-1", "u0", "Ping", T0 + 1_000),
            event("e-1", "u0", "Ping", T0 + 2_000), // the producer's retry of the same event
            event("e-2", "u1", "Ping", T0 + 3_000),
            event("e-3", "u2", "Ping", T0 + 4_000),
            event("e-9", "u2", "Other", T0 + 60 * MIN),
        ],
        Some(T0 + 120 * MIN),
    );
    let stats = out.last_stats("ping");
    let mut users = out.users("ping");
    users.dedup();
    let refused = stats.skipped.get("total_limit").copied().unwrap_or(0);
    assert_eq!(users.len() as i64 + refused, 3, "{users:?} sent, {refused} refused by the limit");
    assert_eq!(out.kinds("ping"), ["LimitReached", "Completed"]);
}

/// Stop while a place is in flight in the campaign's throttle outbox: the stop drops the outbox
/// and settles u1's place there, and u2, waiting for a place, is counted `stopped` too.
#[test]
fn a_stop_settles_the_places_of_its_outbox_and_counts_the_waiting_stopped() {
    use herald_engine::model::CampaignCommand::{Define, Stop};
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    let out = run(
        CAPS,
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // queued behind the throttle: in flight
            event("e-2", "u2", "Ping", T0 + 3_000), // total full, u1 in flight: waits
            command("ping", ping, Stop, T0 + 10_000),
            event("e-9", "u0", "Other", T0 + 60 * MIN),
        ],
        Some(T0 + 120 * MIN),
    );
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0"]);
    assert_eq!(stats.skipped.get("stopped"), Some(&2), "u1 (outbox) and u2 (waiting) stopped");
}

#[test]
fn a_stopped_scheduled_run_waiting_for_places_finishes_and_counts_everyone() {
    use herald_engine::model::CampaignCommand::{Define, Stop};
    use replay_support::*;
    let at = chrono::DateTime::from_timestamp_millis(T0 + 100_000).unwrap().to_rfc3339();
    let def = format!(
        r#"{{"id":"run","app":"shop","name":"n","when":{{"schedule":{{"at":"{at}"}}}},"what":{{"title":"t","body":"b"}},"limits":{{"per_run":2}},"options":{{"throttle":{{"max":1,"per":"1m"}}}}}}"#
    );
    let mut input = vec![command("run", &def, Define, T0)];
    input.extend((0..5).map(|i| profile(&format!("u{i}"), T0)));
    input.push(event("e-1", "u0", "Other", T0 + 200_000)); // past the run time
    input.push(command("run", &def, Stop, T0 + 210_000));
    input.push(event("e-9", "u0", "Other", T0 + 60 * MIN));
    let out = run(CAPS, input, Some(T0 + 120 * MIN));
    let stats = out.last_stats("run");
    assert!(out.kinds("run").contains(&"RunFinished".to_string()), "{:?}", out.kinds("run"));
    let counted = out.users("run").len() as i64 + stats.skipped.values().sum::<i64>();
    assert_eq!(counted, 5, "every user sent or counted: {:?}", stats.skipped);
}

/// A candidate on the flow when the pause came is held; on resume it finds the total full with
/// u1 in flight and waits; u1 is then refused by the gate and u2 takes its place.
#[test]
fn a_candidate_held_by_a_pause_takes_a_place_returned_after_the_resume() {
    use herald_engine::model::{
        topics,
        CampaignCommand::{Define, Pause, Resume},
        Candidate, Device, Platform, SchemaRegistry,
    };
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    let candidate = Candidate {
        campaign_id: "ping".into(),
        app_id: "shop".into(),
        run_id: "trigger:e-2".into(),
        user_id: "u2".into(),
        qualified_at_ms: T0 + 9_000,
        trigger_event: Some("Ping".into()),
        event_properties: Default::default(),
        profile: Default::default(),
        devices: vec![Device {
            device_id: "d-u2".into(),
            platform: Platform::Ios,
            token: "tok-u2".into(),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }],
        timezone: None,
        language: None,
        source: None,
    };
    // On the flow when the pause came (the replay drains at once, so it is fed during the pause).
    let on_flow = herald_engine::runtime::replay::ReplayRecord {
        topic: topics::CAMPAIGN_FLOW.into(),
        partition: None,
        offset: 0,
        key: Some(b"ping".to_vec()),
        value: Some(SchemaRegistry::builtin().encode(&candidate).unwrap()),
        timestamp_ms: T0 + 20_000,
    };
    let out = run(
        CAPS,
        vec![
            command("ping", ping, Define, T0),
            command("news", NEWS, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // queued behind the throttle: in flight
            command("ping", ping, Pause, T0 + 10_000),
            on_flow,
            event("p-1", "u1", "Pong", T0 + 30_000), // u1's daily cap goes to `news`
            command("ping", ping, Resume, T0 + 40_000),
            event("x-1", "u0", "Other", T0 + 45_000), // the clock moves: resume is announced
            event("x-2", "u0", "Other", T0 + 50_000),
            event("e-9", "u0", "Other", T0 + 60 * MIN),
        ],
        Some(T0 + 120 * MIN),
    );
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&1), "u1 refused at the gate");
    assert_eq!(out.users("ping"), ["u0", "u2"], "u2 takes u1's returned place");
}

/// An edit removes the campaign's throttle while u1 waits in its outbox: the outbox leaves at
/// once, u1's place settles, and every qualified user is sent or refused by the limit.
#[test]
fn an_edit_removing_the_throttle_releases_the_outbox_and_its_places() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    let edited = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2}}"#;
    let out = run(
        CAPS,
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            profile("u3", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // queued behind the throttle: in flight
            command("ping", edited, Define, T0 + 10_000),
            event("e-2", "u2", "Ping", T0 + 20_000),
            event("e-3", "u3", "Ping", T0 + 30_000),
            event("e-9", "u0", "Other", T0 + 60 * MIN),
        ],
        Some(T0 + 120 * MIN),
    );
    let stats = out.last_stats("ping");
    let counted = out.users("ping").len() as i64 + stats.skipped.values().sum::<i64>();
    assert_eq!(counted, 4, "every qualified user is sent or counted");
}

/// A place comes back twice in a row: u1 (in the outbox) is capped before its turn, u2 (who
/// waited) takes its place and is capped before its own turn. u3 qualified while u2 waited:
/// the total of 2 must still reach u0 and u3. Fails: u3 found the queue full (as many waiting
/// as places in flight) and was refused, so only u0 is sent (see `stage_campaign::places`).
#[test]
#[ignore = "known limit: the waiting queue is bounded by the places in flight"]
fn a_place_refused_twice_in_a_row_goes_to_a_user_who_qualified_meanwhile() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    let out = run(
        CAPS,
        vec![
            command("ping", ping, Define, T0),
            command("news", NEWS, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            profile("u3", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // queued behind the throttle: in flight
            event("e-2", "u2", "Ping", T0 + 3_000), // total full, u1 in flight: waits
            event("e-3", "u3", "Ping", T0 + 4_000), // the same
            event("p-1", "u1", "Pong", T0 + 10_000), // u1's daily cap goes to `news`
            event("p-2", "u2", "Pong", T0 + 20_000), // and u2's
            event("e-9", "u0", "Other", T0 + 60 * MIN),
        ],
        Some(T0 + 120 * MIN),
    );
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&2), "u1 and u2 refused at the gate");
    assert_eq!(out.users("ping"), ["u0", "u3"], "{:?}", stats.skipped);
}

/// A scheduled run of a limited campaign whose last users wait in the throttle's outbox: one of
/// them is capped before its turn. The run finishes once every place has settled, and says it
/// sent 2, as it did.
#[test]
fn a_run_finishes_with_the_sends_the_gate_confirmed() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let at = chrono::DateTime::from_timestamp_millis(T0 + 100_000).unwrap().to_rfc3339();
    let def = format!(
        r#"{{"id":"run","app":"shop","name":"n","when":{{"schedule":{{"at":"{at}"}}}},"what":{{"title":"t","body":"b"}},"limits":{{"total":10}},"options":{{"throttle":{{"max":1,"per":"1m"}}}}}}"#
    );
    let mut input = vec![command("run", &def, Define, T0), command("news", NEWS, Define, T0)];
    input.extend((0..3).map(|i| profile(&format!("u{i}"), T0)));
    input.push(event("x-1", "u0", "Other", T0 + 110_000)); // the run starts
    input.push(event("p-1", "u1", "Pong", T0 + 120_000)); // u1 capped while in the outbox
    input.push(event("e-9", "u0", "Other", T0 + 60 * MIN));
    let out = run(CAPS, input, Some(T0 + 120 * MIN));
    let users = out.users("run");
    assert_eq!(users.len(), 2, "{users:?}");
    let finished: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "run" && format!("{:?}", e.kind) == "RunFinished")
        .map(|e| e.details["sent"].as_str())
        .collect();
    assert_eq!(finished, ["2"], "{:?}", out.kinds("run"));
}
