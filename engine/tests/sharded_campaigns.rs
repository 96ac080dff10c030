//! A campaign spread over shards (`options.shards`, see `docs/architecture.md`), on the replay
//! driver over 4 partitions: every campaign-wide rule stays exact, read from what a user checks
//! (`sends.jsonl`, the campaign events, the stats).

use std::collections::BTreeSet;

use herald_engine::{
    backtest::Backtest,
    campaign::{parse_campaign, shards},
    model::CampaignLifecycleEvent,
    settings::Settings,
};
use serde_json::Value;

fn ts(second: i64) -> String {
    chrono::DateTime::from_timestamp(1_795_000_000 + second, 0).unwrap().to_rfc3339()
}

fn ms(second: i64) -> i64 {
    (1_795_000_000 + second) * 1000
}

fn profile(user: &str) -> String {
    format!(
        r#"{{"type":"profile","user":"{user}","ts":"{}","set":{{"first_name":"N{user}"}},"devices":[{{"platform":"ios","token":"tok-{user}"}}]}}"#,
        ts(0)
    )
}

fn event(user: &str, second: i64, name: &str, props: &str) -> String {
    format!(
        r#"{{"type":"event","user":"{user}","ts":"{}","name":"{name}","props":{props}}}"#,
        ts(second)
    )
}

/// A campaign running once at second 100 for everyone with a device, with `extra` YAML.
fn scheduled(id: &str, what: &str, extra: &str) -> String {
    format!(
        "id: {id}\napp: shop\nname: n\nwhen: {{ schedule: {{ at: \"{}\" }} }}\nwhat: {what}\n{extra}",
        ts(100)
    )
}

/// `users` profiles, then one event after the run time (moving event time past it).
fn audience(users: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile(&format!("u{i}"))).collect();
    lines.push(event("u0", 200, "App Opened", "{}"));
    lines
}

struct Outcome {
    dir: tempfile::TempDir,
}

