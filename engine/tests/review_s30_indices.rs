//! Plans of a home that reach a shard before the campaign's definition does (brief s30/INDX).
//! Each engine instance reads the campaigns table with its own consumer, so a home on an
//! instance that read a definition (or an edit) may write plans to a shard whose task runs on
//! an instance that has not read it yet. Before, such a shard dropped the plan without its
//! number (`on_shard_plan`: campaign unknown, or its shard not in the definition it knows), and
//! refused every later `INDICES` plan as numbered past the next: it never held indices again.
//!
//! A replay of [`ReplayInput::Records`] cannot show it: a campaigns record is applied to the one
//! table every task reads, between two input records, and every record a task writes to an
//! internal topic (a home's plan) is read before the next input record, so a shard always reads
//! a plan with the definition its home had when it wrote it. [`ReplayInput::Staggered`] lets
//! the tasks of one partition read a campaigns record later than the others, as an instance
//! running them would.

#[path = "replay_support/sharded.rs"]
mod sharded;

use herald_engine::{
    campaign::shards,
    runtime::{
        partition_for,
        replay::{ReplayInput, ReplayRecord},
    },
};
use sharded::*;

const PARTITIONS: i32 = 4;

/// The partition of the task that keeps `key`'s state.
fn partition_of(key: &str) -> i32 {
    partition_for(key.as_bytes(), PARTITIONS)
}

/// A shard of `ping` (of 4) whose task runs on another partition than its home's, and that
/// partition.
fn a_shard_away_from_home() -> (u32, i32) {
    let home = partition_of("ping");
    (0..4)
        .map(|shard| (shard, partition_of(&shards::key("ping", shard))))
        .find(|(_, partition)| *partition != home)
        .expect("a shard away from its home")
}

/// `record` (a campaigns record) read by the tasks of every partition but `lagging`.
fn read_by_all_but(record: &ReplayRecord, lagging: i32) -> Vec<(Option<i32>, ReplayRecord)> {
    (0..PARTITIONS).filter(|p| *p != lagging).map(|p| (Some(p), record.clone())).collect()
}

/// Every record read by every task.
fn by_all(records: impl IntoIterator<Item = ReplayRecord>) -> Vec<(Option<i32>, ReplayRecord)> {
    records.into_iter().map(|record| (None, record)).collect()
}

/// `ping` in alternation of A, B, C with a total of 30 over 4 shards, defined at `T0`; the
/// tasks of partition `lagging` (if any) read the definition a minute later than the others.
/// The home gives every shard its first places and indices as soon as it reads it (`GRANT`
/// and `INDICES` #1: `leases::pre_lease`); then 60 users qualify, at their shards, two minutes
/// after.
fn total_of_30_defined(lagging: Option<i32>) -> Out {
    let yaml = alternation(&format!("limits: {{ total: 30 }}\n{OVER_4}"));
    let definition = define("ping", &yaml, T0);
    let mut input = match lagging {
        Some(lagging) => read_by_all_but(&definition, lagging),
        None => by_all([definition.clone()]),
    };
    input.extend(by_all(profiles(0..60)));
    input.extend(by_all([other_event(0, T0 + 5_000), other_event(1, T0 + 30_000)]));
    if let Some(lagging) = lagging {
        let mut late = definition;
        late.timestamp_ms = T0 + MINUTE;
        input.push((Some(lagging), late));
    }
    input.extend(by_all([other_event(2, T0 + MINUTE + 5_000)]));
    input.extend(by_all(candidates("ping", 0..60, T0 + 2 * MINUTE)));
    input.extend(by_all([other_event(1, T0 + 10 * MINUTE)]));
    run_input(NO_CAPS, ReplayInput::Staggered(input), T0 + 30 * MINUTE)
}

/// The tasks of one shard's partition read `ping`'s definition a minute after its home's,
/// which meanwhile gave the shard its first places and indices. One task: exactly 30 users
/// sent, 10 of each variant, nothing refused. Before: the shard dropped the `GRANT` and
/// `INDICES` #1 (campaign unknown), then refused the home's `INDICES` #2 ("numbered 2, the
/// next is 1") and every later one, and sent its users on its own count.
#[test]
fn plans_a_shard_reads_before_the_campaigns_definition_are_applied_once_it_does() {
    let (shard, lagging) = a_shard_away_from_home();
    let out = total_of_30_defined(Some(lagging));
    let sent = out.users("ping");
    assert!(
        sent.iter().any(|&u| shards::of_user(&user(u), 4) == shard),
        "the lagging shard {shard} sends too: {sent:?}"
    );
    let counts = per_variant(&out);
    let dead = &out.dead;
    assert_eq!(sent.len(), 30, "exactly the total: {sent:?}, {counts:?}, {dead:?}");
    assert_eq!(counts, counted(&[("A", 10), ("B", 10), ("C", 10)]), "{dead:?}");
    assert!(dead.is_empty(), "{dead:?}");
}

