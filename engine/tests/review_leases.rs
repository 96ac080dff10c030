//! Review findings (s20/B) on the leased total limit of a sharded triggered campaign
//! (`stage_campaign/leases.rs`): an edit that adds (or removes and adds again) a total limit
//! while the shards send. Replay driver over 4 partitions, campaign edits as records of the
//! campaigns topic at their event time.

use std::{cell::RefCell, collections::BTreeSet, sync::Arc};

use herald_engine::{
    model::{
        topics::{self, TopicNames},
        AppEvent, CampaignCommand, CampaignEnvelope, Device, IngestDecoder, Platform,
        ProfileUpdate, SchemaRegistry, SendCommand,
    },
    pipeline::{engine_topology, LIVE_STATS_INTERVAL_MS},
    runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
    settings::Settings,
};

const T0: i64 = 1_795_000_000_000;

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

/// The coupons campaign over 4 shards, with `limits` (YAML, may be empty), defined at `at`.
fn coupons(limits: &str, at: i64) -> ReplayRecord {
    let definition = format!(
        "id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 4 }}\n"
    );
    let envelope = CampaignEnvelope {
        campaign_id: "coupons".into(),
        app_id: "shop".into(),
        command: CampaignCommand::Define,
        definition: Some(definition),
        revision: at,
        issued_at_ms: at,
        issued_by: None,
    };
    let bytes = SchemaRegistry::builtin().encode(&envelope).unwrap();
    on_key(topics::CAMPAIGNS, "coupons", bytes, at)
}