impl Outcome {
    fn replay(campaign: &str, lines: &[String], until_ms: Option<i64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("campaigns")).unwrap();
        std::fs::write(dir.path().join("campaigns/c.yaml"), campaign).unwrap();
        std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).unwrap();
        Backtest {
            campaigns: vec![dir.path().join("campaigns")],
            input: dir.path().join("in.jsonl"),
            out: dir.path().join("out"),
            settings: Settings::default(),
            app: None,
            until_ms,
            partitions: 4,
        }
        .run()
        .unwrap();
        Self { dir }
    }

    fn lines(&self, file: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("out").join(file)).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn users(&self) -> BTreeSet<String> {
        let sends = self.lines("sends.jsonl");
        let users: BTreeSet<String> =
            sends.iter().map(|s| s["user_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(users.len(), sends.len(), "no user gets two commands");
        users
    }

    fn events(&self) -> Vec<CampaignLifecycleEvent> {
        self.lines("campaign-events.jsonl")
            .into_iter()
            .map(|v| serde_json::from_value(v).unwrap())
            .collect()
    }

    fn kinds(&self) -> Vec<String> {
        self.events().iter().map(|e| format!("{:?}", e.kind)).collect()
    }

    fn stats(&self, campaign: &str) -> Value {
        let path = self.dir.path().join("out/stats.json");
        let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        all[campaign].clone()
    }
}

fn shard_of(user: &str) -> u32 {
    shards::of_user(user, 4)
}

#[test]
fn a_run_to_20000_users_over_4_shards_with_total_limit_5000_reaches_exactly_5000_distinct_users() {
    let campaign = scheduled(
        "big",
        "{ title: t, body: b }",
        "limits: { total: 5000 }\noptions: { shards: 4 }\n",
    );
    let outcome = Outcome::replay(&campaign, &audience(20_000), None);

    let users = outcome.users();
    assert_eq!(users.len(), 5_000);
    let per_shard: BTreeSet<u32> = users.iter().map(|u| shard_of(u)).collect();
    assert_eq!(per_shard.len(), 4, "every shard sent its share");
    assert_eq!(outcome.kinds(), ["RunStarted", "RunFinished", "LimitReached", "Completed"]);
    let events = outcome.events();
    assert_eq!(events[0].details["qualified"], "20000");
    assert_eq!(events[0].details["shards"], "4");
    assert_eq!(events[1].details["sent"], "5000");
    let stats = outcome.stats("big");
    assert_eq!(stats["variants"][0]["sent"], 5_000, "stats merged from the shards");
    assert_eq!(stats["skipped"]["run_limit"], 15_000);
}

#[test]
fn per_run_limit_1000_of_10000_over_4_shards_sends_exactly_1000() {
    let campaign = scheduled(
        "run",
        "{ title: t, body: b }",
        "limits: { per_run: 1000, safety: 20000 }\noptions: { shards: 4 }\n",
    );
    let outcome = Outcome::replay(&campaign, &audience(10_000), None);

    assert_eq!(outcome.users().len(), 1_000);
    assert_eq!(outcome.kinds(), ["RunStarted", "RunFinished"]);
    assert_eq!(outcome.events()[1].details["sent"], "1000");
    assert_eq!(outcome.stats("run")["skipped"]["run_limit"], 9_000);
}

#[test]
fn safety_check_over_4_shards_counts_the_whole_audience_and_sends_nothing() {
    let campaign = scheduled(
        "coupons",
        "{ title: t, body: b }",
        "limits: { safety: 1000 }\noptions: { shards: 4 }\n",
    );
    let outcome = Outcome::replay(&campaign, &audience(10_000), None);

    assert!(outcome.lines("sends.jsonl").is_empty(), "a tripped run sends nothing");
    assert_eq!(outcome.kinds(), ["SafetyCheckTripped"]);
    assert_eq!(outcome.events()[0].details["qualified"], "10000");
    assert_eq!(outcome.stats("coupons")["skipped"]["safety_check"], 10_000);
}

#[test]
fn ab_test_15_percent_3_variants_over_4_shards_gives_exactly_1000_each_then_the_winner_to_17000() {
    let what = "\n  variants:\n    - { title: A, body: a }\n    - { title: B, body: b }\n    - { title: C, body: c }\n  ab: { test_audience: \"15%\", evaluate_after: 1h }";
    let campaign = scheduled("sab", what, "options: { shards: 4 }\n");
    let mut lines = audience(20_000);
    // During the wait, clicks favour C (each click counted on its user's shard).
    let click = |variant: &str| format!(r#"{{"campaign_id":"sab","variant_id":"{variant}"}}"#);
    for (i, variant) in ["A", "B", "C", "C", "C", "B"].iter().cycle().take(60).enumerate() {
        let user = format!("u{i}");
        lines.push(event(&user, 300 + i as i64, "Notification Clicked", &click(variant)));
    }
    let outcome = Outcome::replay(&campaign, &lines, Some(ms(200 + 3_600 + 60)));

    let sends = outcome.lines("sends.jsonl");
    assert_eq!(outcome.users().len(), 20_000);
    let variants: Vec<&str> = sends.iter().map(|s| s["variant_id"].as_str().unwrap()).collect();
    let (test, rest) = variants.split_at(3_000);
    let count = |group: &[&str], v: &str| group.iter().filter(|x| **x == v).count();
    assert_eq!((count(test, "A"), count(test, "B"), count(test, "C")), (1_000, 1_000, 1_000));
    assert!(rest.iter().all(|v| *v == "C"), "the remaining 17,000 get the winner");
    let test_shards: BTreeSet<u32> =
        sends[..3_000].iter().map(|s| shard_of(s["user_id"].as_str().unwrap())).collect();
    assert_eq!(test_shards.len(), 4, "the test population comes from every shard");
    assert_eq!(outcome.kinds(), ["RunStarted", "WinnerDeclared", "RunFinished"]);
    let events = outcome.events();
    assert_eq!(events[0].details["test_per_variant"], "1000");
    assert_eq!(events[1].details["winner"], "C");
    assert_eq!(events[1].details["clicks_C"], "30", "clicks of every shard count");
    let stats = outcome.stats("sab");
    let sent: Vec<i64> = (0..3).map(|v| stats["variants"][v]["sent"].as_i64().unwrap()).collect();
    assert_eq!(sent, [1_000, 1_000, 18_000]);
}

#[test]
fn one_shard_and_four_shards_reach_the_same_users_without_limits() {
    let one = scheduled("all", "{ title: t, body: b }", "");
    let four = scheduled("all", "{ title: t, body: b }", "options: { shards: 4 }\n");
    let lines = audience(2_000);
    let (one, four) = (Outcome::replay(&one, &lines, None), Outcome::replay(&four, &lines, None));
    assert_eq!(one.users(), four.users());
    assert_eq!(one.users().len(), 2_000);
    // Line for line the same commands (ids, texts, tokens, times), in another order.
    let sorted = |o: &Outcome| -> Vec<String> {
        let text = std::fs::read_to_string(o.dir.path().join("out/sends.jsonl")).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert!(sorted(&one) == sorted(&four), "byte-identical sends, whatever the shards");
}

#[test]
fn shards_must_be_a_whole_number_from_1_to_64() {
    for bad in ["0", "65", "two", "1.5"] {
        let yaml =
            scheduled("s", "{ title: t, body: b }", &format!("options: {{ shards: {bad} }}\n"));
        let errors = parse_campaign(&yaml, "s.yaml").unwrap_err();
        assert!(errors.errors.iter().any(|e| e.path == "options.shards"), "{bad}: {errors:?}");
    }
    let yaml = scheduled("s", "{ title: t, body: b }", "options: { shards: 8 }\n");
    assert_eq!(parse_campaign(&yaml, "s.yaml").unwrap().options.shards, 8);
}

#[test]
fn a_triggered_campaign_over_4_shards_sends_what_one_shard_sends_and_merges_its_stats() {
    let campaign = |extra: &str| {
        format!("id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{extra}")
    };
    let mut lines: Vec<String> = (0..2_000).map(|i| profile(&format!("u{i}"))).collect();
    // Every user pings twice, an hour apart: two occurrences, two message ids.
    lines.extend((0..2_000).map(|i| event(&format!("u{i}"), 10 + i, "Ping", "{}")));
    lines.extend((0..2_000).map(|i| event(&format!("u{i}"), 3_700 + i, "Ping", "{}")));
    let one = Outcome::replay(&campaign(""), &lines, None);
    let four = Outcome::replay(&campaign("options: { shards: 4 }\n"), &lines, None);
    // Message ids name the replay's input file (its event ids), so compare what was sent when.
    let sends = |o: &Outcome| -> BTreeSet<(String, String)> {
        let line = |s: &Value| (s["user_id"].to_string(), s["send_time"].to_string());
        o.lines("sends.jsonl").iter().map(line).collect()
    };
    assert_eq!(sends(&four).len(), 4_000, "two occurrences per user");
    assert!(sends(&one) == sends(&four), "the same users at the same times");
    assert_eq!(four.stats("ping")["variants"][0]["sent"], 4_000, "merged from the 4 shards");
}

#[test]
fn coupon_limit_10000_qualify_total_1000_over_4_shards_gives_exactly_1000_sends_and_completes() {
    let campaign = "id: coupons\napp: shop\nname: Coupons\nwhen: { event: App Opened }\nwhat: { title: t, body: b }\nlimits: { total: 1000 }\noptions: { shards: 4 }\n";
    let mut lines: Vec<String> = (0..10_000).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..10_000).map(|i| event(&format!("u{i}"), 10 + i, "App Opened", "{}")));
    let outcome = Outcome::replay(campaign, &lines, None);

    assert_eq!(spread(campaign), 4, "the total is leased to 4 shards");
    assert_eq!(outcome.users().len(), 1_000, "exactly the limit");
    assert_eq!(outcome.kinds(), ["LimitReached", "Completed"]);
    let events = outcome.events();
    assert_eq!(events[1].details["reason"], "total_limit");
    assert_eq!(events[1].details["sent"], "1000");
    let stats = outcome.stats("coupons");
    assert_eq!(stats["variants"][0]["sent"], 1_000);
    assert_eq!(stats["skipped"]["total_limit"], 9_000, "every other user refused, none lost");
}

/// The shards `campaign` is spread over.
fn spread(campaign: &str) -> u32 {
    shards::in_effect(&parse_campaign(campaign, "c.yaml").unwrap(), &Settings::default())
}

/// Every shard's candidates wait for places at once, over and over: bursts of 500 users at one
/// instant (the replay handles each record's consequences before any timer fires, so grants,
/// recalls and returns cross while candidates wait), until the limit is full mid-burst.
#[test]
fn a_total_of_1500_leased_over_4_shards_fills_exactly_under_bursts_of_500_at_one_instant() {
    let campaign = "id: burst\napp: shop\nname: Burst\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 1500 }\noptions: { shards: 4 }\n";
    let mut lines: Vec<String> = (0..4_000).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..4_000).map(|i| event(&format!("u{i}"), 10 + i / 500, "Ping", "{}")));
    let outcome = Outcome::replay(campaign, &lines, None);

    assert_eq!(spread(campaign), 4);
    let users = outcome.users();
    assert_eq!(users.len(), 1_500, "exactly the limit");
    let per_shard = |s: u32| users.iter().filter(|u| shard_of(u) == s).count();
    assert!((0..4).all(|s| per_shard(s) > 0), "every shard sent some");
    assert_eq!(outcome.kinds(), ["LimitReached", "Completed"]);
    assert_eq!(outcome.events()[1].details["sent"], "1500");
    let stats = outcome.stats("burst");
    assert_eq!(stats["variants"][0]["sent"], 1_500);
    assert_eq!(stats["skipped"]["total_limit"], 2_500, "every other user refused, none lost");
}

