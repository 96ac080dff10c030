//! Drivers of the tests of campaigns spread over shards (issue 13), on the replay over 4
//! partitions. Included by path where it is used:
//! `#[path = "replay_support/sharded.rs"] mod sharded;` then `use sharded::*;`.
//!
//! Two drivers:
//! - the backtest: JSON lines in (`profile`, `event`), `sends.jsonl`, the stats and the lifecycle
//!   events out ([`Outcome`]); campaigns defined once, before the input;
//! - records: Avro records straight onto the topics ([`define`], [`profiles`], [`events`],
//!   [`candidates`], ...), a campaign may be edited between them; what was sent, announced,
//!   published and dead-lettered out ([`run`], [`Out`]).
#![allow(dead_code)]

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use herald_engine::{
    campaign::{parse_campaign, shards},
    model::{
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats,
        Candidate, DeadLetter, Device, IngestDecoder, Platform, Properties, PropertyValue, Record,
        SchemaRegistry, SendCommand, ShardPlan, ShardPlanKind, ShardReport, ShardReportKind,
    },
    pipeline::engine_topology,
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    settings::Settings,
};
use serde_json::Value;

/// The backtest of one campaign over JSON lines (`replay_support/mod.rs`).
#[path = "mod.rs"]
mod backtest;

/// A profile with one device (`replay_support/profiles.rs`).
#[path = "profiles.rs"]
mod profiles;
pub use profiles::{device_on, profile_update};

// ---------------------------------------------------------------------------------------------
// Backtest driver (JSON lines in, `sends.jsonl` / stats out).

/// RFC 3339 time `second` seconds after the input's start.
pub fn ts(second: i64) -> String {
    chrono::DateTime::from_timestamp(1_795_000_000 + second, 0).unwrap().to_rfc3339()
}

/// Milliseconds `second` seconds after the input's start.
pub fn ms(second: i64) -> i64 {
    (1_795_000_000 + second) * 1000
}

/// `user`'s profile at second 0: a `first_name` and an iOS device.
pub fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"first_name":"N{user}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

/// `user`'s profile without the `first_name` a template may need (a template error).
pub fn unnamed(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"plan":"p"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

/// `user` sends event `name` at `second`.
pub fn event(user: &str, second: i64, name: &str) -> String {
    format!(
        r#"{{"type":"event","user":"{user}","ts":"{}","name":"{name}","props":{{}}}}"#,
        ts(second)
    )
}

/// A campaign `id` running once at second 100 for everyone with a device, sending `what`, with
/// `extra` YAML.
pub fn scheduled(id: &str, what: &str, extra: &str) -> String {
    format!(
        "id: {id}\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {what}\n{extra}",
        ts(100)
    )
}

/// `users` profiles, then one event after the run time (moving event time past it).
pub fn audience(users: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile(&format!("u{i}"))).collect();
    lines.push(event("u0", 200, "App Opened"));
    lines
}

/// The shards `campaign` is spread over (an app's settings have no say in it).
pub fn spread(campaign: &str) -> u32 {
    shards::in_effect(&parse_campaign(campaign, "c.yaml").unwrap())
}

/// `(variant, count)` pairs as a map.
pub fn counted(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(variant, count)| (variant.to_string(), *count)).collect()
}

/// Weekly on Fridays at 09:00 in each user's own timezone, sending `what`, with `options` YAML.
pub fn user_local(id: &str, what: &str, options: &str) -> String {
    format!("id: {id}\napp: shop\nname: n\nwhen:\n  schedule: {{ repeat: weekly, days: [fri], time: \"09:00\", timezone: user }}\nwhat: {what}\noptions: {{ ignore_global_caps: true{options} }}\n")
}

/// RFC 3339 of epoch milliseconds.
pub fn at(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339()
}

