//! The engine live against the real broker: an inaction window survives a SIGKILL and yields
//! exactly one candidate and one send; an undecodable event goes to the dead-letter topic; the
//! total limit holds exactly across user partitions and a restart.

mod common;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use herald_engine::model::{
    AppEvent, CampaignLifecycleEvent, CampaignStats, Candidate, DeadLetter, Device, LifecycleKind,
    Platform, SchemaRegistry, SendCommand,
};

/// An engine deployment on topics of its own (a unique prefix) with one campaign applied.
struct Deployment {
    prefix: String,
    app_id: String,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(name: &str, user_partitions: i32, campaign_yaml: &str) -> Self {
        let deployment = Self {
            prefix: format!("{}-", common::unique(name)),
            app_id: common::unique(&format!("{name}-app")),
            dir: tempfile::tempdir().unwrap(),
        };
        let topic = |name: &str| deployment.topic(name);
        common::create_topics(&[
            (&topic("events"), user_partitions),
            (&topic("profiles"), user_partitions),
            (&topic("receipts"), user_partitions),
            (&topic("send-gate"), user_partitions),
            (&topic("campaigns"), 1),
            (&topic("campaign-flow"), 2),
            (&topic("app-throttle"), 1),
            (&topic("push"), 2),
            (&topic("stats"), 1),
            (&topic("campaign-events"), 1),
            (&topic("dead-letter"), 1),
        ]);
        let file = deployment.dir.path().join("campaign.yaml");
        std::fs::write(&file, campaign_yaml).unwrap();
        let applied = deployment.herald(&[
            "campaign",
            "apply",
            "--topic",
            &topic("campaigns"),
            file.to_str().unwrap(),
        ]);
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stdout));
        deployment
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("engine.log")
    }

    fn herald(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_BROKERS", common::kafka().brokers)
            .output()
            .unwrap()
    }

    fn spawn_engine(&self) -> std::process::Child {
        self.spawn_engine_with(&[])
    }

    fn spawn_engine_with(&self, extra: &[&str]) -> std::process::Child {
        let state = self.dir.path().join("state");
        common::spawn_engine_with(&self.prefix, &self.app_id, &state, &self.log(), extra)
    }

    /// Publishes one more campaign definition.
    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        let campaigns = self.topic("campaigns");
        let out =
            self.herald(&["campaign", "apply", "--topic", &campaigns, file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// How many distinct users the send commands `sends` address.
fn distinct_users(sends: &[common::Consumed]) -> usize {
    let registry = SchemaRegistry::builtin();
    let users: std::collections::BTreeSet<String> = sends
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect();
    users.len()
}

/// An app event, keyed by user.
fn event(user: &str, name: &str, at: i64) -> (String, Vec<u8>) {
    let event = AppEvent {
        event_id: format!("{user}-{name}-{at}"),
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties: Default::default(),
        sdk_version: None,
    };
    (user.to_string(), SchemaRegistry::builtin().encode(&event).unwrap())
}

#[test]
fn inaction_window_survives_a_restart_and_yields_exactly_one_candidate() {
    let deployment = Deployment::new(
        "engine",
        2,
        "id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 8s }\nwhat: { title: t, body: b }\n",
    );
    let topic = |name: &str| deployment.topic(name);
    let changelog = |store: &str| format!("{}-{store}-changelog", deployment.app_id);
    let registry = SchemaRegistry::builtin();
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let at = common::now_ms();
    common::produce(
        &topic("profiles"),
        [
            common::profile("u1", Platform::Android, at),
            common::profile("u2", Platform::Android, at),
        ],
    );
    // The engine runs (its tasks wrote the profiles) before the windows open.
    common::wait_for_offsets(&changelog("profiles"), 2, &log);
    let now = common::now_ms();
    common::produce(
        &topic("events"),
        [
            event("u1", "Added To Cart", now),
            event("u2", "Added To Cart", now),
            event("u2", "Charged", now + 2_000),
            ("u3".to_string(), b"{not avro".to_vec()),
        ],
    );
    // Killed once the windows are written (pending-store changelog), before they end.
    common::wait_for_offsets(&changelog("pending"), 3, &log);
    common::kill_hard(engine);
    assert!(common::now_ms() < now + 8_000, "killed before the window closed");

    // Purging off: the test reads the campaign flow the engine consumes.
    let engine = deployment.spawn_engine_with(&["--purge-interval-ms", "0"]);
    let flow = common::read_committed(
        &topic("campaign-flow"),
        1,
        Duration::from_secs(8),
        Duration::from_secs(60),
    );
    let letters = common::read_committed(
        &topic("dead-letter"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let sends =
        common::read_committed(&topic("push"), 1, Duration::from_secs(1), Duration::from_secs(30));
    common::stop_gracefully(engine);

    let candidates: Vec<Candidate> = flow
        .iter()
        .filter_map(|r| registry.decode::<Candidate>(r.value.as_deref().unwrap()).ok())
        .collect();
    assert_eq!(candidates.len(), 1, "exactly one candidate\n{}", common::tail(&log, 30));
    assert_eq!(candidates[0].user_id, "u1");
    assert_eq!(candidates[0].qualified_at_ms, now + 8_000);
    assert_eq!(flow.len(), 1, "nothing else in the flow");
    assert_eq!(sends.len(), 1, "one send command for u1's one device");
    let command: SendCommand = registry.decode(sends[0].value.as_deref().unwrap()).unwrap();
    assert_eq!((command.user_id.as_str(), command.platform), ("u1", Platform::Android));
    assert!(command.payload.contains("\"token\":\"tok-u1\""), "{}", command.payload);

    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = registry.decode(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(letter.source_topic, topic("events"));
    assert!(letter.reason.contains("not an Avro single-object record"), "{}", letter.reason);
    assert_eq!(letter.value.as_deref(), Some(&b"{not avro"[..]));
}

#[test]
fn coupon_limit_holds_exactly_across_four_user_partitions_and_a_restart() {
    const USERS: usize = 2_000;
    const LIMIT: usize = 300;
    let deployment = Deployment::new(
        "coupon",
        4,
        &format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: App Opened }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {LIMIT} }}\n"),
    );
    let topic = |name: &str| deployment.topic(name);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        (0..USERS).map(|i| common::profile(&format!("u{i}"), Platform::Ios, now)),
    );
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    // Events arrive while the engine runs; it is killed once sends have started.
    common::produce(
        &topic("events"),
        (0..USERS).map(|i| event(&format!("u{i}"), "App Opened", now + i as i64)),
    );
    // Killed once sends have started.
    common::wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(engine);
    let engine = deployment.spawn_engine();
    let sends = common::read_committed(
        &topic("push"),
        LIMIT,
        Duration::from_secs(8),
        Duration::from_secs(90),
    );
    let events = common::read_committed(
        &topic("campaign-events"),
        2,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    common::stop_gracefully(engine);

    let users = distinct_users(&sends);
    assert_eq!(sends.len(), LIMIT, "exactly the limit\n{}", common::tail(&log, 20));
    assert_eq!(users, LIMIT, "one send per user");
    let kinds: Vec<LifecycleKind> = events
        .iter()
        .map(|e| {
            registry.decode::<CampaignLifecycleEvent>(e.value.as_deref().unwrap()).unwrap().kind
        })
        .collect();
    assert_eq!(kinds, [LifecycleKind::LimitReached, LifecycleKind::Completed]);

    let printed = deployment.herald(&["campaign", "stats", "coupons", "--topic", &topic("stats")]);
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{table}");
    let row = table.lines().find(|l| l.starts_with("A ")).expect("variant row");
    assert_eq!(row.split_whitespace().nth(1), Some("300"), "{table}");
    assert!(table.contains("total_limit"), "{table}");
}

#[test]
fn scheduled_run_per_run_limit_holds_across_four_user_partitions_and_a_restart() {
    const USERS: usize = 12_000;
    const PER_RUN: usize = 5_000;
    // The run is set once the engine has read every profile (a task scans what it has read
    // at run time): first a week out, then a few seconds out.
    let weekly = |at_ms: i64| {
        let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap().to_rfc3339();
        format!(
            "id: weekly\napp: shop\nname: Weekly\nwhen: {{ schedule: {{ at: \"{at}\" }} }}\nwhat: {{ title: t, body: b }}\nlimits: {{ per_run: {PER_RUN}, safety: 50000 }}\noptions: {{ ignore_global_caps: true }}\n"
        )
    };
    let deployment = Deployment::new("scheduled", 4, &weekly(common::now_ms() + 7 * 86_400_000));
    let topic = |name: &str| deployment.topic(name);
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        (0..USERS).map(|i| common::profile(&format!("u{i}"), Platform::Android, now)),
    );
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let changelog = format!("{}-profiles-changelog", deployment.app_id);
    common::wait_for_offsets(&changelog, USERS as i64, &log);
    deployment.apply("soon.yaml", &weekly(common::now_ms() + 3_000));
    // Killed once the run has started sending.
    common::wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(engine);
    let engine = deployment.spawn_engine();
    let sends = common::read_committed(
        &topic("push"),
        PER_RUN,
        Duration::from_secs(8),
        Duration::from_secs(120),
    );
    let events = common::read_committed(
        &topic("campaign-events"),
        2,
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    common::stop_gracefully(engine);

    let users = distinct_users(&sends);
    assert_eq!(sends.len(), PER_RUN, "exactly the per-run limit\n{}", common::tail(&log, 20));
    assert_eq!(users, PER_RUN, "one send per user");
    let events: Vec<herald_engine::model::CampaignLifecycleEvent> =
        events.iter().map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap()).collect();
    let kinds: Vec<String> = events.iter().map(|e| format!("{:?}", e.kind)).collect();
    assert_eq!(kinds, ["RunStarted", "RunFinished"]);
    assert_eq!(events[0].details["qualified"], USERS.to_string(), "all 4 partitions counted");
    assert_eq!(events[1].details["sent"], PER_RUN.to_string());
}

/// The lifecycle events of the deployment's campaigns so far, in order.
fn lifecycle_kinds(deployment: &Deployment, expected: usize) -> Vec<LifecycleKind> {
    let registry = SchemaRegistry::builtin();
    common::read_committed(
        &deployment.topic("campaign-events"),
        expected,
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .iter()
    .map(|r| registry.decode::<CampaignLifecycleEvent>(r.value.as_deref().unwrap()).unwrap().kind)
    .collect()
}

/// The users of the send commands on the deployment's push topic.
fn push_users(deployment: &Deployment, expected: usize, settle: Duration) -> Vec<String> {
    let registry = SchemaRegistry::builtin();
    common::read_committed(&deployment.topic("push"), expected, settle, Duration::from_secs(60))
        .iter()
        .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap().user_id)
        .collect()
}

#[test]
fn a_paused_campaign_holds_its_due_inaction_timers_and_releases_them_on_resume_stop_drops_them() {
    let deployment = Deployment::new(
        "pause",
        2,
        "id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 20s }\nwhat: { title: t, body: b }\n",
    );
    let topic = |name: &str| deployment.topic(name);
    let changelog = |store: &str| format!("{}-{store}-changelog", deployment.app_id);
    let campaign_command = |command: &str| {
        let out = deployment.herald(&["campaign", command, "cart", "--topic", &topic("campaigns")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        [
            common::profile("u1", Platform::Android, now),
            common::profile("u2", Platform::Android, now),
        ],
    );
    // The engine is running (its tasks wrote the profiles) before the window opens.
    common::wait_for_offsets(&changelog("profiles"), 2, &log);
    common::produce(&topic("events"), [event("u1", "Added To Cart", common::now_ms())]);
    // u1's window is open (its pending entry is written), then the campaign is paused.
    common::wait_for_offsets(&changelog("pending"), 1, &log);
    campaign_command("pause");
    assert_eq!(lifecycle_kinds(&deployment, 1), vec![LifecycleKind::Paused]);
    // The window ends during the pause: the timer fires and u1 is held, not dropped.
    common::wait_for_offsets(&changelog("held"), 1, &log);
    assert_eq!(push_users(&deployment, 0, Duration::from_secs(1)), Vec::<String>::new());
    campaign_command("resume");
    assert_eq!(push_users(&deployment, 1, Duration::from_secs(1)), vec!["u1"]);

    // u2's window ends during a pause too; stopping the campaign drops u2, counted.
    let pending_writes = common::end_offsets(&changelog("pending"));
    common::produce(&topic("events"), [event("u2", "Added To Cart", common::now_ms())]);
    common::wait_for_offsets(&changelog("pending"), pending_writes + 1, &log);
    campaign_command("pause");
    let held_writes = common::end_offsets(&changelog("held"));
    common::wait_for_offsets(&changelog("held"), held_writes + 1, &log);
    campaign_command("stop");
    assert_eq!(
        lifecycle_kinds(&deployment, 4),
        vec![
            LifecycleKind::Paused,
            LifecycleKind::Resumed,
            LifecycleKind::Paused,
            LifecycleKind::Stopped
        ]
    );
    let registry = SchemaRegistry::builtin();
    let stopped = (0..600).find_map(|_| {
        let snapshots = common::read_committed(
            &topic("stats"),
            1,
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
        let latest = snapshots.last()?;
        let stats: CampaignStats = registry.decode(latest.value.as_deref()?).ok()?;
        stats.skipped.get("stopped").copied().filter(|n| *n > 0)
    });
    common::stop_gracefully(engine);
    assert_eq!(stopped, Some(1), "{}", common::tail(&log, 30));
    assert_eq!(push_users(&deployment, 1, Duration::from_secs(1)), vec!["u1"]);
}

#[test]
fn re_applying_an_ab_test_without_its_winner_keeps_sending_and_keeps_the_removed_variants_stats() {
    let ab = |variants: &str| {
        format!(
            "id: ab\napp: shop\nname: AB\nwhen: {{ event: Ping }}\nwhat:\n  variants:\n{variants}  ab: {{ test_audience: 3, evaluate_after: 1s }}\n"
        )
    };
    let three = "    - { id: A, title: a, body: a }\n    - { id: B, title: b, body: b }\n    - { id: C, title: c, body: c }\n";
    let deployment = Deployment::new("edit", 2, &ab(three));
    let topic = |name: &str| deployment.topic(name);
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let now = common::now_ms();
    let users: Vec<String> = (1..=5).map(|i| format!("u{i}")).collect();
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Ios, now)),
    );
    // Three test users, then (after the wait) u4 gets the winner: A, on a tie of no clicks.
    // Each of the 2 user partitions has its share of a triggered test (2 and 1 places): u1 and
    // u2 are in partition 0, u5 in partition 1 (u3 and u4 in 0 would wait for the winner).
    let tested = ["u1", "u2", "u5"];
    common::produce(&topic("events"), tested.iter().map(|u| event(u, "Ping", now)));
    assert_eq!(push_users(&deployment, 3, Duration::from_millis(200)).len(), 3);
    // The evaluation timer declares the winner (A, on a tie of no clicks); u4 then gets it.
    let winner = (0..100)
        .find_map(|_| {
            lifecycle_events(&deployment)
                .into_iter()
                .find(|e| e.kind == LifecycleKind::WinnerDeclared)
                .map(|e| e.details["winner"].clone())
        })
        .expect("a winner is declared");
    assert_eq!(winner, "A");
    common::produce(&topic("events"), [event("u4", "Ping", common::now_ms())]);
    assert_eq!(push_users(&deployment, 4, Duration::from_millis(200)).len(), 4);
    // The winner is removed by an edit: the next user is still sent (a remaining variant wins).
    let file = deployment.dir.path().join("edited.yaml");
    std::fs::write(
        &file,
        ab("    - { id: B, title: b, body: b }\n    - { id: C, title: c, body: c }\n"),
    )
    .unwrap();
    let out = deployment.herald(&[
        "campaign",
        "apply",
        "--topic",
        &topic("campaigns"),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // The edit has no observable effect until the next user: give the engine's global table
    // reader time to see it (it reads the campaigns topic continuously).
    std::thread::sleep(Duration::from_secs(2));
    common::produce(&topic("events"), [event("u3", "Ping", common::now_ms())]);
    let sent = push_users(&deployment, 5, Duration::from_secs(1));
    let registry = SchemaRegistry::builtin();
    let latest_stats =
        common::read_committed(&topic("stats"), 1, Duration::from_secs(2), Duration::from_secs(30));
    common::stop_gracefully(engine);
    let mut sent = sent;
    sent.sort();
    assert_eq!(sent, users, "u3 was sent after the edit\n{}", common::tail(&log, 30));
    let stats: CampaignStats =
        registry.decode(latest_stats.last().unwrap().value.as_deref().unwrap()).unwrap();
    let sent_by_variant: Vec<(String, i64)> =
        stats.variants.iter().map(|v| (v.variant_id.clone(), v.sent)).collect();
    // A (removed) keeps its test send and u4's winner send; u3 got the new winner B.
    assert_eq!(
        sent_by_variant,
        vec![("A".to_string(), 2), ("B".to_string(), 2), ("C".to_string(), 1)]
    );
}

/// A triggered A/B test of 3 users on 2 user partitions where partition 1 gets no users (u1 to
/// u4 are all in partition 0): u1 and u2 take partition 0's places, u3 and u4 wait; the engine
/// is killed while they wait and restarted; after the share wait partition 1's place goes to
/// the one of them with the lower rank (variant C, place 2), the test completes, the winner (A,
/// on a tie) is declared once and reaches the other. Before the share wait the test never
/// completed (u3 and u4 waited for a winner that never came).
#[test]
fn a_triggered_ab_test_with_a_partition_without_users_completes_across_a_restart() {
    let yaml = "id: ab\napp: shop\nname: AB\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { id: A, title: a, body: a }\n    - { id: B, title: b, body: b }\n    - { id: C, title: c, body: c }\n  ab: { test_audience: 3, evaluate_after: 1s, share_wait: 8s }\n";
    let deployment = Deployment::new("abshare", 2, yaml);
    let topic = |name: &str| deployment.topic(name);
    let log = deployment.log();
    let mut engine = common::KillOnDrop::new(deployment.spawn_engine());
    let now = common::now_ms();
    let users = ["u1", "u2", "u3", "u4"];
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Ios, now)),
    );
    common::produce(&topic("events"), users.iter().map(|u| event(u, "Ping", now)));
    let mut tested = push_users(&deployment, 2, Duration::from_millis(200));
    tested.sort();
    assert_eq!(tested, ["u1", "u2"]);
    // Killed while u3 and u4 wait (the share wait is a stored timer), then restarted.
    common::kill_hard(engine.take());
    let mut engine = common::KillOnDrop::new(deployment.spawn_engine());
    let registry = SchemaRegistry::builtin();
    let sent: Vec<(String, String)> =
        common::read_committed(&topic("push"), 4, Duration::from_secs(2), Duration::from_secs(90))
            .iter()
            .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap())
            .map(|c| (c.user_id, c.variant_id))
            .collect();
    let winners: Vec<CampaignLifecycleEvent> = lifecycle_events(&deployment)
        .into_iter()
        .filter(|e| e.kind == LifecycleKind::WinnerDeclared)
        .collect();
    common::stop_gracefully(engine.take());
    let rank = |u: &str| herald_engine::campaign::sample::rank("ab", u);
    let (pooled, other) = if rank("u3") < rank("u4") { ("u3", "u4") } else { ("u4", "u3") };
    let mut sent = sent;
    sent.sort();
    let pair = |u: &str, v: &str| (u.to_string(), v.to_string());
    let mut expected = vec![pair("u1", "A"), pair("u2", "B"), pair(pooled, "C"), pair(other, "A")];
    expected.sort();
    assert_eq!(sent, expected, "each user once\n{}", common::tail(&log, 30));
    assert_eq!(winners.len(), 1, "{winners:?}");
    let counts: Vec<&str> =
        ["sent_A", "sent_B", "sent_C"].iter().map(|k| winners[0].details[*k].as_str()).collect();
    assert_eq!((winners[0].details["winner"].as_str(), counts), ("A", vec!["1", "1", "1"]));
    common::delete_topics_starting_with(&[&deployment.prefix, &deployment.app_id]);
}

