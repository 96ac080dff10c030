//! A triggered A/B test spread over its shards (issue 13 item 1, brief s27/TAB;
//! `docs/architecture.md`, "A/B test audience"), on the replay over 4 partitions: the test's
//! users are global indices `0 .. N` leased to the shards as alternation's are (index g gets
//! variant `g mod variants`), the winner is decided once at home from every shard's counters
//! and told to every shard, and users beyond the test wait at their shard for it.

#[path = "replay_support/records.rs"]
mod records;
#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::{
    campaign::shards,
    model::{CampaignLifecycleEvent, LifecycleKind, SendCommand},
    pipeline::LIVE_STATS_INTERVAL_MS,
    runtime::replay::ReplayRecord,
};

const T0: i64 = records::T0;
const HOUR: i64 = 3_600_000;

/// A triggered A/B test on `Ping` of A, B and C over 8 shards: `audience` users tested, the
/// winner an hour after the last test send; `limits` YAML.
fn test_campaign(audience: u64, limits: &str) -> String {
    format!("id: tab\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat:\n  variants:\n    - {{ id: A, title: a, body: a }}\n    - {{ id: B, title: b, body: b }}\n    - {{ id: C, title: c, body: c }}\n  ab: {{ test_audience: {audience}, evaluate_after: 1h }}\n{limits}options: {{ shards: 8 }}\n")
}

/// The one `WINNER_DECLARED` of `tab`.
fn the_winner(lifecycle: &[CampaignLifecycleEvent]) -> &CampaignLifecycleEvent {
    let declared: Vec<&CampaignLifecycleEvent> = lifecycle
        .iter()
        .filter(|e| e.campaign_id == "tab" && e.kind == LifecycleKind::WinnerDeclared)
        .collect();
    assert_eq!(declared.len(), 1, "one decision: {declared:?}");
    declared[0]
}

/// Who `tab` sent to, with their variant, split at `decided_at`: the test (sent before it) and
/// those after. No user gets two of `tab`'s pushes.
fn split_at(
    sends: &[SendCommand],
    decided_at: i64,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (mut tested, mut after) = (BTreeMap::new(), BTreeMap::new());
    for send in sends.iter().filter(|s| s.campaign_id == "tab") {
        let into = if send.created_at_ms < decided_at { &mut tested } else { &mut after };
        let twice = into.insert(send.user_id.clone(), send.variant_id.clone()).is_some();
        assert!(!twice, "{} sent twice", send.user_id);
    }
    assert!(tested.keys().all(|user| !after.contains_key(user)), "a user sent twice");
    (tested, after)
}

/// Users per variant.
fn per_variant(users: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for variant in users.values() {
        *counts.entry(variant.clone()).or_default() += 1;
    }
    counts
}

/// The shards (of 8) of `users`.
fn shards_of<'u>(users: impl IntoIterator<Item = &'u String>) -> BTreeSet<u32> {
    users.into_iter().map(|user| shards::of_user(user, 8)).collect()
}

