//! A triggered campaign's total limit over 8 shards on an app with frequency caps, live against
//! the real broker on two engine instances, one of them killed (SIGKILL) mid-run and restarted:
//! places are held in flight at the shards until the send gate answers, and a place the gate
//! refuses (the user's cap of the day already spent by another campaign) goes to another user,
//! so the total stays exact (issue 13, brief s26/CAPS; see "Places in flight and the waiting
//! queue" in `docs/architecture.md`).

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::{collections::BTreeSet, time::Duration};

use common::wait_for_offsets;
use herald_engine::model::{CampaignStats, SendCommand};
use sharded::{
    apply, decoded, deployment, events, lifecycle, profiles, spawn_instance_with, spawn_two_with,
};

const USERS: usize = 4_000;
const TOTAL: usize = 1_500;

/// Each user of `users` sends `Pong` (even users only: `news` spends their cap of the day) and
/// `Ping` (`coupons`), in that order on the user's partition: both candidates pass the user
/// stage's early look at the caps, and the send gate lets only one of the two through.
fn pings(topic: &str, users: std::ops::Range<usize>) {
    let mut records = Vec::new();
    for i in users {
        if i % 2 == 0 {
            records.extend(events("Pong", std::iter::once(format!("u{i}"))));
        }
        records.extend(events("Ping", std::iter::once(format!("u{i}"))));
    }
    common::produce(topic, records);
}

#[test]
fn a_total_over_8_shards_on_an_app_with_caps_stays_exact_when_an_instance_is_killed() {
    let (prefix, app_id, dir) = deployment("it-caps", 8);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let news =
        "id: news\napp: shop\nname: News\nwhen: { event: Pong }\nwhat: { title: n, body: n }\n";
    apply(dir.path(), &topic("campaigns"), "news.yaml", news);
    let coupons = format!(
        "id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {TOTAL} }}\noptions: {{ shards: 8 }}\n"
    );
    apply(dir.path(), &topic("campaigns"), "coupons.yaml", &coupons);
    let settings = dir.path().join("settings.yaml");
    std::fs::write(&settings, "apps:\n  shop:\n    caps: { per_day: 1 }\n").unwrap();
    profiles(&topic("profiles"), 0..USERS);
    let log = dir.path().join("engines.log");
    let extra = ["--app-config", settings.to_str().unwrap()];
    let (mut a, mut b) = spawn_two_with(&prefix, &app_id, dir.path(), &log, &extra, USERS);
    // A first part, the kill once sends leave (places in flight at the gate, candidates
    // waiting), the rest while the killed instance's tasks move, and its restart.
    pings(&topic("events"), 0..1_000);
    wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(b.take());
    pings(&topic("events"), 1_000..USERS);
    b = spawn_instance_with(&prefix, &app_id, dir.path(), &log, "b", &extra);
    let sends: Vec<SendCommand> =
        decoded(&topic("push"), TOTAL + 1_000, Duration::from_secs(10), Duration::from_secs(120));
    let events = lifecycle(&topic("campaign-events"), 2, Duration::from_secs(30));
    let stats: Vec<CampaignStats> =
        decoded(&topic("stats"), 1, Duration::from_secs(2), Duration::from_secs(30));
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());
    common::delete_topics_starting_with(&[&prefix, &app_id]);
    let log = common::tail(&log, 30);

    let of = |campaign: &str| -> Vec<&SendCommand> {
        sends.iter().filter(|s| s.campaign_id == campaign).collect()
    };
    let coupons = of("coupons");
    let users: BTreeSet<&str> = coupons.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(coupons.len(), TOTAL, "exactly the total\n{log}");
    assert_eq!(users.len(), TOTAL, "one command per user");
    let newsed: BTreeSet<&str> = of("news").iter().map(|c| c.user_id.as_str()).collect();
    assert!(users.is_disjoint(&newsed), "one push a day: {:?}", users.intersection(&newsed));
    let shards: BTreeSet<Option<&str>> = coupons.iter().map(|c| c.place_key.as_deref()).collect();
    assert_eq!(shards.len(), 8, "every shard sends: {shards:?}");
    let kinds: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.campaign_id == "coupons")
        .map(|e| (format!("{:?}", e.kind), e.details["sent"].clone()))
        .collect();
    let total = |kind: &str| (kind.to_string(), TOTAL.to_string());
    assert_eq!(kinds, [total("LimitReached"), total("Completed")], "announced once, by the home");
    let last = stats.iter().rev().find(|s| s.campaign_id == "coupons").unwrap();
    let refused = last.skipped.get("capped_daily").copied().unwrap_or(0);
    eprintln!("coupons: {} refused for the caps, news sent to {}", refused, newsed.len());
}
