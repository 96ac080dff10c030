//! Review s27 (brief s27/RV2): this session's sharded work (issue 13: alternation and split
//! without a limit on indices leased alone, the triggered A/B test over shards), read as a user
//! of the product would check it (which users got which variant, how many commands), on the
//! replay driver over 4 partitions. Tests marked `#[ignore = "review s27 finding N: ..."]` fail
//! on the code as reviewed (the figure got vs one task's is in their comment); the others show
//! an area sound and guard it.

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::{campaign::shards, model::CampaignCommand};
use sharded::*;

// ---------------------------------------------------------------------------------------------
// Edits while indices are in flight at the shards.

/// [`in_flight_then`] with `yaml` on its home alone from the start, every candidate keyed to
/// the home: one task's figures.
fn one_task(yaml: &str) -> Out {
    let mut input = vec![define("news", NEWS, T0), define("ping", yaml, T0)];
    input.extend(profiles(0..120));
    input.extend(pong(0..20, T0 + 5_000));
    input.push(other_event(0, T0 + 3 * MINUTE));
    input.extend(candidates_at_home("ping", 0..80, T0 + 4 * MINUTE));
    input.extend(candidates_at_home("ping", 80..120, T0 + 6 * MINUTE));
    input.push(other_event(1, T0 + 60 * MINUTE));
    run(THROTTLED_CAPS, input, T0 + 90 * MINUTE)
}

/// One task's alternation of 3 over the 100 users sent (u20..u119), the gate refusing
/// u0..u19 (checked by `one_tasks_figures`).
fn one_tasks_100() -> BTreeMap<String, usize> {
    counted(&[("A", 33), ("B", 33), ("C", 34)])
}

/// The one-task figures the tests below compare with: the alternation sends u20..u119,
/// 33/33/34; the A/B test of 60 tests 60 users, 20/20/20 (none of u0..u19).
#[test]
fn one_tasks_figures() {
    let out = one_task(&alternation(""));
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
    let out = one_task(&ab_test(60, ""));
    assert!(out.users("ping").is_disjoint(&numbers(0, 20)));
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]));
}

/// Sound (guard): the alternation without a limit over 4 shards, nothing edited, u0..u19's
/// sends refused at the gate while in flight: u20..u119 are sent, 33/33/34 as one task.
#[test]
fn an_alternation_whose_sends_the_gate_refuses_in_flight_keeps_one_tasks_counts() {
    let later = candidates("ping", 80..120, T0 + 6 * MINUTE).collect();
    let out = in_flight_then(&alternation(OVER_4), vec![], later);
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
}

/// The alternation without a limit put on its home alone (`shards` removed) one minute after
/// u0..u79's candidates came to its 4 shards (indices in flight there, u0..u19's to be
/// refused); u80..u119 then qualify at the home. One task: u20..u119, 33/33/34. Sound (guard).
#[test]
fn an_alternation_moved_home_while_indices_are_in_flight_keeps_one_tasks_counts() {
    let home = define("ping", &alternation(""), T0 + 5 * MINUTE);
    let later = candidates_at_home("ping", 80..120, T0 + 6 * MINUTE).collect();
    let out = in_flight_then(&alternation(OVER_4), vec![home], later);
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
}

/// The same moved home and spread over 4 shards again a minute later, while the indices are in
/// flight; u80..u119 then qualify at their shards. One task: u20..u119, 33/33/34. Sound (guard).
#[test]
fn an_alternation_moved_home_and_back_while_indices_are_in_flight_keeps_one_tasks_counts() {
    let edits = vec![
        define("ping", &alternation(""), T0 + 5 * MINUTE),
        define("ping", &alternation(OVER_4), T0 + 6 * MINUTE),
    ];
    let later = candidates("ping", 80..120, T0 + 7 * MINUTE).collect();
    let out = in_flight_then(&alternation(OVER_4), edits, later);
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
}

/// The same edited from 4 shards to 2 while the indices are in flight (shards 2 and 3 taken
/// away); u80..u119 then qualify at their shards of 2. One task: u20..u119, 33/33/34. Sound (guard).
#[test]
fn an_alternation_narrowed_from_4_to_2_shards_while_indices_are_in_flight_keeps_one_tasks_counts() {
    let two = define("ping", &alternation("options: { shards: 2 }\n"), T0 + 5 * MINUTE);
    let later = candidates_over(80..120, T0 + 6 * MINUTE, 2).collect();
    let out = in_flight_then(&alternation(OVER_4), vec![two], later);
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
}

