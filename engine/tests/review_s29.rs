//! Review s29 (brief RV4): a fresh look at this session's campaign-stage changes: a scheduled
//! `timezone: user` campaign with a daily limit spread over its shards (be26909, 81ada7c: users
//! who come after the release take leased places of their day) and the numbering of `INDICES`
//! plans and lease reports (d23be71, bf8f223). Each test compares 8 shards with one task on the
//! replay driver and asserts what a user checks: which users are sent on which day, each once,
//! and the `LIMIT_REACHED` events.

#[path = "replay_support/sharded.rs"]
mod sharded;

use std::collections::{BTreeMap, BTreeSet};

use herald_engine::model::{CampaignCommand, ShardReport, ShardReportKind};
use herald_engine::runtime::replay::ReplayRecord;
use sharded::*;

/// `t` defined as `yaml` at 18:00Z on the 19th, `per_zone` users in each of [`ZONES`], then the
/// records `commands`, replayed without caps (see [`zones_run`]).
fn zones_with(yaml: &str, per_zone: usize, commands: Vec<ReplayRecord>) -> Out {
    zones_under(NO_CAPS, yaml, per_zone, commands)
}

/// [`zones_with`] under `settings` (YAML), with `news` defined too.
fn zones_under(settings: &str, yaml: &str, per_zone: usize, commands: Vec<ReplayRecord>) -> Out {
    zones_run(settings, &[("news", NEWS), ("t", yaml)], per_zone, commands)
}

/// `t`'s `LIMIT_REACHED` events as (limit, day, sent).
fn limits_reached(out: &Out) -> Vec<(String, String, String)> {
    let get = |d: &BTreeMap<String, String>, k: &str| d.get(k).cloned().unwrap_or_default();
    out.events
        .iter()
        .filter(|e| e.campaign_id == "t" && format!("{:?}", e.kind) == "LimitReached")
        .map(|e| (get(&e.details, "limit"), get(&e.details, "day"), get(&e.details, "sent")))
        .collect()
}

/// Counts per day as (day, users).
fn totals(counts: &BTreeMap<String, BTreeMap<String, usize>>) -> Vec<(String, usize)> {
    counts.iter().map(|(day, zones)| (day.clone(), zones.values().sum())).collect()
}

/// The day's figures as a vector of (day, users).
fn days(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
    pairs.iter().map(|(day, n)| (day.to_string(), *n)).collect()
}

// ---------------------------------------------------------------------------------------------
// Finding candidates: each compares one task and 8 shards.

/// A daily limit of 1: one user on the 19th (of the 40 at the release), one on the 20th.
#[test]
fn a_user_local_daily_limit_of_1_over_8_shards_sends_one_a_day() {
    let one = zones_with(&t_yaml("{ daily: 1 }", ""), 10, vec![]);
    let sharded = zones_with(&t_yaml("{ daily: 1 }", ", shards: 8"), 10, vec![]);
    let expected = days(&[("2026-11-19", 1), ("2026-11-20", 1)]);
    assert_eq!(totals(&per_day_zone(&one)), expected, "one task");
    assert_eq!(totals(&per_day_zone(&sharded)), expected, "8 shards");
    assert_eq!(limits_reached(&sharded), limits_reached(&one), "LIMIT_REACHED");
}

/// The campaign's own day in UTC+14 (`options.timezone`): the run's users (UTC+14, at 19:00Z
/// on the 19th, the 20th there) and the UTC users (09:00Z on the 20th, 23:00 on the 20th there)
/// share one campaign day, so the leased places of the day come after the run's sends on it;
/// the UTC−10 users (19:00Z on the 20th) are on the 21st there. Daily limit 50, 40 per zone:
/// 40 + 10 on the campaign's 20th, 40 on its 21st.
#[test]
fn a_user_local_daily_limit_whose_day_holds_the_run_and_late_users_over_8_shards() {
    let options = ", timezone: Pacific/Kiritimati";
    let one = zones_with(&t_yaml("{ daily: 50 }", options), 40, vec![]);
    let sharded =
        zones_with(&t_yaml("{ daily: 50 }", &format!("{options}, shards: 8")), 40, vec![]);
    let one_counts = per_day_zone(&one);
    assert_eq!(per_day_zone(&sharded), one_counts, "8 shards as one task");
    assert_eq!(limits_reached(&sharded), limits_reached(&one), "LIMIT_REACHED");
}

