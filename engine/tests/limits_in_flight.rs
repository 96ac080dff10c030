//! Limits that fill exactly behind the send gate, at the edges: a retried notification, a stop,
//! a pause, an edit removing the throttle while places are in flight, a triggered A/B test's
//! places (replay driver, event time). Every place taken must settle, and nobody waits forever.

/// A profile with one device (`replay_support/profiles.rs`, shared by the tests).
#[path = "replay_support/profiles.rs"]
mod profiles;

mod replay_support {
    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats,
            Candidate, IngestDecoder, Platform, Record, SchemaRegistry, SendCommand,
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
        let update = crate::profiles::profile_update(user, Platform::Ios, at, &[]);
        on_key(topics::PROFILES, user, SchemaRegistry::builtin().encode(&update).unwrap(), at)
    }
    pub fn event(id: &str, user: &str, name: &str, at: i64) -> ReplayRecord {
        event_stamped(id, user, name, at, at)
    }
    /// Event `id` written to the events topic at `written`, stamped `stamped` by its producer
    /// (an SDK's batch flushed late stamps an earlier time than it is written at).
    pub fn event_stamped(
        id: &str,
        user: &str,
        name: &str,
        written: i64,
        stamped: i64,
    ) -> ReplayRecord {
        let event = AppEvent {
            event_id: id.into(),
            app_id: "shop".into(),
            user_id: user.into(),
            name: name.into(),
            timestamp_ms: stamped,
            properties: Default::default(),
            sdk_version: None,
        };
        on_key(topics::EVENTS, user, SchemaRegistry::builtin().encode(&event).unwrap(), written)
    }

    /// The deletion of campaign `id` (a tombstone on the campaigns topic) at `at`.
    pub fn tombstone(id: &str, at: i64) -> ReplayRecord {
        ReplayRecord { value: None, ..on_key(topics::CAMPAIGNS, id, Vec::new(), at) }
    }

    /// A record of the campaign flow, keyed by the campaign's home `campaign`, at `at`: what
    /// a stage had written before a pause or a gate's answer came (the replay drains each
    /// record at once, so it is fed at the moment the test needs it).
    pub fn on_flow(campaign: &str, record: &impl Record, at: i64) -> ReplayRecord {
        on_key(
            topics::CAMPAIGN_FLOW,
            campaign,
            SchemaRegistry::builtin().encode(record).unwrap(),
            at,
        )
    }

    /// `user`'s candidate for `campaign` of the occurrence `run`, qualified at `at`.
    pub fn candidate(campaign: &str, user: &str, run: &str, at: i64) -> Candidate {
        Candidate {
            campaign_id: campaign.into(),
            app_id: "shop".into(),
            run_id: run.into(),
            user_id: user.into(),
            qualified_at_ms: at,
            trigger_event: Some("Ping".into()),
            event_properties: Default::default(),
            profile: Default::default(),
            devices: vec![crate::profiles::device_on(user, Platform::Ios)],
            timezone: None,
            language: None,
            source: None,
        }
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
const NO_CAPS: &str = "apps:\n  shop: {}\n";
/// The first midnight (UTC) after `T0`.
const MIDNIGHT: i64 = (replay_support::T0 / 86_400_000 + 1) * 86_400_000;
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
    use herald_engine::model::CampaignCommand::{Define, Pause, Resume};
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    // On the flow when the pause came.
    let on_flow = on_flow("ping", &candidate("ping", "u2", "trigger:e-2", T0 + 9_000), T0 + 20_000);
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

/// An app with a global throttle (1 an hour): u0 leaves, u1 waits in the app stage's outbox;
/// the campaign is stopped. u1 is dropped there, counted `stopped`, and its variant's sent
/// count taken back (review s21/G finding 6).
#[test]
fn a_stop_drops_the_sends_waiting_in_the_apps_throttle_and_counts_them_stopped() {
    use herald_engine::model::CampaignCommand::{Define, Stop};
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";
    let out = run(
        "apps:\n  shop:\n    throttle: { max: 1, per: 1h }\n",
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // waits in the app's outbox
            command("ping", ping, Stop, T0 + 10_000),
            event("x-0", "u0", "Other", T0 + 180 * MIN),
        ],
        Some(T0 + 240 * MIN),
    );
    assert_eq!(out.users("ping"), ["u0"], "u1 was dropped by the stop");
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("stopped"), Some(&1), "u1 counted stopped: {stats:?}");
    assert_eq!(stats.variants.iter().map(|v| v.sent).sum::<i64>(), 1, "sent: u0 only");
}

