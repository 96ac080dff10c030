//! Alternation and split campaigns spread over shards (issue 13, brief s26/SPLIT; see
//! "Split proportions and alternation" in `docs/architecture.md`), on the replay driver over 4
//! partitions: the variant counts are exactly those of the same campaign on one task, read from
//! what a user checks (`sends.jsonl`, the stats).

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::{campaign::shards, stage_campaign::ab::SplitDelivery};
use sharded::*;

const SPLIT_70_30: &str =
    "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  split: [70, 30]";

/// A scheduled split 70/30 run to 1,000 users over 4 shards: exactly 700 and 300 (the single
/// task's round robin over global indices 0..1000), every shard sending, the stats equal to the
/// commands, and which user got which variant the same on a re-run.
#[test]
fn a_split_70_30_run_to_1000_users_over_4_shards_sends_exactly_700_and_300() {
    let sharded = scheduled("split", SPLIT_70_30, "options: { shards: 4 }\n");
    let one = scheduled("split", SPLIT_70_30, "");
    assert_eq!((spread(&sharded), spread(&one)), (4, 1));
    let lines = audience(1_000);

    let outcome = Outcome::replay(&sharded, &lines);
    let expected = counted(&[("A", 700), ("B", 300)]);
    assert_eq!(outcome.counts(), expected, "exact over 4 shards");
    assert_eq!(outcome.stats_sent("split"), expected, "stats merged from the shards");
    assert_eq!(outcome.variants().len(), 1_000);
    let per_shard = sending_shards(&outcome.variants(), |u| shards::of_user(u, 4));
    assert_eq!(per_shard.len(), 4, "every shard sent its share");
    assert_eq!(outcome.kinds(), ["RUN_STARTED", "RUN_FINISHED"]);

    let again = Outcome::replay(&sharded, &lines);
    assert!(again.variants() == outcome.variants(), "the same user gets the same variant");
    assert_eq!(Outcome::replay(&one, &lines).counts(), expected, "as on one task");
}

/// Three variants in strict alternation, a per-run limit of 101 of 1,000 (a random sample, cut
/// in rank order over the shards): exactly 34, 34, 33, as one task's alternation over 101 users.
#[test]
fn an_alternating_run_with_a_per_run_limit_of_101_over_4_shards_sends_34_34_33() {
    let extra = "limits: { per_run: 101 }\n";
    let sharded = scheduled("alt", ALTERNATE_3, &format!("{extra}options: {{ shards: 4 }}\n"));
    let one = scheduled("alt", ALTERNATE_3, extra);
    assert_eq!(spread(&sharded), 4);
    let lines = audience(1_000);

    let outcome = Outcome::replay(&sharded, &lines);
    let expected = counted(&[("A", 34), ("B", 34), ("C", 33)]);
    assert_eq!(outcome.counts(), expected, "exact over 4 shards");
    assert_eq!(outcome.stats_sent("alt"), expected);
    let single = Outcome::replay(&one, &lines);
    assert_eq!(single.counts(), expected, "as on one task");
    let users = |o: &Outcome| o.variants().into_keys().collect::<BTreeSet<_>>();
    assert_eq!(users(&outcome), users(&single), "the same random sample of 101");
}

/// A split over 2,000 users on 4 shards with a total of 999: the places are apportioned over the
/// shards, each with its range of global indices: exactly one task's round robin over indices
/// 0..999.
#[test]
fn a_split_run_cut_by_a_total_limit_over_4_shards_is_exact() {
    let sharded = scheduled("cut", SPLIT_70_30, "limits: { total: 999 }\noptions: { shards: 4 }\n");
    let outcome = Outcome::replay(&sharded, &audience(2_000));

    let mut split = SplitDelivery::new(&[70, 30]);
    let mut expected = counted(&[("A", 0), ("B", 0)]);
    for _ in 0..999 {
        *expected.get_mut(["A", "B"][split.next_variant()]).unwrap() += 1;
    }
    assert_eq!(outcome.counts(), expected);
    assert_eq!(outcome.stats_sent("cut"), expected);
    let per_shard = sending_shards(&outcome.variants(), |u| shards::of_user(u, 4));
    assert_eq!(per_shard.len(), 4, "every shard sent its share");
}

/// The counts of one task's split `shares` over `sends` users, by variant id `ids`.
fn round_robin(shares: &[u32], ids: &[&str], sends: usize) -> BTreeMap<String, usize> {
    let mut split = SplitDelivery::new(shares);
    let mut counts: BTreeMap<String, usize> = ids.iter().map(|id| (id.to_string(), 0)).collect();
    for _ in 0..sends {
        *counts.get_mut(ids[split.next_variant()]).unwrap() += 1;
    }
    counts
}

