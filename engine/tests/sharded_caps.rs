//! Limits of a campaign spread over shards (issue 13, brief s26/CAPS; see "Places in flight and
//! the waiting queue" in `docs/architecture.md`), on the replay driver over 4 partitions: a
//! campaign with limits on an app with frequency caps holds each place in flight until the send
//! gate confirms it or refuses it (the place then goes back to the shard's next user, or home),
//! so its limits stay exact with every shard sending.

use std::{cell::RefCell, collections::BTreeSet, sync::Arc};

use herald_engine::{
    campaign::{parse_campaign, shards},
    model::{
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats,
        Candidate, Device, IngestDecoder, Platform, ProfileUpdate, Record, SchemaRegistry,
        SendCommand,
    },
    pipeline::engine_topology,
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    settings::Settings,
};

const T0: i64 = 1_795_000_000_000;
const MINUTE: i64 = 60_000;
/// One push a day per user: a user sent to today is refused by the send gate.
const CAPS: &str = "apps:\n  shop:\n    caps: { per_day: 1 }\n";

fn keyed(topic: &str, key: &str, value: &impl Record, at: i64) -> ReplayRecord {
    let value = Some(SchemaRegistry::builtin().encode(value).unwrap());
    let key = Some(key.as_bytes().to_vec());
    ReplayRecord { topic: topic.into(), key, value, timestamp_ms: at, partition: None, offset: 0 }
}

fn define(id: &str, yaml: &str, at: i64) -> ReplayRecord {
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

fn device(user: &str) -> Device {
    Device {
        device_id: format!("d-{user}"),
        platform: Platform::Ios,
        token: format!("tok-{user}"),
        app_version: None,
        os_version: None,
        make: None,
        model: None,
        sdk_version: None,
    }
}

fn user(i: usize) -> String {
    format!("u{i}")
}

fn profiles(users: std::ops::Range<usize>) -> impl Iterator<Item = ReplayRecord> {
    users.map(|i| {
        let update = ProfileUpdate {
            app_id: "shop".into(),
            user_id: user(i),
            timestamp_ms: T0,
            set: Default::default(),
            unset: vec![],
            devices_added: vec![device(&user(i))],
            tokens_removed: vec![],
        };
        keyed(topics::PROFILES, &user(i), &update, T0)
    })
}

fn events(
    name: &str,
    users: std::ops::Range<usize>,
    at: i64,
) -> impl Iterator<Item = ReplayRecord> {
    let name = name.to_string();
    users.map(move |i| {
        let event = AppEvent {
            event_id: format!("{name}-{}", user(i)),
            app_id: "shop".into(),
            user_id: user(i),
            name: name.clone(),
            timestamp_ms: at + i as i64,
            properties: Default::default(),
            sdk_version: None,
        };
        keyed(topics::EVENTS, &user(i), &event, at + i as i64)
    })
}

/// Ping candidates of `campaign` for `users` on the campaign flow, each keyed to its user's
/// shard among 4, as the user stage writes them once a user passed its early look at the caps
/// (before another campaign's push spent the user's cap: the gate then refuses it).
fn candidates(
    campaign: &str,
    users: std::ops::Range<usize>,
    at: i64,
) -> impl Iterator<Item = ReplayRecord> + '_ {
    users.map(move |i| {
        let candidate = Candidate {
            campaign_id: campaign.into(),
            app_id: "shop".into(),
            run_id: format!("trigger:ping-{}", user(i)),
            user_id: user(i),
            qualified_at_ms: at + i as i64,
            trigger_event: Some("Ping".into()),
            event_properties: Default::default(),
            profile: Default::default(),
            devices: vec![device(&user(i))],
            timezone: None,
            language: None,
            source: None,
        };
        let key = shards::key(campaign, shards::of_user(&user(i), 4));
        keyed(topics::CAMPAIGN_FLOW, &key, &candidate, at + i as i64)
    })
}

struct Out {
    sends: Vec<SendCommand>,
    events: Vec<CampaignLifecycleEvent>,
    stats: Vec<CampaignStats>,
}

impl Out {
    fn of(&self, campaign: &str) -> Vec<&SendCommand> {
        self.sends.iter().filter(|s| s.campaign_id == campaign).collect()
    }

    /// The users `campaign` sent to (each once).
    fn users(&self, campaign: &str) -> BTreeSet<usize> {
        let sends = self.of(campaign);
        let users: BTreeSet<usize> =
            sends.iter().map(|s| s.user_id[1..].parse().unwrap()).collect();
        assert_eq!(users.len(), sends.len(), "no user gets two pushes of {campaign}");
        users
    }

