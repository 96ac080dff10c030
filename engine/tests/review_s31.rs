//! Review s31 (brief RV7): a hostile look at this session's fixes of review s30 findings 6
//! (2bd8252, fd4580f, ad2e186: a run scanned with two shard counts is gathered at the home) and
//! 1, 2, 3 (6289276, c0658d7, 93f4fbf: a sampled `timezone: user` run's late users keep the
//! routing of its release; a shard no longer in effect takes the place and sends the candidate
//! home marked under the event property key "\u{1f}placed", `stage_campaign::placed`). Each
//! test compares 8 shards with one task on the replay driver under the same records, or checks
//! one task against what it must send, and asserts which users are sent on which day, each once.

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::BTreeSet;

use herald_engine::model::{topics, CampaignCommand, Candidate, Properties, PropertyValue};
use herald_engine::runtime::replay::ReplayRecord;
use sharded::*;

/// The key of a shard's mark on a candidate it sent home (`stage_campaign::placed::MARK`).
const MARK: &str = "\u{1f}placed";

/// `t` defined as `yaml` at 18:00Z on the 19th, `per_zone` users in each of [`ZONES`], then
/// `commands`, replayed without caps (see [`zones_run`]).
fn zones_with(yaml: &str, per_zone: usize, commands: Vec<ReplayRecord>) -> Out {
    zones_run(NO_CAPS, &[("t", yaml)], per_zone, commands)
}

/// One task and 8 shards under the same `records(options)` (options `""` and `", shards: 8"`)
/// from `t_what(what, limits, options)`: what differs (users by day, run and zone; variants;
/// `LIMIT_REACHED` / `RUN_STARTED`; dead letters), for the caller to report.
fn differs(
    name: &str,
    what: &str,
    limits: &str,
    records: &dyn Fn(&str) -> Vec<ReplayRecord>,
) -> Option<String> {
    let one = zones_with(&t_what(what, limits, ""), 40, records(""));
    let sharded = zones_with(&t_what(what, limits, ", shards: 8"), 40, records(", shards: 8"));
    let (want, got) = (per_run_zone(&one), per_run_zone(&sharded));
    let (want_v, got_v) = (variants(&one), variants(&sharded));
    let (want_e, got_e) = (limit_and_run_events(&one), limit_and_run_events(&sharded));
    (want != got || want_v != got_v || want_e != got_e || !sharded.dead.is_empty()).then(|| {
        format!(
            "{name}: {got:?} {got_v:?} {got_e:?} dead {:?}, one task {want:?} {want_v:?} {want_e:?}",
            sharded.dead
        )
    })
}

/// Records of the 8-shard or one-task replay, given its options.
type Records<'a> = &'a dyn Fn(&str) -> Vec<ReplayRecord>;