/// Every lifecycle event so far.
fn lifecycle_events(deployment: &Deployment) -> Vec<CampaignLifecycleEvent> {
    let registry = SchemaRegistry::builtin();
    common::read_committed(
        &deployment.topic("campaign-events"),
        1,
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .iter()
    .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
    .collect()
}

/// (campaign, user) of the send commands on the push topic, sorted.
fn push_pairs(deployment: &Deployment, expected: usize) -> Vec<(String, String)> {
    let registry = SchemaRegistry::builtin();
    let mut pairs: Vec<(String, String)> = common::read_committed(
        &deployment.topic("push"),
        expected,
        Duration::from_secs(3),
        Duration::from_secs(90),
    )
    .iter()
    .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap())
    .map(|c| (c.campaign_id, c.user_id))
    .collect();
    pairs.sort();
    pairs
}

/// The latest stats snapshot of each campaign.
fn latest_stats(deployment: &Deployment) -> BTreeMap<String, CampaignStats> {
    let registry = SchemaRegistry::builtin();
    let records = common::read_committed(
        &deployment.topic("stats"),
        1,
        Duration::from_millis(500),
        Duration::from_secs(10),
    );
    records
        .iter()
        .map(|r| registry.decode::<CampaignStats>(r.value.as_deref().unwrap()).unwrap())
        .map(|stats| (stats.campaign_id.clone(), stats))
        .collect()
}

