//! Campaigns spread over shards, live against the real broker on two engine instances, one
//! of them killed (SIGKILL) mid-run and restarted: the total limit and the A/B test audience
//! stay exact, read by user and by variant on the push topic (see `docs/architecture.md`).

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::wait_for_offsets;
use herald_engine::model::{CampaignLifecycleEvent, CampaignStats, SchemaRegistry, SendCommand};
use sharded::{
    apply, commands, decoded, deployment, events, herald, lifecycle, per_variant, profiles,
    spawn_instance, spawn_one, spawn_two, stats_once_sent, try_apply,
};

const USERS: usize = 12_000;
const TOTAL: usize = 5_000;

/// A scheduled A/B test of 3 variants to everyone at `at_ms`: a 15% test population (of the
/// 12,000 reachable: 600 per variant), the winner after 5 s, at most 5,000 users in all.
fn campaign(at_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().to_rfc3339();
    format!(
        "id: sharded\napp: shop\nname: Sharded\nwhen: {{ schedule: {{ at: \"{at}\" }} }}\nwhat:\n  variants:\n    - {{ title: A, body: a }}\n    - {{ title: B, body: b }}\n    - {{ title: C, body: c }}\n  ab: {{ test_audience: \"15%\", evaluate_after: 5s }}\nlimits: {{ total: {TOTAL}, safety: 50000 }}\noptions: {{ ignore_global_caps: true, shards: 4 }}\n"
    )
}

/// `campaign apply` refuses a change of `options.shards` while the campaign is live (active or
/// paused), naming the field; once stopped, the definition with the new count is taken.
#[test]
fn apply_refuses_a_change_of_shards_on_a_live_campaign_and_takes_it_once_stopped() {
    let prefix = format!("{}-", common::unique("it-reshard"));
    let campaigns = format!("{prefix}herald.campaigns");
    common::create_topics(&[(&campaigns, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = |shards: u32| {
        format!("id: ping\napp: shop\nname: Ping\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions: {{ shards: {shards} }}\n")
    };
    apply(dir.path(), &campaigns, "four.yaml", &yaml(4));
    apply(dir.path(), &campaigns, "four.yaml", &yaml(4)); // the same count: taken
    let refused = try_apply(dir.path(), &campaigns, "eight.yaml", &yaml(8));
    let stop = herald(&["campaign", "stop", "ping", "--topic", &campaigns]);
    let taken = try_apply(dir.path(), &campaigns, "eight.yaml", &yaml(8));
    common::delete_topics_starting_with(&[&prefix]);

    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert_eq!(refused.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("REFUSED  ping: options.shards: campaign ping is live with 4 shard(s)"),
        "{stdout}"
    );
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stdout));
}

/// A triggered campaign's total limit leased by its home to 8 shards on 8 campaign-stage tasks;
/// one of two instances is killed (SIGKILL) after the first sends, while its shards hold
/// places and candidates wait, and restarted on its own state.
#[test]
fn a_triggered_limit_of_1500_leased_over_8_shards_stays_exact_when_an_instance_is_killed() {
    const LIMIT: usize = 1_500;
    let killed = leased_with_a_kill("it-leased", &format!("total: {LIMIT}"), 2);

    let users: BTreeSet<&str> = killed.commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(killed.commands.len(), LIMIT, "exactly the limit\n{}", killed.log);
    assert_eq!(users.len(), LIMIT, "one command per user");
    let kinds: Vec<String> = killed.events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["LimitReached", "Completed"], "announced once, by the home");
    assert_eq!(killed.events[1].details["sent"], LIMIT.to_string());
}

/// Issue 13: a daily limit leased per day by its home to 8 shards, one of two instances killed
/// (SIGKILL) mid-day while its shards hold places of the day, and restarted: exactly the daily
/// limit that day, announced once.
#[test]
fn a_daily_limit_of_1500_leased_over_8_shards_stays_exact_when_an_instance_is_killed_mid_day() {
    const DAILY: usize = 1_500;
    let killed = leased_with_a_kill("it-daily", &format!("daily: {DAILY}"), 1);

    let users: BTreeSet<&str> = killed.commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(killed.commands.len(), DAILY, "exactly the daily limit\n{}", killed.log);
    assert_eq!(users.len(), DAILY, "one command per user");
    let kinds: Vec<String> = killed.events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["LimitReached"], "announced once, by the home");
    assert_eq!(killed.events[0].details["limit"], "daily");
    assert_eq!(killed.events[0].details["sent"], DAILY.to_string());
}

