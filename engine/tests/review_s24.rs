//! Review s24/R10 of issue 10's latest changes (the runtime undoing a rejected call, the user
//! stage remembering trigger occurrences, pause, deleted campaigns, replaced runs): what holds
//! as passing tests, each defect as an ignored test naming its finding.

#[path = "replay_support/records.rs"]
mod records;

use records::{define, events, profiles, replay, T0};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

fn ping(options: &str) -> String {
    format!("id: ping\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions: {options}\n")
}

/// 10 users ping once; the producer retries every event `after` ms later. Users sent to.
fn retried(options: &str, after: i64) -> Vec<String> {
    let mut input = vec![define("ping", &ping(options), T0)];
    input.extend(profiles(0, 10, T0));
    input.extend(events("Ping", "e", 0, 10, T0 + 60_000));
    input.extend(events("Ping", "e", 0, 10, T0 + 60_000 + after));
    let (sends, _) = replay(input, T0 + 60_000 + after + HOUR, 0);
    sends.into_iter().map(|s| s.user_id).collect()
}

#[test]
fn a_retried_occurrence_within_retention_is_sent_once_by_the_user_stage_memory() {
    for after in [HOUR, 2 * DAY, 7 * DAY] {
        let users = retried("{ shards: 4 }", after);
        assert_eq!(users.len(), 10, "after {after} ms: {users:?}");
    }
}
