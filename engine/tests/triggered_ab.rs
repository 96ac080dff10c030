//! A triggered A/B test (issue 14 item 3) on the replay driver over 4 user-stage partitions:
//! who is tested does not depend on when a partition's users arrive. Each partition takes its
//! equal share of the test population (a partition whose events come late within the share
//! wait is tested as much as the others), the population is exact, users beyond their
//! partition's share wait for the winner, and a re-run tests the same users with the same
//! variants. A partition that never fills its share does not hold the test: after the share
//! wait its places go to the waiting users in rank order. The partition count is what the
//! candidates declare, a re-partitioned user stage divides the unused places again, and a
//! candidate naming no partition has no share.

/// A profile with one device (`replay_support/profiles.rs`, shared by the tests).
#[path = "replay_support/profiles.rs"]
mod profiles;

mod replay_support;

use std::collections::BTreeMap;

use herald_engine::runtime::partition_for;
use serde_json::Value;

const USERS: usize = 4_000;
const PARTITIONS: i32 = 4;
const LATE: i32 = 3;

/// The test, with `ab` options after its population and wait.
fn campaign(ab: &str) -> String {
    format!("id: tab\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat:\n  variants:\n    - {{ id: A, title: a, body: a }}\n    - {{ id: B, title: b, body: b }}\n  ab: {{ test_audience: 400, evaluate_after: 1h{ab} }}\n")
}

/// Partition 3's users come about 50 minutes after the others: within this share wait.
const LONG_WAIT: &str = ", share_wait: 2h";

fn second(s: i64) -> i64 {
    1_795_000_000 + s
}