#[test]
fn with_a_daily_cap_of_one_two_campaigns_on_one_event_send_each_user_exactly_one_notification() {
    const USERS: usize = 400;
    const LIMIT: usize = 100;
    // Both campaigns qualify every user at once, so both pass the early look at the caps and
    // meet at the send gate; coupons also stop at their total limit.
    let deployment = Deployment::new(
        "caps",
        4,
        &format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: App Opened }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {LIMIT} }}\n"),
    );
    deployment.apply(
        "news.yaml",
        "id: news\napp: shop\nname: News\nwhen: { event: App Opened }\nwhat: { title: t, body: b }\n",
    );
    let settings = deployment.dir.path().join("apps.yaml");
    std::fs::write(&settings, "apps:\n  shop:\n    caps: { per_day: 1 }\n").unwrap();
    let topic = |name: &str| deployment.topic(name);
    let log = deployment.log();
    let args = ["--app-config", settings.to_str().unwrap()];
    let engine = deployment.spawn_engine_with(&args);
    let now = common::now_ms();
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Ios, now)),
    );
    common::produce(&topic("events"), users.iter().map(|u| event(u, "App Opened", now)));
    // Killed once sends have started: places in flight and waiting users survive the crash.
    common::wait_for_offsets(&topic("push"), 1, &log);
    common::kill_hard(engine);
    let engine = deployment.spawn_engine_with(&args);
    let pairs = push_pairs(&deployment, USERS);
    // Stats catch up with the topic once the restarted engine has restored and published.
    let sent = |stats: &CampaignStats| stats.variants.iter().map(|v| v.sent).sum::<i64>();
    let deadline = Instant::now() + Duration::from_secs(120);
    let latest = loop {
        let latest = latest_stats(&deployment);
        let total: i64 = latest.values().map(sent).sum();
        if total == USERS as i64 || Instant::now() > deadline {
            break latest;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    common::stop_gracefully(engine);

    // Every user got exactly one notification, from one campaign or the other.
    let mut sent_users: Vec<&str> = pairs.iter().map(|(_, u)| u.as_str()).collect();
    sent_users.sort_unstable();
    let mut expected_users: Vec<&str> = users.iter().map(String::as_str).collect();
    expected_users.sort_unstable();
    assert_eq!(sent_users, expected_users, "{}", common::tail(&log, 20));
    let coupons = pairs.iter().filter(|(c, _)| c == "coupons").count();
    assert!(coupons <= LIMIT, "{coupons} coupons");
    // Stats reconcile with the topic: refused commands gave their sent counts back.
    assert_eq!(sent(&latest["coupons"]), coupons as i64, "{}", common::tail(&log, 20));
    assert_eq!(sent(&latest["news"]), (USERS - coupons) as i64);
    // The limit fills exactly: places given back by refusals at the gate went to users still
    // waiting, so coupons fall short of the limit only if no coupon was refused by the limit.
    let coupon_stats = &latest["coupons"];
    let refused_by_limit = coupon_stats.skipped.get("total_limit").copied().unwrap_or(0);
    assert!(
        coupons == LIMIT || refused_by_limit == 0,
        "{coupons} coupons sent while {refused_by_limit} were refused by the total limit: {:?}",
        coupon_stats.skipped
    );
}

#[test]
fn an_edit_changes_the_texts_of_the_next_sends_and_a_raised_total_limit_reopens_the_campaign() {
    let coupons = |title: &str, total: u32| {
        format!("id: coupons\napp: shop\nname: C\nwhen: {{ event: Ping }}\nwhat: {{ title: {title}, body: b }}\nlimits: {{ total: {total} }}\n")
    };
    let deployment = Deployment::new("edits", 2, &coupons("first", 2));
    let topic = |name: &str| deployment.topic(name);
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let now = common::now_ms();
    let users = ["u1", "u2", "u3", "u4"];
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Android, now)),
    );
    // u3 comes after the limit of 2: skipped (the stats count it).
    common::produce(&topic("events"), users[..3].iter().map(|u| event(u, "Ping", now)));
    assert_eq!(push_users(&deployment, 2, Duration::from_secs(2)).len(), 2);
    deployment.apply("edited.yaml", &coupons("second", 3));
    // The edit has no observable effect until the next user: give the engine's global table
    // reader time to see it (it reads the campaigns topic continuously).
    std::thread::sleep(Duration::from_secs(2));
    common::produce(&topic("events"), [event("u4", "Ping", common::now_ms())]);
    let registry = SchemaRegistry::builtin();
    let mut sends: Vec<(String, String)> =
        common::read_committed(&topic("push"), 3, Duration::from_secs(2), Duration::from_secs(60))
            .iter()
            .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap())
            .map(|c| {
                let payload: serde_json::Value = serde_json::from_str(&c.payload).unwrap();
                let title =
                    payload["message"]["notification"]["title"].as_str().unwrap_or("").to_string();
                (c.user_id, title)
            })
            .collect();
    common::stop_gracefully(engine);
    sends.sort();
    let expected: Vec<(String, String)> = [("u1", "first"), ("u2", "first"), ("u4", "second")]
        .iter()
        .map(|(u, t)| (u.to_string(), t.to_string()))
        .collect();
    assert_eq!(sends, expected, "{}", common::tail(&log, 20));
}