fn profile(user: &str, at: i64) -> ReplayRecord {
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

fn ping(user: &str, at: i64) -> ReplayRecord {
    let event = AppEvent {
        event_id: format!("ping-{user}"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: "Ping".into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    on_key(topics::EVENTS, user, SchemaRegistry::builtin().encode(&event).unwrap(), at)
}

/// Users `from..to` ping at `at` (one millisecond apart).
fn pings(from: usize, to: usize, at: i64) -> impl Iterator<Item = ReplayRecord> {
    (from..to).map(move |i| ping(&format!("u{i}"), at + i as i64))
}

/// The coupons sent, replaying `input` on 4 partitions with the live stats interval (how often
/// a shard reports its counters to its home, as `herald engine` runs it).
fn coupons_sent(input: Vec<ReplayRecord>, stats_interval_ms: i64) -> Vec<String> {
    let settings = Arc::new(Settings::default());
    let topology = engine_topology(
        "review",
        TopicNames::default(),
        settings,
        IngestDecoder::default(),
        stats_interval_ms,
    )
    .unwrap();
    let sends = RefCell::new(Vec::new());
    replay::run(
        &topology,
        ReplayInput::Records(input),
        ReplaySink::Callback(Box::new(|topic, _, value, _| {
            if topic == topics::PUSH {
                let command: SendCommand = SchemaRegistry::builtin().decode(value).unwrap();
                if command.campaign_id == "coupons" {
                    sends.borrow_mut().push(command.user_id);
                }
            }
            Ok(())
        })),
        &ReplayOptions {
            partitions: 4,
            fire_timers_until: Some(T0 + 600_000),
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    let sends = sends.into_inner();
    let distinct: BTreeSet<&String> = sends.iter().collect();
    assert_eq!(distinct.len(), sends.len(), "no user gets two coupons");
    sends
}

fn audience(users: usize) -> Vec<ReplayRecord> {
    (0..users).map(|i| profile(&format!("u{i}"), T0)).collect()
}

/// An operator adds `limits.total: 40` half a second after 40 unlimited sends (within the
/// shards' stats interval: the home has not heard of all of them yet). The home pre-leases with
/// `Lease.base` = the stale `shard_sent` it knows; the later reports make the unreported
/// pre-limit sends count as lease spending, so `free_places` is too high by them: 20 more
/// pings get coupons although the limit was already reached.
#[test]
#[ignore = "finding: a total limit added within the stats interval of sharded sends is exceeded (leases.rs Lease::starting_at with a stale shard_sent)"]
fn a_total_limit_added_right_after_sharded_sends_is_not_exceeded() {
    let mut input = audience(60);
    input.push(coupons("", T0));
    input.extend(pings(0, 40, T0 + 10_000));
    input.push(coupons("limits: { total: 40 }\n", T0 + 10_500));
    input.extend(pings(40, 60, T0 + 20_000));
    let sent = coupons_sent(input, LIVE_STATS_INTERVAL_MS);
    assert_eq!(
        sent.len(),
        40,
        "nothing past the total; past it: {:?}",
        &sent[40.min(sent.len())..]
    );
}

/// The same edit once the home has heard every shard's sends (after the stats interval):
/// exact. Shows the finding above is the lag of the home's `shard_sent`.
#[test]
fn a_total_limit_added_after_the_stats_interval_is_exact() {
    let mut input = audience(60);
    input.push(coupons("", T0));
    input.extend(pings(0, 40, T0 + 10_000));
    input.push(coupons("limits: { total: 40 }\n", T0 + 15_000));
    input.extend(pings(40, 60, T0 + 20_000));
    let sent = coupons_sent(input, LIVE_STATS_INTERVAL_MS);
    assert_eq!(
        sent.len(),
        40,
        "nothing past the total; past it: {:?}",
        &sent[40.min(sent.len())..]
    );
}

/// A total of 100, 20 sends, the limit removed, 40 sends, the limit of 100 put back, then 100
/// more pings: the 40 sent while unlimited count as lease spending (report.sent − base), so
/// they are missing from "sent outside the leases" and the home grants 40 places too many.
/// Replay's default stats interval (0: every change reported at once), no lag needed.
#[test]
fn a_total_limit_removed_and_put_back_counts_what_was_sent_meanwhile() {
    let mut input = audience(200);
    input.push(coupons("limits: { total: 100 }\n", T0));
    input.extend(pings(0, 20, T0 + 10_000));
    input.push(coupons("", T0 + 20_000));
    input.extend(pings(20, 60, T0 + 30_000));
    input.push(coupons("limits: { total: 100 }\n", T0 + 40_000));
    input.extend(pings(60, 200, T0 + 50_000));
    let sent = coupons_sent(input, 0);
    assert_eq!(
        sent.len(),
        100,
        "nothing past the total; past it: {:?}",
        &sent[100.min(sent.len())..]
    );
}

/// A total of 100, 20 sent, then the total lowered to 20 (reached): the places the shards still
/// hold from their pre-lease and grants are spent anyway (nothing recalls them, `free_places`
/// only saturates at 0), so users past the new total get coupons. A campaign on one task
/// refuses them all (`sent >= limit`).
#[test]
#[ignore = "finding: a total limit lowered below what is leased out is exceeded by the places the shards hold (leases.rs, no recall on a lower limit)"]
fn a_total_limit_lowered_to_what_was_sent_sends_nobody_else() {
    let mut input = audience(120);
    input.push(coupons("limits: { total: 100 }\n", T0));
    input.extend(pings(0, 20, T0 + 10_000));
    input.push(coupons("limits: { total: 20 }\n", T0 + 20_000));
    input.extend(pings(20, 120, T0 + 30_000));
    let sent = coupons_sent(input, 0);
    assert_eq!(
        sent.len(),
        20,
        "nothing past the total; past it: {:?}",
        &sent[20.min(sent.len())..]
    );
}

/// A total of 100 leased over 4 shards; 20 sent; a daily limit added (the campaign then runs on
/// its home alone, `shards::in_effect` = 1) while the shards still hold leased places; the
/// home sends on its own count up to the total; the daily limit removed again: the shards
/// spend the places they held all along, past the total.
#[test]
#[ignore = "finding: places held by shards survive a spell on the home alone and are spent past the total (leases.rs, in_effect changes without recall)"]
fn places_held_by_shards_are_not_spent_after_the_campaign_ran_on_its_home() {
    let mut input = audience(220);
    input.push(coupons("limits: { total: 100 }\n", T0));
    input.extend(pings(0, 20, T0 + 10_000));
    input.push(coupons("limits: { total: 100, daily: 1000 }\n", T0 + 20_000));
    input.extend(pings(20, 170, T0 + 30_000));
    input.push(coupons("limits: { total: 100 }\n", T0 + 40_000));
    input.extend(pings(170, 220, T0 + 50_000));
    let sent = coupons_sent(input, 0);
    assert_eq!(
        sent.len(),
        100,
        "nothing past the total; past it: {:?}",
        &sent[100.min(sent.len())..]
    );
}