/// Epoch milliseconds of RFC 3339.
pub fn ms_of(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

/// `per_zone` users in each of UTC+14 (`a0`, `a1`, …), UTC (`b…`) and UTC−10 (`c…`), with a
/// device, at 18:00Z on Thursday 2026-11-19; then other users' events every 10 minutes until
/// 22:00Z on Friday the 20th (time moves on, on every partition). The Friday 09:00 run starts at
/// 09:00 in UTC+14 (19:00Z on the 19th): the `a` users are sent at its release, the `b` users at
/// 09:00Z and the `c` users at 19:00Z on the 20th, after it.
pub fn three_timezones(per_zone: usize) -> Vec<String> {
    let start = ms_of("2026-11-19T18:00:00Z");
    let zones = [("a", "Pacific/Kiritimati"), ("b", "UTC"), ("c", "Pacific/Honolulu")];
    let mut lines: Vec<String> = zones
        .iter()
        .flat_map(|(zone, tz)| {
            (0..per_zone).map(move |i| zoned_profile_line(&format!("{zone}{i}"), tz, start))
        })
        .collect();
    lines.extend(clock_lines(start, ms_of("2026-11-20T22:00:00Z")));
    lines
}

/// A backtest line: `user`'s profile in `timezone`, with an iOS device, at `at` (epoch ms).
pub fn zoned_profile_line(user: &str, timezone: &str, at_ms: i64) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"timezone":"{timezone}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        at(at_ms)
    )
}

/// Backtest lines: other users' (`z0` … `z11`) events every 10 minutes from `from` to `until`
/// (epoch ms), so that time moves on on every partition.
pub fn clock_lines(from: i64, until: i64) -> Vec<String> {
    (from..=until)
        .step_by(600_000)
        .flat_map(|tick| {
            (0..12).map(move |z| {
                format!(
                    r#"{{"type":"event","user":"z{z}","ts":"{}","name":"App Opened","props":{{}}}}"#,
                    at(tick)
                )
            })
        })
        .collect()
}

/// The shards that sent to the users of `variants` (`of`: a user's shard).
pub fn sending_shards(
    variants: &BTreeMap<String, String>,
    of: impl Fn(&str) -> u32,
) -> BTreeSet<u32> {
    variants.keys().map(|user| of(user)).collect()
}

/// What a backtest of one campaign over JSON lines wrote.
pub struct Outcome {
    pub dir: tempfile::TempDir,
}

impl Outcome {
    /// Replays `lines` through `campaign` (YAML) on 4 partitions.
    pub fn replay(campaign: &str, lines: &[String]) -> Self {
        Self { dir: backtest::replay(campaign, lines, 4) }
    }

    /// The records of output `file`.
    pub fn lines(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("out").join(file)).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// Each user sent to, with the variant they got (one command each).
    pub fn variants(&self) -> BTreeMap<String, String> {
        let sends = self.lines("sends.jsonl");
        let field = |s: &Value, name: &str| s[name].as_str().unwrap().to_string();
        let by_user: BTreeMap<String, String> =
            sends.iter().map(|s| (field(s, "user_id"), field(s, "variant_id"))).collect();
        assert_eq!(by_user.len(), sends.len(), "no user gets two commands");
        by_user
    }