#[test]
fn a_limit_above_the_audience_sends_everyone_over_4_shards() {
    let campaign = "id: few\napp: shop\nname: Few\nwhen: { event: Ping }\nwhat: { title: t, body: b }\nlimits: { total: 50 }\noptions: { shards: 4 }\n";
    let mut lines: Vec<String> = (0..30).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..30).map(|i| event(&format!("u{i}"), 10 + i * 60, "Ping", "{}")));
    let outcome = Outcome::replay(campaign, &lines, None);

    assert_eq!(outcome.users().len(), 30, "every user, one by one");
    assert!(outcome.kinds().is_empty(), "the limit is not reached");
}

#[test]
fn a_per_run_limit_of_1000_of_10000_over_4_partitions_is_a_random_sample_the_same_on_a_rerun() {
    let campaign =
        scheduled("sample", "{ title: t, body: b }", "limits: { per_run: 1000, safety: 20000 }\n");
    let users = Outcome::replay(&campaign, &audience(10_000), None).users();
    assert_eq!(users.len(), 1_000);
    // Every user-stage partition in proportion to its audience (binomial, within 4 sd).
    let partition = |user: &str| shards::of_user(user, 4) as usize;
    let mut audience_of = [0f64; 4];
    (0..10_000).for_each(|i| audience_of[partition(&format!("u{i}"))] += 1.0);
    let mut picked = [0f64; 4];
    users.iter().for_each(|user| picked[partition(user)] += 1.0);
    for (picked, audience) in picked.iter().zip(audience_of) {
        let expected = 1_000.0 * audience / 10_000.0;
        assert!((picked - expected).abs() <= 4.0 * expected.sqrt(), "{picked} of {expected}");
    }
    // Not the first users in any order of ids: about half of them below u5000 (sd about 15).
    let low = users.iter().filter(|u| u[1..].parse::<u32>().unwrap() < 5_000).count();
    assert!((440..=560).contains(&low), "{low} of 1,000 below u5000");
    // The run id decides the sample: a re-run of the same run picks the same users.
    let again = Outcome::replay(&campaign, &audience(10_000), None).users();
    assert_eq!(users, again);
}