/// The same paused a minute after the candidates came and resumed a minute later, while the
/// indices are in flight; u80..u119 then qualify. One task: u20..u119, 33/33/34. Sound (guard).
#[test]
fn an_alternation_paused_and_resumed_while_indices_are_in_flight_keeps_one_tasks_counts() {
    let yaml = alternation(OVER_4);
    let edits = vec![
        command("ping", &yaml, CampaignCommand::Pause, T0 + 5 * MINUTE),
        command("ping", &yaml, CampaignCommand::Resume, T0 + 6 * MINUTE),
    ];
    let later = candidates("ping", 80..120, T0 + 7 * MINUTE).collect();
    let out = in_flight_then(&yaml, edits, later);
    assert_eq!(out.users("ping"), numbers(20, 120));
    assert_eq!(per_variant(&out), one_tasks_100());
}

/// A triggered A/B test of 60 users over 4 shards, u0..u19's sends refused at the gate while in
/// flight (their indices given back to the next users): 60 users tested, 20/20/20, none of
/// u0..u19, as on one task; the others wait for the winner.
/// Finding 1 (MEDIUM, a count off). Over shards only 40 users are tested (u20..u59, 13/13/14):
/// the 20 indices the gate refused are never spent again, yet the test completes (with
/// `evaluate_after: 1h` and 8 hours of clock the winner goes to the other 60 users: A 73,
/// B 13, C 14 against one task's winner A 60, B 20, C 20), so the winner is decided on a
/// third fewer users than the test the campaign defines. One task: 20/20/20.
#[test]
fn a_triggered_test_whose_sends_the_gate_refuses_in_flight_tests_exactly_its_audience() {
    let later = candidates("ping", 80..120, T0 + 6 * MINUTE).collect();
    let out = in_flight_then(&ab_test(60, OVER_4), vec![], later);
    let sent = out.users("ping");
    assert!(sent.is_disjoint(&numbers(0, 20)), "one push a day");
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]));
}

/// The same test put on its home alone while its indices are in flight at the shards, u80..u119
/// qualifying at the home: 60 users tested, 20/20/20, as on one task.
/// Finding 2 (MEDIUM, a count off). 80 users are tested (27/26/27), none twice, none of
/// u0..u19: the home alone counts its test from zero, not counting what its old shards tested
/// (see `a_triggered_test_moved_home_after_its_shards_tested_does_not_test_again`), so the
/// test overshoots its audience. One task: 20/20/20.
/// Fixed (brief s28/RETIRE; 54, 18/18/18, after s27/FXB): the old shards' `INDICES` reports
/// giving back the refused indices named `shards` 1 (`options.shards`), below their own number,
/// so they did not decode (dead letters) and the home never had those indices back.
#[test]
fn a_triggered_test_moved_home_while_indices_are_in_flight_tests_exactly_its_audience() {
    let home = define("ping", &ab_test(60, ""), T0 + 5 * MINUTE);
    let later = candidates_at_home("ping", 80..120, T0 + 6 * MINUTE).collect();
    let out = in_flight_then(&ab_test(60, OVER_4), vec![home], later);
    let sent = out.users("ping");
    assert!(sent.is_disjoint(&numbers(0, 20)), "one push a day");
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]));
}

// ---------------------------------------------------------------------------------------------
// Repeated and forged INDICES reports.

