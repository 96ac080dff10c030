//! A campaign throttle over shards (issue 13, `docs/architecture.md` "Campaign throttle"): the
//! home grants each window's tokens to the shards by their demand, so no window sends more than
//! `max`, every window with users waiting sends exactly `max`, and the total limit stays exact
//! beside it. Replay over 4 partitions, read from the send commands (`created_at_ms` is when a
//! command left).

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::{
    campaign::{parse_campaign, shards},
    model::{CampaignLifecycleEvent, SendCommand},
};
use records::{define, events, profiles, replay, T0};

#[path = "replay_support/records.rs"]
mod records;

const MINUTE: i64 = 60_000;

/// A triggered campaign over 8 shards, throttled to 10 users a minute, with `limits` (YAML).
fn drip(limits: &str) -> String {
    format!("id: drip\napp: shop\nname: Drip\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ shards: 8, throttle: {{ max: 10, per: 1m }} }}\n")
}

/// 100 users ping within a tenth of a second, 10 s after the campaign starts; then an
/// unrelated event every 10 s for 15 minutes moves the replay's clock as a live engine's moves
/// (the replay fires the timers due before each input record, every task in turn, and hands on
/// what they sent: without input, one task would fire all its timers up to the end before any
/// other task saw what they asked for). Returns the sends and the lifecycle events.
fn hundred_pings(campaign: &str) -> (Vec<SendCommand>, Vec<CampaignLifecycleEvent>) {
    let spread = shards::in_effect(&parse_campaign(campaign, "c.yaml").unwrap());
    assert_eq!(spread, 8, "a throttled campaign is spread over its shards");
    let mut input: Vec<_> = profiles(0, 100, T0).collect();
    input.push(define("drip", campaign, T0));
    input.extend(events("Ping", "ping", 0, 100, T0 + 10_000));
    for tick in 1..=90 {
        input.extend(events("Tick", &format!("tick{tick}"), 100, 101, T0 + 10_000 + tick * 10_000));
    }
    replay(input, T0 + 20 * MINUTE, 0)
}

/// The users sent to in each minute window (by when their command left), each user once.
fn by_window(sends: &[SendCommand]) -> BTreeMap<i64, BTreeSet<usize>> {
    let mut windows: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
    for send in sends {
        let user = send.user_id[1..].parse().unwrap();
        assert!(windows.entry(send.created_at_ms.div_euclid(MINUTE)).or_default().insert(user));
    }
    let users: BTreeSet<&str> = sends.iter().map(|s| s.user_id.as_str()).collect();
    assert_eq!(users.len(), sends.len(), "no user gets two commands");
    windows
}

/// Each shard sends its users in the order they pinged (its outbox keeps arrival order).
fn in_arrival_order_per_shard(sends: &[SendCommand]) {
    let mut last: BTreeMap<u32, usize> = BTreeMap::new();
    for send in sends {
        let user: usize = send.user_id[1..].parse().unwrap();
        let before = last.insert(shards::of_user(&send.user_id, 8), user);
        assert!(before.is_none_or(|b| b < user), "u{user} after u{before:?} on its shard");
    }
}

#[test]
fn a_throttle_of_10_a_minute_over_8_shards_sends_exactly_10_in_each_window_until_all_100_left() {
    let (sends, _) = hundred_pings(&drip(""));

    let windows = by_window(&sends);
    let counts: Vec<usize> = windows.values().map(BTreeSet::len).collect();
    assert_eq!(counts, [10; 10], "exactly 10 in each of 10 windows: {windows:?}");
    // The first 10 to ping leave at once, on the first window's tokens.
    let first: BTreeSet<usize> = (0..10).collect();
    assert_eq!(windows.values().next(), Some(&first));
    let all: BTreeSet<usize> = windows.values().flatten().copied().collect();
    assert_eq!(all, (0..100).collect(), "every user, once");
    let senders: BTreeSet<u32> = sends.iter().map(|s| shards::of_user(&s.user_id, 8)).collect();
    assert_eq!(senders.len(), 8, "every shard sent");
    in_arrival_order_per_shard(&sends);
    let minutes: Vec<i64> = windows.keys().copied().collect();
    let consecutive: Vec<i64> = (minutes[0]..minutes[0] + 10).collect();
    assert_eq!(minutes, consecutive, "no window left empty while users waited");
}

#[test]
fn a_throttle_over_8_shards_with_a_total_limit_of_35_sends_exactly_35_at_10_a_window() {
    let (sends, lifecycle) = hundred_pings(&drip("limits: { total: 35 }\n"));

    let windows = by_window(&sends);
    let counts: Vec<usize> = windows.values().map(BTreeSet::len).collect();
    assert_eq!(counts, [10, 10, 10, 5], "{windows:?}");
    let first: BTreeSet<usize> = (0..10).collect();
    assert_eq!(windows.values().next(), Some(&first));
    in_arrival_order_per_shard(&sends);
    let kinds: Vec<String> = lifecycle.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["LimitReached", "Completed"], "announced once, by the home");
    assert_eq!(lifecycle[0].details["sent"], "35");
}