#[test]
fn an_edit_adds_a_variant_to_the_rotation_and_a_changed_trigger_applies_to_the_next_events() {
    let deployment = Deployment::new(
        "edit-trigger",
        2,
        "id: promo\napp: shop\nname: P\nwhen: { event: Ping }\nwhat: { variants: [{ id: A, title: a, body: a }] }\n",
    );
    let topic = |name: &str| deployment.topic(name);
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        ["u1", "u2", "u3"].iter().map(|u| common::profile(u, Platform::Android, now)),
    );
    common::produce(&topic("events"), [event("u1", "Ping", now)]);
    assert_eq!(push_users(&deployment, 1, Duration::from_millis(500)), ["u1"]);
    deployment.apply(
        "edited.yaml",
        "id: promo\napp: shop\nname: P\nwhen: { event: Pong }\nwhat: { variants: [{ id: A, title: a, body: a }, { id: B, title: b, body: b }] }\n",
    );
    // The edit has no observable effect until the next user: give the engine's global table
    // reader time to see it (it reads the campaigns topic continuously).
    std::thread::sleep(Duration::from_secs(2));
    let at = common::now_ms();
    common::produce(
        &topic("events"),
        [event("u2", "Ping", at), event("u2", "Pong", at + 1), event("u3", "Pong", at + 2)],
    );
    let registry = SchemaRegistry::builtin();
    let mut sends: Vec<(String, String)> =
        common::read_committed(&topic("push"), 3, Duration::from_secs(2), Duration::from_secs(60))
            .iter()
            .map(|r| registry.decode::<SendCommand>(r.value.as_deref().unwrap()).unwrap())
            .map(|c| (c.user_id, c.variant_id))
            .collect();
    common::stop_gracefully(engine);
    sends.sort();
    // u2's Ping no longer triggers: one send each for u2's and u3's Pong, and the rotation
    // continues with the new variant (B and A, in whichever order the two arrive).
    let users: Vec<&str> = sends.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(users, ["u1", "u2", "u3"], "{}", common::tail(&log, 20));
    assert_eq!(sends[0].1, "A");
    let mut after_edit: Vec<&str> = sends[1..].iter().map(|(_, v)| v.as_str()).collect();
    after_edit.sort_unstable();
    assert_eq!(after_edit, ["A", "B"]);
}