/// An alternation without a limit over 4 shards: u0..u29 are sent (indices 0..29 spent), then
/// a second copy of an `INDICES` report giving back index 0 reaches the home (a repeat: the
/// shard gave it back once, long spent since), then u30..u98 qualify. One task: 99 users,
/// 33/33/33.
/// Finding 3 (MEDIUM, a count off from a repeated record). `INDICES` reports skip the lease
/// reports' sequence check (`shards::on_shard_report` returns to `on_index_report` before any
/// `admit_lease_report`), and `indices::on_index_report` puts the range into the free pool
/// unchecked against what the shard was granted and has not spent: index 0 is granted and
/// spent twice, 34/33/32.
#[test]
fn a_repeated_indices_report_does_not_grant_an_index_twice() {
    let mut input = vec![define("ping", &alternation(OVER_4), T0)];
    input.extend(profiles(0..99));
    input.push(other_event(0, T0 + 5_000));
    input.extend(candidates("ping", 0..30, T0 + 10_000));
    input.push(other_event(0, T0 + MINUTE));
    input.push(indices_report(1, 0, 1, T0 + 2 * MINUTE));
    input.extend(candidates("ping", 30..99, T0 + 3 * MINUTE));
    input.push(other_event(0, T0 + 10 * MINUTE));
    let out = run(NO_CAPS, input, T0 + 30 * MINUTE);
    assert_eq!(out.users("ping"), numbers(0, 99));
    assert_eq!(per_variant(&out), counted(&[("A", 33), ("B", 33), ("C", 33)]));
}

/// The same alternation over 4 shards: u0..u29 sent (indices 0..29 spent), then a second copy
/// of the home's `INDICES` plan granting index 0 reaches u30's shard (a repeat: plans carry no
/// sequence), then u30..u98 qualify. One task: 99 users, 33/33/33.
/// Finding 6 (MEDIUM, a count off from a repeated record): `indices::on_index_plan` adds the
/// range to what the shard holds unchecked, so index 0 is spent twice (34/33/32).
#[test]
fn a_repeated_indices_plan_does_not_spend_an_index_twice() {
    let mut input = vec![define("ping", &alternation(OVER_4), T0)];
    input.extend(profiles(0..99));
    input.push(other_event(0, T0 + 5_000));
    input.extend(candidates("ping", 0..30, T0 + 10_000));
    input.push(other_event(0, T0 + MINUTE));
    input.push(indices_plan(shards::of_user(&user(30), 4), 0, 0, 1, T0 + 2 * MINUTE));
    input.extend(candidates("ping", 30..99, T0 + 3 * MINUTE));
    input.push(other_event(0, T0 + 10 * MINUTE));
    let out = run(NO_CAPS, input, T0 + 30 * MINUTE);
    assert_eq!(out.users("ping"), numbers(0, 99));
    assert_eq!(per_variant(&out), counted(&[("A", 33), ("B", 33), ("C", 33)]));
}

/// A triggered A/B test of 30 users over 4 shards: the same repeated `INDICES` report of index
/// 0 before anyone qualifies, then 60 users qualify. One task: 30 tested, 10/10/10, the other
/// 30 waiting for the winner.
/// Finding 3 again, on the test: `indices_left` counts the repeated index, so 31 users are
/// tested (11/10/10).
#[test]
fn a_repeated_indices_report_does_not_test_a_user_more() {
    let repeat = indices_report(1, 0, 1, T0 + 10_000);
    let out = reports_then_candidates(&ab_test(30, OVER_4), 60, vec![repeat]);
    out.users("ping"); // none twice
    assert_eq!(per_variant(&out), counted(&[("A", 10), ("B", 10), ("C", 10)]));
}

/// A forged `INDICES` report of a triggered A/B test of 30 users over 4 shards giving back
/// `0 .. i64::MAX` before anyone qualifies, then 60 users qualify: the test should stay 30
/// users (10/10/10), the report refused (a dead letter).
/// Finding 4 (LOW, forged input only). The range goes into the free pool as is
/// (`on_index_report` checks neither the range nor the shard's grants): every user who
/// qualifies is a test user, 60 tested (20/20/20); by `complete_sharded_test` (the free pool
/// must be empty) the test can then never complete.
#[test]
fn a_forged_indices_report_of_a_huge_range_does_not_widen_the_test() {
    let forged = indices_report(1, 0, i64::MAX, T0 + 10_000);
    let out = reports_then_candidates(&ab_test(30, OVER_4), 60, vec![forged]);
    out.users("ping");
    assert_eq!(per_variant(&out), counted(&[("A", 10), ("B", 10), ("C", 10)]));
    assert!(
        out.dead.len() == 1 && out.dead[0].contains("not granted to the shard"),
        "the forged report is a dead letter saying why: {:?}",
        out.dead
    );
}