/// Issue 13: a campaign throttle of 100 per 5 s over 8 shards on 2 instances, its windows'
/// tokens granted by the home; one instance is killed (SIGKILL) once the first sends leave,
/// while its shards hold tokens and users queue, and restarted: no 5-second window sends more
/// than 100, and all 600 users get one command each.
#[test]
fn a_throttle_over_8_shards_stays_within_its_rate_when_an_instance_is_killed() {
    const MAX: usize = 100;
    const PER_MS: i64 = 5_000;
    let rules =
        "options: { ignore_global_caps: true, shards: 8, throttle: { max: 100, per: 5s } }\n";
    let run = Pings { users: 600, first: 300, commands: 600, events: 0 };
    let killed = pinged_with_a_kill("it-throttle", rules, run);

    let users: BTreeSet<&str> = killed.commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(users.len(), 600, "every user\n{}", killed.log);
    assert_eq!(killed.commands.len(), 600, "one command per user");
    let mut windows: BTreeMap<i64, usize> = BTreeMap::new();
    for command in &killed.commands {
        *windows.entry(command.created_at_ms.div_euclid(PER_MS)).or_default() += 1;
    }
    assert!(windows.values().all(|sent| *sent <= MAX), "at most 100 a window: {windows:?}");
    assert!(windows.len() >= 6, "600 at 100 a window take 6 windows at least: {windows:?}");
}

/// Brief s27/SPLIT2: alternation of 3 without a limit over 8 shards on 2 instances, its global
/// assignment indices leased on demand by the home; one instance is killed (SIGKILL) once the
/// first sends leave, while its shards hold indices and candidates wait, and restarted: each of
/// the 3,001 users gets one command, and the variant counts are one task's alternation over
/// 3,001 (1,001/1,000/1,000), every shard sending.
#[test]
fn alternation_without_a_limit_over_8_shards_stays_one_tasks_when_an_instance_is_killed() {
    let what = "{ variants: [{ id: A, title: t, body: a }, { id: B, title: t, body: b }, { id: C, title: t, body: c }] }";
    let rules = "options: { ignore_global_caps: true, shards: 8 }\n";
    let run = Pings { users: 3_001, first: 1_000, commands: 3_001, events: 0 };
    let killed = pinged_with_a_kill_sending("it-split2", what, rules, run);

    let users: BTreeSet<&str> = killed.commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(users.len(), 3_001, "every user\n{}", killed.log);
    assert_eq!(killed.commands.len(), 3_001, "one command per user");
    let expected = BTreeMap::from([("A", 1_001), ("B", 1_000), ("C", 1_000)]);
    assert_eq!(per_variant(&killed.commands), expected, "one task's alternation over 3,001 sends");
    let shards: BTreeSet<u32> = killed
        .commands
        .iter()
        .map(|c| herald_engine::campaign::shards::of_user(&c.user_id, 8))
        .collect();
    assert_eq!(shards.len(), 8, "users of every shard");
    let senders: BTreeSet<String> =
        killed.commands.iter().map(|c| c.place_key.clone().unwrap_or_default()).collect();
    let keys = (0..8).map(|s| herald_engine::campaign::shards::key("coupons", s)).collect();
    assert_eq!(senders, keys, "every shard sending (not the home alone)");
}

/// What a run of [`leased_with_a_kill`] sent and announced, and the engines' log tail.
struct Killed {
    commands: Vec<SendCommand>,
    events: Vec<CampaignLifecycleEvent>,
    log: String,
}

/// A triggered campaign with `limits` (YAML flow entries, 1,500 places in all) over 8 shards on
/// 8 campaign-flow partitions and 2 instances: 1,000 of 4,000 users ping, one instance is
/// killed (SIGKILL) once the first sends leave, the other 3,000 ping while its tasks move, and
/// it is restarted on its own state. Reads 1,500 commands and `events` lifecycle events, and
/// deletes the topics.
fn leased_with_a_kill(tag: &str, limits: &str, events: usize) -> Killed {
    let rules =
        format!("limits: {{ {limits} }}\noptions: {{ ignore_global_caps: true, shards: 8 }}\n");
    let run = Pings { users: 4_000, first: 1_000, commands: 1_500, events };
    pinged_with_a_kill(tag, &rules, run)
}

