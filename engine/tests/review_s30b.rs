//! Review s30b (brief RV6): a fresh, hostile look at 665e8fb (a run that reserves, `timezone:
//! user` with a per-run limit or an A/B test, also reserves the place of a user it puts off past
//! do-not-disturb hours at its scan) and at its interplay with f1d9f63 (a scheduled run's users
//! routed by the run's shards at its release). Each test runs the three-zone driver
//! (`replay_support/sharded.rs` `zones_run`: `a` UTC+14, `b` UTC, `c` UTC−10, 40 each; the
//! Friday 09:00 local run is released at 19:00Z on the 19th) on one task and over 4 and 8
//! shards, and asserts which users are sent, each once.
//!
//! With do-not-disturb 08:00 to 10:00 local, the `a` users are in it at the release (09:00
//! local): put off until 20:00Z on the 19th, with a reservation since 665e8fb.

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::campaign::sample;
use herald_engine::model::{
    topics, CampaignCommand, Platform, ProfileUpdate, PropertyValue, SendCommand,
};
use herald_engine::runtime::replay::ReplayRecord;
use sharded::*;

/// Do-not-disturb hours 08:00 to 10:00 local, delayed (inside `options: { ... }`).
const DND: &str = ", dnd: { start: \"08:00\", end: \"10:00\", action: delay }";

/// Everyone without the profile property `gone`.
const NOT_GONE: &str = "who: { property: gone, not_exists: true }\n";

/// Shard options compared: one task, 4 and 8 shards.
const SHARDS: [&str; 3] = ["", ", shards: 4", ", shards: 8"];

/// `t` defined as `yaml` at 18:00Z on the 19th, `per_zone` users in each zone, then `commands`
/// (sorted by time), replayed without caps.
fn zones_with(yaml: &str, per_zone: usize, mut commands: Vec<ReplayRecord>) -> Out {
    commands.sort_by_key(|c| c.timestamp_ms);
    zones_run(NO_CAPS, &[("t", yaml)], per_zone, commands)
}

/// Every user of the three zones, `per_zone` each.
fn everyone(per_zone: usize) -> Vec<String> {
    ZONES.iter().flat_map(|(zone, _)| (0..per_zone).map(move |i| format!("{zone}{i}"))).collect()
}

/// The first `n` of `users` in `run`'s random order (`sample::rank`).
fn first_by_rank(run: &str, users: impl IntoIterator<Item = String>, n: usize) -> BTreeSet<String> {
    let mut users: Vec<String> = users.into_iter().collect();
    users.sort_by_key(|user| sample::rank(run, user));
    users.into_iter().take(n).collect()
}

/// The users `t` sent to (asserting each once), and the run they were sent in (one run).
fn sent(out: &Out) -> (BTreeSet<String>, String) {
    let users: BTreeSet<String> = by_day(out).into_values().flatten().collect();
    let runs: BTreeSet<&String> = out.of("t").iter().map(|s| &s.run_id).collect();
    assert!(runs.len() <= 1, "one run: {runs:?}");
    (users, runs.into_iter().next().cloned().unwrap_or_default())
}

/// Sends per zone (first letter) and per variant.
fn zones_and_variants(out: &Out) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut zones = BTreeMap::new();
    let mut variants = BTreeMap::new();
    let sends: Vec<&SendCommand> = out.of("t");
    for send in sends {
        *zones.entry(send.user_id[..1].to_string()).or_default() += 1;
        *variants.entry(send.variant_id.clone()).or_default() += 1;
    }
    (zones, variants)
}

/// `user` gets the profile property `gone` at `when`.
fn gone(user: &str, when: &str) -> ReplayRecord {
    let set = [("gone", PropertyValue::String("yes".into()))];
    let update = profile_update(user, Platform::Ios, ms_of(when), &set);
    keyed(topics::PROFILES, user, &update, ms_of(when))
}

/// `user`'s only token is removed at `when` (not reachable any more).
fn unreachable(user: &str, when: &str) -> ReplayRecord {
    let update = ProfileUpdate {
        app_id: "shop".into(),
        user_id: user.into(),
        timestamp_ms: ms_of(when),
        set: Default::default(),
        unset: Vec::new(),
        devices_added: Vec::new(),
        tokens_removed: vec![format!("tok-{user}")],
    };
    keyed(topics::PROFILES, user, &update, ms_of(when))
}

