//! Shards an edit takes away (brief s28/RETIRE): `options.shards` narrowed, or the campaign put on
//! its home alone, while work is out at the shards it no longer has. `campaign apply` and the
//! admin API refuse such a change of a live campaign, but a record written to the campaigns topic
//! directly must lose nothing: the home asks every shard it knows beyond `options.shards` for a
//! recount, and such a *retiring* shard gives back its places and indices and sends what waits
//! there home (see "Edits" in `docs/architecture.md`). On the replay driver over 4 partitions.

#[path = "replay_support/sharded.rs"]
mod sharded;

use herald_engine::model::CampaignCommand;
use sharded::*;

/// [`ab_test`] with the winner an hour after the test.
fn ab_test_1h(audience: u64, options: &str) -> String {
    ab_test(audience, options).replace("12h", "1h")
}

const OVER_2: &str = "options: { shards: 2 }\n";

/// The test of 30 over 4 shards, 60 users qualifying at once (30 tested, 30 waiting at their
/// shards for the winner); paused five minutes later, narrowed to 2 shards (`narrowed`) or put
/// on its home alone while paused, resumed a minute later; the clock runs six hours. One task:
/// every one of the 60 users once, 10 tested per variant. Before: the users waiting at shards
/// 2 and 3 (narrowed), or at every shard (home), were never sent: a shard beyond
/// `options.shards` was neither asked for a recount nor woken by the resume.
#[test]
fn users_waiting_for_the_winner_get_it_after_a_pause_an_edit_taking_their_shard_and_a_resume() {
    for (case, next) in [("narrowed", OVER_2), ("home", "")] {
        let yaml = ab_test_1h(30, OVER_4);
        let edited = ab_test_1h(30, next);
        let mut input = vec![define("ping", &yaml, T0)];
        input.extend(profiles(0..60));
        input.push(other_event(0, T0 + 5_000));
        input.extend(candidates("ping", 0..60, T0 + 20_000));
        input.push(command("ping", &yaml, CampaignCommand::Pause, T0 + 5 * MINUTE));
        input.push(command("ping", &edited, CampaignCommand::Pause, T0 + 6 * MINUTE));
        input.push(command("ping", &edited, CampaignCommand::Resume, T0 + 7 * MINUTE));
        for hour in 1..6 {
            input.push(other_event(1, T0 + hour * 60 * MINUTE));
        }
        let out = run(NO_CAPS, input, T0 + 6 * 60 * MINUTE);
        assert_eq!(out.users("ping"), numbers(0, 60), "{case}");
        let counts = per_variant(&out);
        assert!(counts.values().all(|&n| n >= 10), "{case}: 10 tested each: {counts:?}");
        assert!(out.dead.is_empty(), "{case}: {:?}", out.dead);
    }
}

/// A triggered total of 50 over 4 shards on an app with caps and a throttle; u0..u19 were sent
/// `news` first, so the gate refuses their `ping`. A minute after u0..u79's candidates came to
/// the shards (places in flight at every shard), an edit narrows the campaign to 2 shards;
/// u80..u119 then qualify at their shards of 2. Exactly 50 users are sent (none twice, none of
/// u0..u19), `COMPLETED` once saying 50, and no record is a dead letter. A guard: it passed on
/// the code before too (a refused place at a shard taken away already went home).
#[test]
fn a_total_narrowed_from_4_to_2_shards_while_places_are_in_flight_fills_exactly() {
    let yaml = ping("limits: { total: 50 }\n");
    let two = yaml.replace(OVER_4, OVER_2);
    let mut input = vec![define("news", NEWS, T0), define("ping", &yaml, T0)];
    input.extend(profiles(0..120));
    input.extend(pong(0..20, T0 + 5_000));
    input.push(other_event(0, T0 + 3 * MINUTE));
    input.extend(candidates("ping", 0..80, T0 + 4 * MINUTE));
    input.push(define("ping", &two, T0 + 5 * MINUTE));
    input.extend(candidates_over(80..120, T0 + 6 * MINUTE, 2));
    input.push(other_event(1, T0 + 60 * MINUTE));
    let out = run(THROTTLED_CAPS, input, T0 + 90 * MINUTE);

    let sent = out.users("ping");
    assert!(sent.is_disjoint(&numbers(0, 20)), "one push a day");
    assert_eq!(sent.len(), 50, "exactly the total: {sent:?}");
    let completed: Vec<_> =
        out.kinds("ping").into_iter().filter(|(k, _)| k == "Completed").collect();
    assert_eq!(completed, [("Completed".to_string(), "50".to_string())]);
    assert!(out.dead.is_empty(), "{:?}", out.dead);
}

/// An alternation without a limit over 4 shards: u0..u59 are sent; paused; u60..u99's candidates
/// reach their shards of 4 while it is paused (held there); narrowed to 2 shards while paused,
/// then resumed. One task: u0..u99 once, 34/33/33. Before: those held at shards 2 and 3 were
/// never sent (no resume wakes a shard beyond `options.shards`).
#[test]
fn candidates_held_by_a_pause_at_a_shard_an_edit_took_away_are_sent_after_the_resume() {
    let yaml = alternation(OVER_4);
    let two = alternation(OVER_2);
    let mut input = vec![define("ping", &yaml, T0)];
    input.extend(profiles(0..100));
    input.push(other_event(0, T0 + 5_000));
    input.extend(candidates("ping", 0..60, T0 + 10_000));
    input.push(command("ping", &yaml, CampaignCommand::Pause, T0 + MINUTE));
    input.extend(candidates("ping", 60..100, T0 + 2 * MINUTE));
    input.push(command("ping", &two, CampaignCommand::Pause, T0 + 3 * MINUTE));
    input.push(command("ping", &two, CampaignCommand::Resume, T0 + 4 * MINUTE));
    input.push(other_event(1, T0 + 10 * MINUTE));
    let out = run(NO_CAPS, input, T0 + 30 * MINUTE);
    assert_eq!(out.users("ping"), numbers(0, 100));
    assert_eq!(per_variant(&out), counted(&[("A", 34), ("B", 33), ("C", 33)]));
    assert!(out.dead.is_empty(), "{:?}", out.dead);
}