    /// Commands per variant.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for variant in self.variants().into_values() {
            *counts.entry(variant).or_default() += 1;
        }
        counts
    }

    /// The campaign's published `sent` per variant.
    pub fn stats_sent(&self, campaign: &str) -> BTreeMap<String, usize> {
        let path = self.dir.path().join("out/stats.json");
        let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let variants = all[campaign]["variants"].as_array().unwrap().clone();
        let sent = |v: &Value| (v["variant_id"].as_str().unwrap().to_string(), v["sent"].as_u64());
        variants.iter().map(sent).map(|(id, sent)| (id, sent.unwrap() as usize)).collect()
    }

    /// The kinds of the lifecycle events, in order.
    pub fn kinds(&self) -> Vec<String> {
        let events = self.lines("campaign-events.jsonl");
        events.iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Records driver (Avro records straight onto the topics).

/// Milliseconds at the start of the input.
pub const T0: i64 = 1_795_000_000_000;
pub const MINUTE: i64 = 60_000;
/// The first midnight (UTC) after `T0`.
pub const MIDNIGHT: i64 = (T0 / 86_400_000 + 1) * 86_400_000;
/// No caps.
pub const NO_CAPS: &str = "apps:\n  shop: {}\n";
/// One push a day per user: a user sent to today is refused by the send gate.
pub const CAPS: &str = "apps:\n  shop:\n    caps: { per_day: 1 }\n";
/// Caps (one push a day) and an app throttle of 10 a minute: commands wait in the app stage's
/// outbox, their places in flight, for minutes.
pub const THROTTLED_CAPS: &str =
    "apps:\n  shop:\n    caps: { per_day: 1 }\n    throttle: { max: 10, per: 1m }\n";
/// `news`: a push to whoever sends `Pong`, no limits (it spends the user's cap of the day).
pub const NEWS: &str =
    "id: news\napp: shop\nname: News\nwhen: { event: Pong }\nwhat: { title: n, body: n }\n";

/// `value` on `topic` under `key`, at `at`.
pub fn keyed(topic: &str, key: &str, value: &impl Record, at: i64) -> ReplayRecord {
    let value = Some(SchemaRegistry::builtin().encode(value).unwrap());
    let key = Some(key.as_bytes().to_vec());
    ReplayRecord { topic: topic.into(), key, value, timestamp_ms: at, partition: None, offset: 0 }
}

/// `command` on campaign `id` (app shop) with the definition `yaml`, at `at`.
pub fn command(id: &str, yaml: &str, command: CampaignCommand, at: i64) -> ReplayRecord {
    let envelope = CampaignEnvelope {
        campaign_id: id.into(),
        app_id: "shop".into(),
        command,
        definition: Some(yaml.into()),
        revision: at,
        issued_at_ms: at,
        issued_by: None,
    };
    keyed(topics::CAMPAIGNS, id, &envelope, at)
}

/// The definition `yaml` of campaign `id` (app shop), applied at `at`.
pub fn define(id: &str, yaml: &str, at: i64) -> ReplayRecord {
    command(id, yaml, CampaignCommand::Define, at)
}

/// `user`'s iOS device.
pub fn device(user: &str) -> Device {
    device_on(user, Platform::Ios)
}

/// User `u<i>`.
pub fn user(i: usize) -> String {
    format!("u{i}")
}

/// `users` with an iOS device each, at `T0`.
pub fn profiles(users: std::ops::Range<usize>) -> impl Iterator<Item = ReplayRecord> {
    users.map(|i| {
        let update = profile_update(&user(i), Platform::Ios, T0, &[]);
        keyed(topics::PROFILES, &user(i), &update, T0)
    })
}

/// `user`'s profile in `timezone` with an iOS device, at `at`.
pub fn zoned_profile(user: &str, timezone: &str, at: i64) -> ReplayRecord {
    let set = [("timezone", PropertyValue::String(timezone.into()))];
    keyed(topics::PROFILES, user, &profile_update(user, Platform::Ios, at, &set), at)
}

/// User `u<i>` sends event `name` (id `event_id`) at `at`.
pub fn app_event(i: usize, name: &str, event_id: String, at: i64) -> ReplayRecord {
    user_event(&user(i), name, event_id, Default::default(), at)
}

/// `user` sends event `name` (id `event_id`) with `properties` at `at`.
pub fn user_event(
    user: &str,
    name: &str,
    event_id: String,
    properties: Properties,
    at: i64,
) -> ReplayRecord {
    let event = AppEvent {
        event_id,
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties,
        sdk_version: None,
    };
    keyed(topics::EVENTS, user, &event, at)
}

/// `users` send event `name` from `at` on, a millisecond apart (ids `<name>-u<i>`).
pub fn events(
    name: &str,
    users: std::ops::Range<usize>,
    at: i64,
) -> impl Iterator<Item = ReplayRecord> {
    let name = name.to_string();
    users.map(move |i| app_event(i, &name, format!("{name}-{}", user(i)), at + i as i64))
}

/// User `u<i>` sends `Other` at `at` (an event no campaign here waits for: it moves the clock).
pub fn other_event(i: usize, at: i64) -> ReplayRecord {
    app_event(i, "Other", format!("other-{i}-{at}"), at)
}

/// `user` clicks a notification of `campaign`'s variant `variant` at `at`.
pub fn click(campaign: &str, user: &str, variant: &str, at: i64) -> ReplayRecord {
    let text = |s: &str| PropertyValue::String(s.into());
    let properties = [("campaign_id".into(), text(campaign)), ("variant_id".into(), text(variant))];
    user_event(user, "Notification Clicked", format!("click-{user}-{at}"), properties.into(), at)
}

/// `users` send `Pong` (`news`) from `at` on, a millisecond apart.
pub fn pong(users: std::ops::Range<usize>, at: i64) -> impl Iterator<Item = ReplayRecord> {
    users.map(move |i| app_event(i, "Pong", format!("pong-{i}"), at + i as i64))
}

/// Ping candidates of `campaign` for `users` on the campaign flow, each keyed to its user's
/// shard among 4, as the user stage writes them once a user passed its early look at the caps
/// (before another campaign's push spent the user's cap: the gate then refuses it).
pub fn candidates(
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

/// The [`candidates`] keyed to the campaign's home (as the user stage keys them for a campaign
/// on its home alone).
pub fn candidates_at_home(
    campaign: &str,
    users: std::ops::Range<usize>,
    at: i64,
) -> impl Iterator<Item = ReplayRecord> + '_ {
    candidates(campaign, users, at).map(move |mut record| {
        record.key = Some(campaign.as_bytes().to_vec());
        record
    })
}

/// `ping`'s [`candidates`] keyed to their user's shard among `of`.
pub fn candidates_over(
    users: std::ops::Range<usize>,
    at: i64,
    of: u32,
) -> impl Iterator<Item = ReplayRecord> {
    let keys = users.clone().map(move |i| shards::key("ping", shards::of_user(&user(i), of)));
    candidates("ping", users, at).zip(keys).map(|(mut record, key)| {
        record.key = Some(key.into_bytes());
        record
    })
}

/// A report of `campaign` (app shop) of `kind` from `shard` (of 4) at `at`, every count and
/// the run 0 or none: `ShardReport { places, ..shard_report(..) }` sets what a test needs.
pub fn shard_report(campaign: &str, kind: ShardReportKind, shard: i32, at: i64) -> ShardReport {
    ShardReport {
        campaign_id: campaign.into(),
        app_id: "shop".into(),
        shard,
        shards: 4,
        kind,
        run_id: None,
        qualified: 0,
        reachable: 0,
        sent: 0,
        run_sent: 0,
        waiting: 0,
        places: 0,
        variants: vec![],
        skipped: Default::default(),
        failed: Default::default(),
        day_sent: 0,
        timestamp_ms: at,
        seq: 0,
    }
}

/// `report` on the campaign flow to its campaign's home, at its time.
pub fn to_home(report: &ShardReport) -> ReplayRecord {
    keyed(topics::CAMPAIGN_FLOW, &report.campaign_id, report, report.timestamp_ms)
}

/// An `INDICES` report of `ping` from `shard` (of 4) giving back `from .. from + count`.
pub fn indices_report(shard: i32, from: i64, count: i64, at: i64) -> ReplayRecord {
    let report = shard_report("ping", ShardReportKind::Indices, shard, at);
    to_home(&ShardReport { qualified: from, places: count, ..report })
}

/// An `INDICES` plan of `ping` to `shard` (of 4) numbered `number` (0: unnumbered, as before
/// plans were numbered), granting `from .. from + count`.
pub fn indices_plan(shard: u32, number: i64, from: i64, count: i64, at: i64) -> ReplayRecord {
    let plan = ShardPlan {
        campaign_id: "ping".into(),
        app_id: "shop".into(),
        run_id: String::new(),
        shard: shard as i32,
        kind: ShardPlanKind::Indices,
        places: number,
        test_from: from,
        test_users: count,
        test_total: 0,
        winner_id: None,
        limit: None,
        daily: None,
        timestamp_ms: at,
    };
    keyed(topics::CAMPAIGN_FLOW, &shards::key("ping", shard), &plan, at)
}

/// Variants A, B and C (YAML after `what:`), in alternation unless a split or a test says
/// otherwise.
pub const ALTERNATE_3: &str = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n    - { id: C, title: t, body: c }";

/// A campaign's options spreading it over 4 shards.
pub const OVER_4: &str = "options: { shards: 4 }\n";

/// `ping` in alternation of A, B, C on `Ping`, no limit, with `options` YAML.
pub fn alternation(options: &str) -> String {
    format!(
        "id: ping\napp: shop\nname: Ping\nwhen: {{ event: Ping }}\nwhat:{ALTERNATE_3}\n{options}"
    )
}

/// `ping`, a triggered A/B test of A, B, C on `audience` users (no winner within most replays:
/// evaluated 12 hours after the test), with `options` YAML.
pub fn ab_test(audience: u64, options: &str) -> String {
    format!("id: ping\napp: shop\nname: Ping\nwhen: {{ event: Ping }}\nwhat:{ALTERNATE_3}\n  ab: {{ test_audience: {audience}, evaluate_after: 12h }}\n{options}")
}

/// `ping`'s commands per variant.
pub fn per_variant(out: &Out) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for send in out.of("ping") {
        *counts.entry(send.variant_id.clone()).or_default() += 1;
    }
    counts
}