/// Records for the runtime's replay, where a campaign may be edited between events (the
/// backtest defines its campaigns once, before its input).
mod records {
    use std::{cell::RefCell, sync::Arc};

    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, Device,
            IngestDecoder, Platform, ProfileUpdate, Record, SchemaRegistry, SendCommand,
        },
        pipeline::engine_topology,
        runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        settings::Settings,
    };

    /// Milliseconds at the start of the input.
    pub const T0: i64 = 1_795_000_000_000;

    fn keyed(topic: &str, key: &str, value: &impl Record, at: i64) -> ReplayRecord {
        ReplayRecord {
            topic: topic.into(),
            partition: None,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            value: Some(SchemaRegistry::builtin().encode(value).unwrap()),
            timestamp_ms: at,
        }
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

    /// Users `from..to` with an iOS device each, at `at`.
    pub fn profiles(from: usize, to: usize, at: i64) -> impl Iterator<Item = ReplayRecord> {
        (from..to).map(move |i| {
            let user = format!("u{i}");
            let device = Device {
                device_id: format!("d-{user}"),
                platform: Platform::Ios,
                token: format!("tok-{user}"),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            };
            let update = ProfileUpdate {
                app_id: "shop".into(),
                user_id: user.clone(),
                timestamp_ms: at,
                set: Default::default(),
                unset: vec![],
                devices_added: vec![device],
                tokens_removed: vec![],
            };
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

    /// What a replay of `input` on 4 partitions (timers fired until `until`) sent, in order,
    /// and the lifecycle events announced.
    pub fn replay(
        input: Vec<ReplayRecord>,
        until: i64,
    ) -> (Vec<SendCommand>, Vec<CampaignLifecycleEvent>) {
        let topology = engine_topology(
            "sharded",
            TopicNames::default(),
            Arc::new(Settings::default()),
            IngestDecoder::default(),
            0,
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
        let options = ReplayOptions {
            partitions: 4,
            fire_timers_until: Some(until),
            ..ReplayOptions::default()
        };
        replay::run(&topology, ReplayInput::Records(input), sink, &options).unwrap();
        (sends.into_inner(), events.into_inner())
    }
}

/// Issue 13: a total limit raised after every shard was told it is full is asked for again:
/// the shards get new places and send up to the new limit, exactly.
#[test]
fn a_total_raised_after_the_shards_were_told_full_is_leased_again_up_to_the_new_limit() {
    use records::{define, events, profiles, replay, T0};
    let coupons = |total: u32| {
        format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {total} }}\noptions: {{ shards: 4 }}\n")
    };
    let mut input: Vec<_> = profiles(0, 400, T0).collect();
    input.push(define("coupons", &coupons(40), T0));
    input.extend(events("Ping", "first", 0, 200, T0 + 10_000));
    input.push(define("coupons", &coupons(100), T0 + 20_000));
    input.extend(events("Ping", "second", 200, 400, T0 + 30_000));
    let (sends, lifecycle) = replay(input, T0 + 600_000);

    let users: BTreeSet<&str> = sends.iter().map(|s| s.user_id.as_str()).collect();
    assert_eq!(users.len(), sends.len(), "no user gets two coupons");
    let first = users.iter().filter(|u| u[1..].parse::<usize>().unwrap() < 200).count();
    assert_eq!(first, 40, "the first 200 pings fill the total of 40");
    assert_eq!(sends.len(), 100, "exactly the raised limit");
    let after: BTreeSet<u32> = sends[40..].iter().map(|s| shard_of(&s.user_id)).collect();
    assert_eq!(after.len(), 4, "every shard sends again");
    let reached: Vec<&str> = lifecycle
        .iter()
        .filter(|e| format!("{:?}", e.kind) == "LimitReached")
        .map(|e| e.details["sent"].as_str())
        .collect();
    assert_eq!(reached, ["40", "100"], "each limit announced once, when reached");
}

/// A total limit removed and put back: the users the shards sent to meanwhile (on no place)
/// count against it when it is back, so it stays exact.
#[test]
fn sends_made_while_a_total_was_removed_count_against_it_when_it_is_put_back() {
    use records::{define, events, profiles, replay, T0};
    let coupons = |limits: &str| {
        format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n")
    };
    let mut input: Vec<_> = profiles(0, 300, T0).collect();
    input.push(define("coupons", &coupons("limits: { total: 100 }\n"), T0));
    input.extend(events("Ping", "limited", 0, 20, T0 + 10_000));
    input.push(define("coupons", &coupons(""), T0 + 20_000));
    input.extend(events("Ping", "unlimited", 20, 60, T0 + 30_000));
    input.push(define("coupons", &coupons("limits: { total: 100 }\n"), T0 + 40_000));
    input.extend(events("Ping", "back", 60, 300, T0 + 50_000));
    let (sends, _) = replay(input, T0 + 600_000);

    let users: BTreeSet<usize> = sends.iter().map(|s| s.user_id[1..].parse().unwrap()).collect();
    assert_eq!(users.len(), sends.len(), "no user gets two coupons");
    assert_eq!(users.range(..60).count(), 60, "everyone before the limit came back");
    assert_eq!(sends.len(), 100, "exactly the total, counting the 40 sent without it");
}