/// The same with caps and a total limit of 2 (places held until the gate answers): u1's place,
/// dropped with it at the app stage, is settled by the skip it sends back; u2, waiting for a
/// place, is counted `stopped` too: every qualified user is sent or counted.
#[test]
fn a_stop_gives_back_the_places_of_the_sends_waiting_in_the_apps_throttle() {
    use herald_engine::model::CampaignCommand::{Define, Stop};
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 2 }\n";
    let out = run(
        "apps:\n  shop:\n    caps: { per_day: 5 }\n    throttle: { max: 1, per: 1h }\n",
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // in the app's outbox: its place in flight
            event("e-2", "u2", "Ping", T0 + 3_000), // total full, u1 in flight: waits
            command("ping", ping, Stop, T0 + 10_000),
            event("x-0", "u0", "Other", T0 + 180 * MIN),
        ],
        Some(T0 + 240 * MIN),
    );
    assert_eq!(out.users("ping"), ["u0"]);
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("stopped"), Some(&2), "u1 and u2 stopped: {stats:?}");
    assert_eq!(stats.variants.iter().map(|v| v.sent).sum::<i64>(), 1, "sent: u0 only");
}

/// The same, the campaign deleted (a tombstone) instead of stopped: u1's command in the app's
/// outbox is not sent when its window opens; it is dropped, counted `deleted`, and its place
/// settled; u2, waiting for a place, is counted `deleted` too. Review s23: the app stage sent a
/// deleted campaign's commands (it only knew stopped ones).
#[test]
fn a_deletion_drops_the_sends_waiting_in_the_apps_throttle_and_counts_them_deleted() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 2 }\n";
    let tombstone = tombstone("ping", T0 + 10_000);
    let out = run(
        "apps:\n  shop:\n    caps: { per_day: 5 }\n    throttle: { max: 1, per: 1h }\n",
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            profile("u2", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // in the app's outbox: its place in flight
            event("e-2", "u2", "Ping", T0 + 3_000), // total full, u1 in flight: waits
            tombstone,
            event("x-0", "u0", "Other", T0 + 180 * MIN),
        ],
        Some(T0 + 240 * MIN),
    );
    assert_eq!(out.users("ping"), ["u0"], "u1 not sent from the app's outbox");
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("deleted"), Some(&2), "u1 and u2 deleted: {stats:?}");
    assert_eq!(stats.variants.iter().map(|v| v.sent).sum::<i64>(), 1, "sent: u0 only");
}

/// An app with a global throttle (1 an hour): u0 leaves, u1 waits in the app stage's outbox;
/// the campaign is paused before u1's window opens and resumed 2.5 hours later: u1 is held
/// through the pause (not sent at the windows of +1h and +2h) and leaves after the resume.
#[test]
fn a_pause_holds_the_sends_waiting_in_the_apps_throttle_until_the_resume() {
    use herald_engine::model::CampaignCommand::{Define, Pause, Resume};
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";
    let resumed = T0 + 150 * MIN;
    let out = run(
        "apps:\n  shop:\n    throttle: { max: 1, per: 1h }\n",
        vec![
            command("ping", ping, Define, T0),
            profile("u0", T0),
            profile("u1", T0),
            event("e-0", "u0", "Ping", T0 + 1_000),
            event("e-1", "u1", "Ping", T0 + 2_000), // waits in the app's outbox
            command("ping", ping, Pause, T0 + 10_000),
            command("ping", ping, Resume, resumed),
            event("x-0", "u0", "Other", T0 + 300 * MIN),
        ],
        Some(T0 + 360 * MIN),
    );
    assert_eq!(out.users("ping"), ["u0", "u1"], "u1 released after the resume");
    let u1 = out.sends.iter().find(|s| s.user_id == "u1").unwrap();
    assert!(u1.created_at_ms >= resumed, "u1 left at {} before the resume", u1.created_at_ms);
    assert_eq!(out.last_stats("ping").skipped.get("stopped"), None);
}

