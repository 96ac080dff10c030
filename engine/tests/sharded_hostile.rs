//! Forged coordination records with hostile counts (issue 13, brief s27/FX2): a shard report
//! whose count no shard could send (a place count near `u32::MAX` or `i64::MAX`) reaches a
//! campaign's home. It must not panic the engine, nor give the run more places than it has: the
//! home dead-letters it with a reason, as it does for a report from a shard the campaign does
//! not have (e8b1ef9).

#[path = "replay_support/sharded.rs"]
mod sharded;

use herald_engine::model::{scheduled_run_id, ShardReport, ShardReportKind};
use herald_engine::runtime::replay::ReplayRecord;
use sharded::*;

/// A `PLACE_LEFT` of `campaign`'s run `run` from shard `shard` of 4, giving back `places`.
fn place_left(campaign: &str, run: &str, shard: i32, places: i64, at: i64) -> ReplayRecord {
    let report = shard_report(campaign, ShardReportKind::PlaceLeft, shard, at);
    to_home(&ShardReport { run_id: Some(run.into()), places, ..report })
}

/// A scheduled run with a per-run limit of 30 over 4 shards, throttled to 10 a minute on an app
/// with caps, so its places stay in flight (the run unfinished at its home) for minutes: the
/// run's first users in its random order are shard 0's, the others' stand by. Two forged
/// `PLACE_LEFT` reports from shard 0 then give back `u32::MAX` and `i64::MAX` places. Exactly 30
/// users are sent, `RUN_FINISHED` says 30, and both reports are dead letters naming the places.
/// Before: the home passed the forged places on to the shards with users standing by (all 100
/// users sent), and the second report overflowed `unplaced` (a panic in a debug build).
#[test]
fn a_place_left_report_with_a_huge_count_is_a_dead_letter_and_grants_nothing() {
    let at = T0 + 100_000;
    let run = scheduled_run_id(at);
    let yaml = format!(
        "{}limits: {{ per_run: 30 }}\noptions: {{ shards: 4, throttle: {{ max: 10, per: 1m }} }}\n",
        coupons(&[at], "").replace("options: { shards: 4 }\n", "")
    );
    assert_eq!(spread(&yaml), 4);
    let mut input = vec![define("coupons", &yaml, T0)];
    input.extend(profiles(0..100));
    input.push(other_event(99, at + 10_000)); // the run starts
    input.push(place_left("coupons", &run, 0, i64::from(u32::MAX), at + 20_000));
    input.push(place_left("coupons", &run, 0, i64::MAX, at + 21_000));
    input.push(other_event(98, at + 60 * MINUTE));
    let out = run_replay(input, at + 90 * MINUTE);

    let sent = out.users("coupons");
    assert_eq!(sent.len(), 30, "the run's limit: {sent:?}");
    let finished: Vec<_> =
        out.kinds("coupons").into_iter().filter(|(k, _)| k == "RunFinished").collect();
    assert_eq!(finished, [("RunFinished".to_string(), "30".to_string())]);
    assert_eq!(out.dead.len(), 2, "both forged reports are dead letters: {:?}", out.dead);
    assert!(
        out.dead.iter().all(|reason| reason.contains("places: a PlaceLeft report of coupons")),
        "{:?}",
        out.dead
    );
}

fn run_replay(input: Vec<ReplayRecord>, until: i64) -> Out {
    run(CAPS, input, until)
}