#[test]
fn candidates_already_on_the_flow_when_a_campaign_is_paused_are_held_and_sent_on_resume() {
    let deployment = Deployment::new(
        "held-flow",
        2,
        "id: promo\napp: shop\nname: P\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n",
    );
    let topic = |name: &str| deployment.topic(name);
    let campaign_command = |command: &str| {
        let out =
            deployment.herald(&["campaign", command, "promo", "--topic", &topic("campaigns")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Two users qualified just before the pause: their candidates are on the campaign flow.
    campaign_command("pause");
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let candidate = |user: &str| {
        let candidate = Candidate {
            campaign_id: "promo".into(),
            app_id: "shop".into(),
            run_id: format!("trigger:{user}-ping"),
            user_id: user.into(),
            qualified_at_ms: now,
            trigger_event: Some("Ping".into()),
            event_properties: Default::default(),
            profile: Default::default(),
            devices: vec![Device {
                device_id: format!("d-{user}"),
                platform: Platform::Android,
                token: format!("tok-{user}"),
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
        ("promo".to_string(), registry.encode(&candidate).unwrap())
    };
    common::produce(&topic("campaign-flow"), [candidate("u1"), candidate("u2")]);
    let log = deployment.log();
    let engine = deployment.spawn_engine();
    let held = format!("{}-held-candidates-changelog", deployment.app_id);
    common::wait_for_offsets(&held, 2, &log);
    assert_eq!(lifecycle_kinds(&deployment, 1), [LifecycleKind::Paused]);
    assert_eq!(push_users(&deployment, 0, Duration::from_secs(1)), Vec::<String>::new());
    campaign_command("resume");
    let mut sent = push_users(&deployment, 2, Duration::from_secs(1));
    common::stop_gracefully(engine);
    sent.sort();
    assert_eq!(sent, ["u1", "u2"], "{}", common::tail(&log, 20));
}