fn line(kind: &str, user: &str, at: i64, rest: &str) -> String {
    let ts = chrono::DateTime::from_timestamp(second(at), 0).unwrap().to_rfc3339();
    format!(r#"{{"type":"{kind}","user":"{user}","ts":"{ts}",{rest}}}"#)
}

fn user(i: usize) -> String {
    format!("u{i}")
}

fn partition(user: &str) -> i32 {
    partition_for(user.as_bytes(), PARTITIONS)
}

/// How the users of partition [`LATE`] ping.
#[derive(Clone, Copy, PartialEq)]
enum Lagging {
    /// In user order with the others.
    No,
    /// After everyone else (their partition lags behind).
    Late,
    /// Never (their partition has no traffic).
    Never,
}

/// Every user pings once, at 1 s intervals in user order but for partition [`LATE`] (see
/// [`Lagging`]). A last event moves time past the winner.
fn input(lagging: Lagging) -> Vec<String> {
    let mut lines: Vec<String> = (0..USERS)
        .map(|i| {
            let devices = format!(r#""devices":[{{"platform":"ios","token":"tok-{i}"}}]"#);
            line("profile", &user(i), 0, &devices)
        })
        .collect();
    let (early, late): (Vec<usize>, Vec<usize>) =
        (0..USERS).partition(|i| lagging == Lagging::No || partition(&user(*i)) != LATE);
    let late = late.into_iter().filter(|_| lagging == Lagging::Late);
    let order = early.into_iter().chain(late);
    let ping = |(n, i): (usize, usize)| line("event", &user(i), 10 + n as i64, r#""name":"Ping""#);
    lines.extend(order.enumerate().map(ping));
    lines.push(line("event", "u0", 30_000, r#""name":"App Opened""#));
    lines
}

/// What a replay sent: every user's variant, the test's (sent before the winner), the winner;
/// when each user was sent (seconds).
struct Outcome {
    variant_of: BTreeMap<String, String>,
    tested: BTreeMap<String, String>,
    winner: String,
    sent_at: BTreeMap<String, i64>,
}

fn replay(campaign: &str, lines: &[String]) -> Outcome {
    let dir = replay_support::replay(campaign, lines, PARTITIONS);
    let events = replay_support::read(dir.path(), "campaign-events.jsonl");
    let winners: Vec<&Value> = events.iter().filter(|e| e["kind"] == "WINNER_DECLARED").collect();
    assert_eq!(winners.len(), 1, "{events:?}");
    let winner_at = winners[0]["timestamp_ms"].as_i64().unwrap();
    let mut variant_of = BTreeMap::new();
    let mut tested = BTreeMap::new();
    let mut sent_at = BTreeMap::new();
    for send in replay_support::read(dir.path(), "sends.jsonl") {
        let text = |field: &str| send[field].as_str().unwrap().to_string();
        let at = chrono::DateTime::parse_from_rfc3339(&text("send_time")).unwrap();
        if at.timestamp_millis() < winner_at {
            tested.insert(text("user_id"), text("variant_id"));
        }
        sent_at.insert(text("user_id"), at.timestamp() - second(0));
        assert!(variant_of.insert(text("user_id"), text("variant_id")).is_none(), "one send");
    }
    let winner = winners[0]["details"]["winner"].as_str().unwrap().to_string();
    assert_eq!(winners[0]["details"]["sent_A"], "200", "the test alone is counted");
    assert_eq!(winners[0]["details"]["sent_B"], "200");
    Outcome { variant_of, tested, winner, sent_at }
}

/// Test users (and users given `variant` among them) by partition.
fn by_partition(tested: &BTreeMap<String, String>, variant: Option<&str>) -> [usize; 4] {
    let mut counts = [0; 4];
    tested
        .iter()
        .filter(|(_, v)| variant.is_none_or(|variant| *v == variant))
        .for_each(|(user, _)| counts[partition(user) as usize] += 1);
    counts
}

#[test]
fn a_partition_whose_users_come_late_is_tested_in_proportion_and_the_test_is_exact() {
    let late = replay(&campaign(LONG_WAIT), &input(Lagging::Late));

    assert_eq!(late.variant_of.len(), USERS, "everyone is sent once");
    assert_eq!(late.tested.len(), 400, "exactly the test population");
    assert_eq!(by_partition(&late.tested, Some("A")), [50; 4], "variants alternate per partition");
    assert_eq!(by_partition(&late.tested, Some("B")), [50; 4]);
    // Each partition's share of the test is its share of the audience, within 4 sd (binomial).
    let audience = by_partition(&(0..USERS).map(|i| (user(i), String::new())).collect(), None);
    for (tested, audience) in by_partition(&late.tested, None).into_iter().zip(audience) {
        let expected = 400.0 * audience as f64 / USERS as f64;
        let sd = (expected * (1.0 - audience as f64 / USERS as f64)).sqrt();
        assert!((tested as f64 - expected).abs() <= 4.0 * sd, "{tested} of {expected}");
    }
    // Everyone else (those beyond their partition's share waited) got the winner: A, on a tie.
    assert_eq!(late.winner, "A");
    let others = late.variant_of.iter().filter(|(user, _)| !late.tested.contains_key(*user));
    assert!(others.clone().all(|(_, variant)| variant == "A"));
    assert_eq!(others.count(), USERS - 400);

    // Who is tested does not depend on when a partition's users come, and a re-run agrees.
    let on_time = replay(&campaign(LONG_WAIT), &input(Lagging::No));
    assert_eq!(on_time.tested, late.tested, "the same users with the same variants");
    let again = replay(&campaign(LONG_WAIT), &input(Lagging::Late));
    assert_eq!(again.variant_of, late.variant_of, "a re-run sends the same");
}

/// Partition 3 has no traffic (issue 14, review of item 3): its 100 places stay unused, so on
/// the old code the test never completed and everyone beyond their partition's share waited
/// for a winner that never came. After the share wait (10 minutes by default) from the first
/// user to wait, the unused places go to the waiting users with the lowest ranks; the test is
/// then complete, exact, and decided once.
#[test]
fn a_partition_without_users_gives_its_places_to_the_waiting_users_in_rank_order() {
    let lines = input(Lagging::Never);
    let outcome = replay(&campaign(""), &lines);

    let pinged: Vec<String> =
        (0..USERS).map(user).filter(|u| partition(u) != LATE).collect::<Vec<_>>();
    assert_eq!(outcome.variant_of.len(), pinged.len(), "everyone who came is sent once");
    assert_eq!(outcome.tested.len(), 400, "exactly the test population");
    assert_eq!(by_partition(&outcome.tested, None)[LATE as usize], 0);
    // Each partition's first 100 users took its share; the others waited.
    let ping_at: BTreeMap<&str, i64> =
        pinged.iter().enumerate().map(|(n, u)| (u.as_str(), 10 + n as i64)).collect();
    let mut seen = [0; 4];
    let (shared, waited): (Vec<&String>, Vec<&String>) = pinged.iter().partition(|u| {
        seen[partition(u) as usize] += 1;
        seen[partition(u) as usize] <= 100
    });
    assert!(shared.iter().all(|u| outcome.tested.contains_key(*u)), "shares first");
    let pooled: Vec<&String> =
        waited.iter().copied().filter(|u| outcome.tested.contains_key(*u)).collect();
    assert_eq!(pooled.len(), 100, "partition 3's places");
    // The pooled users left together at the end of the share wait counted from the first user
    // to wait, and they are the lowest ranks of those waiting by then.
    let first_wait = ping_at[waited[0].as_str()];
    let due = first_wait + 600;
    assert!(
        pooled.iter().all(|u| outcome.sent_at[u.as_str()] == due),
        "sent at the share wait's end"
    );
    let lowest = |until: i64| {
        let mut ranked: Vec<(u64, &String)> = waited
            .iter()
            .filter(|u| ping_at[u.as_str()] <= until)
            .map(|u| (herald_engine::campaign::sample::rank("tab", u), *u))
            .collect();
        ranked.sort();
        let mut lowest: Vec<&String> = ranked.into_iter().take(100).map(|(_, u)| u).collect();
        lowest.sort();
        lowest
    };
    let mut pooled_sorted = pooled.clone();
    pooled_sorted.sort();
    // The user pinging at the very time the wait ends may come before or after it.
    assert!(pooled_sorted == lowest(due - 1) || pooled_sorted == lowest(due), "rank order");
    // Variants stay exact (the replay checks 200 A, 200 B) and the winner reaches the rest.
    assert_eq!(outcome.winner, "A");
    let others = outcome.variant_of.iter().filter(|(u, _)| !outcome.tested.contains_key(*u));
    assert!(others.clone().all(|(_, variant)| variant == "A"));
    assert_eq!(others.count(), pinged.len() - 400);
    assert_eq!(replay(&campaign(""), &lines).variant_of, outcome.variant_of, "a re-run agrees");
}

/// Candidates put on the campaign flow as user-stage tasks would, each naming its partition
/// (`Some((partition, partitions))`) or not (an older producer's).
mod flow {
    use herald_engine::{
        model::{
            topics::{self, TopicNames},
            CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, Candidate, IngestDecoder,
            LifecycleKind, Platform, SchemaRegistry, SendCommand, Skip, SourcePartition,
        },
        pipeline::engine_topology,
        runtime::replay::{self, ReplayInput, ReplayOptions, ReplayRecord, ReplaySink},
        settings::Settings,
    };
    use std::{cell::RefCell, collections::BTreeMap, sync::Arc};

    pub const T0: i64 = 1_795_000_000_000;

    fn record(topic: &str, value: Vec<u8>, at: i64) -> ReplayRecord {
        ReplayRecord {
            topic: topic.into(),
            partition: None,
            offset: 0,
            key: Some(b"tab".to_vec()),
            value: Some(value),
            timestamp_ms: at,
        }
    }

    /// The campaign `tab`: an A/B test of `audience` users, 2 variants, evaluated after 1 h.
    pub fn define(audience: u64) -> ReplayRecord {
        let definition = format!(
            r#"{{"id":"tab","app":"shop","name":"n","when":{{"event":"Ping"}},"what":{{"variants":[{{"id":"A","title":"a","body":"a"}},{{"id":"B","title":"b","body":"b"}}],"ab":{{"test_audience":{audience},"evaluate_after":"1h"}}}}}}"#
        );
        let envelope = CampaignEnvelope {
            campaign_id: "tab".into(),
            app_id: "shop".into(),
            command: CampaignCommand::Define,
            definition: Some(definition),
            revision: T0,
            issued_at_ms: T0,
            issued_by: None,
        };
        record(topics::CAMPAIGNS, SchemaRegistry::builtin().encode(&envelope).unwrap(), T0)
    }

    /// `user`'s candidate at `T0 + at_s` seconds, from `source`.
    pub fn candidate(user: &str, source: Option<(i32, i32)>, at_s: i64) -> ReplayRecord {
        let at = T0 + at_s * 1_000;
        let candidate = Candidate {
            campaign_id: "tab".into(),
            app_id: "shop".into(),
            run_id: format!("trigger:e-{user}"),
            user_id: user.into(),
            qualified_at_ms: at,
            trigger_event: Some("Ping".into()),
            event_properties: Default::default(),
            profile: Default::default(),
            devices: vec![crate::profiles::device_on(user, Platform::Ios)],
            timezone: None,
            language: None,
            source: source.map(|(partition, partitions)| SourcePartition { partition, partitions }),
        };
        record(topics::CAMPAIGN_FLOW, SchemaRegistry::builtin().encode(&candidate).unwrap(), at)
    }

    /// The send gate's refusal, at `T0 + at_s` seconds, of `user`'s notification of `variant`
    /// (their trigger occurrence's): it gives the place back.
    pub fn refused(user: &str, variant: &str, at_s: i64) -> ReplayRecord {
        let at = T0 + at_s * 1_000;
        let skip = Skip {
            campaign_id: "tab".into(),
            app_id: "shop".into(),
            user_id: user.into(),
            reason: "capped_daily".into(),
            timestamp_ms: at,
            variant_id: Some(variant.into()),
            returns_place: true,
            run_id: Some(format!("trigger:e-{user}")),
        };
        record(topics::CAMPAIGN_FLOW, SchemaRegistry::builtin().encode(&skip).unwrap(), at)
    }

    /// Every user's variant and whether they were sent it during the test (before the winner);
    /// the winner declarations.
    pub fn run(input: Vec<ReplayRecord>) -> (BTreeMap<String, (String, bool)>, Vec<String>) {
        let settings = Arc::new(Settings::default());
        let topology =
            engine_topology("tab", TopicNames::default(), settings, IngestDecoder::default(), 0)
                .unwrap();
        let outputs = RefCell::new(Vec::new());
        replay::run(
            &topology,
            ReplayInput::Records(input),
            ReplaySink::Callback(Box::new(|topic, _, value, _| {
                outputs.borrow_mut().push((topic.to_string(), value.to_vec()));
                Ok(())
            })),
            &ReplayOptions { fire_timers_until: Some(T0 + 3 * 3_600_000), ..Default::default() },
        )
        .unwrap();
        let registry = SchemaRegistry::builtin();
        let outputs = outputs.into_inner();
        let winners: Vec<CampaignLifecycleEvent> = outputs
            .iter()
            .filter(|(topic, _)| topic == topics::CAMPAIGN_EVENTS)
            .filter_map(|(_, value)| registry.decode::<CampaignLifecycleEvent>(value).ok())
            .filter(|event| event.kind == LifecycleKind::WinnerDeclared)
            .collect();
        let winner_at = winners.first().map_or(i64::MAX, |w| w.timestamp_ms);
        let mut sent = BTreeMap::new();
        for (_, value) in outputs.iter().filter(|(topic, _)| topic == topics::PUSH) {
            let command: SendCommand = registry.decode(value).unwrap();
            let tested = command.created_at_ms < winner_at;
            let first = sent.insert(command.user_id.clone(), (command.variant_id, tested));
            assert!(first.is_none(), "{} sent twice", command.user_id);
        }
        (sent, winners.iter().map(|w| w.details["winner"].clone()).collect())
    }
}

/// The partition count is what the candidates declare, never fixed by the first one seen (on
/// the old code a first candidate naming no partition made the test one partition, first come
/// first tested). A candidate naming no partition has no share and waits; candidates declaring
/// 4 partitions after 2 (the user stage's topics were re-partitioned) divide the unused places
/// again over 4; a late candidate still declaring 2 counts as its partition among the 4. Every
/// place is taken once: 4 A and 4 B.
#[test]
fn the_partition_count_is_what_the_candidates_declare_and_a_repartition_divides_the_rest_again() {
    use flow::candidate;
    let (sent, winners) = flow::run(vec![
        flow::define(8),
        candidate("none", None, 1),       // waits
        candidate("a0", Some((0, 2)), 2), // place 0 of 0-3 | 4-7
        candidate("a1", Some((0, 2)), 3), // 1
        candidate("b0", Some((1, 2)), 4), // 4
        // Re-partitioned: the unused 2 3 5 6 7 are divided 2, 1, 1, 1 over 4 partitions.
        candidate("c0", Some((2, 4)), 5),  // 6
        candidate("d0", Some((3, 4)), 6),  // 7
        candidate("e0", Some((0, 4)), 7),  // 2
        candidate("e1", Some((0, 4)), 8),  // 3
        candidate("e2", Some((0, 4)), 9),  // waits: partition 0's share is full
        candidate("f0", Some((1, 2)), 10), // 5: a candidate from before, partition 1 of 4
    ]);
    let variant = |user: &str| sent.get(user).cloned();
    let tested = |v: &str| Some((v.to_string(), true));
    let expected = [
        ("a0", "A"),
        ("a1", "B"),
        ("b0", "A"),
        ("c0", "A"),
        ("d0", "B"),
        ("e0", "A"),
        ("e1", "B"),
        ("f0", "B"),
    ];
    for (user, v) in expected {
        assert_eq!(variant(user), tested(v), "{user}: {sent:?}");
    }
    assert_eq!(winners, ["A"], "one decision, A on a tie");
    let after_the_winner = Some(("A".to_string(), false));
    assert_eq!((variant("none"), variant("e2")), (after_the_winner.clone(), after_the_winner));
}

/// A test place given back (its user refused at the send gate) goes to the users already
/// waiting for it before anyone new: 4 places over 2 partitions (0-1 | 2-3); a0 and a1 take
/// partition 0's, w1 and w2 then wait; a1 is refused (its place 1, B, comes back); n, a new
/// user of partition 0, comes next. The place goes to the lower-ranked of w1 and w2 at once,
/// n waits for the winner with the other. On the old code n took it (first come) ahead of the
/// two who had waited.
#[test]
fn a_test_place_given_back_goes_to_the_waiting_users_first_in_rank_order() {
    use flow::{candidate, refused};
    let input = || {
        vec![
            flow::define(4),
            candidate("a0", Some((0, 2)), 1), // place 0 (A)
            candidate("a1", Some((0, 2)), 2), // place 1 (B)
            candidate("w1", Some((0, 2)), 3), // waits: partition 0's share is full
            candidate("w2", Some((0, 2)), 4), // waits
            refused("a1", "B", 5),            // place 1 comes back
            candidate("n", Some((0, 2)), 6),  // new: waits
            candidate("b0", Some((1, 2)), 7), // place 2 (A)
            candidate("b1", Some((1, 2)), 8), // place 3 (B): the test is complete
        ]
    };
    let (sent, winners) = flow::run(input());
    let rank = |user: &str| herald_engine::campaign::sample::rank("tab", user);
    let (first, second) = if rank("w1") < rank("w2") { ("w1", "w2") } else { ("w2", "w1") };
    let variant = |user: &str| sent.get(user).cloned();
    let tested = |v: &str| Some((v.to_string(), true));
    for (user, v) in [("a0", "A"), ("a1", "B"), (first, "B"), ("b0", "A"), ("b1", "B")] {
        assert_eq!(variant(user), tested(v), "{user}: {sent:?}");
    }
    assert_eq!(winners, ["A"], "one decision, A on a tie");
    let after_the_winner = Some(("A".to_string(), false));
    assert_eq!(variant(second), after_the_winner, "{sent:?}");
    assert_eq!(variant("n"), after_the_winner, "the newcomer waited: {sent:?}");
    assert_eq!(flow::run(input()).0, sent, "a re-run agrees");
}