/// Ten users of 1,000 (u0, u100, …, one or more on each shard) have no `first_name` for the
/// template: a shard spends an index only on a user it sends to, so the index of a user it could
/// not send to goes to its next user, and the 990 sends are exactly the round robin over 990.
#[test]
fn an_index_whose_user_is_not_sent_goes_to_the_shards_next_user() {
    let what = "\n  variants:\n    - { id: A, title: \"Hi {{ profile.first_name }}\", body: a }\n    - { id: B, title: \"Hi {{ profile.first_name }}\", body: b }\n  split: [70, 30]";
    let sharded = scheduled("named", what, "options: { shards: 4 }\n");
    let mut lines = audience(1_000);
    for i in (0..1_000).step_by(100) {
        let unset = format!(
            r#"{{"type":"profile","user":"u{i}","ts":"{}","unset":["first_name"]}}"#,
            ts(1)
        );
        lines.insert(lines.len() - 1, unset); // before the event past the run time
    }
    let unnamed: BTreeSet<u32> =
        (0..1_000).step_by(100).map(|i| shards::of_user(&format!("u{i}"), 4)).collect();
    assert!(unnamed.len() > 1, "users not sent to on several shards: {unnamed:?}");

    let outcome = Outcome::replay(&sharded, &lines);
    assert_eq!(outcome.variants().len(), 990);
    let expected = round_robin(&[70, 30], &["A", "B"], 990);
    assert_eq!(outcome.counts(), expected, "one task's round robin over the 990 sent");
    assert_eq!(outcome.stats_sent("named"), expected);
}

/// A triggered campaign on `Ping` sending `what` with `extra` YAML.
fn triggered(id: &str, what: &str, extra: &str) -> String {
    format!("id: {id}\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {what}\n{extra}")
}

/// `users` profiles, then each pings once, in bursts of 100 at one instant (the replay handles
/// each record's consequences before any timer: grants, recalls and returns cross while
/// candidates wait).
fn pinging(users: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..users).map(|i| profile(&format!("u{i}"))).collect();
    lines.extend((0..users).map(|i| event(&format!("u{i}"), 10 + i as i64 / 100, "Ping")));
    lines
}

const ALTERNATE_2: &str =
    "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }";

/// Triggered alternation with a total of 101 over 4 shards, 400 users pinging in bursts: the
/// home leases global indices with the places, so the 101 sends take indices 0..101 exactly:
/// 51 A and 50 B, every shard sending, the stats equal to the commands.
#[test]
fn a_triggered_alternation_with_a_total_of_101_over_4_shards_sends_51_and_50() {
    let campaign =
        triggered("alt", ALTERNATE_2, "limits: { total: 101 }\noptions: { shards: 4 }\n");
    assert_eq!(spread(&campaign), 4);
    let outcome = Outcome::replay(&campaign, &pinging(400));

    let expected = counted(&[("A", 51), ("B", 50)]);
    assert_eq!(outcome.counts(), expected, "one task's alternation over 101 sends");
    assert_eq!(outcome.stats_sent("alt"), expected);
    let per_shard = sending_shards(&outcome.variants(), |u| shards::of_user(u, 4));
    assert_eq!(per_shard.len(), 4, "every shard sent on its places");
    assert_eq!(outcome.kinds(), ["LIMIT_REACHED", "COMPLETED"]);
}

/// Triggered split 70/30 with a total of 999 of 2,000 over 4 shards: one task's round robin over
/// 999 sends.
#[test]
fn a_triggered_split_with_a_total_of_999_over_4_shards_is_one_tasks_round_robin() {
    let campaign =
        triggered("split", SPLIT_70_30, "limits: { total: 999 }\noptions: { shards: 4 }\n");
    assert_eq!(spread(&campaign), 4);
    let outcome = Outcome::replay(&campaign, &pinging(2_000));

    let expected = round_robin(&[70, 30], &["A", "B"], 999);
    assert_eq!(outcome.counts(), expected);
    assert_eq!(outcome.stats_sent("split"), expected);
    let per_shard = sending_shards(&outcome.variants(), |u| shards::of_user(u, 4));
    assert_eq!(per_shard.len(), 4);
}

/// Triggered alternation, a total of 101 over 4 shards; 30 of the first 300 users (u0, u10, …)
/// have no `first_name` for the template: a shard spends an index (and a place) only on a user
/// it sends to, so the next user takes it: still 51 and 50.
#[test]
fn a_triggered_user_not_sent_leaves_the_index_to_the_shards_next_candidate() {
    let what = "\n  variants:\n    - { id: A, title: \"Hi {{ profile.first_name }}\", body: a }\n    - { id: B, title: \"Hi {{ profile.first_name }}\", body: b }";
    let campaign = triggered("named", what, "limits: { total: 101 }\noptions: { shards: 4 }\n");
    let mut lines = pinging(400);
    for i in (0..300).step_by(10) {
        let unset = format!(
            r#"{{"type":"profile","user":"u{i}","ts":"{}","unset":["first_name"]}}"#,
            ts(1)
        );
        lines.insert(400, unset); // after the profiles, before the pings
    }
    let outcome = Outcome::replay(&campaign, &lines);

    let variants = outcome.variants();
    assert!((0..300).step_by(10).all(|i| !variants.contains_key(&format!("u{i}"))));
    assert_eq!(outcome.counts(), counted(&[("A", 51), ("B", 50)]));
    assert_eq!(outcome.stats_sent("named"), counted(&[("A", 51), ("B", 50)]));
}