/// How [`pinged_with_a_kill`] runs: `users` in all, `first` of them ping before the kill;
/// it reads `commands` commands and `events` lifecycle events.
struct Pings {
    users: usize,
    first: usize,
    commands: usize,
    events: usize,
}

/// A triggered campaign `coupons` with `rules` (its YAML after `what`) on 8 campaign-flow
/// partitions and 2 instances: `run.first` users ping, one instance is killed (SIGKILL) once
/// the first sends leave, the other users ping while its tasks move, and it is restarted on its
/// own state. Reads the commands and lifecycle events, and deletes the topics.
fn pinged_with_a_kill(tag: &str, rules: &str, run: Pings) -> Killed {
    pinged_with_a_kill_sending(tag, "{ title: t, body: b }", rules, run)
}

/// [`pinged_with_a_kill`] of a campaign sending `what` (YAML).
fn pinged_with_a_kill_sending(tag: &str, what: &str, rules: &str, run: Pings) -> Killed {
    let Pings { users, first, commands, events } = run;
    let (prefix, app_id, dir) = deployment(tag, 8);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let yaml = format!(
        "id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {what}\n{rules}"
    );
    apply(dir.path(), &topic("campaigns"), "coupons.yaml", &yaml);
    profiles(&topic("profiles"), 0..users);
    let log = dir.path().join("engines.log");
    let (mut a, mut b) = spawn_two(&prefix, &app_id, dir.path(), &log, users);
    let pings = |users: std::ops::Range<usize>| {
        common::produce(&topic("events"), sharded::events("Ping", users.map(|i| format!("u{i}"))))
    };
    // A first part, then the kill once sends leave, then the others while the killed
    // instance's tasks move, and its restart on its own state.
    pings(0..first);
    wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(b.take());
    pings(first..users);
    b = spawn_instance(&prefix, &app_id, dir.path(), &log, "b");
    let commands =
        decoded(&topic("push"), commands, Duration::from_secs(10), Duration::from_secs(90));
    let events = lifecycle(&topic("campaign-events"), events, Duration::from_secs(30));
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());
    common::delete_topics_starting_with(&[&prefix, &app_id]);
    Killed { commands, events, log: common::tail(&log, 30) }
}

#[test]
fn a_4_shard_ab_broadcast_with_total_limit_5000_stays_exact_when_an_instance_is_killed_mid_run() {
    let (prefix, app_id, dir) = deployment("it-sharded", 4);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // The run is set once the engines have read every profile: first a week out, then soon.
    apply(
        dir.path(),
        &topic("campaigns"),
        "week.yaml",
        &campaign(common::now_ms() + 7 * 86_400_000),
    );
    profiles(&topic("profiles"), 0..USERS);
    let log = dir.path().join("engines.log");
    let (mut a, mut b) = spawn_two(&prefix, &app_id, dir.path(), &log, USERS);
    apply(dir.path(), &topic("campaigns"), "soon.yaml", &campaign(common::now_ms() + 3_000));
    // Killed once the run has started sending, then restarted on its own state.
    wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(b.take());
    b = spawn_instance(&prefix, &app_id, dir.path(), &log, "b");
    let commands: Vec<SendCommand> =
        decoded(&topic("push"), TOTAL, Duration::from_secs(10), Duration::from_secs(240));
    let events = lifecycle(&topic("campaign-events"), 5, Duration::from_secs(60));
    // The stats snapshot merged from the shards, once it counts every send.
    let stats = stats_once_sent(&topic("stats"), TOTAL);
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());

    let users: BTreeSet<&str> = commands.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(commands.len(), TOTAL, "exactly the total limit\n{}", common::tail(&log, 30));
    assert_eq!(users.len(), TOTAL, "one command per user");
    // No clicks: the tie goes to A, which gets the 3,200 places left after the test.
    let expected = BTreeMap::from([("A", 600 + 3_200), ("B", 600), ("C", 600)]);
    assert_eq!(per_variant(&commands), expected, "the test audience exact over the 4 shards");
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["RunStarted", "WinnerDeclared", "RunFinished", "LimitReached", "Completed"]);
    assert_eq!(events[0].details["qualified"], USERS.to_string(), "counted over every shard");
    assert_eq!(events[0].details["test_per_variant"], "600");
    assert_eq!(events[2].details["sent"], TOTAL.to_string());
    let stats = stats.expect("a stats snapshot");
    let sent: BTreeMap<&str, i64> =
        stats.variants.iter().map(|v| (v.variant_id.as_str(), v.sent)).collect();
    assert_eq!(sent, BTreeMap::from([("A", 3_800), ("B", 600), ("C", 600)]));

    common::delete_topics_starting_with(&[&prefix, &app_id]);
}

