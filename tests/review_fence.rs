//! Review s28 RVF: the lead's runtime changes of the session (the fence of a departed
//! instance, lz4, standbys caught up within `--standby-acceptable-lag`). Real Kafka, `herald
//! engine` processes.

mod common;
#[path = "common/sharded.rs"]
mod sharded;

use std::time::Duration;

use sharded::*;

/// The fields of the last `standbys … caught_up=…` line in `log`: (tasks, lag, applied,
/// caught_up).
fn standbys_line(log: &std::path::Path) -> Option<(u64, u64, u64, bool)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text.lines().rfind(|l| l.contains(" standbys ") && l.contains("caught_up="))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    let number = |name: &str| field(name).and_then(|v| v.parse().ok());
    Some((number("tasks")?, number("lag")?, number("applied")?, field("caught_up")? == "true"))
}

/// Finding (MEDIUM): `Standbys::refresh` reports the lag in the same call that opens the
/// standbys, before their consumer has fetched anything, so the lag is the whole of their
/// changelogs; at or under `--standby-acceptable-lag` (10,000) the instance logs
/// `standbys … applied=0 caught_up=true` at once, and never again when the standbys do reach
/// the end (the line is logged on a change only). The failover test of
/// `tests/engine_scale_out.rs` and `herald bench scale --phase failover` wait for that line as
/// "a keeps b's tasks warm": with 20,000 profiles over 8 partitions b's share is about 10,000,
/// so the wait can end with nothing applied. Here b holds 2,000 profiles alone; a joins with a
/// standby of b's tasks (about 1,000 records): its first line says caught up, applied 0.
#[test]
#[ignore = "review s28 RVF: standbys report caught_up=true before applying anything when their changelogs hold <= --standby-acceptable-lag records"]
fn standbys_are_not_caught_up_before_they_apply_anything_of_their_changelogs() {
    const USERS: usize = 2_000;
    let (prefix, app_id, dir) = deployment("rvf-standby", 4);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let logs = || format!("a:\n{}\nb:\n{}", common::tail(&log_a, 30), common::tail(&log_b, 30));
    profiles(&format!("{prefix}herald.profiles"), 0..USERS);
    let standby = ["--standby-replicas", "1"];
    let b = spawn_instance_with(&prefix, &app_id, dir.path(), &log_b, "b", &standby);
    common::wait_for_offsets(&format!("{app_id}-profiles-changelog"), USERS as i64, &log_b);
    let a = spawn_instance_with(&prefix, &app_id, dir.path(), &log_a, "a", &standby);
    let mut first = None;
    let reported = common::poll_until(Duration::from_secs(180), || {
        first = standbys_line(&log_a);
        first.is_some()
    });
    let logs = logs();
    drop((a, b));
    common::delete_topics_starting_with(&[&prefix, &app_id]);

    assert!(reported, "a's standbys never reported\n{logs}");
    let (tasks, lag, applied, caught_up) = first.unwrap();
    assert!(tasks > 0 && lag > 0, "a keeps standbys of b's tasks, behind at first: {first:?}");
    assert!(
        !(caught_up && applied == 0),
        "a's standbys report caught up with {lag} records of b's changelogs unread and none \
         applied ({tasks} tasks)\n{logs}"
    );
}