/// Asserts every case is right (all reported at once).
fn assert_all(wrong: Vec<String>) {
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A per-run limit of 50 of the 120 users with do-not-disturb 08:00 to 10:00 local: every
/// user comes (the `a` users after their do-not-disturb hours at 20:00Z on the 19th, `b` at
/// 09:00Z, `c` at 19:00Z on the 20th, put off again until 20:00Z by their own hours), so the 50
/// sent are the run's first 50 in its random order among all 120, each once, on one task and
/// over 4 and 8 shards. Also:
/// - paused from 19:30Z to 21:00Z on the 19th: the `a` users, due at the end of their hours, are
///   held and released at the resume (`held.rs`, through `come_back`): their reservation, made at
///   the scan, is not made a second time;
/// - the `a` users moved to UTC−10 at 19:30Z on the 19th, while in their hours: at 20:00Z they
///   are put off again until their new 09:00 (19:00Z on the 20th), then past their hours until
///   20:00Z, holding the one reservation of the scan.
#[test]
fn dnd_users_at_the_release_are_in_the_sample_once_paused_or_moved() {
    let yaml = |options: &str| t_yaml("{ per_run: 50 }", &format!("{DND}{options}"));
    let mut wrong = Vec::new();
    for case in ["as is", "paused", "moved"] {
        for options in SHARDS {
            let yaml = yaml(options);
            let commands = match case {
                "paused" => vec![
                    on_t(&yaml, CampaignCommand::Pause, "2026-11-19T19:30:00Z"),
                    on_t(&yaml, CampaignCommand::Resume, "2026-11-19T21:00:00Z"),
                ],
                "moved" => (0..40)
                    .map(|i| {
                        let at = ms_of("2026-11-19T19:30:00Z");
                        zoned_profile(&format!("a{i}"), "Pacific/Honolulu", at)
                    })
                    .collect(),
                _ => vec![],
            };
            let out = zones_with(&yaml, 40, commands);
            let (got, run) = sent(&out);
            let want = first_by_rank(&run, everyone(40), 50);
            if got != want {
                let (zones, _) = zones_and_variants(&out);
                wrong.push(format!(
                    "{case} {options:?}: {} sent {zones:?}, {} not of the first 50, {} of them missing; kinds {:?}",
                    got.len(),
                    got.difference(&want).count(),
                    want.difference(&got).count(),
                    out.kinds("t")
                ));
            }
        }
    }
    assert_all(wrong);
}

/// A reservation made for a user put off past do-not-disturb hours at the scan, whose user does
/// not come at their end: every `a` user leaves the audience (profile property `gone`) or loses
/// their only token at 19:30Z on the 19th, while in their hours. At 20:00Z each is reported
/// (`not_eligible` or `not_reachable`, naming the run) and a place the run selected them for
/// goes to the first user standing by: the 50 sent are the first 50 in the run's order among
/// the 80 `b` and `c` users, none of `a`, on one task and over 4 and 8 shards.
#[test]
fn a_dnd_reserved_user_who_does_not_come_passes_the_place_on() {
    let mut wrong = Vec::new();
    for how in ["gone", "unreachable"] {
        for options in SHARDS {
            let yaml =
                format!("{}{NOT_GONE}", t_yaml("{ per_run: 50 }", &format!("{DND}{options}")));
            let commands: Vec<ReplayRecord> = (0..40)
                .map(|i| {
                    let user = format!("a{i}");
                    match how {
                        "gone" => gone(&user, "2026-11-19T19:30:00Z"),
                        _ => unreachable(&user, "2026-11-19T19:30:00Z"),
                    }
                })
                .collect();
            let out = zones_with(&yaml, 40, commands);
            let (got, run) = sent(&out);
            let others = everyone(40).into_iter().filter(|u| !u.starts_with('a'));
            let want = first_by_rank(&run, others, 50);
            if got != want {
                let (zones, _) = zones_and_variants(&out);
                wrong.push(format!(
                    "{how} {options:?}: {} sent {zones:?}, {} not of the first 50 of b and c, {} of them missing",
                    got.len(),
                    got.difference(&want).count(),
                    want.difference(&got).count(),
                ));
            }
        }
    }
    assert_all(wrong);
}

/// A campaign that samples but is not user-local (a per-run limit of 50 at 09:00Z, the
/// campaign's time) must not reserve: with do-not-disturb 08:00 to 12:00 local, the `b` users
/// (in their hours at 09:00Z) are put off until 12:00Z without a place, and the run's 50 are
/// taken at its release from the 80 `a` and `c` users there: the first 50 in the run's order
/// among them, none of `b`, on one task and over 4 and 8 shards.
#[test]
fn a_fixed_time_sampled_run_reserves_nothing_for_users_in_dnd_hours() {
    let dnd = ", dnd: { start: \"08:00\", end: \"12:00\", action: delay }";
    let mut wrong = Vec::new();
    for options in SHARDS {
        let yaml =
            t_yaml("{ per_run: 50 }", &format!("{dnd}{options}")).replace(", timezone: user", "");
        let out = zones_with(&yaml, 40, vec![]);
        let (got, run) = sent(&out);
        let there = everyone(40).into_iter().filter(|u| !u.starts_with('b'));
        let want = first_by_rank(&run, there, 50);
        if got != want {
            let (zones, _) = zones_and_variants(&out);
            wrong.push(format!(
                "{options:?}: {} sent {zones:?}, {} not of the first 50 of a and c",
                got.len(),
                got.difference(&want).count(),
            ));
        }
    }
    assert_all(wrong);
}

/// `t`, an A/B test of 30 (evaluated an hour after its last test user's local time) with the
/// options `dnd` (do-not-disturb hours) and whoever is not `gone`; every user of `zone` gone at
/// `when` (none with no zone). Over 4 and 8 shards: the same users per zone and the same
/// commands per variant as one task, each user once; returns what differs.
fn ab_differs(dnd: &str, gone_zone: Option<(&str, &str)>) -> Vec<String> {
    let ab = format!("{ALTERNATE_3}\n  ab: {{ test_audience: 30, evaluate_after: 1h }}");
    let commands = || match gone_zone {
        None => vec![],
        Some((zone, when)) => (0..40).map(|i| gone(&format!("{zone}{i}"), when)).collect(),
    };
    let yaml =
        |options: &str| format!("{}{NOT_GONE}", t_what(&ab, "{}", &format!("{dnd}{options}")));
    let one = zones_with(&yaml(""), 40, commands());
    let (one_users, _) = sent(&one);
    let want = zones_and_variants(&one);
    let mut wrong = Vec::new();
    for options in &SHARDS[1..] {
        let out = zones_with(&yaml(options), 40, commands());
        let (users, _) = sent(&out);
        let got = zones_and_variants(&out);
        if got != want || users != one_users {
            wrong.push(format!(
                "{dnd:?} gone {gone_zone:?} {options:?}: {got:?}, one task {want:?}; {} users differ",
                users.symmetric_difference(&one_users).count()
            ));
        }
    }
    wrong
}

/// Do-not-disturb hours 08:00 to 15:00 local: the `a` users' reservations at the end of
/// their hours, 01:00Z on the 20th; the `b` users are put off again at their 09:00 until
/// 15:00Z, the `c` users until 01:00Z on the 21st, after the run's window closes (expired).
const DND_LONG: &str = ", dnd: { start: \"08:00\", end: \"15:00\", action: delay }";

/// An A/B test of 30 whose `a` users are in do-not-disturb hours at the release (08:00 to
/// 10:00, and 08:00 to 15:00 local, see [`DND_LONG`]), reserved since 665e8fb: over 4 and 8
/// shards, the same users per zone and commands per variant as one task.
#[test]
fn an_ab_test_with_dnd_users_at_the_release_counts_as_one_task() {
    let mut wrong = Vec::new();
    for dnd in [DND, DND_LONG] {
        wrong.extend(ab_differs(dnd, None));
    }
    assert_all(wrong);
}

/// Review s30b finding 1 (MEDIUM, A/B test audience not exact; fixed): the test of 30 above
/// with hours 08:00 to 10:00, every `a` user (in their hours at the release, reserved since
/// 665e8fb, six of them selected for the test) gone at 19:30Z on the 19th: their test places
/// pass on with their variants, to the next user still to come. A place passed to a shard
/// (through the home) after that shard's own `a` users were reported not coming went to one of
/// them: their reservation stayed in the run's buffer (`not_coming` only took them off the
/// standby), and the place was lost. One task sent A 60 / B 10 / C 10, 8 shards A 61 / B 9 /
/// C 10 (the same 80 users). Fixed: a user reported not coming leaves the buffer of a run
/// waiting for its winner (`CampaignStage::not_to_come`).
#[test]
fn an_ab_test_whose_dnd_reserved_test_users_do_not_come_counts_as_one_task() {
    assert_all(ab_differs(DND, Some(("a", "2026-11-19T19:30:00Z"))));
}

/// Review s30b finding 2 (MEDIUM, pre-existing, the same cause as finding 1; fixed): without
/// do-not-disturb hours, every `b` user (UTC, to come at 09:00Z on the 20th, reserved at the
/// release) gone at 20:00Z on the 19th: one task sent A 62 / B 9 / C 9, 8 shards A 63 / B 9 /
/// C 8 (the same 80 users). Every `c` user gone at 12:00Z on the 20th: as one task.
#[test]
fn an_ab_test_whose_test_users_do_not_come_at_their_local_time_counts_as_one_task() {
    let mut wrong = ab_differs("", Some(("b", "2026-11-19T20:00:00Z")));
    wrong.extend(ab_differs("", Some(("c", "2026-11-20T12:00:00Z"))));
    assert_all(wrong);
}

/// Review s30b finding 3 (LOW, A/B test variants differ from one task; no notification lost
/// or doubled): as finding 1 with hours 08:00 to 15:00 ([`DND_LONG`]: the `c` users are put off
/// past the run's window, and expire), every `a` user gone: the same 40 `b` users are sent,
/// with other variants: one task A 31 / B 5 / C 4, 4 shards A 31 / B 4 / C 5, 8 shards A 30 /
/// B 5 / C 5 (after the fix of finding 1; before, one task B 6 / C 4, 4 and 8 shards B 5 / C 5).
/// Root cause (brief s32/FX9, not fixed; `docs/architecture.md`, "Random selection", *Not
/// exact*): the six `a` test places (B, B, B, B, A, C by their test index) go, on one task and
/// over shards alike, to the six first users still to come after the test in the run's order,
/// b6, b3, c15, b0, b28, c37; c15 and c37 expire past the window, and which two variants they
/// hold follows the order in which the `a` users' skips of 01:00Z on the 20th are read (one
/// task's queue, or each shard's with places passed on through the home): lost on one task B
/// and C, over 4 shards B and B, over 8 A and B. One task's figures are themselves an accident
/// of that order, so no sharded protocol can match them without an order-free rule for which
/// place goes to which user, on one task too. Not the shards' forward-only passing: the users
/// after the test are on the cut shard and later ones.
#[test]
#[ignore = "review s30b finding 3: an A/B test of 30 with DND 08-15 whose UTC+14 users leave the audience: one task A 31/B 5/C 4, 4 shards 31/4/5, 8 shards 30/5/5 (same 40 users)"]
fn an_ab_test_whose_test_users_do_not_come_with_long_dnd_hours_counts_as_one_task() {
    assert_all(ab_differs(DND_LONG, Some(("a", "2026-11-19T19:30:00Z"))));
}

/// 665e8fb with f1d9f63: the shards raised (1 → 8, 4 → 8) at 19:30Z on the 19th, while the `a`
/// users wait out their do-not-disturb hours holding reservations at their shard of the
/// release: at 20:00Z they go to that shard (`run_flow_key`), which holds their places. Per-run
/// limit 50: the run's first 50 in its order among all 120, each once.
#[test]
fn dnd_reserved_users_keep_their_places_when_the_shards_grow_while_they_wait() {
    let yaml = |options: &str| t_yaml("{ per_run: 50 }", &format!("{DND}{options}"));
    let mut wrong = Vec::new();
    for from in ["", ", shards: 4"] {
        let edit = on_t(&yaml(", shards: 8"), CampaignCommand::Define, "2026-11-19T19:30:00Z");
        let out = zones_with(&yaml(from), 40, vec![edit]);
        let (got, run) = sent(&out);
        let want = first_by_rank(&run, everyone(40), 50);
        if got != want {
            let (zones, _) = zones_and_variants(&out);
            wrong.push(format!(
                "{from:?} -> 8: {} sent {zones:?}, {} not of the first 50, {} of them missing",
                got.len(),
                got.difference(&want).count(),
                want.difference(&got).count(),
            ));
        }
    }
    assert_all(wrong);
}

/// More shapes of a reserving run with the `a` users in do-not-disturb hours at the release,
/// each user sent once, on one task and over 4 and 8 shards:
/// - a per-run limit above the audience (200): all 120 sent;
/// - a per-run limit of 50 with a total limit of 60: the run's first 50 by rank;
/// - paused from 18:30Z to 19:30Z on the 19th, over the release: the run's scan starts at the
///   resume, late, and judges do-not-disturb hours as of the run's time: the `a` users are put
///   off until 20:00Z with a reservation; the run's first 50 by rank.
#[test]
fn reserving_runs_with_dnd_users_at_the_release_of_other_shapes() {
    let mut wrong = Vec::new();
    for (limits, paused, n) in [
        ("{ per_run: 200 }", false, 120),
        ("{ per_run: 50, total: 60 }", false, 50),
        ("{ per_run: 50 }", true, 50),
    ] {
        for options in SHARDS {
            let yaml = t_yaml(limits, &format!("{DND}{options}"));
            let commands = match paused {
                false => vec![],
                true => vec![
                    on_t(&yaml, CampaignCommand::Pause, "2026-11-19T18:30:00Z"),
                    on_t(&yaml, CampaignCommand::Resume, "2026-11-19T19:30:00Z"),
                ],
            };
            let out = zones_with(&yaml, 40, commands);
            let (got, run) = sent(&out);
            let want = first_by_rank(&run, everyone(40), n);
            if got != want {
                let (zones, _) = zones_and_variants(&out);
                wrong.push(format!(
                    "{limits} paused {paused} {options:?}: {} sent {zones:?}, {} not of the first {n}, {} of them missing",
                    got.len(),
                    got.difference(&want).count(),
                    want.difference(&got).count(),
                ));
            }
        }
    }
    assert_all(wrong);
}