/// Two forged `INDICES` reports whose ranges add up to nearly 2^64 indices (`0 .. 2^63 - 2`
/// and `2^63 - 1 .. 2^64 - 2`) for a triggered A/B test of 30 users over 4 shards: the engine
/// should refuse them and test 30 users (10/10/10), not stop on an overflow.
/// Finding 5 (LOW, forged input only). `CampaignStage::indices_left` sums the free ranges and
/// the audience left without a bound: "attempt to add with overflow" (indices.rs, a panic in
/// the campaign stage on the home's next lease report; a release build wraps the sum instead).
#[test]
fn forged_indices_reports_adding_up_past_u64_do_not_stop_the_engine() {
    let forged = vec![
        indices_report(1, 0, i64::MAX - 1, T0 + 10_000),
        indices_report(2, i64::MAX, i64::MAX, T0 + 11_000),
    ];
    let out = reports_then_candidates(&ab_test(30, OVER_4), 60, forged);
    out.users("ping");
    assert_eq!(per_variant(&out), counted(&[("A", 10), ("B", 10), ("C", 10)]));
    assert!(
        out.dead.len() == 2 && out.dead.iter().all(|d| d.contains("not granted to the shard")),
        "both forged reports are dead letters saying why: {:?}",
        out.dead
    );
}

/// Finding 2 without refusals (no `news`): the A/B test of 60 over 4 shards, u0..u79's
/// candidates in flight at the shards (60 test indices granted there), put on its home alone a
/// minute later, u80..u119 qualifying at the home. One task: 60 tested, 20/20/20. Got: 100
/// tested (34/33/33), everyone: the home alone counts its test from zero, not counting the 60
/// its shards tested.
#[test]
fn a_triggered_test_moved_home_after_its_shards_tested_does_not_test_again() {
    let mut input = vec![define("ping", &ab_test(60, OVER_4), T0)];
    input.extend(profiles(0..120));
    input.push(other_event(0, T0 + 3 * MINUTE));
    input.extend(candidates("ping", 0..80, T0 + 4 * MINUTE));
    input.push(define("ping", &ab_test(60, ""), T0 + 5 * MINUTE));
    input.extend(candidates_at_home("ping", 80..120, T0 + 6 * MINUTE));
    input.push(other_event(1, T0 + 60 * MINUTE));
    let out = run(THROTTLED_CAPS, input, T0 + 90 * MINUTE);
    out.users("ping"); // none twice
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]));
}

/// Finding 1 under edits: the A/B test of 60 over 4 shards, u0..u19's sends refused in flight,
/// narrowed to 2 shards (`narrow`) or paused and resumed a minute after the candidates came,
/// u80..u119 qualifying after. One task: 60 tested, 20/20/20. Got: 40 (13/13/14) both ways.
/// Fixed (brief s28/RETIRE; narrowed 56 (18/19/19) before it, paused already 20/20/20): shards
/// 2 and 3's `INDICES` reports of the refused indices were dead letters (`shard 3 of 2 shards`).
#[test]
fn a_triggered_test_narrowed_or_paused_while_indices_are_in_flight_tests_its_audience() {
    let two = define("ping", &ab_test(60, "options: { shards: 2 }\n"), T0 + 5 * MINUTE);
    let later = candidates_over(80..120, T0 + 6 * MINUTE, 2).collect();
    let out = in_flight_then(&ab_test(60, OVER_4), vec![two], later);
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]), "narrowed");
    let yaml = ab_test(60, OVER_4);
    let edits = vec![
        command("ping", &yaml, CampaignCommand::Pause, T0 + 5 * MINUTE),
        command("ping", &yaml, CampaignCommand::Resume, T0 + 6 * MINUTE),
    ];
    let later = candidates("ping", 80..120, T0 + 7 * MINUTE).collect();
    let out = in_flight_then(&yaml, edits, later);
    assert_eq!(per_variant(&out), counted(&[("A", 20), ("B", 20), ("C", 20)]), "paused");
}

// ---------------------------------------------------------------------------------------------
// Scheduled alternation and split with `timezone: user` over shards (backtest driver).

