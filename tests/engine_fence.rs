//! An instance killed with a transaction open: the instance that takes its partitions over
//! fences it (`runtime::live::fence`), so the records it left uncommitted stop no one's
//! `read_committed` reads until its transaction timeout. Real Kafka, two `herald engine`
//! processes.

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use sharded::*;

const USERS: usize = 200;

/// A campaign sending one command per `Ping`.
const PING: &str = "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\noptions: { ignore_global_caps: true }\n";

/// Users `u<i>` of `range`.
fn users(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("u{i}")).collect()
}

/// Instance `b` keeps its transactions open long (a commit interval of 5 minutes, so 30 s
/// once caught up, and a transaction timeout of 15 minutes, the broker's largest) and is
/// killed (SIGKILL) once the first half of the users' pings have become candidates on the
/// campaign flow, b's inside its open transaction. Without fencing, every `read_committed`
/// reader of a partition b wrote to in it stops there for 15 minutes (with the fence call
/// removed, no user got a command within the minute this test waits). Instance `a` takes
/// b's partitions and sends every user's command once: those pinged before the kill (b's
/// uncommitted work done again) and after it.
#[test]
fn an_instance_killed_with_its_transaction_open_is_fenced_by_the_one_taking_over() {
    let (prefix, app_id, dir) = deployment("fence", 4);
    let topic = |name: &str| format!("{prefix}herald.{name}");
    let (log, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let logs = || format!("a:\n{}\nb:\n{}", common::tail(&log, 30), common::tail(&log_b, 30));
    profiles(&topic("profiles"), 0..USERS);
    apply(dir.path(), &topic("campaigns"), "ping.yaml", PING);
    let a = spawn_instance(&prefix, &app_id, dir.path(), &log, "a");
    let slow = ["--commit-interval-ms", "300000", "--transaction-timeout-ms", "900000"];
    let mut b = spawn_instance_with(&prefix, &app_id, dir.path(), &log_b, "b", &slow);
    let b_holds_tasks = common::poll_until(Duration::from_secs(120), || {
        std::fs::read_to_string(&log_b).unwrap_or_default().contains("tasks restored")
    });
    assert!(b_holds_tasks, "b holds tasks\n{}", logs());
    common::wait_for_offsets(&format!("{app_id}-profiles-changelog"), USERS as i64, &log);

    // Every ping becomes a candidate on the campaign flow, b's inside its open transaction:
    // the flow's end offsets count them before anyone may read b's.
    common::produce(&topic("events"), events("Ping", users(0..USERS / 2).into_iter()));
    common::wait_for_offsets(&topic("campaign-flow"), (USERS / 2) as i64, &log);
    common::kill_hard(b.take());
    common::produce(&topic("events"), events("Ping", users(USERS / 2..USERS).into_iter()));

    let sent = commands(&topic("push"), USERS);
    let mut per_user: BTreeMap<&str, usize> = BTreeMap::new();
    for command in &sent {
        *per_user.entry(command.user_id.as_str()).or_default() += 1;
    }
    let got: BTreeSet<String> = per_user.keys().map(|u| u.to_string()).collect();
    let want: BTreeSet<String> = users(0..USERS).into_iter().collect();
    let missing: Vec<&String> = want.difference(&got).collect();
    assert!(missing.is_empty(), "no command for {missing:?}\n{}", logs());
    let doubled: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "more than one command: {doubled:?}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines().any(|l| l.contains("fenced an instance gone from the group")
            && l.contains(&format!("{app_id}-b"))),
        "a fenced b\n{}",
        logs()
    );
    drop(a);
    common::delete_topics_starting_with(&[&prefix, &app_id]);
}