/// An app with caps and a global throttle (1 an hour); `ping` has a total limit of 3 and
/// `shards: 4`, its places held in flight until the gate answers. u0 leaves, u1 waits in the
/// app's outbox (its place in flight); the limit is removed, u1 leaves an hour later: the
/// gate's confirmation goes to the state that holds u1's place (its `place_key`). The limit put
/// back, the total fills and `COMPLETED` comes: every qualified user is sent or counted (review
/// s21/G finding 7: u3 and u4 waited forever for u1's place). Written when a limit on an app
/// with caps kept the campaign on its home (the place then at the home, the confirmation not to
/// go to u1's shard); since s26/CAPS it is spread from the start, the place at u1's shard.
#[test]
fn a_place_held_at_home_settles_after_an_edit_shards_the_campaign() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = |limits: &str| {
        format!("id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n")
    };
    let limited = ping("limits: { total: 3 }\n");
    let mut input = vec![command("ping", &limited, Define, T0)];
    input.extend(["u0", "u1", "u2", "u3", "u4"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", T0 + 1_000));
    input.push(event("e-1", "u1", "Ping", T0 + 2_000)); // waits in the app's outbox
    input.push(command("ping", &ping(""), Define, T0 + 10_000));
    input.push(event("x-0", "u0", "Other", T0 + 90 * MIN)); // u1 left at T0 + 1h
    input.push(command("ping", &limited, Define, T0 + 100 * MIN));
    for (i, user) in ["u2", "u3", "u4"].into_iter().enumerate() {
        input.push(event(&format!("e-{}", i + 2), user, "Ping", T0 + (110 + i as i64) * MIN));
    }
    input.push(event("x-1", "u0", "Other", T0 + 600 * MIN));
    let settings = "apps:\n  shop:\n    caps: { per_day: 5 }\n    throttle: { max: 1, per: 1h }\n";
    let out = run(settings, input, Some(T0 + 1_440 * MIN));
    let stats = out.last_stats("ping");
    let mut users = out.users("ping");
    users.sort();
    users.dedup();
    assert_eq!(users, ["u0", "u1", "u2"], "the total of 3");
    assert_eq!(stats.skipped.get("total_limit"), Some(&2), "u3 and u4: {:?}", stats.skipped);
    let completed = out.kinds("ping").iter().filter(|k| *k == "Completed").count();
    assert_eq!(completed, 1, "{:?}", out.kinds("ping"));
}

/// A place comes back twice in a row: u1 (in the outbox) is capped before its turn, u2 (who
/// waited) takes its place and is capped before its own turn. u3 qualified while u2 waited:
/// the total of 2 must still reach u0 and u3. Was a known limit: u3 found the queue full (as
/// many waiting as places in flight) and was refused, so only u0 was sent. With the queue
/// bounded at 1 (`limits.max_waiting`), u3 is refused `waiting_full`, counted.
#[test]
fn a_place_refused_twice_in_a_row_goes_to_a_user_who_qualified_meanwhile() {
    let out = refused_twice_in_a_row(CAPS);
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&2), "u1 and u2 refused at the gate");
    assert_eq!(out.users("ping"), ["u0", "u3"], "{:?}", stats.skipped);

    let out = refused_twice_in_a_row(&format!("{CAPS}limits: {{ max_waiting: 1 }}\n"));
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0"], "{:?}", stats.skipped);
    let refused = ["capped_daily", "waiting_full"].map(|r| stats.skipped.get(r).copied());
    assert_eq!(refused, [Some(2), Some(1)], "u1, u2 at the gate, u3 queue full: {stats:?}");
}

/// The scenario of [`a_place_refused_twice_in_a_row_goes_to_a_user_who_qualified_meanwhile`]
/// under `settings`.
fn refused_twice_in_a_row(settings: &str) -> replay_support::Out {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = r#"{"id":"ping","app":"shop","name":"n","when":{"event":"Ping"},"what":{"title":"t","body":"b"},"limits":{"total":2},"options":{"throttle":{"max":1,"per":"1m"}}}"#;
    run(
        settings,
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
    )
}