/// A triggered test of 300 users, 3 variants, over 8 shards, 1,000 users pinging at once: 100
/// users get each variant, every shard testing; the winner is decided once at home, an hour
/// after the test, on every shard's counters as of then (clicks a shard has not reported in its
/// stats interval count: C wins); the 700 later users wait at their shards and all get C, on
/// every shard. The same users get the same variants on a re-run.
#[test]
fn a_triggered_test_of_300_users_3_variants_over_8_shards_tests_100_each_then_the_winner_goes_to_every_later_user(
) {
    let campaign = test_campaign(300, "");
    assert_eq!(sharded::spread(&campaign), 8, "spread over its 8 shards");
    let mut input: Vec<ReplayRecord> = records::profiles(0, 1_000, T0).collect();
    input.push(records::define("tab", &campaign, T0));
    input.extend(records::events("Ping", "ping", 0, 1_000, T0 + 10_000));
    let late = |input: &mut Vec<ReplayRecord>| {
        input.extend(records::events("App Opened", "late", 0, 1, T0 + 3 * HOUR));
    };
    let until = T0 + 4 * HOUR;

    // Without clicks: the test, and when the winner is decided.
    let mut probe = input.clone();
    late(&mut probe);
    let (sends, lifecycle) = records::replay(probe, until, LIVE_STATS_INTERVAL_MS);
    let decided_at = the_winner(&lifecycle).timestamp_ms;
    let (tested, _) = split_at(&sends, decided_at);
    assert_eq!(tested.len(), 300, "the test's audience, exactly");

    // Two shards whose test users clicked: one A click each reported at once, then two C
    // clicks each within the same stats interval, just before the decision.
    let mut clicking: Vec<(String, String)> = Vec::new();
    for shard in shards_of(tested.keys()).into_iter().take(2) {
        let of = |variant: &str| {
            tested.iter().find(|(u, v)| *v == variant && shards::of_user(u, 8) == shard)
        };
        let (a, c) = (of("A").unwrap().0.clone(), of("C").unwrap().0.clone());
        clicking.push((a, "A".into()));
        clicking.push((c, "C".into()));
    }
    for (user, variant) in &clicking {
        let at = if variant == "A" { decided_at - 900 } else { decided_at - 100 };
        input.push(sharded::click("tab", user, variant, at));
        if variant == "C" {
            input.push(sharded::click("tab", user, variant, at + 1));
        }
    }
    late(&mut input);
    let (sends, lifecycle) = records::replay(input, until, LIVE_STATS_INTERVAL_MS);

    let winner = the_winner(&lifecycle);
    assert_eq!(winner.timestamp_ms, decided_at, "decided at the evaluation's time");
    let details = &winner.details;
    assert_eq!(
        [&details["sent_A"], &details["sent_B"], &details["sent_C"]],
        ["100", "100", "100"],
        "the test alone is counted: {details:?}"
    );
    assert_eq!(details["clicks_A"], "2");
    assert_eq!(details["clicks_C"], "4", "every shard's clicks as of the decision");
    assert_eq!(details["winner"], "C");

    let (now_tested, after) = split_at(&sends, decided_at);
    assert_eq!(now_tested, tested, "the same users, the same variants, on a re-run");
    assert_eq!(per_variant(&tested), sharded::counted(&[("A", 100), ("B", 100), ("C", 100)]));
    assert_eq!(shards_of(tested.keys()).len(), 8, "every shard testing");
    let everyone: BTreeSet<String> = (0..1_000).map(|i| format!("u{i}")).collect();
    let sent: BTreeSet<String> = tested.keys().chain(after.keys()).cloned().collect();
    assert_eq!(sent, everyone, "every user once");
    assert_eq!(per_variant(&after), sharded::counted(&[("C", 700)]), "the rest get the winner");
    assert_eq!(shards_of(after.keys()).len(), 8, "waiting at every shard");
}