/// Users `from..to` by number.
pub fn numbers(from: usize, to: usize) -> BTreeSet<usize> {
    (from..to).collect()
}

/// `ping`: a push to whoever sends `Ping`, with `limits` YAML, over 4 shards.
pub fn ping(limits: &str) -> String {
    format!("id: ping\napp: shop\nname: Ping\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n")
}

/// `coupons`, scheduled at `runs` (ms), to everyone with a device, with `limits`, over 4 shards.
pub fn coupons(runs: &[i64], limits: &str) -> String {
    let at: Vec<String> = runs
        .iter()
        .map(|ms| {
            let time = chrono::DateTime::from_timestamp_millis(*ms).unwrap();
            format!("\"{}\"", time.to_rfc3339())
        })
        .collect();
    format!(
        "id: coupons\napp: shop\nname: Coupons\nwhen: {{ schedule: {{ at: [{}] }} }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n",
        at.join(", ")
    )
}

/// What a replay sent, announced, published and dead-lettered.
pub struct Out {
    pub sends: Vec<SendCommand>,
    pub events: Vec<CampaignLifecycleEvent>,
    pub stats: Vec<CampaignStats>,
    /// The reasons of the dead letters.
    pub dead: Vec<String>,
}

impl Out {
    pub fn of(&self, campaign: &str) -> Vec<&SendCommand> {
        self.sends.iter().filter(|s| s.campaign_id == campaign).collect()
    }