/// Sound (guard): a user-local alternation of 3 and a split 70/30 over 8 shards, 40 users per
/// timezone, with edits before the UTC users' 09:00: b0..b9 opt out, c0..c4 move to UTC (sent
/// at 09:00Z instead of 19:00Z) and a5..a9 (already sent at the release) move to UTC−10. The
/// same 110 users once each, and the same variant counts as one task (37/37/36; 77/33), the
/// stats equal to the commands, `RUN_STARTED` and `RUN_FINISHED` once.
#[test]
fn a_user_local_alternation_or_split_with_users_leaving_and_moving_zones_keeps_one_tasks_counts() {
    let alt = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n    - { id: C, title: t, body: c }";
    let split = "\n  variants:\n    - { id: A, title: t, body: a }\n    - { id: B, title: t, body: b }\n  split: [70, 30]";
    for what in [alt, split] {
        let mut lines = three_timezones(40);
        // b0..b9 opt out and c0..c4 move to UTC (sent at 09:00Z instead of 19:00Z), before 09:00Z
        let mut extra = Vec::new();
        for i in 0..10 {
            extra.push(format!(r#"{{"type":"profile","user":"b{i}","ts":"2026-11-20T05:00:00Z","set":{{"push_opt_out":true}}}}"#));
        }
        for i in 0..5 {
            extra.push(format!(r#"{{"type":"profile","user":"c{i}","ts":"2026-11-20T05:00:00Z","set":{{"timezone":"UTC"}}}}"#));
        }
        for i in 5..10 {
            extra.push(format!(r#"{{"type":"profile","user":"a{i}","ts":"2026-11-20T05:00:00Z","set":{{"timezone":"Pacific/Honolulu"}}}}"#));
        }
        let pos = lines.iter().position(|l| l.contains("2026-11-20T05:00:00")).unwrap();
        for (k, e) in extra.into_iter().enumerate() {
            lines.insert(pos + k, e);
        }
        let one = Outcome::replay(&user_local("t", what, ""), &lines);
        let sharded = Outcome::replay(&user_local("t", what, ", shards: 8"), &lines);
        let users = |o: &Outcome| o.variants().into_keys().collect::<BTreeSet<String>>();
        assert_eq!(users(&one).len(), 110, "one task: every user but b0..b9, once");
        assert_eq!(users(&sharded), users(&one), "the same users");
        assert_eq!(sharded.counts(), one.counts(), "one task's counts");
        assert_eq!(sharded.stats_sent("t"), sharded.counts(), "the stats count the commands");
        assert_eq!(sharded.kinds(), ["RUN_STARTED", "RUN_FINISHED"]);
    }
}

/// A triggered A/B test of 30 over 4 shards (the winner an hour after the test), 60 users
/// qualifying at once (30 tested, 30 waiting at their shards for the winner), then `edit` five
/// minutes later; the clock runs six hours. Who was sent, once each.
fn waiting_for_the_winner_then(edit: Option<&str>) -> Out {
    let yaml = ab_test(30, OVER_4).replace("12h", "1h");
    let mut input = vec![define("ping", &yaml, T0)];
    input.extend(profiles(0..60));
    input.push(other_event(0, T0 + 5_000));
    input.extend(candidates("ping", 0..60, T0 + 20_000));
    input.extend(edit.map(|edited| define("ping", &edited.replace("12h", "1h"), T0 + 5 * MINUTE)));
    for hour in 1..6 {
        input.push(other_event(1, T0 + hour * 60 * MINUTE));
    }
    run(NO_CAPS, input, T0 + 6 * 60 * MINUTE)
}

/// Sound (guard): the test of 30 over 4 shards, nothing edited, or widened to 8 shards while
/// 30 users wait for the winner: every one of the 60 users is sent once (10/10/10 tested, the
/// winner to the other 30), as on one task.
#[test]
fn users_waiting_for_a_triggered_tests_winner_get_it_after_a_widening() {
    for edit in [None, Some(ab_test(30, "options: { shards: 8 }\n"))] {
        let out = waiting_for_the_winner_then(edit.as_deref());
        assert_eq!(out.users("ping"), numbers(0, 60), "{edit:?}");
        let counts = per_variant(&out);
        assert_eq!(counts.values().sum::<usize>(), 60);
        assert!(counts.values().all(|&n| n >= 10), "10 tested each: {counts:?}");
    }
}

/// Finding 7 (HIGH, notifications lost). The same test narrowed to 2 shards, or put on its
/// home alone, while 30 users wait at their shards for the winner: without the edit (as on one
/// task) every one of the 60 users is sent once (the winner to the 30 after the test). Got: narrowed, 43 users (the
/// `WINNER` plans to shards 2 and 3 are dead letters, "neither its home nor one of its
/// shards", so their waiting users never get it); moved home, 30 users (the winner goes to no
/// shard: none of the 30 waiting is ever sent).
/// Fixed (brief s28/RETIRE): the edit's recount asks the shards beyond `options.shards` too
/// (those that reported), which give back what they hold and send their waiting users home,
/// whence they go to their shard of 2 or wait at the home for the winner.
#[test]
fn users_waiting_for_a_triggered_tests_winner_get_it_after_a_narrowing_or_a_move_home() {
    let home = ab_test(30, "");
    let one = waiting_for_the_winner_then(None);
    assert_eq!(one.users("ping"), numbers(0, 60));
    let narrowed = waiting_for_the_winner_then(Some(&ab_test(30, "options: { shards: 2 }\n")));
    assert_eq!(narrowed.users("ping"), numbers(0, 60), "narrowed to 2 shards");
    let moved = waiting_for_the_winner_then(Some(&home));
    assert_eq!(moved.users("ping"), numbers(0, 60), "moved home");
}

/// Sound (guard): the test of 30 over 4 shards while 30 users wait for the winner, paused and
/// resumed a minute later, paused until after the winner was decided, or moved home and
/// spread again a minute later: every one of the 60 users is sent once, 10 tested per variant.
#[test]
fn users_waiting_for_a_triggered_tests_winner_get_it_after_a_pause_or_a_move_home_and_back() {
    let yaml = ab_test(30, OVER_4).replace("12h", "1h");
    let home = yaml.replace("options: { shards: 4 }\n", "");
    let pause = |resume: i64| {
        vec![
            command("ping", &yaml, CampaignCommand::Pause, T0 + 5 * MINUTE),
            command("ping", &yaml, CampaignCommand::Resume, T0 + resume * MINUTE),
        ]
    };
    let home_and_back =
        vec![define("ping", &home, T0 + 5 * MINUTE), define("ping", &yaml, T0 + 6 * MINUTE)];
    for (case, edits) in [("pause", pause(6)), ("long pause", pause(150)), ("home", home_and_back)]
    {
        let mut input = vec![define("ping", &yaml, T0)];
        input.extend(profiles(0..60));
        input.push(other_event(0, T0 + 5_000));
        input.extend(candidates("ping", 0..60, T0 + 20_000));
        input.extend(edits);
        for hour in 1..6 {
            input.push(other_event(1, T0 + hour * 60 * MINUTE));
        }
        let out = run(NO_CAPS, input, T0 + 6 * 60 * MINUTE);
        assert_eq!(out.users("ping"), numbers(0, 60), "{case}");
        let counts = per_variant(&out);
        assert!(counts.values().all(|&n| n >= 10), "{case}: 10 tested each: {counts:?}");
    }
}

/// Sound (guard): the alternation without a limit over 4 shards, u0..u49 sent, narrowed to 2
/// shards or put on its home alone, then u50..u98 qualify: u0..u98 once, 33/33/33 as one task.
#[test]
fn an_alternation_narrowed_or_moved_home_between_bursts_keeps_one_tasks_counts() {
    for next in ["options: { shards: 2 }\n", ""] {
        let mut input = vec![define("ping", &alternation(OVER_4), T0)];
        input.extend(profiles(0..99));
        input.push(other_event(0, T0 + 5_000));
        input.extend(candidates("ping", 0..50, T0 + 10_000));
        input.push(define("ping", &alternation(next), T0 + MINUTE));
        match next.is_empty() {
            true => input.extend(candidates_at_home("ping", 50..99, T0 + 2 * MINUTE)),
            false => input.extend(candidates_over(50..99, T0 + 2 * MINUTE, 2)),
        }
        input.push(other_event(0, T0 + 10 * MINUTE));
        let out = run(NO_CAPS, input, T0 + 30 * MINUTE);
        assert_eq!(out.users("ping"), numbers(0, 99), "{next:?}");
        assert_eq!(per_variant(&out), counted(&[("A", 33), ("B", 33), ("C", 33)]), "{next:?}");
        assert!(out.dead.is_empty(), "{:?}", out.dead);
    }
}
