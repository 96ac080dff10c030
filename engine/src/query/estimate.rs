//! The `estimate` query: how many users a campaign (or a saved segment) reaches now, counted by
//! every user-stage task over its own users with the checks a run makes, and what a scheduled
//! campaign's limits leave of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::QueryRequest;
use crate::{
    campaign::{Assignment, Campaign},
    model::{CampaignStats, CodecError, SchemaRegistry},
    runtime::replay::ReplayRecord,
    stage_campaign::ab,
};

/// The kind name of estimate requests.
pub const KIND: &str = "estimate";

/// What to estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Question {
    /// A campaign definition (JSON text, as a `Define` envelope carries it), applied or not,
    /// checked as an immediate run at `at_ms` would check it.
    Campaign {
        /// Campaign id.
        id: String,
        /// Definition, JSON text.
        definition: String,
        /// When the run would be, epoch milliseconds.
        at_ms: i64,
    },
    /// Who is in a saved segment (as the engine's segments table has it) at `at_ms`, and how
    /// many of them push reaches.
    Segment {
        /// Segment id.
        id: String,
        /// When, epoch milliseconds.
        at_ms: i64,
    },
}

/// What a task (or, added up, the engine) counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Users looked at.
    pub scanned: u64,
    /// Users matching the audience (`who`, or the segment).
    pub matched: u64,
    /// Matching users with a device push reaches on a platform the campaign targets (any
    /// platform for a segment), not opted out.
    pub reachable: u64,
    /// Matching users with a reachable iOS device.
    pub ios: u64,
    /// Matching users with a reachable Android device.
    pub android: u64,
    /// Campaign: matching users an immediate run would send to now (after sample,
    /// reachability, do-not-disturb and frequency caps), before the campaign's limits.
    pub candidates: u64,
    /// Campaign: matching users the run would put off (do-not-disturb hours with `delay`, or
    /// their local time with `timezone: user`), checked again then.
    pub waiting: u64,
    /// Campaign: matching users the run would not send to, by reason (`sampled_out`,
    /// `not_reachable`, `dnd_discarded`, `capped_daily`, …).
    pub skipped: BTreeMap<String, u64>,
}

impl Counts {
    /// Adds `other` (another partition's counts) to these.
    pub fn add(&mut self, other: &Counts) {
        self.scanned += other.scanned;
        self.matched += other.matched;
        self.reachable += other.reachable;
        self.ios += other.ios;
        self.android += other.android;
        self.candidates += other.candidates;
        self.waiting += other.waiting;
        for (reason, n) in &other.skipped {
            *self.skipped.entry(reason.clone()).or_default() += n;
        }
    }
}

/// What a scheduled campaign's limits leave of a run's candidates, as the campaign stage
/// decides a run (`stage_campaign/runs.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limited {
    /// The run's candidates (now and put off).
    pub candidates: u64,
    /// The safety check would trip (more users match than `limits.safety`): the run sends
    /// nothing.
    pub safety_tripped: bool,
    /// Left by `limits.per_run` (the run's reach, which an A/B test takes its population from).
    pub per_run: u64,
    /// Places left in `limits.total`, when it has one: total minus [`sent_so_far`]. Approximate:
    /// the stats count send commands (one per device), so a user with several devices takes
    /// several here and this is a lower bound of the places really left.
    pub total_left: Option<u64>,
    /// Users the run would send to: the least of the above.
    pub sent: u64,
    /// A/B test population of the run (every variant's share), when the campaign tests.
    pub test_population: Option<u64>,
}

/// What counts against `limits.total` so far, from a campaign's latest stats: the send
/// commands of every variant. The stats have no per-user count of sends, so a user with several
/// devices counts once per device (an over-count: [`Limited::total_left`] is a lower bound).
pub fn sent_so_far(stats: &CampaignStats) -> u64 {
    stats.variants.iter().map(|v| u64::try_from(v.sent).unwrap_or(0)).sum()
}