#[test]
fn a_sharded_ab_run_whose_shards_hold_no_or_only_test_users_still_chooses_and_finishes() {
    let (prefix, app_id, dir) = deployment("it-shard-empty", 4);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // 3 users over 4 shards: one shard at least holds none; a test of 2 users (one per
    // variant) takes every user of the shards it falls on.
    let yaml = |at_ms: i64| {
        let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().to_rfc3339();
        format!(
            "id: tiny\napp: shop\nname: Tiny\nwhen: {{ schedule: {{ at: \"{at}\" }} }}\nwhat:\n  variants:\n    - {{ title: A, body: a }}\n    - {{ title: B, body: b }}\n  ab: {{ test_audience: 2, evaluate_after: 1s }}\noptions: {{ ignore_global_caps: true, shards: 4 }}\n"
        )
    };
    apply(dir.path(), &topic("campaigns"), "week.yaml", &yaml(common::now_ms() + 7 * 86_400_000));
    profiles(&topic("profiles"), 0..3);
    let log = dir.path().join("engine.log");
    let mut engine = spawn_one(&prefix, &app_id, dir.path(), &log);
    wait_for_offsets(&format!("{app_id}-profiles-changelog"), 3, &log);
    apply(dir.path(), &topic("campaigns"), "soon.yaml", &yaml(common::now_ms() + 2_000));
    let sent = commands(&topic("push"), 3);
    let events = lifecycle(&topic("campaign-events"), 3, Duration::from_secs(30));
    common::stop_gracefully(engine.take());

    let users: BTreeSet<&str> = sent.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(users, BTreeSet::from(["u0", "u1", "u2"]), "{}", common::tail(&log, 30));
    // No clicks: the tie goes to A, which the user after the test gets.
    assert_eq!(per_variant(&sent), BTreeMap::from([("A", 2), ("B", 1)]));
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["RunStarted", "WinnerDeclared", "RunFinished"]);
    assert_eq!(events[2].details["sent"], "3");

    common::delete_topics_starting_with(&[&prefix, &app_id]);
}

