//! Records between a campaign's home and its shards on `herald.campaign-flow` (see
//! `docs/architecture.md`): each is produced in the exactly-once transaction of the state change
//! that accounts for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_timestamp, Checked, InvalidField, Record, VariantStats};

/// What a [`ShardReport`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShardReportKind {
    /// Every user-stage partition reported the run to the shard: its buffer is complete.
    Buffered,
    /// The shard sent its share of the run's A/B test.
    TestSent,
    /// The shard released the whole run.
    RunSent,
    /// The shard's cumulative counters.
    Counters,
    /// Candidates wait at the shard for places of the total limit (or it spent its last one).
    Demand,
    /// The shard gives back its unused places (a recall).
    Returned,
    /// The shard gave back every place it held (a recount): its counts are exact as of now.
    Counted,
    /// The shard asks for tokens of a window of the campaign throttle (`waiting`: users queued
    /// beyond the tokens it holds) or gives back tokens it cannot use (`places`); `run_id` is
    /// the window's start (epoch ms).
    Tokens,
    /// The shard's cumulative counters, answering the home's `Evaluate` of the run `run_id`:
    /// the A/B winner is decided once every shard of the run answered.
    Evaluated,
    /// `places` places of the run `run_id` no user at the shard can take (a user the run
    /// selected, `timezone: user`, does not come and no one stands by there; or, at the end of
    /// its buffer, places no user took): they go home, which passes them on.
    PlaceLeft,
    /// The shard gives back the global assignment indices `qualified .. qualified + places` of
    /// a triggered campaign in alternation or with a split (sent before the lease report whose
    /// places they went with).
    Indices,
    /// The shard's buffer of the run `run_id` went home before this report (its `Forward`
    /// plan); `qualified`: the shard's users matching the run's audience.
    Forwarded,
}

/// A shard tells its campaign's home where it is (keyed by campaign id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// The reporting shard.
    pub shard: i32,
    /// The campaign's shards in effect.
    pub shards: i32,
    /// What it reports.
    pub kind: ShardReportKind,
    /// The run concerned (not for `Counters`).
    pub run_id: Option<String>,
    /// `Buffered`: users of the shard matching the run's audience; `PlaceLeft`: the first global
    /// assignment index that goes back with the places (alternation or a split).
    pub qualified: i64,
    /// `Buffered`: candidates buffered for the run; `PlaceLeft`: how many indices go back from
    /// `qualified` (0: none); `TestSent`: the latest local time (epoch ms) of the shard's test
    /// users still to come (`timezone: user`; 0: none), when the test ends.
    pub reachable: i64,
    /// Every kind: users the shard sent to over the campaign's life (cumulative; the home counts
    /// each shard's highest in the total).
    pub sent: i64,
    /// `RunSent`: users of the run the shard sent to (cumulative), with its users standing by
    /// in `waiting` and the places passed to it so far in `places`; `Demand`, `Returned`,
    /// `Counted`: users it sent to on places of the total limit (cumulative).
    #[serde(default)]
    pub run_sent: i64,
    /// `Demand`, `Returned`, `Counted`: candidates waiting at the shard for a place of the total
    /// limit.
    pub waiting: i64,
    /// `Returned`: places of the total limit given back; `Counted`: every place it held;
    /// `PlaceLeft`: places of the run given back (0: one, from an older version); `RunSent`:
    /// places of the run passed to it (cumulative); `Buffered`: 1 when every partition's tally
    /// named its shard count (each told the home too), 0 when one did not (an older version).
    pub places: i64,
    /// `Counters`, `Evaluated`: cumulative per-variant counters.
    pub variants: Vec<VariantStats>,
    /// `Counters`, `Evaluated`: users not sent to, by reason.
    pub skipped: BTreeMap<String, i64>,
    /// `Counters`, `Evaluated`: failed sends, by reason.
    pub failed: BTreeMap<String, i64>,
    /// `Demand`, `Returned`, `Counted`: users the shard sent to on the day named in `run_id`
    /// (the campaign's day of a daily limit).
    #[serde(default)]
    pub day_sent: i64,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// `Demand`, `Returned`, `Counted`: the shard's number for this lease report (1, 2, ...,
    /// written in the transaction that sends it); the home applies a report only when it is
    /// above the last it applied from the shard, so a repeat never moves places twice. 0: an
    /// older version's (unnumbered).
    #[serde(default)]
    pub seq: i64,
}

impl Record for ShardReport {
    const FULL_NAME: &'static str = "io.herald.ShardReport";
}