/// A pause at 08:00Z on the 20th and a resume at 10:00Z (the UTC users' 09:00 in between):
/// held, then sent on the day's places at the resume, as by one task.
#[test]
fn a_user_local_daily_limit_paused_and_resumed_mid_day_over_8_shards() {
    let edits = |yaml: &str| {
        vec![
            on_t(yaml, CampaignCommand::Pause, "2026-11-20T08:00:00Z"),
            on_t(yaml, CampaignCommand::Resume, "2026-11-20T10:00:00Z"),
        ]
    };
    let (one_yaml, sharded_yaml) =
        (t_yaml("{ daily: 50 }", ""), t_yaml("{ daily: 50 }", ", shards: 8"));
    let one = zones_with(&one_yaml, 40, edits(&one_yaml));
    let sharded = zones_with(&sharded_yaml, 40, edits(&sharded_yaml));
    let expected = days(&[("2026-11-19", 40), ("2026-11-20", 50)]);
    assert_eq!(totals(&per_day_zone(&one)), expected, "one task");
    assert_eq!(per_day_zone(&sharded), per_day_zone(&one), "8 shards as one task");
    assert_eq!(limits_reached(&sharded), limits_reached(&one), "LIMIT_REACHED");
}

/// The daily limit lowered from 50 to 45 at 12:00Z on the 20th (after the 40 UTC users, before
/// the UTC−10 users): the 20th ends with 45 sends, as one task.
#[test]
fn a_user_local_daily_limit_lowered_mid_day_over_8_shards() {
    for (options, what) in [("", "one task"), (", shards: 8", "8 shards")] {
        let edited = t_yaml("{ daily: 45 }", options);
        let out = zones_with(
            &t_yaml("{ daily: 50 }", options),
            40,
            vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
        );
        let expected = days(&[("2026-11-19", 40), ("2026-11-20", 45)]);
        assert_eq!(totals(&per_day_zone(&out)), expected, "{what}");
    }
}

/// The daily limit raised from 50 to 60 at 12:00Z on the 20th: 60 on the 20th.
#[test]
fn a_user_local_daily_limit_raised_mid_day_over_8_shards() {
    for (options, what) in [("", "one task"), (", shards: 8", "8 shards")] {
        let edited = t_yaml("{ daily: 60 }", options);
        let out = zones_with(
            &t_yaml("{ daily: 50 }", options),
            40,
            vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
        );
        let expected = days(&[("2026-11-19", 40), ("2026-11-20", 60)]);
        assert_eq!(totals(&per_day_zone(&out)), expected, "{what}");
    }
}

/// The shard count edited mid-day, fewer shards or its home alone (8 to 4, 8 to 1 at 12:00Z on
/// the 20th, after the UTC users): 50 on the 20th, as one task (the UTC−10 users come to
/// shards that took part in the release, or to the home).
#[test]
fn a_user_local_daily_limit_with_fewer_shards_from_mid_day() {
    for (from, to) in [(", shards: 8", ", shards: 4"), (", shards: 8", "")] {
        let edited = t_yaml("{ daily: 50 }", to);
        let out = zones_with(
            &t_yaml("{ daily: 50 }", from),
            40,
            vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
        );
        let expected = days(&[("2026-11-19", 40), ("2026-11-20", 50)]);
        assert_eq!(totals(&per_day_zone(&out)), expected, "shards {from:?} to {to:?}");
    }
}