#[test]
fn a_total_limit_added_to_a_sharded_triggered_campaign_counts_what_its_shards_sent() {
    const SENT: usize = 40;
    let (prefix, app_id, dir) = deployment("it-shard-edit", 4);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let coupons = |limits: &str| {
        format!(
            "id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\n{limits}options: {{ ignore_global_caps: true, shards: 4 }}\n"
        )
    };
    // A one-user instant campaign whose command shows the engine has read the table so far.
    let marker = "id: marker\napp: shop\nname: Marker\nwhen: { event: Mark }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n";
    apply(dir.path(), &topic("campaigns"), "coupons.yaml", &coupons(""));
    profiles(&topic("profiles"), 0..SENT + 20);
    let log = dir.path().join("engine.log");
    let mut engine = spawn_one(&prefix, &app_id, dir.path(), &log);
    wait_for_offsets(&format!("{app_id}-profiles-changelog"), (SENT + 20) as i64, &log);
    common::produce(&topic("events"), events("Ping", (0..SENT).map(|i| format!("u{i}"))));
    assert_eq!(commands(&topic("push"), SENT).len(), SENT, "{}", common::tail(&log, 30));
    // The home has every shard's sends once its merged stats count them.
    let registry = SchemaRegistry::builtin();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let merged = common::read_committed(
            &topic("stats"),
            1,
            Duration::from_millis(500),
            Duration::from_secs(5),
        )
        .iter()
        .filter_map(|r| registry.decode::<CampaignStats>(r.value.as_deref()?).ok())
        .any(|s| s.variants.iter().map(|v| v.sent).sum::<i64>() == SENT as i64);
        if merged {
            break;
        }
        assert!(Instant::now() < deadline, "no stats count the shards' sends");
    }
    // The limit is already reached by the shards' sends: nobody else gets a coupon.
    apply(
        dir.path(),
        &topic("campaigns"),
        "limited.yaml",
        &coupons(&format!("limits: {{ total: {SENT} }}\n")),
    );
    apply(dir.path(), &topic("campaigns"), "marker.yaml", marker);
    common::produce(&topic("events"), events("Mark", std::iter::once("u0".to_string())));
    let seen = |sent: &[SendCommand], user: &str| {
        sent.iter().any(|c| c.campaign_id == "marker" && c.user_id == user)
    };
    assert!(seen(&commands(&topic("push"), SENT + 1), "u0"), "{}", common::tail(&log, 30));
    common::produce(&topic("events"), events("Ping", (SENT..SENT + 20).map(|i| format!("u{i}"))));
    // Pings are processed before a later mark of the same users' partitions.
    common::produce(&topic("events"), events("Mark", (SENT..SENT + 20).map(|i| format!("u{i}"))));
    let sent = commands(&topic("push"), SENT + 21);
    common::stop_gracefully(engine.take());

    let marked: BTreeSet<&str> =
        sent.iter().filter(|c| c.campaign_id == "marker").map(|c| c.user_id.as_str()).collect();
    assert_eq!(marked.len(), 21, "every mark answered\n{}", common::tail(&log, 30));
    let coupons: Vec<&str> =
        sent.iter().filter(|c| c.campaign_id == "coupons").map(|c| c.user_id.as_str()).collect();
    assert_eq!(
        coupons.len(),
        SENT,
        "nothing past the total: {:?}",
        &coupons[SENT.min(coupons.len())..]
    );

    common::delete_topics_starting_with(&[&prefix, &app_id]);
}

/// A total of 1,500 leased over 8 shards on two instances; 500 sent; then lowered to 600 while
/// the shards hold places of the 1,500, and one instance killed (SIGKILL) right after the edit,
/// while the recount it causes is on its way, and restarted on its own state, with 2,500 more
/// pings: exactly 600 users, announced once.
#[test]
fn a_total_lowered_while_shards_hold_places_stays_exact_when_an_instance_is_killed_in_the_recount()
{
    const USERS: usize = 3_000;
    let (prefix, app_id, dir) = deployment("it-recount", 8);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let coupons = |total: usize| {
        format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {total} }}\noptions: {{ ignore_global_caps: true, shards: 8 }}\n")
    };
    apply(dir.path(), &topic("campaigns"), "coupons.yaml", &coupons(1_500));
    let users = |range: std::ops::Range<usize>| range.map(|i| format!("u{i}"));
    profiles(&topic("profiles"), 0..USERS);
    let log = dir.path().join("engines.log");
    let (mut a, mut b) = spawn_two(&prefix, &app_id, dir.path(), &log, USERS);
    common::produce(&topic("events"), events("Ping", users(0..500)));
    assert_eq!(commands(&topic("push"), 500).len(), 500, "{}", common::tail(&log, 30));
    apply(dir.path(), &topic("campaigns"), "lowered.yaml", &coupons(600));
    common::kill_hard(b.take());
    common::produce(&topic("events"), events("Ping", users(500..USERS)));
    b = spawn_instance(&prefix, &app_id, dir.path(), &log, "b");
    let sent = commands(&topic("push"), 600);
    let announced = lifecycle(&topic("campaign-events"), 2, Duration::from_secs(30));
    common::stop_gracefully(a.take());
    common::stop_gracefully(b.take());
    common::delete_topics_starting_with(&[&prefix, &app_id]);

    let distinct: BTreeSet<&str> = sent.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(sent.len(), 600, "exactly the lowered total\n{}", common::tail(&log, 30));
    assert_eq!(distinct.len(), 600, "one command per user");
    let kinds: Vec<(String, String)> =
        announced.iter().map(|e| (format!("{:?}", e.kind), e.details["sent"].clone())).collect();
    let once = |kind: &str| (kind.to_string(), "600".to_string());
    assert_eq!(kinds, [once("LimitReached"), once("Completed")], "announced once, by the home");
}