    /// The users `campaign` sent to (each once), by number.
    pub fn users(&self, campaign: &str) -> BTreeSet<usize> {
        let sends = self.of(campaign);
        let users: BTreeSet<usize> =
            sends.iter().map(|s| s.user_id[1..].parse().unwrap()).collect();
        assert_eq!(users.len(), sends.len(), "no user gets two pushes of {campaign}");
        users
    }

    /// The campaign states (home or shard keys) that sent `campaign`'s pushes.
    pub fn senders(&self, campaign: &str) -> BTreeSet<String> {
        self.of(campaign).iter().map(|s| s.place_key.clone().unwrap_or_default()).collect()
    }

    /// `(kind, sent)` of `campaign`'s lifecycle events.
    pub fn kinds(&self, campaign: &str) -> Vec<(String, String)> {
        let of = self.events.iter().filter(|e| e.campaign_id == campaign);
        of.map(|e| {
            let sent = e.details.get("sent").cloned().unwrap_or_default();
            (format!("{:?}", e.kind), sent)
        })
        .collect()
    }

    /// `campaign`'s last published count of `reason` skips.
    pub fn skipped(&self, campaign: &str, reason: &str) -> i64 {
        let last = self.stats.iter().rev().find(|s| s.campaign_id == campaign).unwrap();
        last.skipped.get(reason).copied().unwrap_or(0)
    }
}

/// `news` to u0..u19 (their cap of the day spent), `ping` as `yaml` with u0..u79's candidates
/// at their shards of 4 four minutes later (places and indices in flight at every shard for
/// minutes under the app's throttle; the gate refuses u0..u19), then `edits` (about a minute
/// later), then `later`; the clock runs an hour, the replay 90 minutes, with [`THROTTLED_CAPS`].
pub fn in_flight_then(yaml: &str, edits: Vec<ReplayRecord>, later: Vec<ReplayRecord>) -> Out {
    let mut input = vec![define("news", NEWS, T0), define("ping", yaml, T0)];
    input.extend(profiles(0..120));
    input.extend(pong(0..20, T0 + 5_000));
    input.push(other_event(0, T0 + 3 * MINUTE));
    input.extend(candidates("ping", 0..80, T0 + 4 * MINUTE));
    input.extend(edits);
    input.extend(later);
    input.push(other_event(1, T0 + 60 * MINUTE));
    run(THROTTLED_CAPS, input, T0 + 90 * MINUTE)
}

