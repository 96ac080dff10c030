//! Global assignment indices of a triggered campaign in alternation or with a split spread over
//! shards (see "Split proportions and alternation" in `docs/architecture.md`). One task gives
//! its n-th user assigned the variant of index n ([`ab::variant_at`]); over shards the home
//! leases the indices with the places of the total or daily limit: every `GRANT` of places is
//! preceded by `INDICES` plans granting as many indices, the lowest given back first, then from
//! the home's count of users assigned (`assigned`, the single task's counter). A shard spends
//! its indices in order, one per user sent without a sticky variant; with every lease report
//! it gives back the indices beyond its places held or in flight (an `INDICES` report before
//! it), which the home grants again first. So the indices spent are the lowest ones except
//! those leased out unspent: once none is (the limit full, or a recount), the spent ones are
//! exactly `0..n` and the variant counts are one task's round robin over the n sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    ab, assignment_key, leases::REPEATED_LEASE_REPORTS, CampaignStage, CampaignState, ASSIGNMENTS,
};
use crate::{
    campaign::{shards as campaign_shards, Assignment, Campaign, TestPopulation, Trigger},
    model::{is_triggered_run, Candidate, ShardPlan, ShardPlanKind, ShardReport, ShardReportKind},
    runtime::{ProcessError, ProcessorContext},
};

/// Index ranges `[from, to)`, ascending and disjoint.
type Ranges = Vec<(u64, u64)>;

/// A shard's indices: held, and the one its current user was given.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ShardIndices {
    /// Indices held, lowest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    held: Ranges,
    /// The index given to the user being delivered: spent if they are sent.
    #[serde(skip)]
    pub(super) given: Option<u64>,
    /// Indices of sends the send gate has yet to answer, by `user NUL run`: a refused one comes
    /// back to `held`, for the shard's next candidate.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    in_flight: BTreeMap<String, u64>,
    /// The number of the latest `INDICES` plan applied (a plan's `places`): one not above it
    /// is a repeat, dropped.
    #[serde(default)]
    plans: i64,
    /// Restored from a state an earlier version saved (without this field): its home may have
    /// numbered plans this shard applied without keeping their number, or did not number them,
    /// so its first numbered plan is taken whatever its number. Else the first is 1 (see
    /// [`CampaignStage::on_index_plan`]).
    #[serde(default = "made_before_plans")]
    before_plans: bool,
}

/// Indices restored without `before_plans` were saved by an earlier version.
fn made_before_plans() -> bool {
    true
}

impl ShardIndices {
    /// A shard's indices restored from a state saved before it had any (see `before_plans`).
    pub(super) fn restored() -> Self {
        Self { before_plans: true, ..Self::default() }
    }
}

impl ShardIndices {
    fn count(&self) -> u64 {
        total(&self.held)
    }

    /// Takes the highest indices held beyond the `keep` lowest.
    fn beyond(&mut self, keep: u64) -> Ranges {
        let mut kept = 0;
        let mut back = Vec::new();
        self.held.retain_mut(|(from, to)| {
            let len = *to - *from;
            if kept + len <= keep {
                kept += len;
                return true;
            }
            let stay = keep - kept;
            kept = keep;
            back.push((*from + stay, *to));
            *to = *from + stay;
            stay > 0
        });
        back
    }
}

/// The home's indices given back by the shards, granted again before new ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct IndexPool {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    free: Ranges,
    /// Indices granted to each shard and not given back (spent or not): a shard's `INDICES`
    /// report gives back only of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    out: BTreeMap<u32, Ranges>,
    /// `INDICES` plans sent to each shard: each carries its number in `places`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    plans: BTreeMap<u32, i64>,
    /// The pool was made before `out` was kept (restored from an older version's state): a
    /// shard may give back indices granted then, within those granted and not free.
    #[serde(default = "made_before_out")]
    before_out: bool,
}