/// Total 2 and daily 5, caps of 1 a day, a throttle of 1 an hour. u0 is sent at 23:50; u1,
/// queued behind the throttle, holds the second place in flight; u2 finds the total full and
/// waits for it. After midnight u1's cap of the new day goes to `news`, so the gate refuses u1
/// when it leaves (00:50) and its place comes back: u2, who waited on the total (not on a day's
/// places), takes it and is sent, counted on the new day. Review s21 section 10: u2 was refused
/// `daily_limit` at midnight (a day it did not wait on), and the total stayed at 1.
#[test]
fn a_candidate_waiting_on_the_total_is_not_refused_by_the_day_passing() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 2, daily: 5 }\noptions: { throttle: { max: 1, per: 1h } }\n";
    let mut input = vec![command("ping", ping, Define, T0), command("news", NEWS, Define, T0)];
    input.extend(["u0", "u1", "u2"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", MIDNIGHT - 10 * MIN));
    input.push(event("e-1", "u1", "Ping", MIDNIGHT - 9 * MIN)); // in the outbox until 00:50
    input.push(event("e-2", "u2", "Ping", MIDNIGHT - 8 * MIN)); // total full: waits
    input.push(event("p-1", "u1", "Pong", MIDNIGHT + 10 * MIN)); // u1's cap of the new day
    input.push(event("x-0", "u0", "Other", MIDNIGHT + 300 * MIN));
    let out = run(CAPS, input, Some(MIDNIGHT + 360 * MIN));
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0", "u2"], "{:?}", stats.skipped);
    assert_eq!(stats.skipped.get("capped_daily"), Some(&1), "u1: {:?}", stats.skipped);
    assert_eq!(stats.skipped.get("daily_limit"), None, "{:?}", stats.skipped);
    let u2 = out.sends.iter().find(|s| s.user_id == "u2").unwrap();
    assert!(u2.created_at_ms > MIDNIGHT, "u2 leaves on the new day, at {}", u2.created_at_ms);
}

/// Daily limit 2, caps of 1 a day, a throttle of 1 an hour, from 23:30. u0 is sent, u1 holds
/// the day's second place in flight (in the outbox until 00:30), u2 waits on the day's places.
/// At 23:30:10 an edit raises the daily limit to 3: u2 takes the new place at once, on its day
/// (and leaves at 01:30, behind u1). Review s21 section 10: an edit did not wake the queue, so
/// u2 waited until u1 settled after midnight and was refused `daily_limit` then.
#[test]
fn an_edit_raising_a_limit_wakes_the_waiting() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let daily = |limit: u32| {
        format!("id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ daily: {limit} }}\noptions: {{ throttle: {{ max: 1, per: 1h }} }}\n")
    };
    let start = MIDNIGHT - 30 * MIN;
    let mut input = vec![command("ping", &daily(2), Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", start));
    input.push(event("e-1", "u1", "Ping", start + 1_000)); // in the outbox until 00:30
    input.push(event("e-2", "u2", "Ping", start + 2_000)); // the day is full: waits
    input.push(command("ping", &daily(3), Define, start + 10_000));
    input.push(event("x-0", "u0", "Other", start + 60_000));
    input.push(event("x-1", "u0", "Other", MIDNIGHT + 300 * MIN));
    let out = run(CAPS, input, Some(MIDNIGHT + 360 * MIN));
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0", "u1", "u2"], "{:?}", stats.skipped);
    assert_eq!(stats.skipped.get("daily_limit"), None, "{:?}", stats.skipped);
}

/// Total 2, caps, a throttle of 1 a minute. u0 is sent, u1 holds the second place in flight
/// (in the outbox), u2 waits. An edit raises the total to 3, then u3 qualifies: the new place
/// is u2's, who came first; u3 waits and is refused `total_limit` once nothing is in flight.
/// Review s21 section 10: u3 took the new place at once, and u2, woken only when the places
/// in flight settled, found the total full: the later user overtook the waiting one.
#[test]
fn a_newcomer_does_not_overtake_the_waiting_after_an_edit_raises_the_limit() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let total = |limit: u32| {
        format!("id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {limit} }}\noptions: {{ throttle: {{ max: 1, per: 1m }} }}\n")
    };
    let mut input = vec![command("ping", &total(2), Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", T0 + 1_000));
    input.push(event("e-1", "u1", "Ping", T0 + 2_000)); // in the outbox: in flight
    input.push(event("e-2", "u2", "Ping", T0 + 3_000)); // total full: waits
    input.push(command("ping", &total(3), Define, T0 + 10_000));
    input.push(event("e-3", "u3", "Ping", T0 + 10_000)); // right behind the edit
    input.push(event("x-0", "u0", "Other", T0 + 60 * MIN));
    let out = run(CAPS, input, Some(T0 + 120 * MIN));
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0", "u1", "u2"], "{:?}", stats.skipped);
    assert_eq!(stats.skipped.get("total_limit"), Some(&1), "u3: {:?}", stats.skipped);
}

/// Total 2, caps, a throttle of 1 an hour: u0 is sent, u1 holds a place in flight in the
/// outbox, u2 waits for a place. The campaign is then deleted (a tombstone on the campaigns
/// topic). What it held must end, counted: u1 and u2 are not sent and are counted `deleted` in
/// the campaign's last stats, and `STOPPED` is announced with reason `deleted`. Defined again
/// under the same id later, the campaign holds nothing of before (u1 and u2 are not sent) and
/// its places were given back: u3 takes the second place of the total. Review s21 section 10:
/// the stage dropped every record and timer of a campaign it no longer knew, so u1's place,
/// u2's queue entry and the outbox stayed in the stores for good and nobody was counted.
#[test]
fn a_deleted_campaign_counts_what_it_held_and_leaves_nothing_waiting() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 2 }\noptions: { throttle: { max: 1, per: 1h } }\n";
    let tombstone = tombstone("ping", T0 + 10_000);
    let mut input = vec![command("ping", ping, Define, T0), command("news", NEWS, Define, T0)];
    input.extend(["u0", "u1", "u2"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", T0 + 1_000));
    input.push(event("e-1", "u1", "Ping", T0 + 2_000)); // in the outbox: in flight
    input.push(event("e-2", "u2", "Ping", T0 + 3_000)); // total full: waits
    input.push(tombstone);
    // The campaign stage's task reads on (replay: its clock and timers move with its records).
    input.push(event("p-0", "u0", "Pong", T0 + 300 * MIN));
    input.push(profile("u3", T0 + 300 * MIN));
    input.push(command("ping", ping, Define, T0 + 301 * MIN)); // the same id again
    input.push(event("e-3", "u3", "Ping", T0 + 302 * MIN));
    input.push(event("x-1", "u0", "Other", T0 + 420 * MIN));
    let out = run(CAPS, input, Some(T0 + 480 * MIN));
    assert_eq!(out.users("ping"), ["u0", "u3"], "u1 and u2 dropped; u3 on a place given back");
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("deleted"), Some(&2), "u1 and u2: {:?}", stats.skipped);
    let stopped: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "ping" && format!("{:?}", e.kind) == "Stopped")
        .map(|e| e.details["reason"].as_str())
        .collect();
    assert_eq!(stopped, ["deleted"], "{:?}", out.kinds("ping"));
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

/// A scheduled run with a per-run limit of 2 (throttle 1 a minute, caps 1 a day): of its three
/// users in the run's random order, the first leaves at once, the second waits in the outbox
/// (in flight), the third finds the run's limit full and waits in the queue. The second is then
/// capped by `news` and refused at the send gate: its place goes to the third, and the run
/// finishes only once the third's place settled, saying it sent 2, as it did (review s21
/// finding 8's residue: a returned place while a user waits for the run's limit).
#[test]
fn a_run_finishes_after_the_user_waiting_for_its_limit_took_a_returned_place() {
    use herald_engine::{
        campaign::sample,
        model::{scheduled_run_id, CampaignCommand::Define},
    };
    use replay_support::*;
    let run_at = T0 + 100_000;
    let at = chrono::DateTime::from_timestamp_millis(run_at).unwrap().to_rfc3339();
    let def = format!(
        r#"{{"id":"run","app":"shop","name":"n","when":{{"schedule":{{"at":"{at}"}}}},"what":{{"title":"t","body":"b"}},"limits":{{"per_run":2}},"options":{{"throttle":{{"max":1,"per":"1m"}}}}}}"#
    );
    // The run's users in its random order: first, second (refused at the gate), third.
    let mut users = ["u0", "u1", "u2"];
    users.sort_by_key(|user| sample::rank(&scheduled_run_id(run_at), user));
    let [first, second, third] = users;
    let mut input = vec![command("run", &def, Define, T0), command("news", NEWS, Define, T0)];
    input.extend(users.map(|user| profile(user, T0)));
    input.push(event("x-1", first, "Other", T0 + 110_000)); // the run starts
    input.push(event("p-1", second, "Pong", T0 + 120_000)); // capped while in the outbox
    input.push(event("x-9", first, "Other", T0 + 60 * MIN));
    let out = run(CAPS, input, Some(T0 + 120 * MIN));
    let sends: Vec<(&str, i64)> = out
        .sends
        .iter()
        .filter(|s| s.campaign_id == "run")
        .map(|s| (s.user_id.as_str(), s.created_at_ms))
        .collect();
    let sent: Vec<&str> = sends.iter().map(|(user, _)| *user).collect();
    assert_eq!(sent, [first, third], "the third takes the place the gate gave back");
    let stats = out.last_stats("run");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&1), "{:?}", stats.skipped);
    assert_eq!(stats.skipped.get("run_limit"), None, "nobody refused by the run's limit");
    let finished: Vec<(&str, i64)> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "run" && format!("{:?}", e.kind) == "RunFinished")
        .map(|e| (e.details["sent"].as_str(), e.timestamp_ms))
        .collect();
    assert_eq!(finished.len(), 1, "one RUN_FINISHED: {finished:?}");
    assert_eq!(finished[0].0, "2", "the sends the gate confirmed: {finished:?}");
    assert!(finished[0].1 >= sends[1].1, "after the third's place settled: {finished:?}");
}