/// `ping` as `yaml` for u0..u`users` (the clock moved at 5 s), `reports` (records on the
/// campaign flow, at about 10 s) before anyone qualifies, then every user's candidate at their
/// shard of 4 at 20 s; the clock moved at 10 minutes, the replay 30 minutes, without caps.
pub fn reports_then_candidates(yaml: &str, users: usize, reports: Vec<ReplayRecord>) -> Out {
    let mut input = vec![define("ping", yaml, T0)];
    input.extend(profiles(0..users));
    input.push(other_event(0, T0 + 5_000));
    input.extend(reports);
    input.extend(candidates("ping", 0..users, T0 + 20_000));
    input.push(other_event(0, T0 + 10 * MINUTE));
    run(NO_CAPS, input, T0 + 30 * MINUTE)
}

/// Replays `input` on 4 partitions under `settings` (YAML), timers fired until `until`.
pub fn run(settings: &str, input: Vec<ReplayRecord>, until: i64) -> Out {
    run_input(settings, ReplayInput::Records(input), until)
}

/// [`run`] of any replay input (e.g. [`ReplayInput::Staggered`]).
pub fn run_input(settings: &str, input: ReplayInput, until: i64) -> Out {
    let settings = Arc::new(Settings::parse(settings, "settings").unwrap());
    let topology =
        engine_topology("sharded", TopicNames::default(), settings, IngestDecoder::default(), 0)
            .unwrap();
    let outputs = RefCell::new(Vec::new());
    let sink = ReplaySink::Callback(Box::new(|topic, _, value, _| {
        outputs.borrow_mut().push((topic.to_string(), value.to_vec()));
        Ok(())
    }));
    let options =
        ReplayOptions { partitions: 4, fire_timers_until: Some(until), ..ReplayOptions::default() };
    replay::run(&topology, input, sink, &options).unwrap();
    let registry = SchemaRegistry::builtin();
    let outputs = outputs.into_inner();
    let of = |topic: &'static str| {
        outputs.iter().filter(move |(t, _)| t == topic).map(|(_, value)| value.as_slice())
    };
    Out {
        sends: of(topics::PUSH).map(|v| registry.decode(v).unwrap()).collect(),
        events: of(topics::CAMPAIGN_EVENTS).map(|v| registry.decode(v).unwrap()).collect(),
        stats: of(topics::STATS).map(|v| registry.decode(v).unwrap()).collect(),
        dead: of(topics::DEAD_LETTER)
            .map(|v| registry.decode::<DeadLetter>(v).unwrap().reason)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// `t`, weekly at 09:00 in each user's timezone, over users in three zones (review_s29.rs,
// review_s30.rs).

/// One message, weekly on Fridays at 09:00 in each user's timezone, with `limits` and
/// `options` (YAML inside `options: { ... }`, after `ignore_global_caps`).
pub fn t_yaml(limits: &str, options: &str) -> String {
    t_what("{ title: t, body: b }", limits, options)
}

/// [`t_yaml`] sending `what`.
pub fn t_what(what: &str, limits: &str, options: &str) -> String {
    format!("{}limits: {limits}\n", user_local("t", what, options))
}

/// A record of `command` on `t` with the definition `yaml`, at `when` (RFC 3339).
pub fn on_t(yaml: &str, what: CampaignCommand, when: &str) -> ReplayRecord {
    command("t", yaml, what, ms_of(when))
}

/// Zones of the users: `a` UTC+14 (sent at the release, 19:00Z on the 19th), `b` UTC (09:00Z on
/// the 20th), `c` UTC−10 (19:00Z on the 20th).
pub const ZONES: [(&str, &str); 3] =
    [("a", "Pacific/Kiritimati"), ("b", "UTC"), ("c", "Pacific/Honolulu")];

/// The campaigns `definitions` (id, YAML) defined at 18:00Z on the 19th, `per_zone` users in
/// each of [`ZONES`], then the records `commands` (each at its own time, among the clock's ticks
/// every 10 minutes until 23:50Z on the 20th); replayed under `settings` until the 21st.
pub fn zones_run(
    settings: &str,
    definitions: &[(&str, &str)],
    per_zone: usize,
    commands: Vec<ReplayRecord>,
) -> Out {
    let commands = commands.into_iter().map(|command| (None, command)).collect();
    zones_staggered_run(settings, definitions, per_zone, commands)
}

/// [`zones_run`] where each of `commands` is read by the tasks of one partition only
/// (`Some(p)`: an instance reading the campaigns table before or after the others) or by every
/// task (`None`) ([`ReplayInput::Staggered`]).
pub fn zones_staggered_run(
    settings: &str,
    definitions: &[(&str, &str)],
    per_zone: usize,
    commands: Vec<(Option<i32>, ReplayRecord)>,
) -> Out {
    let start = ms_of("2026-11-19T18:00:00Z");
    let mut input: Vec<(Option<i32>, ReplayRecord)> =
        definitions.iter().map(|(id, yaml)| (None, define(id, yaml, start))).collect();
    for (zone, tz) in ZONES {
        input
            .extend((0..per_zone).map(|i| (None, zoned_profile(&format!("{zone}{i}"), tz, start))));
    }
    let mut commands = commands.into_iter().peekable();
    for tick in (start + MINUTE..=ms_of("2026-11-20T23:50:00Z")).step_by(600_000) {
        while commands.peek().is_some_and(|(_, c)| c.timestamp_ms <= tick) {
            input.push(commands.next().unwrap());
        }
        let clock = |z: usize| {
            user_event(&format!("z{z}"), "Other", format!("o{z}-{tick}"), Default::default(), tick)
        };
        input.extend((0..4).map(|z| (None, clock(z))));
    }
    input.extend(commands);
    run_input(settings, ReplayInput::Staggered(input), ms_of("2026-11-21T00:00:00Z"))
}

/// `t`'s `LIMIT_REACHED` and `RUN_STARTED` events as (kind, the limit or the run, sent), sorted
/// (`RUN_FINISHED`'s figure over shards counts the run's planned places: not compared).
pub fn limit_and_run_events(out: &Out) -> Vec<(String, String, String)> {
    let get = |d: &BTreeMap<String, String>, k: &str| d.get(k).cloned().unwrap_or_default();
    let mut events: Vec<(String, String, String)> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "t")
        .map(|e| (format!("{:?}", e.kind), &e.details))
        .filter(|(kind, _)| kind == "LimitReached" || kind == "RunStarted")
        .map(|(kind, d)| (kind, get(d, "limit") + &get(d, "run_id"), get(d, "sent")))
        .collect();
    events.sort();
    events
}