impl IndexPool {
    /// Indices granted to the shards and not given back (spent there, or held): a triggered
    /// A/B test moved home counts them as tested (see `ab::test_on`).
    pub(super) fn out_at_shards(&self) -> u64 {
        self.out.values().map(total).sum()
    }
}

/// A pool restored without `before_out` was made by an older version.
fn made_before_out() -> bool {
    true
}

/// How many indices `ranges` hold (saturating: a forged range may be huge).
fn total(ranges: &Ranges) -> u64 {
    ranges.iter().fold(0, |sum: u64, (from, to)| sum.saturating_add(to - from))
}

/// Whether `ranges` hold all of `[from, to)` (they are merged: one range does).
fn holds(ranges: &Ranges, from: u64, to: u64) -> bool {
    ranges.iter().any(|(start, end)| *start <= from && to <= *end)
}

/// Whether `ranges` hold any of `[from, to)`.
fn overlaps(ranges: &Ranges, from: u64, to: u64) -> bool {
    ranges.iter().any(|(start, end)| *start < to && from < *end)
}

/// Takes `[from, to)` out of `ranges`.
fn remove(ranges: &mut Ranges, from: u64, to: u64) {
    let mut kept = Vec::with_capacity(ranges.len() + 1);
    for (start, end) in ranges.drain(..) {
        if start < from.min(end) {
            kept.push((start, from.min(end)));
        }
        if to.max(start) < end {
            kept.push((to.max(start), end));
        }
    }
    *ranges = kept;
}

