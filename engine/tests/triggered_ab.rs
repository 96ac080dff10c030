//! A triggered A/B test (issue 14 item 3) on the replay driver over 4 user-stage partitions:
//! who is tested does not depend on when a partition's users arrive. Each partition takes its
//! equal share of the test population (a partition whose events come late is tested as much as
//! the others), the population is exact, users beyond their partition's share wait for the
//! winner, and a re-run tests the same users with the same variants.

mod replay_support;

use std::collections::BTreeMap;

use herald_engine::runtime::partition_for;
use serde_json::Value;

const USERS: usize = 4_000;
const PARTITIONS: i32 = 4;
const LATE: i32 = 3;

const CAMPAIGN: &str = "id: tab\napp: shop\nname: n\nwhen: { event: Ping }\nwhat:\n  variants:\n    - { id: A, title: a, body: a }\n    - { id: B, title: b, body: b }\n  ab: { test_audience: 400, evaluate_after: 1h }\n";

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

/// Every user pings once in user order; with `late`, the users of partition [`LATE`] ping only
/// after everyone else (their partition lags behind). A last event moves time past the winner.
fn input(late: bool) -> Vec<String> {
    let mut lines: Vec<String> = (0..USERS)
        .map(|i| {
            let devices = format!(r#""devices":[{{"platform":"ios","token":"tok-{i}"}}]"#);
            line("profile", &user(i), 0, &devices)
        })
        .collect();
    let (early, lagging): (Vec<usize>, Vec<usize>) =
        (0..USERS).partition(|i| !late || partition(&user(*i)) != LATE);
    let order = early.into_iter().chain(lagging);
    let ping = |(n, i): (usize, usize)| line("event", &user(i), 10 + n as i64, r#""name":"Ping""#);
    lines.extend(order.enumerate().map(ping));
    lines.push(line("event", "u0", 30_000, r#""name":"App Opened""#));
    lines
}

/// What a replay sent: every user's variant, the test's (sent before the winner), the winner.
struct Outcome {
    variant_of: BTreeMap<String, String>,
    tested: BTreeMap<String, String>,
    winner: String,
}

fn replay(lines: &[String]) -> Outcome {
    let dir = replay_support::replay(CAMPAIGN, lines, PARTITIONS);
    let events = replay_support::read(dir.path(), "campaign-events.jsonl");
    let winners: Vec<&Value> = events.iter().filter(|e| e["kind"] == "WINNER_DECLARED").collect();
    assert_eq!(winners.len(), 1, "{events:?}");
    let winner_at = winners[0]["timestamp_ms"].as_i64().unwrap();
    let mut variant_of = BTreeMap::new();
    let mut tested = BTreeMap::new();
    for send in replay_support::read(dir.path(), "sends.jsonl") {
        let text = |field: &str| send[field].as_str().unwrap().to_string();
        let at = chrono::DateTime::parse_from_rfc3339(&text("send_time")).unwrap();
        if at.timestamp_millis() < winner_at {
            tested.insert(text("user_id"), text("variant_id"));
        }
        assert!(variant_of.insert(text("user_id"), text("variant_id")).is_none(), "one send");
    }
    let winner = winners[0]["details"]["winner"].as_str().unwrap().to_string();
    assert_eq!(winners[0]["details"]["sent_A"], "200", "the test alone is counted");
    assert_eq!(winners[0]["details"]["sent_B"], "200");
    Outcome { variant_of, tested, winner }
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
    let late = replay(&input(true));

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
    let on_time = replay(&input(false));
    assert_eq!(on_time.tested, late.tested, "the same users with the same variants");
    assert_eq!(replay(&input(true)).variant_of, late.variant_of, "a re-run sends the same");
}