/// Asserts every case compares equal (all reported at once).
fn assert_all(wrong: Vec<String>) {
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Variants A, B, C in an A/B test of 30 (winner an hour after the test).
fn ab() -> String {
    format!("{ALTERNATE_3}\n  ab: {{ test_audience: 30, evaluate_after: 1h }}")
}

const ONE_MESSAGE: &str = "{ title: t, body: b }";

// ---------------------------------------------------------------------------------------------
// A campaign put on its home (a daily limit added) mid-run, then paused, stopped or edited again
// around the time the run's late users (UTC−10, 19:00Z on the 20th) come to their shards.

/// A daily limit added at 12:00Z on the 20th (the campaign on its home: the UTC−10 users' shards
/// send them home marked), then: paused 18:30Z–19:30Z over their local time; stopped at 18:30Z;
/// the daily limit taken away again at 15:00Z (before they come) or at 19:30Z (after). Per-run
/// 100 of 120, and an A/B test of 30. As one task.
#[test]
fn a_gathered_campaign_paused_stopped_or_edited_again_before_its_late_users() {
    let ab = ab();
    let mut wrong = Vec::new();
    for (what, before, after) in [
        (ONE_MESSAGE, "{ per_run: 100 }", "{ per_run: 100, daily: 50 }"),
        (ONE_MESSAGE, "{ per_run: 100 }", "{ per_run: 100, daily: 200, total: 80 }"),
        (ab.as_str(), "{}", "{ daily: 50 }"),
    ] {
        let define = |limits: &str, options: &str, when: &str| {
            on_t(&t_what(what, limits, options), CampaignCommand::Define, when)
        };
        let command = |options: &str, kind: CampaignCommand, when: &str| {
            on_t(&t_what(what, after, options), kind, when)
        };
        let cases: [(&str, Records); 4] = [
            ("paused over", &|o| {
                vec![
                    define(after, o, "2026-11-20T12:00:00Z"),
                    command(o, CampaignCommand::Pause, "2026-11-20T18:30:00Z"),
                    command(o, CampaignCommand::Resume, "2026-11-20T19:30:00Z"),
                ]
            }),
            ("stopped", &|o| {
                vec![
                    define(after, o, "2026-11-20T12:00:00Z"),
                    command(o, CampaignCommand::Stop, "2026-11-20T18:30:00Z"),
                ]
            }),
            ("edited back before", &|o| {
                vec![
                    define(after, o, "2026-11-20T12:00:00Z"),
                    define(before, o, "2026-11-20T15:00:00Z"),
                ]
            }),
            ("edited back after", &|o| {
                vec![
                    define(after, o, "2026-11-20T12:00:00Z"),
                    define(before, o, "2026-11-20T19:30:00Z"),
                ]
            }),
        ];
        for (name, records) in cases {
            wrong.extend(differs(&format!("{after} {name}"), what, before, records));
        }
    }
    assert_all(wrong);
}

/// `options.shards` lowered to 1 at 12:00Z on the 20th (the campaign on its home, which the
/// admin API refuses while live, a record on the campaigns topic does not) with a daily limit
/// in place from the start: the UTC−10 users' shards of the release send them home marked.
/// Per-run 100 + daily 60, A/B test of 30 + daily 60 / daily 200 + total 90. As one task.
#[test]
fn shards_lowered_to_one_with_a_daily_or_total_limit_sends_late_users_as_one_task() {
    let ab = ab();
    let mut wrong = Vec::new();
    for (what, limits) in [
        (ONE_MESSAGE, "{ per_run: 100, daily: 60 }"),
        (ab.as_str(), "{ daily: 60 }"),
        (ab.as_str(), "{ daily: 200, total: 90 }"),
    ] {
        let records = |options: &str| {
            let options = if options.is_empty() { "" } else { ", shards: 1" };
            vec![on_t(
                &t_what(what, limits, options),
                CampaignCommand::Define,
                "2026-11-20T12:00:00Z",
            )]
        };
        wrong.extend(differs(&format!("{limits} 8 -> 1"), what, limits, &records));
    }
    assert_all(wrong);
}

// ---------------------------------------------------------------------------------------------
// Hostile input: the mark on an app event's properties or on a forged candidate.

/// `ping`, a triggered A/B test of 30 (one task, or over 4 shards): 60 users send `Ping`
/// carrying the mark's key (a variant index, null, a string): the test's audience stays 30,
/// 10/10/10, the same users as without it (a triggered run's candidate never counts as placed).
#[test]
fn an_app_event_carrying_the_mark_is_an_ordinary_trigger() {
    let mut wrong = Vec::new();
    for options in ["", OVER_4] {
        let replay = |mark: Option<PropertyValue>| {
            let mut input = vec![define("ping", &ab_test(30, options), T0)];
            input.extend(profiles(0..60));
            input.extend((0..60).map(|i| {
                let properties: Properties =
                    mark.iter().map(|m| (MARK.to_string(), m.clone())).collect();
                user_event(
                    &user(i),
                    "Ping",
                    format!("ping-{i}"),
                    properties,
                    T0 + 10_000 + i as i64,
                )
            }));
            input.push(other_event(0, T0 + 60 * MINUTE));
            run(NO_CAPS, input, T0 + 90 * MINUTE)
        };
        let plain = replay(None);
        let want = (plain.users("ping"), per_variant(&plain));
        assert_eq!(want.1, counted(&[("A", 10), ("B", 10), ("C", 10)]), "{options}");
        for mark in [PropertyValue::Long(0), PropertyValue::Null, PropertyValue::String("x".into())]
        {
            let out = replay(Some(mark.clone()));
            let got = (out.users("ping"), per_variant(&out));
            if got != want {
                wrong.push(format!("{options:?} {mark:?}: {got:?}, without the mark {want:?}"));
            }
        }
    }
    assert_all(wrong);
}

/// A candidate of `t`'s run at 09:00Z on the 20th for `user` (with a device), keyed to the
/// campaign's home at 10:00Z, its event properties `properties`.
fn forged(user: &str, properties: Properties) -> ReplayRecord {
    let at = ms_of("2026-11-20T10:00:00Z");
    let candidate = Candidate {
        campaign_id: "t".into(),
        app_id: "shop".into(),
        run_id: format!("run-{}", ms_of("2026-11-20T09:00:00Z")),
        user_id: user.into(),
        qualified_at_ms: at,
        trigger_event: None,
        event_properties: properties,
        profile: Default::default(),
        devices: vec![device(user)],
        timezone: Some("UTC".into()),
        language: None,
        source: None,
    };
    keyed(topics::CAMPAIGN_FLOW, "t", &candidate, at)
}

/// A scheduled run at 09:00Z on the 20th (the campaign's time) of a campaign on its home alone
/// (one task, never sharded): per-run 100 of 120, and an A/B test of 30 (winner a day after).
/// A forged candidate of the run for a user outside its audience, keyed home, is refused
/// (`run_limit` / not in the test) without the mark; with the mark (null, or variant 0) the home
/// takes it as a place a shard took and sends it within the daily and total limits alone,
/// beyond the per-run limit and the A/B test's audience.
/// Review s31 finding 2 (LOW: needs write access to the internal campaign-flow topic): 101 of
/// 100 and 31 of 30 with the mark, null or 0; without it 100 and 30. Fixed: the home honours
/// the mark on a run it released itself (`placed::of_shards_run`; a
/// run it no longer holds keeps it).
#[test]
fn a_forged_candidate_with_the_mark_passes_the_runs_limit_at_home() {
    let fixed = |what: &str, limits: &str| t_what(what, limits, "").replace(", timezone: user", "");
    let ab = format!("{ALTERNATE_3}\n  ab: {{ test_audience: 30, evaluate_after: 24h }}");
    let mut wrong = Vec::new();
    for (yaml, want) in [(fixed(ONE_MESSAGE, "{ per_run: 100 }"), 100), (fixed(&ab, "{}"), 30)] {
        for mark in [None, Some(PropertyValue::Null), Some(PropertyValue::Long(0))] {
            let properties: Properties =
                mark.iter().map(|m| (MARK.to_string(), m.clone())).collect();
            let out = zones_with(&yaml, 40, vec![forged("x0", properties)]);
            let users: BTreeSet<&str> = out.of("t").iter().map(|s| s.user_id.as_str()).collect();
            if users.len() != want || users.contains("x0") {
                wrong.push(format!(
                    "want {want}, mark {mark:?}: {} sent, x0 {}",
                    users.len(),
                    users.contains("x0")
                ));
            }
        }
    }
    assert_all(wrong);
}

// ---------------------------------------------------------------------------------------------
// Finding 6's gathered run (the edit read by one partition's tasks before the release, by the
// others after their scan), then paused, stopped or edited again.

/// [`zones_run`] where each of `commands` is read by the tasks of one partition only (`Some(p)`)
/// or by every task (`None`) (`ReplayInput::Staggered`), as review_s30's `zones_staggered`.
fn zones_staggered(yaml: &str, commands: Vec<(Option<i32>, ReplayRecord)>) -> Out {
    zones_staggered_run(NO_CAPS, &[("t", yaml)], 40, commands)
}

/// A run gathered at the home (a daily limit put on or taken off, read by partition 0's or 2's
/// tasks at 18:55Z on the 19th, by the others at 19:05Z), then: paused 08:30Z–09:30Z on the
/// 20th (over the UTC users' local time); paused 18:30Z–19:30Z (over the UTC−10 users'); stopped
/// at 12:00Z; the edit taken back at 12:00Z (read by every task), or read by one partition's
/// tasks at 12:00Z and the others at 12:10Z. Per-run 50 of 120 and an A/B test of 30. The same
/// users on the same days, variants, limit and run events as one task, no dead letter.
#[test]
fn a_gathered_run_then_paused_stopped_or_edited_back_sends_as_one_task() {
    let ab = ab();
    let mut wrong = Vec::new();
    for (what, home, shards) in [
        (ONE_MESSAGE, "{ daily: 200, per_run: 50 }", "{ per_run: 50 }"),
        (ab.as_str(), "{ daily: 200 }", "{}"),
    ] {
        for (before, after) in [(home, shards), (shards, home)] {
            let on = |limits: &str, options: &str, kind: CampaignCommand, when: &str| {
                on_t(&t_what(what, limits, options), kind, when)
            };
            type Later<'a> = &'a dyn Fn(&str, Option<i32>) -> Vec<(Option<i32>, ReplayRecord)>;
            let pause = |from: &'static str, to: &'static str| {
                move |o: &str, _: Option<i32>| {
                    vec![
                        (None, on(after, o, CampaignCommand::Pause, from)),
                        (None, on(after, o, CampaignCommand::Resume, to)),
                    ]
                }
            };
            let morning = pause("2026-11-20T08:30:00Z", "2026-11-20T09:30:00Z");
            let evening = pause("2026-11-20T18:30:00Z", "2026-11-20T19:30:00Z");
            let stop = |o: &str, _: Option<i32>| {
                vec![(None, on(after, o, CampaignCommand::Stop, "2026-11-20T12:00:00Z"))]
            };
            let back = |o: &str, _: Option<i32>| {
                vec![(None, on(before, o, CampaignCommand::Define, "2026-11-20T12:00:00Z"))]
            };
            let back_staggered = |o: &str, early: Option<i32>| {
                let mut records =
                    vec![(None, on(before, o, CampaignCommand::Define, "2026-11-20T12:10:00Z"))];
                if early.is_some() {
                    let first = on(before, o, CampaignCommand::Define, "2026-11-20T12:00:00Z");
                    records.insert(0, (early, first));
                }
                records
            };
            let cases: [(&str, Later); 5] = [
                ("paused 08:30Z", &morning),
                ("paused 18:30Z", &evening),
                ("stopped 12:00Z", &stop),
                ("edited back 12:00Z", &back),
                ("edited back, staggered", &back_staggered),
            ];
            for (name, later) in cases {
                let mut one_input =
                    vec![on(after, "", CampaignCommand::Define, "2026-11-19T19:05:00Z")];
                one_input.extend(later("", None).into_iter().map(|(_, r)| r));
                one_input.sort_by_key(|r| r.timestamp_ms);
                let one = zones_with(&t_what(what, before, ""), 40, one_input);
                let want = (by_day(&one), variants(&one), limit_and_run_events(&one));
                for early in [0, 2] {
                    let o = ", shards: 8";
                    let mut commands = vec![
                        (
                            Some(early),
                            on(after, o, CampaignCommand::Define, "2026-11-19T18:55:00Z"),
                        ),
                        (None, on(after, o, CampaignCommand::Define, "2026-11-19T19:05:00Z")),
                    ];
                    commands.extend(later(o, Some(early)));
                    commands.sort_by_key(|(_, r)| r.timestamp_ms);
                    let out = zones_staggered(&t_what(what, before, o), commands);
                    let got = (by_day(&out), variants(&out), limit_and_run_events(&out));
                    if got != want || !out.dead.is_empty() {
                        let kind = what.lines().last().unwrap_or_default().trim();
                        wrong.push(format!(
                            "{kind} {before} -> {after}, {name}, first by {early}: {:?} {:?} {:?} dead {:?}, one task {:?} {:?} {:?}",
                            per_day_zone(&out), got.1, got.2, out.dead, per_day_zone(&one), want.1, want.2
                        ));
                    }
                }
            }
        }
    }
    assert_all(wrong);
}

// ---------------------------------------------------------------------------------------------
// The app's caps over a place a shard sent home.

/// `t` (caps not ignored) and `news` under one push a day: a daily limit added at 12:00Z on the
/// 20th puts `t` (per-run 100 of 120, `shards: 8`) on its home; `news` spends the cap of c0..c9
/// at 18:00Z, before their local time (19:00Z): the run's places of theirs go to the users
/// standing by, as on one task. Review s31 finding 1: over 8 shards one place fewer was passed
/// on: 92 sent (c 23), one task 93 (c 24: c18 refused `run_limit` over shards), daily 200 or 60.
/// Cause: a shard with no one standing by gives the place home (`PLACE_LEFT`) naming the shards
/// in effect now, on the home alone its own number + 1, so the home gave it up instead of
/// passing it to the next shard of the run's release (fixed: the run's shards, `standby`).
#[test]
fn capped_late_users_of_a_run_sent_home_pass_their_places_on_as_one_task() {
    let capped_t = |what: &str, limits: &str, options: &str| {
        t_what(what, limits, options)
            .replace("ignore_global_caps: true", "ignore_global_caps: false")
    };
    let mut wrong = Vec::new();
    for (what, before, after) in [
        (ONE_MESSAGE, "{ per_run: 100 }", "{ per_run: 100, daily: 200 }"),
        (ONE_MESSAGE, "{ per_run: 100 }", "{ per_run: 100, daily: 60 }"),
    ] {
        let replay = |options: &str| {
            let mut commands = vec![on_t(
                &capped_t(what, after, options),
                CampaignCommand::Define,
                "2026-11-20T12:00:00Z",
            )];
            let at = ms_of("2026-11-20T18:00:00Z");
            commands.extend((0..10).map(|i| {
                user_event(
                    &format!("c{i}"),
                    "Pong",
                    format!("pong-{i}"),
                    Default::default(),
                    at + i,
                )
            }));
            zones_run(
                CAPS,
                &[("t", &capped_t(what, before, options)), ("news", NEWS)],
                40,
                commands,
            )
        };
        let (one, sharded) = (replay(""), replay(", shards: 8"));
        let (want, got) = (per_run_zone(&one), per_run_zone(&sharded));
        let (want_v, got_v) = (variants(&one), variants(&sharded));
        let (want_e, got_e) = (limit_and_run_events(&one), limit_and_run_events(&sharded));
        let news = |out: &Out| out.of("news").len();
        if want != got || want_v != got_v || want_e != got_e || !sharded.dead.is_empty() {
            wrong.push(format!(
                "{after}: {got:?} {got_v:?} {got_e:?} news {} dead {:?}, one task {want:?} {want_v:?} {want_e:?} news {}",
                news(&sharded), sharded.dead, news(&one)
            ));
        }
    }
    assert_all(wrong);
}

// ---------------------------------------------------------------------------------------------
// Noticed on the way, not from the commits under review (the same without any edit).

/// A sampled run with a total limit below its per-run limit over 8 shards, no edit: per-run
/// 100 + total 90. Review s31 finding 3 (pre-existing): 90 were sent as on one task, but other
/// users (a 32, b 32, c 26 against a 35, b 34, c 21: the shards sampled 90 places by rank, one
/// task samples 100 and its total refuses the last to come) and no `LIMIT_REACHED` (total) where
/// one task announces it at 90. Fixed: the home plans the per-run sample and the shards send its
/// users home, where the total refuses the last to come (`stage_campaign::placed`). Totals 50
/// (a 35, b 15) and 20 (a 20, cut at the release) too.
#[test]
fn a_total_below_the_per_run_limit_over_8_shards_is_one_tasks() {
    let none = |_: &str| Vec::new();
    let cases = [
        "{ per_run: 100, total: 90 }",
        "{ per_run: 100, total: 50 }",
        "{ per_run: 100, total: 20 }",
    ];
    assert_all(
        cases.iter().filter_map(|limits| differs(limits, ONE_MESSAGE, limits, &none)).collect(),
    );
}

/// [`a_total_below_the_per_run_limit_over_8_shards_is_one_tasks`] on an app with one push a day
/// (`t`'s caps not ignored), `news` spending the cap of c0..c9 at 18:00Z on the 20th, before
/// their local time: their places go to users standing by, and the total (90, or 60) refuses the
/// last to come, as on one task.
#[test]
fn a_total_below_the_per_run_limit_with_capped_users_over_8_shards_is_one_tasks() {
    let mut wrong = Vec::new();
    for limits in ["{ per_run: 100, total: 90 }", "{ per_run: 100, total: 60 }"] {
        let replay = |options: &str| {
            let yaml = t_what(ONE_MESSAGE, limits, options)
                .replace("ignore_global_caps: true", "ignore_global_caps: false");
            let at = ms_of("2026-11-20T18:00:00Z");
            let pongs = (0..10).map(|i| {
                user_event(
                    &format!("c{i}"),
                    "Pong",
                    format!("pong-{i}"),
                    Default::default(),
                    at + i,
                )
            });
            zones_run(CAPS, &[("t", &yaml), ("news", NEWS)], 40, pongs.collect())
        };
        let (one, sharded) = (replay(""), replay(", shards: 8"));
        let (want, got) = (per_run_zone(&one), per_run_zone(&sharded));
        let (want_e, got_e) = (limit_and_run_events(&one), limit_and_run_events(&sharded));
        if want != got || want_e != got_e || !sharded.dead.is_empty() {
            wrong.push(format!(
                "{limits}: {got:?} {got_e:?} dead {:?}, one task {want:?} {want_e:?}",
                sharded.dead
            ));
        }
    }
    assert_all(wrong);
}

/// An A/B test of 30 (`t`, caps not ignored) under one push a day, `news` spending the cap of
/// c0..c9 at 18:00Z on the 20th, no edit. Review s31 finding 4 (pre-existing): the same users as
/// one task but other variants over 8 shards, A 93, B 9, C 8 against A 92, B 9, C 9 (with a
/// daily limit of 200 added at 12:00Z, the shards sending home: A 94, B 9, C 7).
#[test]
#[ignore = "review s31 finding 4 (pre-existing): A/B test of 30 with c0..c9 capped before their local time: variants A93/B9/C8 over 8 shards, one task A92/B9/C9"]
fn capped_users_of_an_ab_test_over_8_shards_get_the_variants_of_one_task() {
    let capped = |options: &str| {
        t_what(&ab(), "{}", options)
            .replace("ignore_global_caps: true", "ignore_global_caps: false")
    };
    let replay = |options: &str| {
        let at = ms_of("2026-11-20T18:00:00Z");
        let pongs = (0..10).map(|i| {
            user_event(&format!("c{i}"), "Pong", format!("pong-{i}"), Default::default(), at + i)
        });
        zones_run(CAPS, &[("t", &capped(options)), ("news", NEWS)], 40, pongs.collect())
    };
    let (one, sharded) = (replay(""), replay(", shards: 8"));
    assert_eq!(per_run_zone(&sharded), per_run_zone(&one));
    assert_eq!(variants(&sharded), variants(&one));
}

/// A daily `timezone: user` run (09:00 local) with per-run 50 of 120 over 8 shards, a daily
/// limit (200, or 60) added at 12:00Z on the 20th: the 19th's run's UTC−10 users come at 19:00Z
/// on the 20th, when the 20th's run (released on the home alone) has replaced it; their shards
/// of the 19th's release send them home marked. The same (run, user) pairs as one task.
#[test]
fn a_replaced_daily_runs_late_users_sent_home_marked_as_one_task() {
    let daily = |yaml: String| yaml.replace("repeat: weekly, days: [fri]", "repeat: daily");
    let sent = |out: &Out| -> BTreeSet<(String, String)> {
        out.of("t").iter().map(|s| (s.run_id.clone(), s.user_id.clone())).collect()
    };
    let mut wrong = Vec::new();
    for after in ["{ per_run: 50, daily: 200 }", "{ per_run: 50, daily: 60 }"] {
        let replay = |options: &str| {
            let edit = on_t(
                &daily(t_yaml(after, options)),
                CampaignCommand::Define,
                "2026-11-20T12:00:00Z",
            );
            zones_with(&daily(t_yaml("{ per_run: 50 }", options)), 40, vec![edit])
        };
        let (one, sharded) = (replay(""), replay(", shards: 8"));
        let (want_e, got_e) = (limit_and_run_events(&one), limit_and_run_events(&sharded));
        if sent(&sharded) != sent(&one) || want_e != got_e || !sharded.dead.is_empty() {
            wrong.push(format!(
                "{after}: {:?} {got_e:?} dead {:?}, one task {:?} {want_e:?}",
                per_run_zone(&sharded),
                sharded.dead,
                per_run_zone(&one)
            ));
        }
    }
    assert_all(wrong);
}