/// The users `t` sent to, by the day (UTC) of the command; asserts each user is sent once.
pub fn by_day(out: &Out) -> BTreeMap<String, BTreeSet<String>> {
    let mut days: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let sends = out.of("t");
    for send in &sends {
        let day = at(send.created_at_ms)[..10].to_string();
        days.entry(day).or_default().insert(send.user_id.clone());
    }
    let users: BTreeSet<&String> = sends.iter().map(|s| &s.user_id).collect();
    assert_eq!(users.len(), sends.len(), "each user once");
    days
}

/// Users per (day, run) and zone; asserts each user is sent once per run.
pub fn per_run_zone(out: &Out) -> BTreeMap<(String, String), BTreeMap<String, usize>> {
    let mut counts: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for send in out.of("t") {
        assert!(seen.insert((&send.run_id, &send.user_id)), "{} twice in a run", send.user_id);
        let day = at(send.created_at_ms)[..10].to_string();
        let zones = counts.entry((day, send.run_id.clone())).or_default();
        *zones.entry(send.user_id[..1].to_string()).or_default() += 1;
    }
    counts
}

/// Commands of `t` per variant.
pub fn variants(out: &Out) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for send in out.of("t") {
        *counts.entry(send.variant_id.clone()).or_default() += 1;
    }
    counts
}

/// `t`'s users per day and zone (the first letter of the user id).
pub fn per_day_zone(out: &Out) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for (day, users) in by_day(out) {
        let zones: &mut BTreeMap<String, usize> = counts.entry(day).or_default();
        for user in users {
            *zones.entry(user[..1].to_string()).or_default() += 1;
        }
    }
    counts
}