/// The test of 300 with a total of 500 over 8 shards on an app with a cap of one push a day:
/// u0..u49 trigger another campaign just before they ping (both pass the user stage's early
/// look at the caps; the send gate lets one through). Test places the gate refuses go to the
/// next users: exactly 300 tested, 100 each; the winner (A, no clicks) to 200 more; exactly
/// 500 users, none also sent the other push, `LIMIT_REACHED` once at 500.
#[test]
fn a_triggered_test_with_a_total_over_8_shards_on_an_app_with_caps_keeps_the_test_and_the_total_exact(
) {
    let campaign = test_campaign(300, "limits: { total: 500 }\n");
    assert_eq!(sharded::spread(&campaign), 8, "spread over its 8 shards");
    let mut input: Vec<ReplayRecord> = sharded::profiles(0..1_000).collect();
    input.push(sharded::define("news", sharded::NEWS, T0));
    input.push(sharded::define("tab", &campaign, T0));
    for i in 0..50 {
        let at = T0 + 10_000 + 2 * i as i64;
        input.push(sharded::app_event(i, "Pong", format!("pong-{i}"), at));
        input.push(sharded::app_event(i, "Ping", format!("ping-{i}"), at + 1));
    }
    input.extend(
        (50..1_000)
            .map(|i| sharded::app_event(i, "Ping", format!("ping-{i}"), T0 + 20_000 + i as i64)),
    );
    input.push(sharded::other_event(0, T0 + 3 * HOUR));
    let out = sharded::run(sharded::CAPS, input, T0 + 4 * HOUR);

    let news: BTreeSet<usize> = out.users("news");
    let tab: BTreeSet<usize> = out.users("tab");
    assert_eq!(tab.len(), 500, "the total, exactly");
    assert!(news.is_disjoint(&tab), "one push a day: {:?}", news.intersection(&tab));
    assert!(news.iter().filter(|u| **u < 50).count() > 0, "the gate refused test sends");
    let decided_at = the_winner(&out.events).timestamp_ms;
    let sends: Vec<SendCommand> = out.of("tab").into_iter().cloned().collect();
    let (tested, after) = split_at(&sends, decided_at);
    assert_eq!(per_variant(&tested), sharded::counted(&[("A", 100), ("B", 100), ("C", 100)]));
    assert_eq!(shards_of(tested.keys()).len(), 8, "every shard testing");
    assert_eq!(per_variant(&after), sharded::counted(&[("A", 200)]), "the winner, to 200 more");
    let limits: Vec<(String, String)> =
        out.kinds("tab").into_iter().filter(|(kind, _)| kind == "LimitReached").collect();
    assert_eq!(limits, [("LimitReached".to_string(), "500".to_string())]);
}

/// The test of 60 users with a daily limit of 100 over 8 shards, 300 users pinging on the first
/// day and 300 others on the second: the first day 20 each tested, then the winner (A, no
/// clicks) to 40 more, the others refused; the second day 100 more, all with the winner;
/// `LIMIT_REACHED` (daily) once a day.
#[test]
fn a_triggered_test_with_a_daily_limit_over_8_shards_keeps_the_test_and_each_days_limit_exact() {
    let campaign = test_campaign(60, "limits: { daily: 100 }\n");
    assert_eq!(sharded::spread(&campaign), 8, "spread over its 8 shards");
    let mut input: Vec<ReplayRecord> = sharded::profiles(0..600).collect();
    input.push(sharded::define("tab", &campaign, T0));
    input.extend(sharded::events("Ping", 0..300, T0 + 10_000));
    input.push(sharded::other_event(0, T0 + 3 * HOUR)); // the first day's winner, then
    input.extend(sharded::events("Ping", 300..600, sharded::MIDNIGHT + 60_000));
    input.push(sharded::other_event(0, sharded::MIDNIGHT + 3 * HOUR));
    let out = sharded::run(sharded::NO_CAPS, input, sharded::MIDNIGHT + 4 * HOUR);

    let decided_at = the_winner(&out.events).timestamp_ms;
    assert!(decided_at < sharded::MIDNIGHT, "decided on the first day");
    let sends: Vec<SendCommand> = out.of("tab").into_iter().cloned().collect();
    let (tested, after) = split_at(&sends, decided_at);
    assert_eq!(per_variant(&tested), sharded::counted(&[("A", 20), ("B", 20), ("C", 20)]));
    let day = |user: &String| user[1..].parse::<usize>().unwrap() < 300;
    let first: BTreeMap<String, String> =
        after.iter().filter(|(u, _)| day(u)).map(|(u, v)| (u.clone(), v.clone())).collect();
    let second: BTreeMap<String, String> =
        after.iter().filter(|(u, _)| !day(u)).map(|(u, v)| (u.clone(), v.clone())).collect();
    assert!(tested.keys().all(day), "the test on the first day");

    assert_eq!(per_variant(&first), sharded::counted(&[("A", 40)]), "the first day's 100");
    assert_eq!(per_variant(&second), sharded::counted(&[("A", 100)]), "the second day's 100");
    assert_eq!(shards_of(second.keys()).len(), 8, "every shard sending the second day");
    let limits: Vec<(String, String)> =
        out.kinds("tab").into_iter().filter(|(kind, _)| kind == "LimitReached").collect();
    assert_eq!(limits.len(), 2, "once a day: {limits:?}");
}