/// Control: every task reads the definition at once: exactly 30, 10/10/10.
#[test]
fn a_total_of_30_in_alternation_over_4_shards_read_at_once_is_one_tasks() {
    let out = total_of_30_defined(None);
    assert_eq!(out.users("ping").len(), 30);
    assert_eq!(per_variant(&out), counted(&[("A", 10), ("B", 10), ("C", 10)]));
    assert!(out.dead.is_empty(), "{:?}", out.dead);
}

/// A shard an edit adds to `ping` (of 8, after 4) whose task runs on another partition than
/// its home's, and that partition.
fn an_added_shard_away_from_home() -> (u32, i32) {
    let home = partition_of("ping");
    (4..8)
        .map(|shard| (shard, partition_of(&shards::key("ping", shard))))
        .find(|(_, partition)| *partition != home)
        .expect("an added shard away from its home")
}

/// `ping` in alternation with a total of 60 over 4 shards; u0..u39 qualify at their shards a
/// minute in; five minutes in, an edit spreads it over 8 shards, which the tasks of partition
/// `lagging` (if any) read a minute later than the others (the home recounts its shards, then
/// gives each of the 8 its first places and indices); then u40..u119 qualify at their shards
/// of 8.
fn total_of_60_widened(lagging: Option<i32>) -> Out {
    let yaml = alternation(&format!("limits: {{ total: 60 }}\n{OVER_4}"));
    let wider = yaml.replace("shards: 4", "shards: 8");
    let mut input = by_all([define("ping", &yaml, T0)]);
    input.extend(by_all(profiles(0..120)));
    input.extend(by_all([other_event(0, T0 + 5_000)]));
    input.extend(by_all(candidates("ping", 0..40, T0 + MINUTE)));
    let edit = define("ping", &wider, T0 + 5 * MINUTE);
    match lagging {
        Some(lagging) => {
            input.extend(read_by_all_but(&edit, lagging));
            input.extend(by_all([other_event(1, T0 + 5 * MINUTE + 30_000)]));
            let mut late = edit;
            late.timestamp_ms = T0 + 6 * MINUTE;
            input.push((Some(lagging), late));
        }
        None => input.extend(by_all([edit])),
    }
    input.extend(by_all([other_event(2, T0 + 6 * MINUTE + 5_000)]));
    input.extend(by_all(candidates_over(40..120, T0 + 7 * MINUTE, 8)));
    input.extend(by_all([other_event(1, T0 + 30 * MINUTE)]));
    run_input(NO_CAPS, ReplayInput::Staggered(input), T0 + 60 * MINUTE)
}

/// The tasks of an added shard's partition read the edit that spread `ping` over 8 shards a
/// minute after its home's, which meanwhile asked every shard of the 8 for a recount. One
/// task: exactly 60 users sent, 20 of each variant, nothing refused. Before: the added shard
/// refused the home's plans as "neither its home nor one of its shards" (dead letters).
#[test]
fn plans_a_shard_reads_before_the_edit_that_added_it_are_applied_once_it_does() {
    let (shard, lagging) = an_added_shard_away_from_home();
    let out = total_of_60_widened(Some(lagging));
    let sent = out.users("ping");
    let counts = per_variant(&out);
    let dead = &out.dead;
    assert_eq!(sent.len(), 60, "exactly the total: {sent:?}, {counts:?}, {dead:?}");
    assert!(
        sent.iter().any(|&u| u >= 40 && shards::of_user(&user(u), 8) == shard),
        "the added shard {shard} sends too: {sent:?}"
    );
    assert_eq!(counts, counted(&[("A", 20), ("B", 20), ("C", 20)]), "{dead:?}");
    assert!(dead.is_empty(), "{dead:?}");
}

/// Control: every task reads the edit at once: exactly 60, 20/20/20.
#[test]
fn a_total_of_60_in_alternation_widened_from_4_to_8_shards_read_at_once_is_one_tasks() {
    let out = total_of_60_widened(None);
    assert_eq!(out.users("ping").len(), 60);
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]));
    assert!(out.dead.is_empty(), "{:?}", out.dead);
}

/// Guard: a plan held for its definition that is refused once it applies is dropped alone (as a
/// dead letter would be): a forged `INDICES` plan numbered 1,000,000 to u0's shard before `ping`
/// (a test of 30 over 4 shards) is defined; then 60 users qualify. 30 tested, 10/10/10, and the
/// home's genuine plans to that shard apply (before the fix it was ignored, as the campaign was
/// unknown: this passed too).
#[test]
fn a_held_plan_refused_when_it_applies_keeps_no_genuine_plan_out() {
    let shard = shards::of_user(&user(0), 4);
    let mut input = vec![indices_plan(shard, 1_000_000, 0, 0, T0 - 10_000)];
    input.push(define("ping", &ab_test(30, OVER_4), T0));
    input.extend(profiles(0..60));
    input.push(other_event(0, T0 + 5_000));
    input.extend(candidates("ping", 0..60, T0 + 20_000));
    input.push(other_event(0, T0 + 10 * MINUTE));
    let out = run(NO_CAPS, input, T0 + 30 * MINUTE);
    out.users("ping"); // none twice
    assert_eq!(per_variant(&out), counted(&[("A", 10), ("B", 10), ("C", 10)]));
    assert!(out.dead.is_empty(), "{:?}", out.dead);
}