/// Daily limit of 2 (UTC), no caps. u0 and u1 are sent just after midnight: the day is full.
/// u2's event, written and stamped 10 minutes before midnight, reaches the campaign stage after
/// them (its user-stage partition was behind the others): the day only moves forward, so u2
/// counts on the current day and is refused, and so is u3 after it. Review s21/G finding 1: the
/// count started over for the earlier day (u2 sent), then again for the new day (u3 sent): 3
/// users on a day limited to 2, and `LIMIT_REACHED` announced again at each flip.
#[test]
fn a_candidate_of_an_earlier_day_counts_on_the_current_day_and_never_resets_it() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let def = "id: daily\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { daily: 2 }\n";
    let mut input = vec![command("daily", def, Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", MIDNIGHT + 10 * MIN));
    input.push(event("e-1", "u1", "Ping", MIDNIGHT + 20 * MIN));
    input.push(event("e-2", "u2", "Ping", MIDNIGHT - 10 * MIN)); // behind the others
    input.push(event("e-3", "u3", "Ping", MIDNIGHT + 40 * MIN));
    let out = run(NO_CAPS, input, Some(MIDNIGHT + 120 * MIN));
    assert_eq!(out.users("daily"), ["u0", "u1"], "the day after midnight is limited to 2 users");
    let stats = out.last_stats("daily");
    assert_eq!(stats.skipped.get("daily_limit"), Some(&2), "u2 and u3: {:?}", stats.skipped);
    let reached: Vec<&str> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "daily" && format!("{:?}", e.kind) == "LimitReached")
        .map(|e| e.details["day"].as_str())
        .collect();
    let today = chrono::DateTime::from_timestamp_millis(MIDNIGHT).unwrap().date_naive().to_string();
    assert_eq!(reached, [today.as_str()], "the daily limit reached once, on its day");
}