/// What a [`ShardPlan`] tells a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShardPlanKind {
    /// Release the run within `places`, the first `test_users` as A/B test users.
    Release,
    /// The safety check tripped: the run sends nothing.
    Tripped,
    /// The A/B winner is chosen: send the rest with it.
    Winner,
    /// `places` of the total limit are leased to the shard.
    Grant,
    /// Give back the places held unused.
    Recall,
    /// The total limit of `places` is full: refuse the waiting candidates until the campaign's
    /// limit is above it (an edit raised it).
    Full,
    /// Give back every place held and report the exact counts (`Counted`): the total limit or
    /// the shards in effect changed.
    Recount,
    /// `places` tokens of the campaign throttle's window starting at `run_id` (epoch ms) are
    /// granted to the shard, of the throttle's `limit` (its `max`).
    Tokens,
    /// The A/B test's wait is over: report the counters now (`Evaluated`), for the winner
    /// decision.
    Evaluate,
    /// `places` places of the run `run_id` other shards could not use: for the shard's first
    /// users standing by, else back home (`PlaceLeft`). No places (a run whose users are all
    /// there at its release): none will come any more, its users standing by are skipped.
    Place,
    /// The global assignment indices `test_from .. test_from + test_users` of a triggered
    /// campaign in alternation or with a split, for the places of the `Grant` that follows.
    Indices,
    /// The run's user-stage tasks scanned it with different shard counts: send the shard's
    /// buffer of it home once `places` partitions reported it here (then `Forwarded`), and its
    /// users who come later too.
    Forward,
}

/// The home tells one shard what to do with a scheduled run (keyed by the shard's key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// The run concerned; for a lease plan, the day (campaign timezone) its places are of, or
    /// the day that is full (empty: the total limit alone).
    pub run_id: String,
    /// The shard addressed.
    pub shard: i32,
    /// What to do.
    pub kind: ShardPlanKind,
    /// `Release`: users of the run the shard may send to; `Grant`: places leased; `Full`: the
    /// limit that is full; `Place`: places of the run passed to the shard (see `Place`).
    pub places: i64,
    /// `Release`: global A/B test index of the shard's first test user; `Place`: the first
    /// global assignment index that goes with the places (alternation or a split).
    pub test_from: i64,
    /// `Release`: the shard's first users that make up its share of the A/B test; `Place`: how
    /// many indices go with the places from `test_from` (0: none).
    pub test_users: i64,
    /// `Release`: the run's A/B test users over all shards (0: no test).
    pub test_total: i64,
    /// `Winner`, `Release`: the campaign's A/B winner once chosen (the rest gets it).
    pub winner_id: Option<String>,
    /// `Grant`: the total limit the places are of; the shard spends them only while its
    /// campaign's total limit is this one.
    #[serde(default)]
    pub limit: Option<i64>,
    /// `Grant`: the daily limit the places are of; the shard spends them only on the day named
    /// in `run_id`, while its campaign's daily limit is this one.
    #[serde(default)]
    pub daily: Option<i64>,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
}

impl Record for ShardPlan {
    const FULL_NAME: &'static str = "io.herald.ShardPlan";
}

/// A shard number within the campaign's shards, and counts that are never negative.
fn check_shard(shard: i32, counts: &[(&'static str, i64)]) -> Result<(), InvalidField> {
    if !(0..i32::from(u16::MAX)).contains(&shard) {
        return Err(InvalidField { field: "shard", reason: format!("{shard} is not a shard") });
    }
    match counts.iter().find(|(_, count)| *count < 0) {
        Some((field, count)) => Err(InvalidField { field, reason: format!("{count} < 0") }),
        None => Ok(()),
    }
}

impl Checked for ShardReport {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("timestamp_ms", self.timestamp_ms)?;
        if self.shard >= self.shards {
            return Err(InvalidField {
                field: "shard",
                reason: format!("shard {} of {} shards", self.shard, self.shards),
            });
        }
        let counts = [
            ("qualified", self.qualified),
            ("reachable", self.reachable),
            ("sent", self.sent),
            ("run_sent", self.run_sent),
            ("waiting", self.waiting),
            ("places", self.places),
            ("day_sent", self.day_sent),
            ("seq", self.seq),
        ];
        check_shard(self.shard, &counts)
    }
}

impl Checked for ShardPlan {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("timestamp_ms", self.timestamp_ms)?;
        let counts = [
            ("places", self.places),
            ("test_from", self.test_from),
            ("test_users", self.test_users),
            ("test_total", self.test_total),
            ("limit", self.limit.unwrap_or(0)),
            ("daily", self.daily.unwrap_or(0)),
        ];
        check_shard(self.shard, &counts)
    }
}
