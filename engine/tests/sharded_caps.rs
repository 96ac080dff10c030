//! Limits of a campaign spread over shards (issue 13, brief s26/CAPS; see "Places in flight and
//! the waiting queue" in `docs/architecture.md`), on the replay driver over 4 partitions: a
//! campaign with limits on an app with frequency caps holds each place in flight until the send
//! gate confirms it or refuses it (the place then goes back to the shard's next user, or home),
//! so its limits stay exact with every shard sending.

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::BTreeSet;

use herald_engine::{
    campaign::shards,
    model::{Candidate, SchemaRegistry, SendCommand},
};
use sharded::*;

/// A total of 50 over 4 shards on an app with a cap of one push a day: 80 users qualify, of
/// whom u0..u19 were sent `news` today, so the gate refuses them (their candidates come first).
/// Each refused place goes back to its shard's lease and the next user takes it: exactly 50
/// users, all among u20..u79, every shard sending, `LIMIT_REACHED` and `COMPLETED` at 50 once.
#[test]
fn a_total_of_50_over_4_shards_on_an_app_with_caps_sends_exactly_50_users_the_gate_lets_through() {
    let yaml = ping("limits: { total: 50 }\n");
    assert_eq!(spread(&yaml), 4, "spread over its 4 shards");
    let mut input = vec![define("news", NEWS, T0), define("ping", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Pong", 0..20, T0 + 5_000));
    input.extend(candidates("ping", 0..80, T0 + 20_000));
    input.extend(events("Other", 0..1, T0 + 10 * MINUTE));
    let out = run(CAPS, input, T0 + 30 * MINUTE);

    assert_eq!(out.users("news"), (0..20).collect(), "news spent u0..u19's cap of the day");
    let sent = out.users("ping");
    assert_eq!(sent.len(), 50, "exactly the total: {sent:?}");
    assert!(sent.iter().all(|u| *u >= 20), "only users the gate let through: {sent:?}");
    let senders = out.senders("ping");
    let shard_keys: BTreeSet<String> = (0..4).map(|s| shards::key("ping", s)).collect();
    assert_eq!(senders, shard_keys, "every shard sends, the home none");
    assert_eq!(out.skipped("ping", "capped_daily"), 20, "u0..u19 refused at the gate");
    let ends: Vec<_> = out
        .kinds("ping")
        .into_iter()
        .filter(|(k, _)| k == "LimitReached" || k == "Completed")
        .collect();
    let fifty = |kind: &str| (kind.to_string(), "50".to_string());
    assert_eq!(ends, [fifty("LimitReached"), fifty("Completed")]);
}

/// A daily limit of 30 over 4 shards (no caps), 100 users qualifying at each of three runs: two
/// the same day (at T0 + 100 s and T0 + 1 h) then one the next day. The home caps each run's
/// reach by what is left of its day (`min(per_run, Σ reachable, total left, day left)`), and
/// the day's account counts the run's sends: 30, then 0, then 30 the next day, each time every
/// shard sending its share in proportion to its buffer, `LIMIT_REACHED` (daily) once a day.
#[test]
fn a_daily_limit_of_30_over_4_shards_sends_30_then_0_the_same_day_then_30_the_next() {
    let runs = [T0 + 100_000, T0 + 3_600_000, MIDNIGHT + 3_600_000];
    let yaml = coupons(&runs, "limits: { daily: 30 }\n");
    assert_eq!(spread(&yaml), 4, "spread over its 4 shards");
    let mut input = vec![define("coupons", &yaml, T0)];
    input.extend(profiles(0..100));
    for run in runs {
        input.extend(events("Other", 0..1, run + 60_000)); // the clock passes the run time
    }
    let out = run(NO_CAPS, input, MIDNIGHT + 2 * 3_600_000);

    let of_run = |run: i64| -> Vec<&SendCommand> {
        let id = herald_engine::model::scheduled_run_id(run);
        out.sends.iter().filter(|s| s.run_id == id).collect()
    };
    let counts: Vec<usize> = runs.iter().map(|run| of_run(*run).len()).collect();
    assert_eq!(counts, [30, 0, 30], "30, then nothing left of the day, then 30 the next day");
    assert_eq!(out.sends.len(), 60, "every send belongs to a run");
    // Each shard sends its share of the 30 in proportion to its buffer (all 100 qualify).
    let buffered: Vec<u64> = (0..4)
        .map(|s| (0..100).filter(|u| shards::of_user(&user(*u), 4) == s).count() as u64)
        .collect();
    let shares = apportion(30, &buffered);
    for run in [runs[0], runs[2]] {
        let sends = of_run(run);
        let users: BTreeSet<&str> = sends.iter().map(|s| s.user_id.as_str()).collect();
        assert_eq!(users.len(), 30, "30 distinct users");
        let per_shard: Vec<u64> = (0..4)
            .map(|s| users.iter().filter(|u| shards::of_user(u, 4) == s).count() as u64)
            .collect();
        assert_eq!(per_shard, shares, "each shard its share of the day's 30");
        let senders: BTreeSet<String> =
            sends.iter().map(|s| s.place_key.clone().unwrap_or_default()).collect();
        assert_eq!(senders.len(), 4, "every shard sends: {senders:?}");
    }
    let daily: Vec<(String, String)> = out
        .events
        .iter()
        .filter(|e| e.campaign_id == "coupons" && format!("{:?}", e.kind) == "LimitReached")
        .map(|e| (e.details["day"].clone(), e.details["sent"].clone()))
        .collect();
    assert_eq!(daily.len(), 2, "once a day: {daily:?}");
    assert!(daily.iter().all(|(_, sent)| sent == "30"), "{daily:?}");
    assert_ne!(daily[0].0, daily[1].0);
}

/// `total` split over `weights` by largest remainder (ties to the first), as the home plans.
fn apportion(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u64 = weights.iter().sum();
    let mut shares: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| {
        ((total * weights[*b]) % sum).cmp(&((total * weights[*a]) % sum)).then(a.cmp(b))
    });
    let mut left = total - shares.iter().sum::<u64>();
    for i in order {
        if left > 0 {
            shares[i] += 1;
            left -= 1;
        }
    }
    shares
}

/// Input: news to u0..u19, then `ping` (as `yaml`) candidates for u0..u79, and `edits` of ping
/// (`(at, yaml)`); the clock then runs an hour.
fn throttled(yaml: &str, edits: &[(i64, String)]) -> Out {
    let mut input = vec![define("news", NEWS, T0), define("ping", yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Pong", 0..20, T0 + 5_000));
    // news leaves the app's outbox at 10 a minute: u0..u19 are sent it within 2 minutes.
    input.extend(events("Other", 0..1, T0 + 3 * MINUTE));
    input.extend(candidates("ping", 0..80, T0 + 4 * MINUTE));
    for (at, yaml) in edits {
        input.push(define("ping", yaml, *at));
    }
    input.extend(events("Other", 1..2, T0 + 60 * MINUTE));
    run(THROTTLED_CAPS, input, T0 + 90 * MINUTE)
}

/// Caps and an app throttle of 10 a minute: each command waits in the app stage's outbox, its
/// place in flight for minutes, while shards ask, are recalled and granted places. The total of
/// 50 over 4 shards still fills exactly with users the gate lets through (u0..u19 were sent
/// `news` first; their `ping` is refused when it leaves the outbox and its place comes back).
#[test]
fn a_total_over_4_shards_with_places_in_flight_for_minutes_fills_exactly() {
    let out = throttled(&ping("limits: { total: 50 }\n"), &[]);

    assert_eq!(out.users("news"), (0..20).collect());
    let sent = out.users("ping");
    assert_eq!(sent.len(), 50, "exactly the total: {sent:?}");
    assert!(sent.iter().all(|u| *u >= 20), "only users the gate let through: {sent:?}");
    assert_eq!(out.senders("ping").len(), 4, "every shard sends");
    let ends: Vec<_> = out
        .kinds("ping")
        .into_iter()
        .filter(|(k, _)| k == "LimitReached" || k == "Completed")
        .collect();
    let fifty = |kind: &str| (kind.to_string(), "50".to_string());
    assert_eq!(ends, [fifty("LimitReached"), fifty("Completed")]);
}

/// The same, the total lowered from 50 to 40 one minute after the candidates came, while
/// places are in flight at every shard: the recount waits for them to settle (a refused one is
/// given back with the answer), and the total ends at exactly 40.
#[test]
fn a_total_lowered_while_places_are_in_flight_at_the_shards_ends_exactly_at_the_new_total() {
    let lowered = (T0 + 5 * MINUTE, ping("limits: { total: 40 }\n"));
    let out = throttled(&ping("limits: { total: 50 }\n"), &[lowered]);

    let sent = out.users("ping");
    assert_eq!(sent.len(), 40, "exactly the new total: {sent:?}");
    assert!(sent.iter().all(|u| *u >= 20), "only users the gate let through: {sent:?}");
    let completed: Vec<_> =
        out.kinds("ping").into_iter().filter(|(k, _)| k == "Completed").collect();
    assert_eq!(completed, [("Completed".to_string(), "40".to_string())]);
}

/// A daily limit of 30 with caps over 4 shards, two days: u0..u19 were sent `news` on day one,
/// so the gate refuses their ping; each day exactly 30 users are sent, day one's among
/// u20..u79 (the caps reset at midnight, so on day two everyone may be sent).
#[test]
fn a_daily_limit_over_4_shards_on_an_app_with_caps_sends_exactly_30_a_day() {
    let yaml = ping("limits: { daily: 30 }\n");
    assert_eq!(spread(&yaml), 4);
    let mut input = vec![define("news", NEWS, T0), define("ping", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Pong", 0..20, T0 + 5_000));
    input.extend(candidates("ping", 0..80, T0 + 20_000));
    let next_day = MIDNIGHT + 3_600_000;
    let again = candidates("ping", 0..80, next_day).map(|mut record| {
        // The next day's occurrences: other run ids (a candidate per user and occurrence).
        let registry = SchemaRegistry::builtin();
        let mut candidate: Candidate = registry.decode(record.value.as_ref().unwrap()).unwrap();
        candidate.run_id = format!("{}-2", candidate.run_id);
        record.value = Some(registry.encode(&candidate).unwrap());
        record
    });
    input.extend(again);
    input.extend(events("Other", 0..1, next_day + 10 * MINUTE));
    let out = run(CAPS, input, next_day + 30 * MINUTE);

    let of_day = |day_one: bool| -> BTreeSet<usize> {
        let sends = out.of("ping").into_iter().filter(|s| (s.created_at_ms < MIDNIGHT) == day_one);
        sends.map(|s| s.user_id[1..].parse().unwrap()).collect()
    };
    let (one, two) = (of_day(true), of_day(false));
    assert_eq!((one.len(), two.len()), (30, 30), "30 a day: {one:?} {two:?}");
    assert!(one.iter().all(|u| *u >= 20), "day one: only users the gate let through: {one:?}");
    assert_eq!(out.senders("ping").len(), 4, "every shard sends");
    let reached: Vec<_> =
        out.kinds("ping").into_iter().filter(|(k, _)| k == "LimitReached").collect();
    assert_eq!(reached.len(), 2, "once a day: {reached:?}");
    assert!(reached.iter().all(|(_, sent)| sent == "30"), "{reached:?}");
}

/// A scheduled run with a total of 50 over 4 shards on an app with caps, its campaign throttled
/// to 10 a minute, so its commands wait in the shards' outboxes (their places in flight) while
/// `news` is sent to u0..u19 (uncapped by a throttle): those of u0..u19 whose ping had not left
/// yet are refused at the gate, and each refused place goes to the shard's next buffered user.
/// Exactly 50 users are sent the run, none of them also sent `news` (one push a day), every
/// shard sending, `RUN_FINISHED` and `COMPLETED` at 50.
#[test]
fn a_scheduled_total_over_4_shards_on_an_app_with_caps_fills_exactly_with_users_the_gate_lets_through(
) {
    let yaml = format!(
        "{}limits: {{ total: 50 }}\noptions: {{ shards: 4, throttle: {{ max: 10, per: 1m }} }}\n",
        coupons(&[T0 + 100_000], "").replace("options: { shards: 4 }\n", "")
    );
    assert_eq!(spread(&yaml), 4, "spread over its 4 shards");
    let mut input = vec![define("news", NEWS, T0), define("coupons", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Other", 79..80, T0 + 110_000)); // the run starts
    input.extend(events("Pong", 0..20, T0 + 130_000)); // news, while the run's sends wait
    input.extend(events("Other", 78..79, T0 + 60 * MINUTE));
    let out = run(CAPS, input, T0 + 90 * MINUTE);

    let news = out.users("news");
    let sent = out.users("coupons");
    assert_eq!(sent.len(), 50, "exactly the total: {sent:?}");
    assert!(sent.is_disjoint(&news), "one push a day: {:?}", sent.intersection(&news));
    let either: BTreeSet<usize> = news.union(&sent).copied().collect();
    assert!((0..20).all(|u| either.contains(&u)), "u0..u19 each get one of the two");
    assert_eq!(out.senders("coupons").len(), 4, "every shard sends");
    let refused = out.skipped("coupons", "capped_daily");
    assert!(refused > 0, "some of the run's places came back from the gate");
    let kinds = out.kinds("coupons");
    let of = |kind: &str| kinds.iter().filter(|(k, _)| k == kind).cloned().collect::<Vec<_>>();
    assert_eq!(of("RunFinished"), [("RunFinished".to_string(), "50".to_string())]);
    assert_eq!(of("Completed"), [("Completed".to_string(), "50".to_string())]);
}

/// The same with a per-run limit (the run's users cut in its random order: the first shards'
/// buffers are all planned, no user of theirs left to take a refused place): a place the gate
/// refuses goes home and on to the next shard with users standing by. Exactly 30 users, and
/// the home counts them once each: `RUN_FINISHED`, `LIMIT_REACHED` and `COMPLETED` at 30.
#[test]
fn a_scheduled_run_cut_in_random_order_passes_refused_places_on_and_counts_them_once() {
    let yaml = format!(
        "{}limits: {{ total: 30, per_run: 30 }}\noptions: {{ shards: 4, throttle: {{ max: 10, per: 1m }} }}\n",
        coupons(&[T0 + 100_000], "").replace("options: { shards: 4 }\n", "")
    );
    let mut input = vec![define("news", NEWS, T0), define("coupons", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Other", 79..80, T0 + 110_000)); // the run starts
    input.extend(events("Pong", 0..40, T0 + 130_000)); // news to u0..u39 not yet sent
    input.extend(events("Other", 78..79, T0 + 60 * MINUTE));
    let out = run(CAPS, input, T0 + 90 * MINUTE);

    let news = out.users("news");
    let sent = out.users("coupons");
    assert_eq!(sent.len(), 30, "exactly the per-run limit: {sent:?}");
    assert!(sent.is_disjoint(&news), "one push a day: {:?}", sent.intersection(&news));
    assert!(out.skipped("coupons", "capped_daily") > 0, "places came back from the gate");
    let thirty = |kind: &str| (kind.to_string(), "30".to_string());
    let ends: Vec<_> =
        out.kinds("coupons").into_iter().filter(|(k, _)| k != "RunStarted").collect();
    // Counted once each at home (38 when a shard's reports counted its places in flight).
    assert_eq!(ends, [thirty("RunFinished"), thirty("LimitReached"), thirty("Completed")]);
}

/// Two runs a minute apart, a total of 20 over 4 shards, on an app with caps whose throttle
/// (10 a minute) keeps the first run's sends in flight when the second run's buffers are
/// complete: a shard reports its buffer home only once its earlier places settled, so the home
/// plans the second run on every send of the first: 20 in all, the second run none.
#[test]
fn a_run_is_planned_once_the_places_of_the_run_before_it_settled() {
    let settings = "apps:\n  shop:\n    caps: { per_day: 5 }\n    throttle: { max: 10, per: 1m }\n";
    let runs = [T0 + 100_000, T0 + 160_000];
    let yaml = coupons(&runs, "limits: { total: 20 }\n");
    assert_eq!(spread(&yaml), 4);
    let mut input = vec![define("coupons", &yaml, T0)];
    input.extend(profiles(0..80));
    input.extend(events("Other", 79..80, runs[0] + 1_000));
    input.extend(events("Other", 78..79, runs[1] + 1_000));
    input.extend(events("Other", 77..78, T0 + 60 * MINUTE));
    let out = run(settings, input, T0 + 90 * MINUTE);

    let of_run = |run: i64| {
        let id = herald_engine::model::scheduled_run_id(run);
        out.sends.iter().filter(|s| s.run_id == id).count()
    };
    assert_eq!((of_run(runs[0]), of_run(runs[1])), (20, 0), "the total, by the first run");
    assert_eq!(out.users("coupons").len(), 20);
    let completed: Vec<_> =
        out.kinds("coupons").into_iter().filter(|(k, _)| k == "Completed").collect();
    assert_eq!(completed, [("Completed".to_string(), "20".to_string())]);
}

/// Review s26 finding 3, in part: a triggered total of 50 over 4 shards (caps, the app
/// throttled so places stay in flight) edited to `shards: 1` a minute after 80 candidates came
/// to the shards (`campaign apply` refuses this while the campaign is live; the replay applies
/// it), then 40 more qualify at the home. The home counts the places its shards still hold or
/// have in flight as taken, so the total is never exceeded (80 sent before); since s27/FX2 the
/// places the gate refuses at the old shards come back home, so it fills exactly
/// (`review_s26.rs`, finding 3), as documented for a change of `options.shards` ("Edits").
#[test]
fn a_campaign_moved_home_while_places_are_in_flight_at_its_shards_never_exceeds_its_total() {
    let yaml = ping("limits: { total: 50 }\n");
    let home = yaml.replace("options: { shards: 4 }\n", "");
    let mut input = vec![define("news", NEWS, T0), define("ping", &yaml, T0)];
    input.extend(profiles(0..120));
    input.extend(events("Pong", 0..20, T0 + 5_000));
    input.extend(events("Other", 0..1, T0 + 3 * MINUTE));
    input.extend(candidates("ping", 0..80, T0 + 4 * MINUTE));
    input.push(define("ping", &home, T0 + 5 * MINUTE));
    input.extend(candidates("ping", 80..120, T0 + 6 * MINUTE).map(|mut record| {
        record.key = Some(b"ping".to_vec()); // keyed home, as for a campaign on its home
        record
    }));
    input.extend(events("Other", 1..2, T0 + 60 * MINUTE));
    let out = run(THROTTLED_CAPS, input, T0 + 90 * MINUTE);

    let sent = out.users("ping");
    assert!(sent.len() <= 50, "never over the total: {} {sent:?}", sent.len());
    assert!(sent.is_disjoint(&out.users("news")), "one push a day");
    assert!(sent.iter().all(|u| *u >= 20), "only users the gate let through: {sent:?}");
}