/// An event stamped before midnight by its producer (an SDK batch flushed late) and written
/// after it: its notification leaves after midnight, so it is timed then (the occurrence keeps
/// its message id) and counts on that day. Caps of 1 a day: u0 was sent `news` at 00:10, so
/// `ping` for u0's late-stamped Ping (written 00:20) is refused at the gate; with a daily limit
/// of 2, u2's late-stamped event counts on the new day. Review s21/G finding 2: the command was
/// timed at the event's stamp, so the gate checked yesterday's caps and let it leave (2
/// notifications on a day capped at 1), and the daily count started over for yesterday.
#[test]
fn a_late_stamped_event_is_capped_and_limited_as_of_the_day_it_leaves() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 10 }\n";
    let input = vec![
        command("news", NEWS, Define, T0),
        command("ping", ping, Define, T0),
        profile("u0", T0),
        event("p-0", "u0", "Pong", MIDNIGHT + 10 * MIN),
        event_stamped("e-0", "u0", "Ping", MIDNIGHT + 20 * MIN, MIDNIGHT - 10 * MIN),
        event("x-0", "u0", "Other", MIDNIGHT + 60 * MIN),
    ];
    let out = run(CAPS, input, Some(MIDNIGHT + 120 * MIN));
    assert_eq!(out.users("news"), ["u0"]);
    assert_eq!(out.users("ping"), Vec::<String>::new(), "u0's cap of the day is spent");
    let stats = out.last_stats("ping");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&1), "{:?}", stats.skipped);

    let daily = "id: daily\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { daily: 2 }\n";
    let mut input = vec![command("daily", daily, Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", MIDNIGHT + 10 * MIN));
    input.push(event_stamped("e-1", "u1", "Ping", MIDNIGHT + 20 * MIN, MIDNIGHT - 20 * MIN));
    input.push(event_stamped("e-2", "u2", "Ping", MIDNIGHT + 30 * MIN, MIDNIGHT - 10 * MIN));
    input.push(event("e-3", "u3", "Ping", MIDNIGHT + 40 * MIN));
    let out = run(NO_CAPS, input, Some(MIDNIGHT + 120 * MIN));
    let sent: Vec<(&str, i64, &str)> = out
        .sends
        .iter()
        .map(|s| (s.user_id.as_str(), s.created_at_ms, s.message_id.as_str()))
        .collect();
    let id = |user: &str, event: &str| {
        use herald_engine::model::triggered_run_id;
        herald_engine::payload::message_id(
            "daily",
            &triggered_run_id(event),
            user,
            &format!("d-{user}"),
        )
    };
    let (id0, id1) = (id("u0", "e-0"), id("u1", "e-1"));
    assert_eq!(
        sent,
        [("u0", MIDNIGHT + 10 * MIN, id0.as_str()), ("u1", MIDNIGHT + 20 * MIN, id1.as_str())],
        "u1 timed when it leaves, with its occurrence's id; u2 refused: the day is full"
    );
    let skipped = out.last_stats("daily").skipped;
    assert_eq!(skipped.get("daily_limit"), Some(&2), "u2 and u3: {skipped:?}");
}

/// Do-not-disturb hours 22:00 to 08:00 (UTC). u0's event is stamped 21:50 by its producer and
/// written at 22:30; u1's is stamped and written at 21:55. u0's notification would leave at
/// 22:30, inside the hours: it waits until 08:00, as the campaign stage times it (with its
/// occurrence's message id). u1's leaves at 21:55. Review s21/G finding 2 (note): the user
/// stage looked at do-not-disturb hours and caps as of the stamp (21:50, outside), so u0 was
/// sent at 22:30, in the night.
#[test]
fn a_late_stamped_event_is_judged_for_do_not_disturb_hours_when_it_would_leave() {
    use herald_engine::model::{triggered_run_id, CampaignCommand::Define};
    use replay_support::*;
    let dnd = "id: dnd\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions:\n  dnd: { start: \"22:00\", end: \"08:00\", action: delay }\n";
    let evening = MIDNIGHT - 120 * MIN;
    let input = vec![
        command("dnd", dnd, Define, T0),
        profile("u0", T0),
        profile("u1", T0),
        event_stamped("e-0", "u0", "Ping", evening + 30 * MIN, evening - 10 * MIN),
        event("e-1", "u1", "Ping", evening - 5 * MIN),
        event("x-0", "u1", "Other", MIDNIGHT + 600 * MIN),
    ];
    let out = run(NO_CAPS, input, Some(MIDNIGHT + 720 * MIN));
    let sent: Vec<(&str, i64, &str)> = out
        .sends
        .iter()
        .map(|s| (s.user_id.as_str(), s.created_at_ms, s.message_id.as_str()))
        .collect();
    let id = |user: &str, event: &str| {
        herald_engine::payload::message_id(
            "dnd",
            &triggered_run_id(event),
            user,
            &format!("d-{user}"),
        )
    };
    let (id0, id1) = (id("u0", "e-0"), id("u1", "e-1"));
    let morning = MIDNIGHT + 8 * 60 * MIN;
    assert_eq!(sent, [("u1", evening - 5 * MIN, id1.as_str()), ("u0", morning, id0.as_str())]);
}

/// The `WINNER_DECLARED` details of `campaign`.
fn winners(
    out: &replay_support::Out,
    campaign: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let declared = out
        .events
        .iter()
        .filter(|e| e.campaign_id == campaign && format!("{:?}", e.kind) == "WinnerDeclared");
    declared.map(|e| e.details.clone()).collect()
}

const TAB: &str = "id: tab\napp: shop\nname: n\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { id: A, title: a, body: a }\n    - { id: B, title: b, body: b }\n  ab: { test_audience: 4, evaluate_after: 1h }\noptions: { throttle: { max: 1, per: 1m } }\n";

/// A triggered A/B test of 4 users (A, B alternate) behind a campaign throttle of 1 a minute,
/// caps of 1 a day. u0..u3 take the 4 test places (u0 sent, u1..u3 queued in the outbox); u1's
/// cap is then spent by `news`, so the gate refuses u1 when it leaves: its place (B) goes back
/// and u4, who qualifies next, takes it: the winner is chosen from 4 test sends, 2 of each.
/// Review s21/G finding 3: the place stayed taken, the winner was chosen from 3 sends (A 2,
/// B 1) and u4 waited for it.
#[test]
fn a_test_place_refused_at_the_gate_goes_to_the_next_user() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let mut input = vec![command("news", NEWS, Define, T0), command("tab", TAB, Define, T0)];
    input.extend(["u0", "u1", "u2", "u3", "u4"].map(|u| profile(u, T0)));
    for (i, user) in ["u0", "u1", "u2", "u3"].into_iter().enumerate() {
        input.push(event(&format!("e-{i}"), user, "Ping", T0 + (1 + i as i64) * 1_000));
    }
    input.push(event("p-1", "u1", "Pong", T0 + 10_000)); // u1's cap, while u1 is queued
    input.push(event("e-4", "u4", "Ping", T0 + 10 * MIN));
    input.push(event("x-0", "u0", "Other", T0 + 180 * MIN));
    let out = run(CAPS, input, Some(T0 + 240 * MIN));
    let stats = out.last_stats("tab");
    assert_eq!(stats.skipped.get("capped_daily"), Some(&1), "u1 refused at the gate: {stats:?}");
    let tested: Vec<(String, String)> = out
        .sends
        .iter()
        .filter(|s| s.campaign_id == "tab")
        .map(|s| (s.user_id.clone(), s.variant_id.clone()))
        .collect();
    let expected = [("u0", "A"), ("u2", "A"), ("u3", "B"), ("u4", "B")];
    assert_eq!(tested, expected.map(|(u, v)| (u.to_string(), v.to_string())));
    let declared = winners(&out, "tab");
    assert_eq!(declared.len(), 1, "{:?}", out.kinds("tab"));
    let sent = |v: &str| declared[0][&format!("sent_{v}")].clone();
    assert_eq!((sent("A"), sent("B")), ("2".into(), "2".into()), "{declared:?}");
}