/// Adds `[from, to)` to `ranges`, merged with its neighbours.
fn insert(ranges: &mut Ranges, from: u64, to: u64) {
    if from >= to {
        return;
    }
    let at = ranges.partition_point(|(start, _)| *start < from);
    ranges.insert(at, (from, to));
    let mut merged: Ranges = Vec::with_capacity(ranges.len());
    for (start, end) in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Whether `campaign` assigns by global index (alternation or a split).
fn indexed(campaign: &Campaign) -> bool {
    ab::variant_at(&campaign.assignment, campaign.what.len(), 0).is_some()
}

/// Whether `campaign`'s shards lease places that carry its global indices alone: a campaign in
/// alternation or with a split and neither a total nor a daily limit, triggered, or scheduled
/// with users sent at their local times and no per-run limit (a user who comes after its
/// shard's block of the run is spent takes a leased index). The home grants exactly what a
/// shard's waiting candidates ask for (`leases`: a place per index), and a shard gives back, in
/// the transaction that finds them unused, the places and indices no candidate of its waits
/// for; so no index lies unspent at an idle shard.
pub(super) fn leased_alone(campaign: &Campaign) -> bool {
    let limits = &campaign.limits;
    let kind = match campaign.when.trigger {
        Trigger::Scheduled(_) => campaign.user_local().is_some() && limits.per_run.is_none(),
        _ => true,
    };
    kind && indexed(campaign) && limits.total.is_none() && limits.daily.is_none()
}

/// Whether `campaign` is scheduled, sent at each user's local time (`timezone: user`), with a
/// total or a daily limit and no per-run limit: its run's places are planned over the users
/// buffered at the release, and a user who comes later, at their local time, is sent on a place
/// of the total and of their day leased by the home, as a triggered candidate is (with a global
/// index in alternation or a split: the home grants exactly what waits, and a shard gives back
/// at once what no candidate of its waits for). The home grants nothing while a run of the
/// campaign is open (planned and not finished), so a lease never counts on places a run may
/// still send.
pub(super) fn late_on_leases(campaign: &Campaign) -> bool {
    let limits = &campaign.limits;
    matches!(campaign.when.trigger, Trigger::Scheduled(_))
        && campaign.user_local().is_some()
        && (limits.total.is_some() || limits.daily.is_some())
        && limits.per_run.is_none()
}

/// [`late_on_leases`] with a daily limit: the day's account at the home holds the runs' sends
/// (from their `RUN_SENT`, on the home's day) and, apart, the places of the day
/// leased to users who came after a release; a shard's lease reports count its sends on
/// leased places of the day only (`day_sent`), so no send is counted twice (see
/// `leases::ShardLease::day_spent`).
pub(super) fn late_daily(campaign: &Campaign) -> bool {
    late_on_leases(campaign) && campaign.limits.daily.is_some()
}

/// Whether the home grants a late user's place exactly what waits and a shard gives back at
/// once what no candidate of its waits for (see [`late_on_leases`]): places that carry indices,
/// or of a day, so that none lies unspent at an idle shard when the next run is planned.
pub(super) fn late_exact(campaign: &Campaign) -> bool {
    late_indexed(campaign) || late_daily(campaign)
}

/// [`late_on_leases`] in alternation or with a split: its leased places carry indices.
pub(super) fn late_indexed(campaign: &Campaign) -> bool {
    late_on_leases(campaign) && indexed(campaign)
}

impl CampaignStage {
    /// Whether this shard of `campaign` sends a user of a run who comes after its release on a
    /// leased place (see [`leased_alone`], [`late_on_leases`]).
    pub(super) fn late_leased(campaign: &Campaign, state: &CampaignState) -> bool {
        state.is_shard(campaign) && (leased_alone(campaign) || late_on_leases(campaign))
    }

    /// Whether this shard of `campaign` sends on places of indices alone (see [`leased_alone`]).
    pub(super) fn leases_alone(campaign: &Campaign, state: &CampaignState) -> bool {
        state.is_shard(campaign) && leased_alone(campaign)
    }

    /// The variant of a shard's next index for a triggered `candidate` of a campaign in
    /// alternation or with a split (the index is spent by [`Self::spend_index`] if the user is
    /// sent); `None` elsewhere, or with no index held (a place a refusal gave back beyond
    /// them: assigned on the shard's own count).
    pub(super) fn leased_variant(
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Option<usize> {
        state.indices.given = None;
        if let Some(variant) = Self::test_index_variant(campaign, state, candidate) {
            return variant; // a triggered A/B test's (below)
        }
        let leased = is_triggered_run(&candidate.run_id)
            || leased_alone(campaign)
            || late_on_leases(campaign);
        if !state.is_shard(campaign) || !leased || !indexed(campaign) {
            return None;
        }
        let index = state.indices.held.first().map(|(from, _)| *from)?;
        state.indices.given = Some(index);
        ab::variant_at(&campaign.assignment, campaign.what.len(), index)
    }

    /// The user given an index was sent: the index is spent; with the send gate still to
    /// answer (`in_flight`: the user and run), it is kept until it does.
    pub(super) fn spend_index(state: &mut CampaignState, in_flight: Option<(&str, &str)>) {
        let Some(index) = state.indices.given.take() else { return };
        if let Some((user, run)) = in_flight {
            state.indices.in_flight.insert(format!("{user}\u{0}{run}"), index);
        }
        if let Some(first) = state.indices.held.first_mut().filter(|(from, _)| *from == index) {
            first.0 += 1;
            if first.0 == first.1 {
                state.indices.held.remove(0);
            }
        }
    }

    /// The send gate answered the send of `user` in `run`: confirmed, its index stays spent;
    /// refused (`returned`), the index is held again, for the shard's next candidate (the place
    /// comes back too), and the user, who was sent nothing, keeps no sticky variant of it (it
    /// is another user's now): their next notification takes an index of its own.
    pub(super) fn settle_index(
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        user: &str,
        run: &str,
        returned: bool,
    ) -> Result<(), ProcessError> {
        let Some(index) = state.indices.in_flight.remove(&format!("{user}\u{0}{run}")) else {
            return Ok(());
        };
        if returned {
            insert(&mut state.indices.held, index, index + 1);
            ctx.store(ASSIGNMENTS)?.delete(assignment_key(&state.key, user).as_bytes())?;
        }
        Ok(())
    }

    /// Home: before a `GRANT` of `places` to `shard` of a campaign in alternation or with a
    /// split, grants as many indices (`INDICES` plans, one per range), those given back first.
    pub(super) fn grant_indices(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        shard: u32,
        places: u64,
    ) -> Result<(), ProcessError> {
        if !(indexed(campaign) || ab_test_on(campaign, state).is_some()) || places == 0 {
            return Ok(());
        }
        let mut ranges = Vec::new();
        let mut left = places;
        while left > 0 {
            let Some((from, to)) = state.index_pool.free.first_mut() else { break };
            let take = left.min(*to - *from);
            ranges.push((*from, *from + take));
            *from += take;
            if from == to {
                state.index_pool.free.remove(0);
            }
            left -= take;
        }
        if left > 0 {
            ranges.push((state.assigned, state.assigned + left));
            state.assigned += left;
        }
        for (from, to) in ranges {
            insert(state.index_pool.out.entry(shard).or_default(), from, to);
            let number = state.index_pool.plans.entry(shard).or_default();
            *number += 1;
            let plan = ShardPlan {
                places: *number, // the plan's number (an `INDICES` plan grants no place)
                test_from: from as i64,
                test_users: (to - from) as i64,
                ..super::shards::plan_to(
                    campaign,
                    "",
                    shard as i32,
                    ShardPlanKind::Indices,
                    ctx.timestamp_ms(),
                )
            };
            let key = campaign_shards::key(&campaign.id, shard);
            self.emit(ctx, &self.topics.campaign_flow, &key, &plan)?;
        }
        Ok(())
    }

    /// Shard: indices granted by the home, unless a repeat (its number, `places`, not above the
    /// latest applied: dropped and counted; an older home's unnumbered plan applies only before
    /// any numbered one). The home numbers its plans to a shard one by one from 1 (its
    /// `IndexPool.plans`, kept for the campaign's life as this shard's count is), so a plan
    /// numbered past the next, the first included, is a forgery, rejected: taken, it would make
    /// every genuine plan after it look like a repeat (review s28 finding 2). A shard restored
    /// from a state an earlier version saved takes any number as its first (`before_plans`).
    pub(super) fn on_index_plan(
        ctx: &mut ProcessorContext<'_>,
        state: &mut CampaignState,
        plan: &ShardPlan,
    ) -> Result<(), ProcessError> {
        let unnumbered = plan.places == 0 && state.indices.plans == 0;
        if !unnumbered && plan.places <= state.indices.plans {
            ctx.count(&REPEATED_LEASE_REPORTS, "indices_plan");
            return Ok(());
        }
        let first_unknown = state.indices.plans == 0 && state.indices.before_plans;
        if !first_unknown && plan.places > state.indices.plans + 1 {
            return Err(ProcessError::reject(format!(
                "places: an INDICES plan of {} to shard {} numbered {}, the next is {} (its home \
                 numbers them one by one from 1)",
                plan.campaign_id,
                plan.shard,
                plan.places,
                state.indices.plans + 1
            )));
        }
        state.indices.plans = state.indices.plans.max(plan.places);
        let from = plan.test_from.max(0) as u64;
        let to = from.saturating_add(plan.test_users.max(0) as u64);
        insert(&mut state.indices.held, from, to);
        Ok(())
    }

    /// Shard: gives back the indices it holds beyond `keep` (its places held or in flight),
    /// one `INDICES` report per range, ahead of the lease report they go with.
    pub(super) fn return_indices(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        keep: u64,
    ) -> Result<(), ProcessError> {
        if state.indices.count() <= keep {
            return Ok(());
        }
        let seq = Self::next_report_seq(state); // that of the lease report it goes ahead of
        for (from, to) in state.indices.beyond(keep) {
            self.report(ctx, campaign, state, ShardReportKind::Indices, |r| {
                r.seq = seq;
                // All the campaign may have, and at least this shard's own number + 1: a shard an
                // edit took away gives back its refused indices too (a report naming a shard not
                // below `shards` does not decode: a dead letter, the indices lost).
                r.shards = (campaign.options.shards.max(1) as i32).max(r.shard + 1);
                r.qualified = from as i64;
                r.places = (to - from) as i64;
            })?;
        }
        Ok(())
    }

    /// Home: indices a shard gave back, granted again first. Numbered as the lease report it
    /// goes ahead of (`seq`): one whose lease report was applied is a repeat, dropped and
    /// counted; a range not granted to the shard, or given back already, is rejected (a dead
    /// letter). An unnumbered one (an older version's) applies only as an unnumbered lease
    /// report would: to an account made before the upgrade, before any numbered report.
    pub(super) fn on_index_report(
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
        report: &ShardReport,
    ) -> Result<(), ProcessError> {
        let shard = report.shard as u32;
        let reject = |why: &str| {
            ProcessError::reject(format!(
                "qualified, places: an INDICES report of {} from shard {} gives back {} indices \
                 from {}: {why}",
                campaign.id, report.shard, report.places, report.qualified
            ))
        };
        let from = u64::try_from(report.qualified).map_err(|_| reject("a negative index"))?;
        let count = u64::try_from(report.places).map_err(|_| reject("a negative count"))?;
        let to = from.checked_add(count).ok_or_else(|| reject("past the last index"))?;
        if count == 0 {
            return Ok(());
        }
        let (applied, before_seq) = Self::reports_applied(state, shard);
        if report.seq != 0 && report.seq <= applied {
            ctx.count(&REPEATED_LEASE_REPORTS, "indices");
            return Ok(());
        }
        // It goes ahead of the shard's next lease report, numbered one past the last applied
        // (from 1: see `leases::admit_lease_report`).
        if !(applied == 0 && before_seq) && report.seq > applied + 1 {
            return Err(reject("numbered past the shard's next lease report"));
        }
        let pool = &mut state.index_pool;
        let out = pool.out.entry(shard).or_default();
        let granted = holds(out, from, to);
        // Before `out` was kept: at most indices granted and not given back.
        let before = pool.before_out && to <= state.assigned && !overlaps(&pool.free, from, to);
        if !granted && !before {
            return Err(reject("not granted to the shard, or given back already"));
        }
        if report.seq == 0 && !(applied == 0 && before_seq) {
            ctx.count(&REPEATED_LEASE_REPORTS, "indices");
            return Ok(());
        }
        remove(out, from, to);
        insert(&mut pool.free, from, to);
        Ok(())
    }
}

/// Whether `campaign` is a triggered A/B test of a number of users: over shards its test
/// users are leased global indices (see [`ab_test_on`]).
pub(super) fn triggered_test(campaign: &Campaign) -> bool {
    !matches!(campaign.when.trigger, Trigger::Scheduled(_))
        && matches!(
            &campaign.assignment,
            Assignment::AbTest(test) if matches!(test.test_audience, TestPopulation::Users(_))
        )
}

/// The audience of `campaign`'s triggered A/B test while it is on where `state` is kept (no
/// winner known there; see "A/B test audience" in `docs/architecture.md`). Over shards its test
/// users are the global indices `0 .. audience`, leased to the shards as alternation's are, and
/// index g gets variant `g mod variants` (as one task's place g). While it is on, the home grants
/// a place only with an index ([`CampaignStage::indices_left`]) and only on demand (no
/// pre-lease), so no index lies unspent at a shard and the test completes with its
/// `audience`-th user sent; users beyond it wait at their shard for the winner.
pub(super) fn ab_test_on(campaign: &Campaign, state: &CampaignState) -> Option<u64> {
    match &campaign.assignment {
        Assignment::AbTest(test) if triggered_test(campaign) && state.winner_id.is_none() => {
            match test.test_audience {
                TestPopulation::Users(audience) => Some(audience),
                TestPopulation::Percent(_) => None,
            }
        }
        _ => None,
    }
}

/// A triggered A/B test's evaluation and winner plans and reports name this in `run_id` (no
/// scheduled run's id, nor a day).
pub(super) const TRIGGERED_TEST: &str = "triggered-test";

impl CampaignStage {
    /// A shard's variant for a triggered `candidate` while the campaign's A/B test is on there:
    /// that of its lowest index held (spent if the user is sent, as alternation's); `None`
    /// elsewhere.
    fn test_index_variant(
        campaign: &Campaign,
        state: &mut CampaignState,
        candidate: &Candidate,
    ) -> Option<Option<usize>> {
        if !state.is_shard(campaign) || !is_triggered_run(&candidate.run_id) {
            return None;
        }
        ab_test_on(campaign, state)?;
        let index = state.indices.held.first().map(|(from, _)| *from);
        state.indices.given = index;
        Some(index.map(|index| ab::alternate(index, campaign.what.len())))
    }

    /// Home: the places it may grant while a triggered A/B test is on, one per index it may
    /// still grant (given back, then new ones up to the audience); `None` when none is on.
    pub(super) fn indices_left(campaign: &Campaign, state: &CampaignState) -> Option<u64> {
        let audience = ab_test_on(campaign, state)?;
        let free = total(&state.index_pool.free);
        Some(free.saturating_add(audience.saturating_sub(state.assigned)))
    }

    /// Home: a triggered A/B test over shards is complete once every index of its audience was
    /// granted and spent by a send the gate confirmed: none left to grant, no place held,
    /// unreported or in flight at any shard (while the test is on a place goes only with an
    /// index, and a shard's last place spent or settled is reported); the winner is due after
    /// the wait, counted from now.
    pub(super) fn complete_sharded_test(
        &self,
        ctx: &mut ProcessorContext<'_>,
        campaign: &Campaign,
        state: &mut CampaignState,
    ) -> Result<(), ProcessError> {
        if state.is_shard(campaign) || state.test_full_at.is_some() {
            return Ok(());
        }
        let Some(audience) = ab_test_on(campaign, state) else { return Ok(()) };
        let complete = state.assigned >= audience
            && state.index_pool.free.is_empty()
            && state.held_at_shards() == 0;
        if complete {
            self.start_evaluation(ctx, campaign, state, ctx.timestamp_ms())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_the_highest_go_back() {
        let mut ranges = Vec::new();
        insert(&mut ranges, 10, 12);
        insert(&mut ranges, 0, 4);
        insert(&mut ranges, 4, 6);
        insert(&mut ranges, 7, 7);
        assert_eq!(ranges, [(0, 6), (10, 12)]);
        let mut held = ShardIndices { held: ranges, ..Default::default() };
        assert_eq!(held.count(), 8);
        assert_eq!(held.beyond(5), [(5, 6), (10, 12)]);
        assert_eq!(held.held, [(0, 5)]);
        assert_eq!(held.beyond(0), [(0, 5)]);
        assert!(held.held.is_empty());
    }

    #[test]
    fn only_indices_restored_from_an_earlier_versions_state_take_any_first_plan() {
        assert!(!ShardIndices::default().before_plans);
        let saved = serde_json::to_string(&ShardIndices::default()).unwrap();
        assert!(!serde_json::from_str::<ShardIndices>(&saved).unwrap().before_plans);
        let earlier: ShardIndices = serde_json::from_str(r#"{"plans":0}"#).unwrap();
        assert!(earlier.before_plans && ShardIndices::restored().before_plans);
    }

    #[test]
    fn a_range_given_back_leaves_what_was_granted() {
        let mut out = vec![(0, 6), (10, 12)];
        assert!(holds(&out, 2, 4) && !holds(&out, 5, 11) && overlaps(&out, 5, 11));
        remove(&mut out, 2, 4);
        assert_eq!(out, [(0, 2), (4, 6), (10, 12)]);
        remove(&mut out, 10, 12);
        assert_eq!(out, [(0, 2), (4, 6)]);
        assert!(!overlaps(&out, 2, 4));
        assert_eq!(total(&vec![(0, u64::MAX), (0, 5)]), u64::MAX);
    }
}