/// Review s29 finding 1 (HIGH, loss): a `timezone: user` campaign whose shards grow mid-run (an
/// edit of `options.shards` from 1 or 4 to 8, or a per-run limit taken away so that it spreads,
/// at 12:00Z on the 20th) sends none of the users who come after the edit to a shard that took
/// no part in the run's release: the shard has no state of the run, starts it anew in
/// `Collecting` (`runs::current_run`), buffers the user and waits for a scan and a plan that
/// never come. Neither sent nor counted skipped. One task: 40 on the 19th, then 50 (daily 50),
/// 80 (daily 100) and 80 (no limit) on the 20th; 8 shards: 40 (every UTC−10 user lost), 59 (21
/// of the 40 UTC−10 users, those on shards 4..7, lost) and 40. The root is older than this
/// session (a total, or no limit, loses them the same: spread since s27/s28), be26909 extends
/// it to a daily limit, which kept such a campaign on its home before.
#[test]
fn late_users_of_a_shard_added_mid_run_are_sent_as_by_one_task() {
    let cases = [
        ("{ daily: 50 }", "", ", shards: 8", 50),
        ("{ daily: 100 }", ", shards: 4", ", shards: 8", 80),
        ("{}", "", ", shards: 8", 80),
        ("{ total: 100 }", "", ", shards: 8", 60),
    ];
    let mut wrong = Vec::new();
    for (limits, from, to, on_20th) in cases {
        let edited = t_yaml(limits, to);
        let out = zones_with(
            &t_yaml(limits, from),
            40,
            vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
        );
        let expected = days(&[("2026-11-19", 40), ("2026-11-20", on_20th)]);
        let got = totals(&per_day_zone(&out));
        if got != expected {
            wrong.push(format!(
                "{limits} shards {from:?} -> {to:?}: {got:?}, one task {expected:?}"
            ));
        }
    }
    // A per-run limit taken away mid-day: from its home alone to 8 shards.
    let edited = t_yaml("{ daily: 50 }", ", shards: 8");
    let out = zones_with(
        &t_yaml("{ daily: 50, per_run: 200 }", ", shards: 8"),
        40,
        vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
    );
    let got = totals(&per_day_zone(&out));
    if got != days(&[("2026-11-19", 40), ("2026-11-20", 50)]) {
        wrong.push(format!("per_run taken away: {got:?}, one task 40 then 50"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A per-run limit added mid-day (the campaign goes to its home alone: `late_daily` no longer
/// holds): 50 on the 20th, as one task.
#[test]
fn a_user_local_daily_limit_with_a_per_run_limit_added_mid_day() {
    let edited = t_yaml("{ daily: 50, per_run: 200 }", ", shards: 8");
    let out = zones_with(
        &t_yaml("{ daily: 50 }", ", shards: 8"),
        40,
        vec![on_t(&edited, CampaignCommand::Define, "2026-11-20T12:00:00Z")],
    );
    let expected = days(&[("2026-11-19", 40), ("2026-11-20", 50)]);
    assert_eq!(totals(&per_day_zone(&out)), expected);
}

/// A daily limit of 1 on an app with a cap of one push a day, b0..b19 sending `Pong` (`news`)
/// half a second after their 09:00 on the 20th: sends of `t` the gate refuses give the day's one
/// place back in flight: one user on the 19th, exactly one on the 20th, none also sent `news`,
/// `LIMIT_REACHED` as one task.
#[test]
fn a_user_local_daily_limit_of_1_over_8_shards_on_an_app_with_caps() {
    let yaml = |options: &str| capped("{ daily: 1 }", options);
    let one = zones_under(CAPS, &yaml(""), 40, pongs());
    let sharded = zones_under(CAPS, &yaml(", shards: 8"), 40, pongs());
    for (what, out) in [("one task", &one), ("8 shards", &sharded)] {
        let expected = days(&[("2026-11-19", 1), ("2026-11-20", 1)]);
        assert_eq!(totals(&per_day_zone(out)), expected, "{what}");
        let news: BTreeSet<String> = out.of("news").iter().map(|s| s.user_id.clone()).collect();
        let t: BTreeSet<String> = by_day(out).into_values().flatten().collect();
        assert!(t.is_disjoint(&news), "{what}: one push a day");
    }
    assert_eq!(limits_reached(&sharded), limits_reached(&one), "LIMIT_REACHED");
    // Over shards the day's one place went out once to a user the gate refused, and came back.
    assert!(sharded.skipped("t", "capped_daily") > 0, "a leased place refused at the gate");
}

/// Users in UTC+14 and UTC−12 (`Etc/GMT+12`: their 09:00 on Friday the 20th is 21:00Z, 26
/// hours after the release) besides UTC: daily limit 50, 40 per zone, as one task.
#[test]
fn a_user_local_daily_limit_from_utc_plus_14_to_utc_minus_12_over_8_shards() {
    let lines = |per_zone: usize| {
        let mut lines = three_timezones(per_zone);
        for line in &mut lines {
            *line = line.replace("Pacific/Honolulu", "Etc/GMT+12");
        }
        let late = ms_of("2026-11-20T22:00:00Z");
        lines.extend((1..=12).map(|k| {
            format!(
                r#"{{"type":"event","user":"z{k}","ts":"{}","name":"App Opened","props":{{}}}}"#,
                at(late + k * 600_000)
            )
        }));
        lines
    };
    let what = "{ title: t, body: b }";
    let limited =
        |options: &str| format!("{}limits: {{ daily: 50 }}\n", user_local("t", what, options));
    let one = Outcome::replay(&limited(""), &lines(40));
    let sharded = Outcome::replay(&limited(", shards: 8"), &lines(40));
    let sends = |o: &Outcome| {
        let mut days: BTreeMap<String, usize> = BTreeMap::new();
        for s in o.lines("sends.jsonl") {
            let t = s["send_time"].as_str().unwrap().to_string();
            *days.entry(at(ms_of(&t))[..10].to_string()).or_default() += 1;
        }
        days
    };
    assert_eq!(sends(&one).values().sum::<usize>(), 90, "one task: 40, then 50");
    assert_eq!(sends(&sharded), sends(&one), "8 shards as one task");
    assert_eq!(one.variants().len(), sharded.variants().len());
}

/// Do-not-disturb hours with `action: delay` (08:00 to 10:00, and to 14:30 local, which moves
/// the UTC+14 users of the release past the campaign's midnight onto the 20th, where the UTC
/// users then take its last 10 places), with a daily limit of 50, alone and with a total of 70:
/// each day's users per zone and `LIMIT_REACHED` as one task.
#[test]
fn a_user_local_daily_limit_with_do_not_disturb_hours_over_8_shards() {
    for end in ["10:00", "14:30"] {
        let dnd = format!(", dnd: {{ start: \"08:00\", end: \"{end}\", action: delay }}");
        for limits in ["{ daily: 50 }", "{ daily: 50, total: 70 }"] {
            let one = zones_with(&t_yaml(limits, &dnd), 40, vec![]);
            let sharded = zones_with(&t_yaml(limits, &format!("{dnd}, shards: 8")), 40, vec![]);
            let what = format!("until {end}, {limits}");
            assert_eq!(per_day_zone(&sharded), per_day_zone(&one), "{what}");
            assert_eq!(limits_reached(&sharded), limits_reached(&one), "{what}");
            if end == "14:30" {
                let expected = days(&[("2026-11-20", 50)]);
                assert_eq!(totals(&per_day_zone(&one)), expected, "{what}: one task");
            }
        }
    }
}

/// Review s29 finding 2 (MEDIUM, hostile input miscounts a day; fixed): one forged `RUN_SENT` on the
/// campaign flow, from shard 0 of 8 for the week's run (`run-1795114800000`, the 20th's 09:00 in
/// UTC+14) saying it sent 1,000,000, at 12:00Z on the 20th. Since be26909 the home adds a
/// `RUN_SENT` increase to its day's account (`count_planned_sends`) with no bound (the shard's
/// places of the run's plan, at most), so the 20th is full: none of the UTC−10 users is sent
/// (40 on the 20th instead of 50), no dead letter, and `LIMIT_REACHED` says 1000034 (the
/// forged million and the UTC users' leased sends the home had heard of). Elsewhere a
/// `RUN_SENT` feeds only `RUN_FINISHED`'s `sent` (and before be26909 this campaign ran on its
/// home alone); a forged lifetime `sent` already fills a scheduled campaign's day without
/// leases, and the total (older than this session). Fixed: the home counts a shard's
/// `RUN_SENT` of such a run at most up to the places it gave it (`HomeRun.given`: its plan's
/// and those passed to it), so a forgery adds at most the shard's unsent places of the run.
#[test]
fn a_forged_run_sent_does_not_fill_the_day() {
    let yaml = t_yaml("{ daily: 50 }", ", shards: 8");
    let at12 = ms_of("2026-11-20T12:00:00Z");
    let report = ShardReport {
        run_id: Some("run-1795114800000".into()),
        run_sent: 1_000_000,
        shards: 8,
        ..shard_report("t", ShardReportKind::RunSent, 0, at12)
    };
    let out = zones_with(&yaml, 40, vec![to_home(&report)]);
    let expected = days(&[("2026-11-19", 40), ("2026-11-20", 50)]);
    assert_eq!(totals(&per_day_zone(&out)), expected, "as without the forged report");
    let reached = [("daily".to_string(), "2026-11-20".to_string(), "50".to_string())];
    assert_eq!(limits_reached(&out), reached);
}

/// b0..b19 send `Pong` (`news`) half a second after their 09:00 on the 20th, so that the app's
/// cap of one push a day refuses some of their pushes of `t` at the send gate.
fn pongs() -> Vec<ReplayRecord> {
    let at = ms_of("2026-11-20T09:00:00.500Z");
    let pong = |i: i64| {
        let user = format!("b{i}");
        user_event(&user, "Pong", format!("pong-{user}"), Default::default(), at + i)
    };
    (0..20).map(pong).collect()
}

/// `t` with `limits` and `options`, the app's caps applying to it.
fn capped(limits: &str, options: &str) -> String {
    t_yaml(limits, options).replace("ignore_global_caps: true", "ignore_global_caps: false")
}

/// The daily limit lowered from 50 to 45 at 09:00:01Z on the 20th, while the UTC users' places
/// are in flight at the send gate of an app with caps (b0..b19's `news` first): 45 on the 20th,
/// none also sent `news`, `LIMIT_REACHED` once with 45, as one task.
#[test]
fn a_user_local_daily_limit_lowered_while_places_are_in_flight_over_8_shards() {
    for options in ["", ", shards: 8"] {
        let mut input = pongs();
        let edit = capped("{ daily: 45 }", options);
        input.push(on_t(&edit, CampaignCommand::Define, "2026-11-20T09:00:01Z"));
        let out = zones_under(CAPS, &capped("{ daily: 50 }", options), 40, input);
        let expected = days(&[("2026-11-19", 40), ("2026-11-20", 45)]);
        assert_eq!(totals(&per_day_zone(&out)), expected, "{options:?}");
        let news: BTreeSet<String> = out.of("news").iter().map(|s| s.user_id.clone()).collect();
        let t: BTreeSet<String> = by_day(&out).into_values().flatten().collect();
        assert!(t.is_disjoint(&news), "{options:?}: one push a day");
        let reached = [("daily".to_string(), "2026-11-20".to_string(), "45".to_string())];
        assert_eq!(limits_reached(&out), reached, "{options:?}");
    }
}

/// a0..a9, sent at the release (UTC+14), move to UTC an hour later, before their new 09:00 of
/// the same run: each user is sent once, 40 then 50 (the 40 UTC users, 10 of UTC−10), as one
/// task.
#[test]
fn a_user_local_daily_limit_with_users_moving_timezone_after_the_release_over_8_shards() {
    let moved = ms_of("2026-11-19T20:00:00Z");
    let moves = || (0..10).map(|i| zoned_profile(&format!("a{i}"), "UTC", moved + i)).collect();
    let one = zones_with(&t_yaml("{ daily: 50 }", ""), 40, moves());
    let sharded = zones_with(&t_yaml("{ daily: 50 }", ", shards: 8"), 40, moves());
    let expected = days(&[("2026-11-19", 40), ("2026-11-20", 50)]);
    assert_eq!(totals(&per_day_zone(&one)), expected, "one task");
    assert_eq!(per_day_zone(&sharded), per_day_zone(&one), "8 shards as one task");
    assert_eq!(limits_reached(&sharded), limits_reached(&one));
}

/// A daily run (09:00 in each user's timezone) with a daily limit of 50 paused and resumed: over
/// the release of the 20th's run (18:30Z to 19:30Z on the 19th), over the 21st's (on the 20th),
/// and from 08:30Z to 19:30Z on the 20th (the UTC users held, released with the UTC−10 users):
/// each day's users per zone, `LIMIT_REACHED` and the lifecycle events as one task.
#[test]
fn a_daily_user_local_run_paused_over_a_release_over_8_shards() {
    let daily = |options: &str| {
        let yaml = t_yaml("{ daily: 50 }", options);
        yaml.replace("repeat: weekly, days: [fri]", "repeat: daily")
    };
    let windows = [
        ("2026-11-19T18:30:00Z", "2026-11-19T19:30:00Z"),
        ("2026-11-20T18:30:00Z", "2026-11-20T19:30:00Z"),
        ("2026-11-20T08:30:00Z", "2026-11-20T19:30:00Z"),
    ];
    for (pause, resume) in windows {
        let replay = |options: &str| {
            let yaml = daily(options);
            let commands = vec![
                on_t(&yaml, CampaignCommand::Pause, pause),
                on_t(&yaml, CampaignCommand::Resume, resume),
            ];
            zones_with(&yaml, 40, commands)
        };
        let (one, sharded) = (replay(""), replay(", shards: 8"));
        let days: usize = totals(&per_day_zone(&one)).iter().map(|(_, n)| n).sum();
        assert_eq!(days, 90, "one task: 40, then 50");
        assert_eq!(per_day_zone(&sharded), per_day_zone(&one), "paused at {pause}");
        assert_eq!(limits_reached(&sharded), limits_reached(&one), "paused at {pause}");
        assert_eq!(sharded.kinds("t"), one.kinds("t"), "paused at {pause}");
    }
}

/// The campaign's day in a timezone where the release (19:00Z on the 19th) falls at its midnight
/// (Asia/Tashkent, UTC+5: the UTC+14 users and the first 10 UTC users on its 20th, the UTC−10
/// users at its next midnight, on its 21st) or just before (Asia/Kathmandu 23:45, Asia/Kabul
/// 23:30: the run on the 19th there): each UTC day's users per zone and `LIMIT_REACHED` as one
/// task.
#[test]
fn a_user_local_daily_limit_released_at_the_campaigns_midnight_over_8_shards() {
    for tz in ["Asia/Tashkent", "Asia/Kathmandu", "Asia/Kabul"] {
        let options = format!(", timezone: {tz}");
        let one = zones_with(&t_yaml("{ daily: 50 }", &options), 40, vec![]);
        let sharded_yaml = t_yaml("{ daily: 50 }", &format!("{options}, shards: 8"));
        let sharded = zones_with(&sharded_yaml, 40, vec![]);
        let sent: usize = totals(&per_day_zone(&one)).iter().map(|(_, n)| n).sum();
        assert_eq!(sent, 90, "{tz}: one task");
        assert_eq!(per_day_zone(&sharded), per_day_zone(&one), "{tz}");
        assert_eq!(limits_reached(&sharded), limits_reached(&one), "{tz}");
    }
}

/// Review s29 finding 1, a run that samples its users (a per-run limit of 100 of the 120): at
/// the release it holds places for the users still to come, each on the shard of the release
/// that buffered them. Shards raised mid-run (1 → 8, 4 → 8 at 12:00Z on the 20th): the UTC−10
/// users who come after the edit find their places there, and the same users are sent on the
/// same days as by one task under the same edit.
#[test]
fn late_users_of_a_sampled_run_keep_their_places_when_shards_grow_mid_run() {
    let yaml = |options: &str| t_yaml("{ per_run: 100 }", options);
    let edit =
        |options: &str| vec![on_t(&yaml(options), CampaignCommand::Define, "2026-11-20T12:00:00Z")];
    let one = by_day(&zones_with(&yaml(""), 40, edit("")));
    let sent: usize = one.values().map(BTreeSet::len).sum();
    assert_eq!(sent, 100, "one task sends the per-run limit");
    for from in ["", ", shards: 4"] {
        let out = zones_with(&yaml(from), 40, edit(", shards: 8"));
        assert_eq!(by_day(&out), one, "shards {from:?} -> 8");
    }
}