    /// The campaign states (home or shard keys) that sent `campaign`'s pushes.
    fn senders(&self, campaign: &str) -> BTreeSet<String> {
        self.of(campaign).iter().map(|s| s.place_key.clone().unwrap_or_default()).collect()
    }

    /// `(kind, sent)` of `campaign`'s lifecycle events.
    fn kinds(&self, campaign: &str) -> Vec<(String, String)> {
        let of = self.events.iter().filter(|e| e.campaign_id == campaign);
        of.map(|e| {
            let sent = e.details.get("sent").cloned().unwrap_or_default();
            (format!("{:?}", e.kind), sent)
        })
        .collect()
    }

    fn skipped(&self, campaign: &str, reason: &str) -> i64 {
        let last = self.stats.iter().rev().find(|s| s.campaign_id == campaign).unwrap();
        last.skipped.get(reason).copied().unwrap_or(0)
    }
}

fn run(settings: &str, input: Vec<ReplayRecord>, until: i64) -> Out {
    let settings = Arc::new(Settings::parse(settings, "settings").unwrap());
    let topology =
        engine_topology("caps", TopicNames::default(), settings, IngestDecoder::default(), 0)
            .unwrap();
    let outputs = RefCell::new(Vec::new());
    let sink = ReplaySink::Callback(Box::new(|topic, _, value, _| {
        outputs.borrow_mut().push((topic.to_string(), value.to_vec()));
        Ok(())
    }));
    let options =
        ReplayOptions { partitions: 4, fire_timers_until: Some(until), ..ReplayOptions::default() };
    replay::run(&topology, ReplayInput::Records(input), sink, &options).unwrap();
    let registry = SchemaRegistry::builtin();
    let outputs = outputs.into_inner();
    let of = |topic: &'static str| {
        outputs.iter().filter(move |(t, _)| t == topic).map(|(_, value)| value.as_slice())
    };
    Out {
        sends: of(topics::PUSH).map(|v| registry.decode(v).unwrap()).collect(),
        events: of(topics::CAMPAIGN_EVENTS).map(|v| registry.decode(v).unwrap()).collect(),
        stats: of(topics::STATS).map(|v| registry.decode(v).unwrap()).collect(),
    }
}

/// `news`: a push to whoever sends `Pong`, no limits (it spends the user's cap of the day).
const NEWS: &str =
    "id: news\napp: shop\nname: News\nwhen: { event: Pong }\nwhat: { title: n, body: n }\n";

fn ping(limits: &str) -> String {
    format!("id: ping\napp: shop\nname: Ping\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n")
}

fn in_effect(yaml: &str, settings: &str) -> u32 {
    let settings = Settings::parse(settings, "settings").unwrap();
    shards::in_effect(&parse_campaign(yaml, "c.yaml").unwrap(), &settings)
}

/// A total of 50 over 4 shards on an app with a cap of one push a day: 80 users qualify, of
/// whom u0..u19 were sent `news` today, so the gate refuses them (their candidates come first).
/// Each refused place goes back to its shard's lease and the next user takes it: exactly 50
/// users, all among u20..u79, every shard sending, `LIMIT_REACHED` and `COMPLETED` at 50 once.
#[test]
fn a_total_of_50_over_4_shards_on_an_app_with_caps_sends_exactly_50_users_the_gate_lets_through() {
    let yaml = ping("limits: { total: 50 }\n");
    assert_eq!(in_effect(&yaml, CAPS), 4, "spread over its 4 shards");
    let mut input = vec![define("news", NEWS, T0), define("ping", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Pong", 0..20, T0 + 5_000));
    input.extend(candidates("ping", 0..80, T0 + 20_000));
    input.extend(events("Other", 0..1, T0 + 10 * MINUTE));
    let out = run(CAPS, input, T0 + 30 * MINUTE);

    assert_eq!(out.users("news"), (0..20).collect(), "news spent u0..u19's cap of the day");
    let sent = out.users("ping");
    assert_eq!(sent.len(), 50, "exactly the total: {sent:?}");
    assert!(sent.iter().all(|u| *u >= 20), "only users the gate let through: {sent:?}");
    let senders = out.senders("ping");
    let shard_keys: BTreeSet<String> = (0..4).map(|s| shards::key("ping", s)).collect();
    assert_eq!(senders, shard_keys, "every shard sends, the home none");
    assert_eq!(out.skipped("ping", "capped_daily"), 20, "u0..u19 refused at the gate");
    let ends: Vec<_> = out
        .kinds("ping")
        .into_iter()
        .filter(|(k, _)| k == "LimitReached" || k == "Completed")
        .collect();
    let fifty = |kind: &str| (kind.to_string(), "50".to_string());
    assert_eq!(ends, [fifty("LimitReached"), fifty("Completed")]);
}