/// A triggered A/B test of 4 users; u0..u2 are tested (3 places taken); an edit lowers
/// `test_audience` to 2. The test is complete at the next candidate: the winner is declared
/// after `evaluate_after`, and u3, who waited for it, gets it. Review s21/G finding 5: the
/// evaluation started only when a user took the last place, none was left, so no winner was
/// ever declared and u3 waited for good.
#[test]
fn a_test_audience_lowered_below_the_users_tested_completes_the_test() {
    use herald_engine::model::CampaignCommand::Define;
    use replay_support::*;
    let tab = |audience: u32| {
        format!("id: tab\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat:\n  variants:\n    - {{ id: A, title: a, body: a }}\n    - {{ id: B, title: b, body: b }}\n  ab: {{ test_audience: {audience}, evaluate_after: 1h }}\n")
    };
    let mut input = vec![command("tab", &tab(4), Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    for (i, user) in ["u0", "u1", "u2"].into_iter().enumerate() {
        input.push(event(&format!("e-{i}"), user, "Ping", T0 + (1 + i as i64) * MIN));
    }
    input.push(command("tab", &tab(2), Define, T0 + 10 * MIN));
    input.push(event("e-3", "u3", "Ping", T0 + 20 * MIN));
    input.push(event("x-0", "u0", "Other", T0 + 600 * MIN));
    let out = run(NO_CAPS, input, Some(T0 + 2 * 86_400_000));
    let declared = winners(&out, "tab");
    assert_eq!(declared.len(), 1, "{:?}", out.kinds("tab"));
    let winner = declared[0]["winner"].clone();
    let sent: Vec<(String, String)> =
        out.sends.iter().map(|s| (s.user_id.clone(), s.variant_id.clone())).collect();
    let expected = [("u0", "A"), ("u1", "B"), ("u2", "A"), ("u3", winner.as_str())];
    assert_eq!(sent, expected.map(|(u, v)| (u.to_string(), v.to_string())));
}

/// Total 2, caps, a throttle of 1 an hour: u0 is sent, u1 holds the second place in flight (in
/// the outbox), u2 waits for a place. The campaign is paused; u3's candidate, on the flow when
/// the pause came, is held; then u1's command, on its way to the gate when the pause came, is
/// refused there (capped), which gives u1's place back while the campaign is paused. On resume the place is u2's, who waited first; u3 queues behind and
/// is refused `total_limit`. Review s23: the place returned during the pause woke u2, whom the
/// pause moved behind u3 in the held queue, so u3 (the newcomer) took the place and u2 was
/// refused.
#[test]
fn a_newcomer_held_by_a_pause_does_not_overtake_the_waiting_for_a_returned_place() {
    use herald_engine::{
        model::{
            topics,
            CampaignCommand::{Define, Pause, Resume},
            Platform, SendCommand,
        },
        runtime::replay::ReplayRecord,
    };
    use replay_support::*;
    let ping = "id: ping\napp: shop\nname: n\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 2 }\noptions: { throttle: { max: 1, per: 1h } }\n";
    let to_gate = SendCommand {
        message_id: "m-u1".into(),
        campaign_id: "ping".into(),
        variant_id: "A".into(),
        run_id: "trigger:e-1".into(),
        app_id: "shop".into(),
        user_id: "u1".into(),
        device_id: "d-u1".into(),
        platform: Platform::Ios,
        token: "tok-u1".into(),
        payload: "{}".into(),
        headers: Default::default(),
        created_at_ms: T0 + 30_000,
        expires_at_ms: None,
        confirm: true,
        place_key: Some("ping".into()),
    };
    let to_gate = ReplayRecord {
        topic: topics::SEND_GATE.into(),
        partition: None,
        offset: 0,
        key: Some(b"u1".to_vec()),
        value: Some(herald_engine::model::SchemaRegistry::builtin().encode(&to_gate).unwrap()),
        timestamp_ms: T0 + 30_000,
    };
    let mut input = vec![command("ping", ping, Define, T0), command("news", NEWS, Define, T0)];
    input.extend(["u0", "u1", "u2", "u3"].map(|u| profile(u, T0)));
    input.push(event("e-0", "u0", "Ping", T0 + 1_000));
    input.push(event("e-1", "u1", "Ping", T0 + 2_000)); // in the outbox: in flight
    input.push(event("e-2", "u2", "Ping", T0 + 3_000)); // total full: waits
    input.push(event("p-1", "u1", "Pong", T0 + 5_000)); // u1's daily cap goes to `news`
    input.push(command("ping", ping, Pause, T0 + 10_000));
    input.push(on_flow("ping", &candidate("ping", "u3", "trigger:e-3", T0 + 9_000), T0 + 20_000));
    input.push(to_gate); // refused: u1's place comes back, paused
    input.push(command("ping", ping, Resume, T0 + 40_000));
    for minute in 1..=300 {
        input.push(event(&format!("x-{minute}"), "u0", "Other", T0 + minute * MIN));
    }
    let out = run(CAPS, input, Some(T0 + 300 * MIN));
    let stats = out.last_stats("ping");
    assert_eq!(out.users("ping"), ["u0", "u2"], "u2 came first: {:?}", stats.skipped);
    assert_eq!(stats.skipped.get("total_limit"), Some(&1), "u3: {:?}", stats.skipped);
}