impl Limited {
    /// What `campaign`'s limits leave of `counts`, `sent_so_far` (see [`sent_so_far`]) having
    /// been sent over its life.
    pub fn of(campaign: &Campaign, counts: &Counts, sent_so_far: u64) -> Self {
        let candidates = counts.candidates + counts.waiting;
        let safety_tripped = campaign.limits.safety.is_some_and(|limit| counts.matched > limit);
        let per_run = campaign.limits.per_run.map_or(candidates, |limit| limit.min(candidates));
        let total_left = campaign.limits.total.map(|total| total.saturating_sub(sent_so_far));
        let sent = if safety_tripped { 0 } else { total_left.map_or(per_run, |l| l.min(per_run)) };
        let test_population = match &campaign.assignment {
            Assignment::AbTest(test) if !safety_tripped => {
                let plan = ab::test_plan(per_run, test.test_audience, campaign.what.len());
                Some(plan.per_variant * campaign.what.len() as u64)
            }
            _ => None,
        };
        Self { candidates, safety_tripped, per_run, total_left, sent, test_population }
    }
}

/// The engine's answer: the counts of every partition added up, and what the limits leave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    /// Added up over the partitions that answered.
    pub counts: Counts,
    /// Campaign: what its limits leave of a run.
    pub limited: Option<Limited>,
    /// Partitions that answered.
    pub partitions_answered: usize,
    /// Partitions that did not answer by the deadline (the counts miss their users).
    pub partitions_missing: Vec<i32>,
    /// Partitions that refused, with the reason.
    pub refused: BTreeMap<i32, String>,
}

impl Estimate {
    /// The counts of `answers` added up (a reply that does not decode counts as refused).
    pub fn from_answers(answers: &super::Answers) -> Self {
        let mut estimate =
            Estimate { partitions_missing: answers.missing.clone(), ..Default::default() };
        for (partition, reply) in &answers.done {
            let counts = match (&reply.body, &reply.error) {
                (Some(body), _) => serde_json::from_str::<Counts>(body).map_err(|e| e.to_string()),
                (None, Some(error)) => Err(error.clone()),
                (None, None) => Err("no answer".to_string()),
            };
            match counts {
                Ok(counts) => {
                    estimate.counts.add(&counts);
                    estimate.partitions_answered += 1;
                }
                Err(reason) => {
                    estimate.refused.insert(*partition, reason);
                }
            }
        }
        estimate
    }
}

/// An estimate of `question` as a replay input record on the queries topic `queries` at
/// `at_ms` (request id `request_id`, no deadline within the replay): every task of a replay
/// answers it at its next tick, with its `DONE` reply on the query replies topic. For timing an
/// estimate on the replay driver (e.g. a benchmark: from feeding this record to the last
/// partition's reply), and for deterministic tests.
pub fn replay_request(
    queries: &str,
    request_id: &str,
    question: &Question,
    at_ms: i64,
) -> Result<ReplayRecord, CodecError> {
    let body = serde_json::to_string(question).expect("a question is strings and numbers");
    let request = QueryRequest {
        request_id: request_id.to_string(),
        kind: KIND.to_string(),
        key: None,
        body,
        deadline_ms: at_ms.saturating_add(365 * 86_400_000),
        issued_at_ms: at_ms,
    };
    Ok(ReplayRecord {
        topic: queries.to_string(),
        partition: None,
        offset: 0,
        key: Some(request_id.as_bytes().to_vec()),
        value: Some(SchemaRegistry::builtin().encode(&request)?),
        timestamp_ms: at_ms,
    })
}

/// Asks the running engine's user-stage tasks `question` over the query channel of `topics`,
/// waiting up to `timeout` (`progress` is told of each reply), and adds up their counts; for a
/// scheduled `campaign`, with what its limits leave, `sent_so_far` users having been sent to.
/// Returns the number of partitions asked with the estimate. What `herald campaign|segment
/// estimate` and the API's estimate routes do.
pub fn ask(
    kafka: &crate::kafka::KafkaConfig,
    topics: &crate::model::topics::TopicNames,
    question: &Question,
    campaign: Option<(&Campaign, u64)>,
    timeout: std::time::Duration,
    progress: impl FnMut(super::Progress),
) -> Result<(i32, Estimate), super::QueryError> {
    let client = super::QueryClient::new(kafka, &topics.queries, &topics.query_replies);
    let partitions = client.partitions_of(&topics.events)?;
    let body = serde_json::to_string(question).expect("a question is strings and numbers");
    let request = super::QueryRequest::new(KIND, None, body, timeout);
    let mut estimate = Estimate::from_answers(&client.ask(&request, partitions, progress)?);
    if let Some((campaign, sent_so_far)) = campaign {
        if matches!(campaign.when.trigger, crate::campaign::Trigger::Scheduled(_)) {
            estimate.limited = Some(Limited::of(campaign, &estimate.counts, sent_so_far));
        }
    }
    Ok((partitions, estimate))
}
